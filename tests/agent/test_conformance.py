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

from agent.errors import ConfigError, PreflightError, RejectedUploadError
from agent.grant import AnyGrant, parse_grant
from agent.uploader import Uploader
from demo.stores import Store, s3_client
from issuer.cli import main as issuer_main
from tests.faultproxy import fault_proxy
from tests.signing import expiration, sign_v2, sign_v4

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
        uploader = Uploader(requests.Session())
        if row.refused_locally:
            with pytest.raises(PreflightError):
                uploader.send_once(routed, path, row.key)
            assert proxy.requests == [], "refused locally, yet something was sent"
        elif row.rgw < 300:
            receipt = uploader.send_once(routed, path, row.key)
            body = s3.get_object(Bucket=rgw_bucket, Key=row.key)["Body"].read()
            assert body == b"a" * row.size and receipt.etag == receipt.md5
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
    receipt = Uploader(requests.Session()).upload(grant, path, "ok/x")
    assert receipt.status == int(success_status or 204)
    assert s3.get_object(Bucket=bucket, Key="ok/x")["Body"].read() == b"done"


# Grants the store would refuse whatever file they carry: judged when the grant is loaded (exit 78
# at start, "not taken, the current one stays" on rotation). Each row's grant is signed by the
# test itself (tests/signing.py), so its one flaw is the only thing wrong with it. Run against
# both servers: RGW enforces POST policies as S3 does; moto checks none of it (it stores every
# form below; its column says so), so conformance is judged on RGW's answers.
SIGNED_FIELDS = ("x-amz-signature", "x-amz-credential", "x-amz-date", "x-amz-algorithm")


@dataclass(frozen=True)
class GrantRow:
    rule: str
    taken: bool  # the agent takes the grant at load
    rgw: int  # RGW's status for a form under the grant, sent straight to it
    moto: int
    version: int = 4  # how it is signed
    expiration: str = "%Y-%m-%dT%H:%M:%SZ"
    bucket: str = "="  # the bucket condition: "=" the URL's bucket, "" none, else that name
    conditions: tuple[Any, ...] = ()  # more conditions, signed
    fields: tuple[tuple[str, str], ...] = ()  # more form fields, or changed ones
    drop: str = ""  # a form field left out after signing
    exception: str = ""  # why the agent and RGW may disagree on this row


REDIRECT = "http://127.0.0.1:9/done"
GRANT_TABLE = [
    #        rule                                  agent  RGW  moto
    GrantRow("as signed, SigV4",                   True,  204, 204),
    GrantRow("as signed, SigV2",                   True,  204, 204, version=2),
    GrantRow("SigV4 without x-amz-signature",      False, 400, 204, drop="x-amz-signature"),
    GrantRow("SigV4 without x-amz-credential",     False, 400, 204, drop="x-amz-credential"),
    GrantRow("SigV4 without x-amz-date",           False, 400, 204, drop="x-amz-date"),
    GrantRow("SigV4 without x-amz-algorithm",      False, 400, 204, drop="x-amz-algorithm"),
    GrantRow("SigV2 without signature",            False, 400, 204, version=2, drop="signature"),
    GrantRow("x-amz-credential breaks its condition", False, 403, 204,
             fields=(("x-amz-credential", "AKIAOTHER/20261124/us-east-1/s3/aws4_request"),)),
    GrantRow("expiration with .000Z",              True,  204, 204,
             expiration="%Y-%m-%dT%H:%M:%S.000Z"),
    GrantRow("expiration with +00:00",             False, 400, 204,
             expiration="%Y-%m-%dT%H:%M:%S+00:00"),
    GrantRow("expiration without a zone",          False, 204, 204, expiration="%Y-%m-%dT%H:%M:%S",
             exception="RGW reads it as UTC; Amazon S3 wants the Z, and the agent follows S3"),
    GrantRow("no bucket condition",                False, 403, 204, bucket=""),
    GrantRow("bucket condition names another",     False, 403, 204, bucket="another-bucket"),
    GrantRow("success_action_redirect",            True,  303, 303,
             conditions=({"success_action_redirect": REDIRECT},),
             fields=(("success_action_redirect", REDIRECT),)),
    GrantRow("redirect (the older field)",         True,  204, 204,
             conditions=({"redirect": REDIRECT},), fields=(("redirect", REDIRECT),)),
]  # fmt: skip


def signed_grant(row: GrantRow, store: Store, bucket: str) -> Grant:
    conditions: list[Any] = [["starts-with", "$key", PREFIX], *row.conditions]
    named = bucket if row.bucket == "=" else row.bucket
    if named:
        conditions.insert(0, {"bucket": named})
    document = {"expiration": expiration(form=row.expiration), "conditions": conditions}
    signer = sign_v4 if row.version == 4 else sign_v2
    fields = {"key": PREFIX + "${filename}", **dict(row.fields), **signer(store, document)}
    fields.update(dict(row.fields))  # a changed field stays changed after signing
    fields.pop(row.drop, None)
    return {"url": f"{store.endpoint}/{bucket}/", "fields": fields}


def verdict(document: Grant) -> tuple[AnyGrant | None, str]:
    """The grant as the agent takes it, or the one line it refuses it with."""
    try:
        return parse_grant(document), ""
    except ConfigError as refusal:
        return None, refusal.message


@pytest.mark.parametrize("row", GRANT_TABLE, ids=[row.rule for row in GRANT_TABLE])
def test_a_grant_is_taken_exactly_when_the_store_would_accept_its_forms(
    row: GrantRow, store: Store, bucket: str, tmp_path: Path
) -> None:
    grant = signed_grant(row, store, bucket)
    key = f"{PREFIX}{row.rule.replace(' ', '-')}"

    # 1. The store's own answer to a form under the grant, sent straight to it.
    fields = {**grant["fields"], "key": key}
    answer = requests.post(
        grant["url"], data=fields, files={"file": ("f", b"body")}, allow_redirects=False, timeout=30
    )
    assert answer.status_code == getattr(row, store.kind), answer.text

    # 2. The agent's verdict when it loads the grant; taken, it sends a file as the store said.
    taken, refusal = verdict(grant)
    assert (taken is not None) == row.taken, refusal or f"taken; {store.kind}: {answer.status_code}"
    if taken is not None:
        path = tmp_path / "file"
        path.write_bytes(b"sent by the agent")
        receipt = Uploader(requests.Session()).upload(taken, path, key)
        assert receipt.status == answer.status_code
        assert (
            s3_client(store).get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()
        )
    else:
        assert "\n" not in refusal and refusal.endswith("write it with postbox-issuer grant")

    # 3. Conformance, on the server that enforces policies.
    if store.kind == "rgw":
        store_says_no = answer.status_code >= 400
        assert (not row.taken) == store_says_no or row.exception
        assert not row.exception or (not row.taken) != store_says_no
