"""Sign a POST grant from a `GrantRequest`: one key prefix, a size range, an expiry no later
than the credentials'.

The grant is what `generate_presigned_post` returns, with the URL made regional, plus
human-facing keys (`bucket`, `issued_at`, `note`) that the agent never trusts.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.errors import ConfigError
from agent.grant import AnyGrant, parse_grant
from agent.keys import PARTS_NAMESPACE
from agent.policy import decode_policy
from issuer.aws import aws_errors, regional_endpoint
from issuer.errors import InputError
from issuer.signer import Signer, Signing

# S3 answers with the PostResponse XML (Location, Bucket, Key, ETag) only for 201.
SUCCESS_STATUS = "201"


@dataclass(frozen=True)
class GrantRequest:
    """What a grant allows: where (`prefix`, expanded already: see `expand_prefix`), how big,
    for how long, with which encryption."""

    bucket: str
    prefix: str
    expires_in: int
    min_size: int = 0
    max_size: int = 5 * 1024**3
    note: Optional[str] = None
    sse: Optional[str] = None  # "AES256" or "aws:kms": server-side encryption, a signed condition
    kms_key_id: Optional[str] = None

    def __post_init__(self) -> None:
        """Refused at once, before the store or the credentials are asked anything."""
        if not self.prefix:
            raise InputError("--prefix is empty: a grant for the whole bucket is never issued")
        if self.min_size > self.max_size:
            raise InputError("--min-size is larger than --max-size: swap them")
        _encryption(self)


def expand_prefix(template: str, *, force: bool = False, renewed: bool = False) -> str:
    """The prefix a grant is signed for: `{uuid}` becomes a fresh random UUID (one per launch).

    Refused: an empty prefix or `/` (the whole bucket), one without a trailing `/` unless
    forced, since `runs/1` also matches `runs/10/...` and `runs/1-other`, and `{uuid}` in a
    grant that is `renewed`: the next grant must keep the prefix.
    """
    if renewed and "{uuid}" in template:
        raise InputError(
            "--prefix with {uuid} would change at every renewal: give a fixed prefix (each "
            "instance's own segment comes from the agent's POSTBOX_KEY_PREFIX)"
        )
    prefix = template.replace("{uuid}", str(uuid.uuid4()))
    if "{" in prefix or "}" in prefix:
        raise InputError(f"--prefix {template!r} has a placeholder other than {{uuid}}")
    if prefix.strip("/") == "":
        raise InputError(f"--prefix {template!r} names the whole bucket: give one like runs/42/")
    if not prefix.endswith("/") and not force:
        raise InputError(
            f"--prefix {template!r} has no trailing /, so it also matches {prefix}0/ and "
            f"{prefix}-other: add the / or pass --force-prefix"
        )
    marker = f"{PARTS_NAMESPACE}/"
    if marker in prefix or any(marker.startswith(prefix[i:]) for i in range(len(prefix))):
        raise InputError(
            f"--prefix {template!r} holds {marker} (or its start), where agents put the parts "
            f"of files sent in parts: assemble would join a holder's manifest there into a "
            f"key outside the prefix; choose a prefix without it"
        )
    return prefix


def regional_url(bucket: str, region: str, endpoint_url: Optional[str] = None) -> str:
    """The URL a POST must go to so that S3 never redirects it (307) or refuses it (400).

    A custom endpoint gets path style; a bucket name with dots too, since a virtual host name
    with dots fails TLS against S3's wildcard certificate.
    """
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/"
    endpoint = regional_endpoint(region)
    if "." in bucket:
        return f"{endpoint}/{bucket}/"
    return endpoint.replace("://", f"://{bucket}.", 1) + "/"


def sign_grant(request: GrantRequest, signer: Signer, now: dt.datetime) -> dict[str, Any]:
    """The grant for `request`, signed by `signer`'s credentials for the bucket's region."""
    return make_grant(signer.open(request.bucket, request.expires_in, now), request, now)


def make_grant(signing: Signing, request: GrantRequest, now: dt.datetime) -> dict[str, Any]:
    """The grant, in a signing context opened for the request's bucket (its lifetime is the
    context's: the credentials' may have capped it)."""
    # Every field the form sends must be a condition too; botocore copies neither way.
    fields = {"success_action_status": SUCCESS_STATUS, **_encryption(request)}
    with aws_errors(f"signing a POST policy for bucket {request.bucket}"):
        post = signing.s3.generate_presigned_post(
            Bucket=request.bucket,
            # With ${filename} at its end, botocore writes ["starts-with", "$key", prefix].
            Key=request.prefix + "${filename}",
            Fields=fields,
            Conditions=[
                *({name: value} for name, value in fields.items()),
                ["content-length-range", request.min_size, request.max_size],
            ],
            ExpiresIn=signing.expires_in,
        )
    policy = decode_policy(post["fields"]["policy"])
    if policy.key_prefix != request.prefix:  # guard against a change in botocore's behaviour
        raise AssertionError(f"botocore signed key prefix {policy.key_prefix!r}")
    grant: dict[str, Any] = {
        "url": regional_url(request.bucket, signing.region, signing.endpoint_url),
        "fields": post["fields"],
        "bucket": request.bucket,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if request.note:
        grant["note"] = request.note
    return grant


def _encryption(request: GrantRequest) -> dict[str, str]:
    if request.sse is None:
        if request.kms_key_id:
            raise InputError("--kms-key-id needs --sse aws:kms")
        return {}
    if request.sse not in ("AES256", "aws:kms"):
        raise InputError(f"--sse {request.sse!r} is not AES256 or aws:kms")
    fields = {"x-amz-server-side-encryption": request.sse}
    if request.kms_key_id:
        if request.sse != "aws:kms":
            raise InputError("--kms-key-id needs --sse aws:kms")
        fields["x-amz-server-side-encryption-aws-kms-key-id"] = request.kms_key_id
    return fields


def read_grant(path: Path) -> tuple[dict[str, Any], AnyGrant]:
    """A grant file's JSON (`-`: stdin), and the grant the agent reads from it: InputError where
    the agent would refuse it."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        document = json.loads(text)
        grant = parse_grant(document, path)
    except (OSError, ValueError) as exc:
        where = "the grant on stdin" if str(path) == "-" else f"--grant {path}"
        raise InputError(f"{where} cannot be read ({exc}): give a grant file") from None
    except ConfigError as exc:
        raise InputError(exc.message) from None
    return dict(document), grant
