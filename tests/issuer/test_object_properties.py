"""What a grant gives every object (issue 34): the uploader's Content-Type and metadata, signed as
`starts-with ""`, and a storage class and tags, signed exactly; refused when S3 would refuse them;
shown by `inspect`; kept by `renew`; filled by the curl command."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.grant import load_grant
from demo.stores import Store, s3_client
from issuer.cli import main
from issuer.errors import ExitCode, InputError
from issuer.grant import check_storage_class, tagging_xml
from tests.conftest import RGW_CLASS, require_tool

PER_OBJECT = {
    "content-type starts-with ''",
    "x-amz-meta-sha256 starts-with ''",
    "x-amz-meta-mtime starts-with ''",
}


def sign(store: Store, bucket: str, out: Path, *options: str) -> dict[str, Any]:
    argv = ["grant", "--bucket", bucket, "--prefix", "p/", "--expires", "10m", *options]
    argv += ["--endpoint-url", store.endpoint, "--region", store.region, "-o", str(out)]
    assert main(argv) == 0
    return dict(json.loads(out.read_text()))


def described(path: Path) -> set[str]:
    return {c.describe() for c in load_grant(path).policy.conditions}


@pytest.mark.parametrize(
    ("options", "absent"),
    [
        ((), set()),
        (("--no-content-type",), {"content-type starts-with ''"}),
        (("--no-metadata",), PER_OBJECT - {"content-type starts-with ''"}),
        (("--no-content-type", "--no-metadata"), PER_OBJECT),
    ],
)
def test_the_uploaders_fields_are_signed_by_default_and_each_flag_turns_its_own_off(
    options: tuple[str, ...], absent: set[str], moto_store: Store, tmp_path: Path
) -> None:
    s3_client(moto_store).create_bucket(Bucket="fields")
    document = sign(moto_store, "fields", tmp_path / "g.json", *options)
    conditions = described(tmp_path / "g.json")
    assert conditions & PER_OBJECT == PER_OBJECT - absent
    # Any value: the uploader fills them per object, so none is among the grant's fields.
    assert not {"content-type", "x-amz-meta-sha256", "x-amz-meta-mtime"} & {
        name.lower() for name in document["fields"]
    }


def test_storage_class_and_tags_are_exact_fields_and_conditions(
    moto_store: Store, tmp_path: Path
) -> None:
    s3_client(moto_store).create_bucket(Bucket="exact")
    tags = ["team=data lab", "run=42", "empty=", "path=a/b:c@d+e.f_g-h=i"]
    options = ["--storage-class", "COLD", *(x for tag in tags for x in ("--tag", tag))]
    document = sign(moto_store, "exact", tmp_path / "g.json", *options)
    tagging = (
        "<Tagging><TagSet><Tag><Key>team</Key><Value>data lab</Value></Tag>"
        "<Tag><Key>run</Key><Value>42</Value></Tag><Tag><Key>empty</Key><Value></Value></Tag>"
        "<Tag><Key>path</Key><Value>a/b:c@d+e.f_g-h=i</Value></Tag></TagSet></Tagging>"
    )
    assert document["fields"]["x-amz-storage-class"] == "COLD"
    assert document["fields"]["tagging"] == tagging
    conditions = described(tmp_path / "g.json")
    assert "x-amz-storage-class eq 'COLD'" in conditions
    assert f"tagging eq {tagging!r}" in conditions


def test_tagging_is_xml_escaped() -> None:
    assert tagging_xml((("a&b", "<x> \"y\" 'z'"),)) == (
        "<Tagging><TagSet><Tag><Key>a&amp;b</Key>"
        "<Value>&lt;x&gt; &quot;y&quot; &apos;z&apos;</Value></Tag></TagSet></Tagging>"
    )


ELEVEN = [x for i in range(11) for x in ("--tag", f"k{i}=v")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tag", "novalue"], "--tag 'novalue' is not KEY=VALUE: give a key, then =, then"),
        (["--tag", "=x"], "--tag '=x' is not KEY=VALUE"),
        (ELEVEN, "--tag given 11 times: S3 keeps at most 10 per object"),
        (["--tag", "k" * 129 + "=v"], "has 129 characters: S3 allows 128"),
        (["--tag", "k=" + "v" * 257], "--tag k=... has a value of 257 characters: S3 allows 256"),
        (["--tag", "a=1", "--tag", "a=2"], "--tag 'a' is given twice: a key may appear once"),
        (["--tag", "aws:x=1"], "keys starting with aws: are AWS's own; rename it"),
        (["--tag", "a=b&c"], "--tag a=b&c: S3 refuses '&' in a tag; use letters, digits, spaces"),
        (["--tag", "a=b\tc"], "S3 refuses '\\t' in a tag"),
        (
            ["--storage-class", "FAST"],
            "--storage-class FAST is not a storage class of an S3 bucket: give one of STANDARD, ",
        ),
        (
            ["--storage-class", "EXPRESS_ONEZONE"],
            "GLACIER_IR (a directory bucket, NAME--x-s3, takes EXPRESS_ONEZONE or ONEZONE_IA)",
        ),
        (["--storage-class", "standard"], "--storage-class 'standard' is not a storage class name"),
    ],
)
def test_bad_values_are_refused_in_one_line_naming_the_flag_before_signing(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """AWS (no --endpoint-url): refused before the credentials or the store are asked."""
    argv = ["grant", "--bucket", "b", "--prefix", "p/", "--expires", "1h", "--no-check"]
    assert main([*argv, "--region", "eu-west-1", *options, "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "g").exists()


def test_each_store_has_its_own_storage_classes() -> None:
    """AWS: S3's; a directory bucket: its two; another endpoint (RGW names its own): any name
    of S3's shape."""
    check_storage_class("GLACIER_IR", "b", aws=True)
    check_storage_class("EXPRESS_ONEZONE", "b--use1-az4--x-s3", aws=True)
    check_storage_class("COLD", "b", aws=False)
    with pytest.raises(InputError, match="not a storage class of a directory bucket"):
        check_storage_class("GLACIER", "b--use1-az4--x-s3", aws=True)
    with pytest.raises(InputError, match="not a storage class name"):
        check_storage_class("cold-1", "b", aws=False)


def test_rgw_stores_the_grants_storage_class_and_tags(rgw_store: Store, tmp_path: Path) -> None:
    """A plain POST with the grant's fields lands in the class with the tags. moto accepts the
    same form but ignores both (its _bucket_response_post stores the body and x-amz-meta-* /
    Content-Type only), so this is RGW's test alone."""
    s3 = s3_client(rgw_store)
    s3.create_bucket(Bucket="class-tags")
    options = ["--storage-class", RGW_CLASS, "--tag", "team=data", "--tag", "run=7"]
    grant = sign(rgw_store, "class-tags", tmp_path / "g.json", "--no-metadata", *options)
    form = {**grant["fields"], "key": "p/a.html", "Content-Type": "text/html"}
    answer = requests.post(grant["url"], data=form, files={"file": b"<p>a</p>"}, timeout=30)
    assert answer.status_code == 201, answer.text
    head = s3.head_object(Bucket="class-tags", Key="p/a.html")
    assert (head["StorageClass"], head["ContentType"]) == (RGW_CLASS, "text/html")
    tags = s3.get_object_tagging(Bucket="class-tags", Key="p/a.html")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "data", "run": "7"}


def test_rgw_refuses_a_field_the_grant_does_not_sign_so_the_uploader_sends_only_those(
    rgw_store: Store, tmp_path: Path
) -> None:
    """A Content-Type sent under a grant signed --no-content-type is refused (403, 'Policy
    missing condition'), as S3 refuses any field no condition names. RGW 16 is laxer than S3 the
    other way: a field named by a `starts-with ""` condition but missing from the form passes
    (S3 answers 'Policy Condition failed'), so the agent's own preflight is what holds an
    uploader to sending each required field."""
    s3 = s3_client(rgw_store)
    s3.create_bucket(Bucket="unsigned-field")
    grant = sign(rgw_store, "unsigned-field", tmp_path / "g.json", "--no-content-type")
    base = {**grant["fields"], "key": "p/a.txt", "x-amz-meta-sha256": "0", "x-amz-meta-mtime": "1"}
    refused = requests.post(
        grant["url"], data={**base, "Content-Type": "text/plain"}, files={"file": b"a"}, timeout=30
    )
    assert refused.status_code == 403 and "Policy missing condition" in refused.text
    lax = requests.post(
        grant["url"], data={**base, "key": "p/b.txt"}, files={"file": b"b"}, timeout=30
    )
    assert lax.status_code == 201  # x-amz-meta-* sent, nothing else: accepted
    missing = {k: v for k, v in base.items() if k != "x-amz-meta-mtime"}
    answer = requests.post(grant["url"], data=missing, files={"file": b"c"}, timeout=30)
    assert answer.status_code == 201


def test_the_curl_command_sends_the_files_type_sha256_and_time(
    store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    curl = require_tool("curl")
    out = tmp_path / "up.sh"
    assert main(["grant", "--bucket", bucket, "--prefix", "p/", "--expires", "10m",
                 "--endpoint-url", store.endpoint, "--region", store.region,
                 "--format", "curl", "-o", str(out)]) == 0  # fmt: skip
    data = tmp_path / "report.html"
    data.write_bytes(b"<h1>report</h1>\n")
    os.utime(data, (1765130400, 1765130400))
    result = subprocess.run(
        ["bash", "-c", out.read_text().replace("curl ", f"{curl} ", 1)],
        env={**os.environ, "FILE": str(data), "TYPE": "text/html"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    head = s3.head_object(Bucket=bucket, Key="p/report.html")
    assert head["ContentType"] == "text/html"
    assert head["Metadata"] == {
        "sha256": hashlib.sha256(b"<h1>report</h1>\n").hexdigest(),
        "mtime": "1765130400",
    }


def test_inspect_shows_the_uploaders_fields_the_class_and_the_tags(
    moto_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_client(moto_store).create_bucket(Bucket="shown")
    tags = ["--tag", "team=data", "--tag", "run id=7"]
    sign(moto_store, "shown", tmp_path / "g.json", "--storage-class", "COLD", *tags)
    sign(moto_store, "shown", tmp_path / "bare.json", "--no-content-type", "--no-metadata")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "g.json")]) == 0
    text = capsys.readouterr().out
    assert "type       each file's own (the uploader's guess from its name)\n" in text
    assert "metadata   x-amz-meta-mtime (any value), x-amz-meta-sha256 (any value)\n" in text
    assert "class      COLD\n" in text and "tags       team=data, run id=7\n" in text
    assert main(["inspect", "--format", "json", str(tmp_path / "g.json")]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["content_type"] == "any" and facts["storage_class"] == "COLD"
    assert facts["metadata"] == {"x-amz-meta-mtime": "any", "x-amz-meta-sha256": "any"}
    assert facts["tags"] == {"team": "data", "run id": "7"}
    assert main(["inspect", str(tmp_path / "bare.json")]) == 0
    text = capsys.readouterr().out
    assert "type       not sent: the store's default (binary/octet-stream on S3)\n" in text
    assert "metadata   none\n" in text and "tags       none\n" in text
    assert "class      the store's default (none signed)\n" in text


def test_renew_publishes_at_once_when_the_grant_would_sign_other_properties(
    moto_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same options: the published grant is still fresh. A tag added (from cron, say): the
    next run publishes a grant with it, without waiting for half the old one's life."""
    s3_client(moto_store).create_bucket(Bucket="fleet")
    argv = ["renew", "--bucket", "fleet", "--prefix", "f/", "--expires", "6h"]
    argv += ["--publish", "s3://fleet/grant.json", "--endpoint-url", moto_store.endpoint]
    argv += ["--region", moto_store.region, "-o", str(tmp_path / "g.json")]
    assert main(argv) == 0 and main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("still fresh:")
    assert main([*argv, "--tag", "team=data"]) == 0
    assert capsys.readouterr().out.startswith("published:")
    assert "<Key>team</Key>" in json.loads((tmp_path / "g.json").read_text())["fields"]["tagging"]
    assert main([*argv, "--tag", "team=data"]) == 0
    assert capsys.readouterr().out.startswith("still fresh:")


def test_user_data_with_a_grant_refuses_the_signing_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    grant = tmp_path / "g.json"
    grant.write_text("{}")
    argv = ["user-data", "--grant", str(grant), "--storage-class", "COLD", "--tag", "a=b"]
    assert main(argv) == ExitCode.INPUT
    assert "--storage-class --tag would be ignored with --grant" in capsys.readouterr().err
