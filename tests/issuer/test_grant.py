"""`postbox-issuer grant`: the signed conditions, the URL, the credentials' lifetime."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.credentials import RefreshableCredentials

from agent.grant import load_grant
from demo.stores import Store, s3_client
from issuer.aws import bucket_region, credential_life
from issuer.cli import main
from issuer.errors import ExitCode, InputError
from issuer.grant import expand_prefix, regional_url
from tests.conftest import GrantMaker, objects

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.timezone.utc)


def test_grant_signs_prefix_size_range_and_201(make_grant: GrantMaker, bucket: str) -> None:
    path = make_grant("runs/42/", "6h", "--min-size", "1", "--max-size", "10MiB")
    document = json.loads(path.read_text())
    conditions = load_grant(path).policy.conditions
    described = {c.describe() for c in conditions}
    assert "key starts-with 'runs/42/'" in described
    assert "content-length-range 1..10485760" in described
    assert "success_action_status eq '201'" in described
    assert f"bucket eq {bucket!r}" in described
    assert document["fields"]["success_action_status"] == "201"  # a strict server needs both
    assert document["bucket"] == bucket and document["issued_at"].endswith("Z")
    lifetime = load_grant(path).policy.expiration - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=5, minutes=59) < lifetime <= dt.timedelta(hours=6)


def test_grant_file_is_private(make_grant: GrantMaker) -> None:
    assert make_grant().stat().st_mode & 0o777 == 0o600


def test_a_grant_uploads_with_plain_http_and_nothing_else(
    make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    grant = json.loads(make_grant("runs/9/").read_text())
    fields = {**grant["fields"], "key": "runs/9/plain.txt"}
    answer = requests.post(grant["url"], data=fields, files={"file": b"plain"}, timeout=10)
    assert answer.status_code == 201
    assert objects(s3, bucket) == {"runs/9/plain.txt": b"plain"}


@pytest.mark.parametrize(
    ("bucket", "region", "endpoint", "url"),
    [
        ("b", "eu-west-1", None, "https://b.s3.eu-west-1.amazonaws.com/"),
        ("b", "us-east-1", None, "https://b.s3.us-east-1.amazonaws.com/"),
        ("my.b", "eu-west-1", None, "https://s3.eu-west-1.amazonaws.com/my.b/"),
        ("b", "cn-north-1", None, "https://b.s3.cn-north-1.amazonaws.com.cn/"),
        ("b", "us-east-1", "http://127.0.0.1:9000/", "http://127.0.0.1:9000/b/"),
    ],
)
def test_url_is_regional_so_no_upload_is_redirected(
    bucket: str, region: str, endpoint: str | None, url: str
) -> None:
    assert regional_url(bucket, region, endpoint) == url


def test_the_buckets_region_is_looked_up(moto_store: Store) -> None:
    """moto only: the local RGW has one zonegroup and refuses other location constraints."""
    s3 = s3_client(moto_store)
    s3.create_bucket(
        Bucket="in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    assert bucket_region(s3, "in-ireland") == "eu-west-1"


def test_refreshable_credentials_report_their_expiry() -> None:
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    credentials = RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": "AKIA",
            "secret_key": "secret",
            "token": "token",
            "expiry_time": expiry.isoformat(),
        },
        refresh_using=lambda: {},
        method="sts-assume-role",
    )
    found = credential_life(credentials)
    assert found.temporary and found.method == "sts-assume-role"
    assert found.expires_at is not None and abs((found.expires_at - expiry).total_seconds()) < 1


def test_cli_refuses_bad_input_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["grant", "--bucket", "b", "--prefix", "p/", "--expires", "6", "-o", str(tmp_path / "g")]
    assert main(argv) == ExitCode.INPUT
    err = capsys.readouterr().err.strip()
    assert err.endswith("--expires '6' is not a duration: write it like 90s, 30m, 1h30m, 2d or 1w")
    assert "\n" not in err
    assert not (tmp_path / "g").exists()


def test_cli_without_credentials_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    argv = ["grant", "--bucket", "b", "--prefix", "p/", "--expires", "1h", "--region", "us-east-1"]
    assert main(argv) == ExitCode.CREDENTIALS
    assert "no AWS credentials found" in capsys.readouterr().err


def test_cli_warns_when_a_session_token_has_no_known_expiry(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: Store,
    bucket: str,
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    argv = ["grant", "--bucket", bucket, "--prefix", "p/", "--expires", "1h"]
    assert main([*argv, "--endpoint-url", store.endpoint, "--region", "us-east-1"]) == 0
    captured = capsys.readouterr()
    assert "the grant stops working when that token expires" in captured.err
    assert "x-amz-security-token" in json.loads(captured.out)["fields"]


@pytest.mark.parametrize(
    ("template", "force", "expected"),
    [
        ("runs/42/", False, r"runs/42/"),
        (
            "runs/{uuid}/",
            False,
            r"runs/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/",
        ),
        ("runs/42", True, r"runs/42"),
    ],
)
def test_prefix_templates_expand(template: str, force: bool, expected: str) -> None:
    assert re.fullmatch(expected, expand_prefix(template, force=force))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("/", "names the whole bucket"),
        ("", "names the whole bucket"),
        ("runs/42", "has no trailing /, so it also matches runs/420/ and runs/42-other"),
        ("runs/{date}/", "has a placeholder other than {uuid}"),
    ],
)
def test_unsafe_prefixes_are_refused(template: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        expand_prefix(template)


@pytest.mark.parametrize(
    "template", ["runs/a.postbox-parts/", "runs/.postbox-parts/b/", "runs/a.", "runs/a.postbox-"]
)
def test_a_prefix_holding_the_parts_namespace_is_refused(
    template: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A holder of a grant for runs/a.postbox-parts/ could write runs/a.postbox-parts/evil/
    V/manifest.json, which names the file runs/aevil: assemble (the operator's credentials)
    would join it outside the grant's prefix. Such a prefix is refused, forced or not, and so is
    one a key under it could continue into .postbox-parts/ (runs/a. makes runs/a.postbox-parts/)."""
    argv = ["grant", "--bucket", "b", "--prefix", template, "--expires", "1h", "--force-prefix"]
    assert main([*argv, "--region", "us-east-1"]) == ExitCode.INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--prefix {template!r} holds .postbox-parts/" in err[0]
    assert expand_prefix("runs/a.b/") == "runs/a.b/"


def test_each_grant_from_a_uuid_template_gets_its_own_prefix(make_grant: GrantMaker) -> None:
    first = load_grant(make_grant("runs/{uuid}/")).prefix
    second = load_grant(make_grant("runs/{uuid}/")).prefix
    assert first != second and first.startswith("runs/") and second.startswith("runs/")


def test_cli_refuses_a_non_loopback_http_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["grant", "--bucket", "b", "--prefix", "p/", "--expires", "1h", "--region", "us-east-1"]
    assert main([*argv, "--endpoint-url", "http://192.0.2.1:9000"]) == ExitCode.INPUT
    assert "plain http to 192.0.2.1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        (["--sse", "AES256"], {"x-amz-server-side-encryption": "AES256"}),
        (
            ["--sse", "aws:kms", "--kms-key-id", "alias/results"],
            {
                "x-amz-server-side-encryption": "aws:kms",
                "x-amz-server-side-encryption-aws-kms-key-id": "alias/results",
            },
        ),
    ],
)
def test_server_side_encryption_is_a_signed_condition(
    make_grant: GrantMaker, options: list[str], fields: dict[str, str]
) -> None:
    grant = load_grant(make_grant("runs/1/", "1h", *options))
    described = {c.describe() for c in grant.policy.conditions}
    for name, value in fields.items():
        assert grant.fields[name] == value
        assert f"{name} eq {value!r}" in described


def test_kms_key_without_kms_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["grant", "--bucket", "b", "--prefix", "p/", "--expires", "1h", "--region", "us-east-1"]
    assert main([*argv, "--sse", "AES256", "--kms-key-id", "k"]) == ExitCode.INPUT
    assert "--kms-key-id needs --sse aws:kms" in capsys.readouterr().err


def test_a_grant_for_a_bucket_that_does_not_exist_is_refused_even_with_region(
    store: Store, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --region (or --endpoint-url) nothing looked the bucket up: a misspelt one was signed
    and every VM's upload refused. --no-check still signs offline."""
    argv = ["grant", "--bucket", "no-such-bucket-x1", "--prefix", "p/", "--expires", "1h"]
    argv += ["--endpoint-url", store.endpoint, "--region", store.region]
    assert main(argv) == ExitCode.STORE
    assert "bucket no-such-bucket-x1 does not exist: create it or fix --bucket" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--no-check"]) == 0
    assert json.loads(capsys.readouterr().out)["bucket"] == "no-such-bucket-x1"


def test_a_grant_for_another_region_than_the_buckets_is_refused(
    moto_store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """moto names the bucket's region in x-amz-bucket-region, as S3 does."""
    s3 = s3_client(moto_store)
    s3.create_bucket(Bucket="in-us-east-1")
    argv = ["grant", "--bucket", "in-us-east-1", "--prefix", "p/", "--expires", "1h"]
    argv += ["--endpoint-url", moto_store.endpoint, "--region", "eu-west-1"]
    assert main(argv) == ExitCode.STORE
    assert "bucket in-us-east-1 is in us-east-1, not eu-west-1: fix --region" in (
        capsys.readouterr().err
    )
