"""`postbox-issuer`: each command's options beside its run, which turns them into typed values for
the modules that do the work and prints what they return (exit codes: issuer/errors.py, README).

grant | renew | url | cloudfront-url | user-data | wheelhouse | inspect
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from agent.logs import configure
from agent.usage import add_command
from issuer import __version__, cloudfront, inspection, wheelhouse
from issuer.assemble import COPIES, Report, assemble
from issuer.errors import ExitCode, InputError, IssuerError, PartsError, StoreError
from issuer.formats import FORMATS
from issuer.formats import render as render_grant
from issuer.grant import GrantRequest, expand_prefix, parse_tag, read_grant, sign_grant
from issuer.renew import publish_place, renew
from issuer.signer import Signer
from issuer.units import parse_duration, parse_size
from issuer.urls import MAX_PRESIGNED_SECONDS, put_grant, sign_url
from issuer.userdata import DEFAULT_REQUIREMENT, AgentOptions, encode, render

logger = logging.getLogger("issuer")
Commands = argparse._SubParsersAction  # of argparse.ArgumentParser
MIN_SIZE, MAX_SIZE = "0", "5GiB"
# How long assemble waits for the answer to a copy or a completion: UploadPartCopy of a part of
# up to 5 GiB, which a store copies before it answers (RGW took over botocore's 60 s for a 64 MiB
# part under load), and CompleteMultipartUpload, which S3 may take minutes over. Every other
# call (a listing, a look, a delete) waits 60 s.
COPY_SECONDS = 900


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    configure("WARNING")
    try:
        args.command(args)
    except IssuerError as exc:
        logger.error("%s", exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postbox-issuer",
        description="Sign S3 POST grants for postbox-agent and render cloud-init user-data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in (
        _grant,
        _renew,
        _assemble,
        _url,
        _cloudfront_url,
        _user_data,
        _wheelhouse,
        _inspect,
    ):
        add(commands)
    return parser


def _command(
    commands: Commands[argparse.ArgumentParser],
    name: str,
    run: Callable[[argparse.Namespace], None],
    **docs: Any,
) -> argparse.ArgumentParser:
    return add_command(commands, name, run, codes=ExitCode, **docs)


# grant
def _grant(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "grant",
        grant_command,
        summary="sign a grant: upload rights under one key prefix",
        description="Sign a POST policy that lets its holder upload under one key prefix, within "
        "a size range, until it expires: the grant postbox-agent reads. Needs s3:PutObject on "
        "the prefix.",
        examples=[
            "postbox-issuer grant --bucket results --prefix runs/42/ --expires 6h -o grant.json",
            "postbox-issuer grant --bucket results --prefix inbox/ --expires 1h --format html "
            "-o upload.html",
        ],
    )
    _grant_options(parser, required=True)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json: for the agent (default); curl: a command for one file; html: an upload page",
    )
    _output(parser)


def grant_command(args: argparse.Namespace) -> None:
    grant = sign_grant(_grant_request(args), _signer(args), dt.datetime.now(dt.timezone.utc))
    _write(args.output, render_grant(grant, args.format).encode())


# renew
def _renew(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "renew",
        renew_command,
        summary="sign the next grant of a fleet and publish it where its agents fetch it",
        description="Sign a fleet's next grant, with the next renewal URL inside, and publish it "
        "where the agents fetch it; publishes only when the current one is past half its life "
        "(--force: now). Safe to run as often as you like, from cron or a timer.",
        examples=[
            "postbox-issuer renew --bucket results --prefix fleet/ --expires 6h "
            "--publish s3://ops/postbox/fleet.json -o grant.json",
        ],
    )
    _grant_options(parser, required=True)
    parser.add_argument(
        "--publish",
        required=True,
        metavar="s3://BUCKET/KEY",
        help="where the grant is published (outside the grant's prefix)",
    )
    parser.add_argument(
        "--renew-expires",
        default="7d",
        help="how long each renewal URL works, up to 7d (default %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="publish a new grant even if the current is fresh"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="also write the published grant here (mode 0600)"
    )


def renew_command(args: argparse.Namespace) -> None:
    """Publish the next grant unless the published one is still fresh; print which."""
    bucket, key = publish_place(args.publish)
    document, fresh = renew(
        _grant_request(args, renewed=True),
        _signer(args),
        (bucket, key),
        parse_duration(args.renew_expires),
        dt.datetime.now(dt.timezone.utc),
        force=args.force,
    )
    if fresh:
        print(f"published: s3://{bucket}/{key}")
    else:
        print(f"still fresh: s3://{bucket}/{key} (nothing published)")
    if args.output:
        _write(args.output, (json.dumps(document, indent=2) + "\n").encode())


# assemble
def _assemble(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "assemble",
        assemble_command,
        summary="join the files agents sent in parts, server-side, then remove the parts",
        description="For each file under the prefix with complete manifests: its newest "
        "version (by the store's clock; an object sent whole to its key may be newer) has its "
        "parts checked and joined into the file's key with UploadPartCopy (no byte passes "
        "through this machine, but for a part the store will not copy), the object checked, "
        "then its parts and manifest deleted, and older versions' too. Idempotent, and safe "
        "beside running agents (a file without its manifest is never touched).",
        examples=[
            "postbox-issuer assemble --bucket results --prefix fleet/",
            "postbox-issuer assemble --bucket results --prefix fleet/ --dry-run",
        ],
    )
    parser.add_argument("--bucket", required=True, help="the grants' bucket")
    parser.add_argument("--prefix", required=True, help="where to look for manifests")
    parser.add_argument("--dry-run", action="store_true", help="say what would be joined")
    parser.add_argument(
        "--json", action="store_true", help="print what was done as one JSON document"
    )
    parser.add_argument(
        "--keep-parts", action="store_true", help="leave the parts and manifest once joined"
    )
    parser.add_argument(
        "--copies",
        type=_copies,
        default=COPIES,
        metavar="N",
        help=f"parts the store copies at once, 1 to 64 (default {COPIES})",
    )
    parser.add_argument("--region", help="the bucket's region (default: looked up)")
    parser.add_argument("--endpoint-url", help="an S3-compatible store instead of AWS")
    parser.add_argument("--profile", help="the AWS profile to use")


def _copies(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 64")
    return int(text)


# The run's worst failure gives its exit code: a manifest the store refused (4), a bug (1)
_FAILED = {ExitCode.STORE: StoreError, ExitCode.FAILURE: IssuerError}


def assemble_command(args: argparse.Namespace) -> None:
    signer = Signer(
        profile=args.profile,
        region=args.region,
        endpoint_url=args.endpoint_url,
        slow_read_timeout=COPY_SECONDS,
        connections=2 * args.copies,  # a part sent through this machine: its GET and its PUT
        skip_check="",  # assemble has no --no-check: it needs the bucket
    )
    signing = signer.open(args.bucket, 60, dt.datetime.now(dt.timezone.utc))
    report = assemble(
        signing.s3,
        args.bucket,
        args.prefix,
        dry_run=args.dry_run,
        keep_parts=args.keep_parts,
        copies=args.copies,
        echo=None if args.json else lambda line: print(line, flush=True),
        slow=signing.slow,
    )
    if args.json:
        print(json.dumps(_assembled(report, args.prefix), indent=2))
    elif not (
        report.assembled
        or report.finished
        or report.would
        or report.superseded
        or report.gone
        or report.broken
    ):
        print(f"nothing to assemble under s3://{args.bucket}/{args.prefix}")
    if report.broken:
        raise _FAILED.get(report.exit_code, PartsError)(
            f"{len(report.broken)} manifest(s) not assembled: see above"
        )


def _assembled(report: Report, prefix: str) -> dict[str, Any]:
    """`assemble --json`: what the run did, as the text lines say it (README: Files of any
    size). `manifest_sha256` is the SHA-256 the agent wrote in the manifest: assemble reads no
    byte of the file to check it; `sha256`, the same as the object carries it (its metadata
    `sha256`, by the store's word; null for one an older assemble joined without it)."""

    def file(key: str) -> dict[str, Any]:
        size, sha256, version = report.files[key]
        return {"key": key, "size": size, "manifest_sha256": sha256, "version": version,
                "sha256": report.carried.get(key)}  # fmt: skip

    return {
        "bucket": report.bucket,
        "prefix": prefix,
        "dry_run": report.dry_run,
        "assembled": [file(key) for key in report.assembled],
        "already_assembled": [file(key) for key in report.finished],
        "would_assemble": [file(key) for key in report.would],
        "superseded": [
            {"manifest": m, "key": key, "newer": report.newer[m], "parts": report.tidied}
            for m, key in report.superseded
        ],
        "gone": [{"manifest": m} for m in report.gone],
        "not_assembled": [
            {"manifest": m, "why": why, "exit_code": int(code)} for m, why, code in report.broken
        ],
        "exit_code": int(report.exit_code),
    }


# url
def _url(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "url",
        url_command,
        summary="a presigned GET (download) or PUT (upload) URL",
        description="A presigned URL for one object: GET to download it, PUT to upload it (up "
        "to 7 days).",
        examples=[
            'curl --fail -o r.csv "$(postbox-issuer url get --bucket results --key r.csv '
            '--expires 1h)"',
            "postbox-issuer url put --bucket results --key final.csv --expires 1h --format grant "
            "-o put.json",
        ],
    )
    parser.add_argument("method", choices=("get", "put"), help="get: download; put: upload")
    parser.add_argument("--bucket", required=True, help="the bucket the object is in")
    parser.add_argument("--key", required=True, help="the object's key")
    parser.add_argument(
        "--expires", required=True, help="lifetime: 90s, 30m, 1h30m, up to 7d or 1w"
    )
    parser.add_argument("--content-type", help="put: the Content-Type the uploader must send")
    parser.add_argument(
        "--format",
        choices=("url", "grant"),
        default="url",
        help="url: the URL alone (default); grant: put only, a grant file for postbox-agent",
    )
    _aws_options(parser)
    _output(parser)


def url_command(args: argparse.Namespace) -> None:
    if args.format == "grant" and args.method != "put":
        raise InputError("--format grant needs a put URL: the agent only uploads")
    url = sign_url(
        _signer(args),
        args.method,
        args.bucket,
        args.key,
        parse_duration(args.expires),
        now=dt.datetime.now(dt.timezone.utc),
        content_type=args.content_type,
    )
    if args.format == "grant":
        document = put_grant(url, args.bucket, args.key, args.content_type)
        _write(args.output, (json.dumps(document, indent=2) + "\n").encode())
    else:
        _write(args.output, (url + "\n").encode())


# cloudfront-url
def _cloudfront_url(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "cloudfront-url",
        cloudfront_command,
        summary="a CloudFront signed URL (canned or custom policy)",
        description="A CloudFront signed URL (canned policy, or custom with --not-before, --ip "
        "or --resource), signed with the distribution's key pair; no AWS credentials used.",
        examples=[
            "postbox-issuer cloudfront-url --url https://d111.cloudfront.net/w.tar "
            "--key-pair-id K2JCJMDEHXQW5F --private-key cf.pem --expires 30d",
        ],
    )
    parser.add_argument("--url", required=True, help="https://DISTRIBUTION/PATH")
    parser.add_argument("--key-pair-id", required=True, help="the public key's ID")
    parser.add_argument("--private-key", required=True, type=Path, help="its RSA key, PEM")
    parser.add_argument("--expires", default="1h", help="lifetime (default %(default)s)")
    parser.add_argument("--not-before", help="custom policy: valid from this ISO 8601 time")
    parser.add_argument("--ip", help="custom policy: only from this address range (CIDR)")
    parser.add_argument("--resource", help="custom policy: a URL pattern, * as wildcard")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")


def cloudfront_command(args: argparse.Namespace) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    not_before = args.not_before and cloudfront.parse_time(args.not_before, "--not-before")
    url = cloudfront.signed_url(
        args.url,
        args.key_pair_id,
        cloudfront.load_private_key(args.private_key),
        now + dt.timedelta(seconds=parse_duration(args.expires)),
        not_before=not_before or None,
        ip_range=args.ip,
        resource=args.resource,
    )
    _write(args.output, (url + "\n").encode())


# user-data
def _user_data(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "user-data",
        user_data_command,
        summary="render #cloud-config that installs and starts the agent with a grant",
        description="Render #cloud-config user-data that writes the grant, the agent's settings "
        "and its hardened unit, installs the agent and starts it at first boot; refused before "
        "anything is signed if the agent would refuse a setting, and over EC2's 16384 bytes.",
        examples=[
            "postbox-issuer user-data --grant grant.json --wheelhouse wheelhouse.tar "
            "-o user-data.yaml",
            "postbox-issuer user-data --bucket results --prefix runs/42/ --expires 6h --gzip "
            "-o user-data.gz",
        ],
    )
    parser.add_argument("--grant", type=Path, help="a grant file (else sign one from the options)")
    _grant_options(parser, required=False)
    _agent_options(parser)
    _install_options(parser)
    parser.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="COMMAND",
        help="a shell command run as root once the agent is installed, such as a batch job "
        "ending with `/opt/postbox/bin/postbox-agent wait; systemctl poweroff` (repeatable)",
    )
    parser.add_argument(
        "--gzip", action="store_true", help="gzip the output (EC2 and cloud-init accept it)"
    )
    _output(parser)


def user_data_command(args: argparse.Namespace) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    options = AgentOptions(  # checked as the agent checks them, before anything is signed
        watch_dir=args.watch_dir,
        state_dir=args.state_dir,
        after_upload=args.after_upload,
        key_prefix=args.key_prefix,
        concurrency=args.concurrency,
        settle_seconds=args.settle_seconds,
        metrics_file=args.metrics_file,
        stop_budget_seconds=args.stop_budget_seconds,
        preemption_watch=args.preemption_watch,
    )
    if args.grant:
        given = [f"--{name.replace('_', '-')}" for name in SIGNING_ONLY if getattr(args, name)]
        if given:
            raise InputError(
                f"{' '.join(given)} would be ignored with --grant (the grant is signed already): "
                "drop them, or drop --grant to sign a new one"
            )
        grant, _ = read_grant(args.grant)
        endpoint_url, region = _recorded_store(grant)  # the wheelhouse goes to the grant's store
        args = argparse.Namespace(
            **{
                **vars(args),
                "endpoint_url": args.endpoint_url or endpoint_url,
                "region": args.region or region,
            }
        )
    elif args.bucket and args.prefix and args.expires:
        grant = sign_grant(_grant_request(args), _signer(args), now)
    else:
        raise InputError("user-data needs --grant FILE, or --bucket, --prefix and --expires")
    install = wheelhouse.Install(
        index_url=args.index_url,
        agent_wheel=args.agent_wheel,
        wheelhouse=args.wheelhouse,
        wheelhouse_url=args.wheelhouse_url,
        wheelhouse_key=args.wheelhouse_key,
        wheelhouse_seconds=parse_duration(args.wheelhouse_expires)
        if args.wheelhouse
        else MAX_PRESIGNED_SECONDS,
    )
    options = replace(
        options,
        key_prefix=options.key_prefix if "fields" in grant else "",  # a PUT grant names its key
        source=wheelhouse.install_source(install, grant, _signer(args), now),
    )
    _write(args.output, encode(render(grant, options, tuple(args.job)), compress=args.gzip))


def _recorded_store(grant: dict[str, Any]) -> tuple[Optional[str], Optional[str]]:
    """The endpoint (None: AWS) and the region a grant was signed for, as its URL and its
    signature's scope (KEY/DATE/REGION/s3/aws4_request) record them."""
    url = urlsplit(str(grant.get("url", "")))
    host = (url.hostname or "").lower()
    aws = host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
    endpoint = None if aws or not host else f"{url.scheme}://{url.netloc}"
    fields = {k.lower(): v for k, v in dict(grant.get("fields") or {}).items()}
    query = {k.lower(): v[0] for k, v in parse_qs(url.query).items()}
    scope = str(fields.get("x-amz-credential") or query.get("x-amz-credential") or "").split("/")
    return endpoint, (scope[2] if len(scope) == 5 and scope[2] else None)


# The grant options that only signing a new grant uses (--region, --endpoint-url, --profile and
# --cap-to-credentials also sign the wheelhouse URL, so they are allowed with --grant).
SIGNING_ONLY = (
    *("bucket", "prefix", "expires", "max_size", "min_size", "force_prefix", "sse", "kms_key_id"),
    *("note", "no_content_type", "no_metadata", "storage_class", "tag"),
)


def _agent_options(parser: argparse.ArgumentParser) -> None:
    """The agent's settings that user-data writes into its env file."""
    parser.add_argument(
        "--watch-dir",
        default=AgentOptions.watch_dir,
        help="the folder the agent uploads from (default %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        default=AgentOptions.state_dir,
        help="the agent's journal of what it sent (default %(default)s)",
    )
    parser.add_argument(
        "--after-upload",
        choices=("keep", "delete", "move"),
        default=AgentOptions.after_upload,
        help="what the agent does with a file once stored (default %(default)s)",
    )
    parser.add_argument(
        "--key-prefix",
        metavar="TEMPLATE",
        default=AgentOptions.key_prefix,
        help="each instance's own key segment after the grant's prefix (default %(default)s; "
        "placeholders {instance_id}, {hostname}, {machine_id}; '' for none: then instances "
        "that write the same path overwrite each other)",
    )
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        default=AgentOptions.metrics_file,
        help="Prometheus metrics for node_exporter's textfile collector (default %(default)s; "
        "'' for none)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=AgentOptions.concurrency,
        help="files uploaded at once, 1 to 32 (default %(default)s)",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=AgentOptions.settle_seconds,
        help="how long a file seen without its close must stay unchanged (default %(default)s)",
    )
    parser.add_argument(
        "--stop-budget-seconds",
        type=float,
        default=AgentOptions.stop_budget_seconds,
        help="after SIGTERM, how long the agent goes on sending what is complete (default "
        "%(default)s; a larger one raises the unit's TimeoutStopSec to match)",
    )
    parser.add_argument(
        "--preemption-watch",
        choices=("off", "auto", "ec2", "gce", "azure"),
        default=AgentOptions.preemption_watch,
        help="watch for the cloud's spot or preemption notice, and send at once on it "
        "(default %(default)s; auto: the cloud cloud-init names)",
    )


def _install_options(parser: argparse.ArgumentParser) -> None:
    install = parser.add_argument_group(
        "installing the agent at first boot (default: pip, from the package index)"
    )
    install.add_argument(
        "--agent-wheel",
        metavar="URL",
        help=f"pip installs this wheel URL instead of {DEFAULT_REQUIREMENT}",
    )
    install.add_argument("--index-url", metavar="URL", help="pip's index instead of PyPI's")
    install.add_argument(
        "--wheelhouse",
        metavar="FILE",
        type=Path,
        help="install from this wheelhouse (postbox-issuer wheelhouse) alone, every wheel "
        "pinned by its hash, no index: uploaded to the grant's bucket, a signed GET URL to VMs",
    )
    install.add_argument(
        "--wheelhouse-key",
        metavar="KEY",
        help="where it goes in the grant's bucket (default postbox/wheelhouse-SHA256.tar)",
    )
    install.add_argument(
        "--wheelhouse-expires",
        default="7d",
        metavar="DURATION",
        help="the signed URL's lifetime (default %(default)s, the most SigV4 allows): "
        "instances that boot later cannot install",
    )
    install.add_argument(
        "--wheelhouse-url",
        metavar="URL",
        help="VMs fetch --wheelhouse from this URL you publish it at (a CloudFront signed URL, "
        "say, which may outlive 7 days); nothing uploaded",
    )


# wheelhouse
def _wheelhouse(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "wheelhouse",
        wheelhouse_command,
        summary="download the agent and its dependencies, pinned by hash, for user-data "
        "--wheelhouse",
        description="Download the agent and its dependencies for each CPython and machine the "
        "images run, a lock per target pinning every wheel by SHA-256, into one reproducible "
        "archive for user-data --wheelhouse.",
        examples=[
            "postbox-issuer wheelhouse --agent dist/s3_postbox-*-py3-none-any.whl "
            "-o wheelhouse.tar",
            "postbox-issuer wheelhouse --python 3.11 --arch x86_64 -o wheelhouse.tar",
        ],
    )
    parser.add_argument(
        "--python",
        action="append",
        metavar="3.X",
        help=f"a CPython version the images run; repeat (default {' '.join(wheelhouse.PYTHONS)})",
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=wheelhouse.ARCHES,
        help=f"a machine the images run on; repeat (default {' '.join(wheelhouse.ARCHES)})",
    )
    parser.add_argument(
        "--agent",
        metavar="WHEEL|REQUIREMENT",
        default=DEFAULT_REQUIREMENT,
        help="the agent to pin: a wheel file, or a requirement (default %(default)s)",
    )
    parser.add_argument("--index-url", metavar="URL", help="pip's index instead of PyPI's")
    parser.add_argument(
        "--find-links", metavar="DIR|URL", action="append", help="more wheels; repeat"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the archive to write")


def wheelhouse_command(args: argparse.Namespace) -> None:
    pip_options = ["--index-url", args.index_url] if args.index_url else []
    for links in args.find_links or ():
        pip_options += ["--find-links", links]
    wanted = wheelhouse.targets(args.python or wheelhouse.PYTHONS, args.arch or wheelhouse.ARCHES)
    sha256 = wheelhouse.build(args.agent, wanted, args.output, pip_options)
    print(f"{sha256}  {args.output}")
    print(f"for: {' '.join(target.tag for target in wanted)}")


# inspect
def _inspect(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "inspect",
        inspect_command,
        summary="a grant in plain words: what it allows, until when, signed by whom (offline)",
        description="Decode a grant (POST, or a PUT URL as a grant) without asking AWS; the "
        "agent's own checks judge it. Nothing secret is printed.",
        examples=["postbox-issuer inspect grant.json", "postbox-issuer inspect - < grant.json"],
    )
    parser.add_argument("grant", type=Path, metavar="GRANT", help="a grant file; - for stdin")
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="text (default) or json"
    )


def inspect_command(args: argparse.Namespace) -> None:
    """Exit 0 for any grant the agent would take, expired or not; 2 for one it would refuse."""
    document, grant = read_grant(args.grant, named="the grant file ")
    now = dt.datetime.now(dt.timezone.utc)
    if args.format == "json":
        output = json.dumps(inspection.facts(document, grant, now), indent=2) + "\n"
    else:
        output = inspection.text(str(args.grant), document, grant, now)
    _write(None, output.encode())


# What several commands share.
def _grant_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--bucket", required=required, help="the bucket uploads go to")
    parser.add_argument(
        "--prefix", required=required, help="every key starts with it, e.g. runs/42/"
    )
    parser.add_argument("--expires", required=required, help="lifetime: 90s, 30m, 1h30m, 2d, 1w")
    parser.add_argument("--max-size", help=f"largest file (default {MAX_SIZE})")
    parser.add_argument("--min-size", help=f"smallest file (default {MIN_SIZE})")
    parser.add_argument(
        "--force-prefix", action="store_true", help="allow a prefix without a trailing /"
    )
    parser.add_argument(
        "--sse", choices=("AES256", "aws:kms"), help="require server-side encryption (signed)"
    )
    parser.add_argument("--kms-key-id", help="with --sse aws:kms: the KMS key to encrypt with")
    parser.add_argument(
        "--no-content-type",
        action="store_true",
        help="do not let the uploader set each object's Content-Type (the store's default)",
    )
    parser.add_argument(
        "--no-metadata",
        action="store_true",
        help="do not let the uploader store each file's SHA-256 and time as x-amz-meta-sha256 "
        "and x-amz-meta-mtime",
    )
    parser.add_argument(
        "--storage-class",
        metavar="CLASS",
        help="store every object in this class, e.g. STANDARD_IA (signed; AWS: S3's classes; "
        "another store: its own)",
    )
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="give every object this tag (signed; repeatable, up to 10)",
    )
    parser.add_argument("--note", help="a note kept in the grant for people (not signed)")
    _aws_options(parser)


def _aws_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", help="the bucket's region (default: looked up)")
    parser.add_argument("--endpoint-url", help="an S3-compatible endpoint instead of AWS")
    parser.add_argument("--profile", help="AWS profile to sign with")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="sign without asking the store whether the bucket exists (offline with --region)",
    )
    parser.add_argument(
        "--cap-to-credentials",
        action="store_true",
        help="shorten the expiry to the signing credentials' own instead of refusing",
    )


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, help="write here (mode 0600) instead of stdout"
    )


def _signer(args: argparse.Namespace) -> Signer:
    return Signer(
        profile=args.profile,
        region=args.region,
        endpoint_url=args.endpoint_url,
        cap_to_credentials=args.cap_to_credentials,
        check_bucket=not args.no_check,
    )


def _grant_request(args: argparse.Namespace, *, renewed: bool = False) -> GrantRequest:
    return GrantRequest(  # checked here, before the credentials and the store are asked
        args.bucket,
        expand_prefix(args.prefix, force=args.force_prefix, renewed=renewed),
        parse_duration(args.expires),
        parse_size(args.min_size or MIN_SIZE, "--min-size"),
        parse_size(args.max_size or MAX_SIZE, "--max-size"),
        args.note,
        sse=args.sse,
        kms_key_id=args.kms_key_id,
        content_type=not args.no_content_type,
        metadata=not args.no_metadata,
        storage_class=args.storage_class,
        tags=tuple(parse_tag(tag) for tag in args.tag),
        endpoint_url=args.endpoint_url,
    )


def _write(output: Optional[Path], data: bytes) -> None:
    """Write to `output` created with mode 0600 (it holds a bearer grant), or to stdout."""
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
    except OSError as exc:
        raise InputError(
            f"-o {output} cannot be written ({exc.strerror}): pick another path"
        ) from None
