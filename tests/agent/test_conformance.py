"""The agent's preflight against a store that enforces POST policies: one row per rule of a grant.

Every row is run twice. First the form goes straight to Ceph RGW, bypassing the agent: the row
records RGW's answer. Then the agent's uploader sends the same file under the same key through a
counting proxy: where the row says the agent refuses locally, the proxy must see nothing; where it
sends, its outcome must be RGW's (stored byte for byte, or refused for good with RGW's status).
Conformance is the last check: the agent refuses locally exactly what the store would refuse or
store under another name; the two exceptions say why in their row. RGW only: moto refuses nothing.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from agent.errors import PreflightError, RejectedUploadError
from agent.grant import parse_grant
from agent.uploader import Uploader
from issuer.cli import main as issuer_main
from issuer.demo import s3_client
from issuer.localstore import Store
from tests.faultproxy import fault_proxy

Grant = dict[str, Any]
PREFIX = "ok/"


def same(grant: Grant) -> Grant:
    return grant


def with_fields(**changes: str) -> Callable[[Grant], Grant]:
    def change(grant: Grant) -> Grant:
        return {**grant, "fields": {**grant["fields"], **changes}}

    return change


def tampered_policy(grant: Grant) -> Grant:
    """The policy rewritten to allow every key: the signature no longer matches it."""
    policy = json.loads(base64.b64decode(grant["fields"]["policy"]))
    for condition in policy["conditions"]:
        if isinstance(condition, list) and condition[0] == "starts-with":
            condition[2] = ""
    encoded = base64.b64encode(json.dumps(policy).encode()).decode()
    return with_fields(policy=encoded)(grant)


def tampered_signature(grant: Grant) -> Grant:
    signature = grant["fields"]["x-amz-signature"]
    return with_fields(**{"x-amz-signature": signature[:-1] + "01"[signature[-1] == "0"]})(grant)


@dataclass(frozen=True)
class Row:
    rule: str
    key: str
    size: int  # the grant allows 2..100 bytes
    rgw: int  # RGW's status for the form sent straight to it
    refused_locally: bool  # the agent's preflight refuses it: nothing is sent
    change: Callable[[Grant], Grant] = same
    expires: str = "30m"
    exception: str = ""  # why the agent and RGW may disagree on this row


TABLE = [
    #   rule                             key                        size  RGW  local
    Row("key outside the prefix",        "no/a.txt",                  10, 403, True),
    Row("size below the range",          "ok/small",                   1, 400, True),
    Row("size of exactly min",           "ok/min",                     2, 201, False),
    Row("size of exactly max",           "ok/max",                   100, 201, False),
    Row("size above the range",          "ok/big",                   101, 400, True),
    Row("unsigned extra field",          "ok/extra",                  10, 403, True,
        with_fields(**{"x-amz-meta-extra": "1"})),
    Row("field contradicts an eq",       "ok/eq",                     10, 403, True,
        with_fields(success_action_status="200")),
    Row("tampered policy",               "ok/tampered-policy",        10, 403, False,
        tampered_policy, exception="only the store can check a signature: refused, not retried"),
    Row("tampered signature",            "ok/tampered-signature",     10, 403, False,
        tampered_signature, exception="only the store can check a signature: refused, not retried"),
    Row("expired policy",                "ok/late",                   10, 403, True, expires="1s"),
    Row("key of 1024 bytes",             PREFIX + "k" * 1021,          10, 201, False),
    Row("key of 1025 bytes",             PREFIX + "k" * 1022,          10, 201, True,
        exception="RGW stores it; Amazon S3 answers 400 KeyTooLongError, and the agent follows S3"),
    Row("key with spaces",               "ok/a b c.txt",               10, 201, False),
    Row("key with +",                    "ok/a+b.txt",                 10, 201, False),
    Row("key with %",                    "ok/100%25 done%.txt",        10, 201, False),
    Row("key with non-ASCII",            "ok/été/日本語.txt",           10, 201, False),
    Row("key with ${filename}",          "ok/${filename}",             10, 201, True),
]  # fmt: skip


@pytest.fixture(scope="module")
def rgw_bucket(rgw_store: Store) -> str:
    s3_client(rgw_store).create_bucket(Bucket="conformance")
    return "conformance"


def sign(store: Store, bucket: str, expires: str, path: Path) -> Grant:
    argv = ["grant", "--bucket", bucket, "--prefix", PREFIX, "--expires", expires]
    argv += ["--min-size", "2", "--max-size", "100", "--endpoint-url", store.endpoint]
    assert issuer_main([*argv, "--region", store.region, "-o", str(path)]) == 0
    return dict(json.loads(path.read_text()))


def post_directly(grant: Grant, key: str, body: bytes) -> tuple[int, str]:
    """The form as a browser would send it, with nothing of the agent's in the way."""
    fields = {**grant["fields"], "key": key}
    answer = requests.post(grant["url"], data=fields, files={"file": ("f.bin", body)}, timeout=30)
    return answer.status_code, answer.text


@pytest.mark.parametrize("row", TABLE, ids=[row.rule for row in TABLE])
def test_preflight_agrees_with_rgw(
    row: Row, rgw_store: Store, rgw_bucket: str, tmp_path: Path
) -> None:
    s3 = s3_client(rgw_store)
    grant = row.change(sign(rgw_store, rgw_bucket, row.expires, tmp_path / "grant.json"))
    if row.expires == "1s":
        time.sleep(2.5)

    # 1. RGW's own answer to the form, sent straight to it.
    status, text = post_directly(grant, row.key, b"r" * row.size)
    assert status == row.rgw, text
    stored_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=rgw_bucket).get("Contents", [])}
    renamed = status < 300 and row.key not in stored_keys  # ${filename} was substituted

    # 2. The agent's uploader, through a proxy that counts what reaches the store.
    path = tmp_path / "file"
    path.write_bytes(b"a" * row.size)
    with fault_proxy(rgw_store.endpoint) as proxy:
        routed = parse_grant({**grant, "url": f"{proxy.url}/{rgw_bucket}/"})
        uploader = Uploader(requests.Session(), seconds_left=lambda _: 3600)
        if row.refused_locally:
            with pytest.raises(PreflightError):
                uploader.send_once(routed, path, row.key)
            assert proxy.requests == [], "refused locally, yet something was sent"
        elif row.rgw < 300:
            receipt = uploader.send_once(routed, path, row.key)
            body = s3.get_object(Bucket=rgw_bucket, Key=row.key)["Body"].read()
            assert body == b"a" * row.size and receipt.etag == receipt.md5
            if len(row.key) < 1000:  # RGW 16.2 garbles the Location of a 1024-byte key
                assert receipt.location.endswith(f"/{rgw_bucket}/{row.key}")
        else:
            with pytest.raises(RejectedUploadError) as caught:
                uploader.send_once(routed, path, row.key)
            assert caught.value.status == row.rgw and proxy.posts == 1

    # 3. Conformance: refused locally exactly when the store refuses or renames, but for the
    #    rows that say why not.
    store_says_no = status >= 400 or renamed
    if not row.exception:
        assert row.refused_locally == store_says_no
    else:
        assert row.refused_locally != store_says_no


@pytest.mark.parametrize("success_status", ["200", "204", None])
def test_other_success_statuses_are_read_as_done(
    success_status: str | None, store: Store, bucket: str, tmp_path: Path
) -> None:
    """A grant may ask for 200 or 204 (or nothing: S3 answers 204); neither carries a body."""
    s3 = s3_client(store)
    fields = {"success_action_status": success_status} if success_status else {}
    conditions: list[Any] = [{"success_action_status": success_status}] if success_status else []
    post = s3.generate_presigned_post(
        Bucket=bucket, Key=PREFIX + "${filename}", Fields=fields, Conditions=conditions
    )
    grant = parse_grant({"url": f"{store.endpoint}/{bucket}/", "fields": post["fields"]})
    path = tmp_path / "file"
    path.write_bytes(b"done")
    receipt = Uploader(requests.Session(), seconds_left=lambda _: 3600).upload(grant, path, "ok/x")
    assert receipt.status == int(success_status or 204)
    assert s3.get_object(Bucket=bucket, Key="ok/x")["Body"].read() == b"done"
