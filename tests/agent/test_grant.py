from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from agent.deadline import Deadline
from agent.errors import ConfigError, ExitCode, GrantExpired
from agent.grant import PutGrant, load_grant
from tests.conftest import require_root


def policy(conditions: list[Any], expiration: str = "2030-01-01T00:00:00Z") -> str:
    document = {"expiration": expiration, "conditions": conditions}
    return base64.b64encode(json.dumps(document).encode()).decode()


SIGV4 = {
    "x-amz-algorithm": "AWS4-HMAC-SHA256",
    "x-amz-credential": "AKIAEXAMPLE/20261124/eu-west-1/s3/aws4_request",
    "x-amz-date": "20261124T180000Z",
    "x-amz-signature": "0" * 64,
}
GOOD: dict[str, Any] = {
    "url": "https://b.s3.eu-west-1.amazonaws.com/",
    "fields": {
        "key": "p/${filename}",
        **SIGV4,
        "policy": policy([{"bucket": "b"}, ["starts-with", "$key", "p/"]]),
    },
}


def changed(url: str = GOOD["url"], drop: str = "", conditions: Any = None, **fields: str) -> Any:
    """GOOD with another URL, a field dropped, other fields, or another policy."""
    new = {k: v for k, v in {**GOOD["fields"], **fields}.items() if k != drop}
    if conditions is not None:
        new["policy"] = policy(conditions)
    return {"url": url, "fields": new}


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "grant.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    path.chmod(0o600)
    return path


def test_prefix_and_bucket_come_from_the_signed_policy(tmp_path: Path) -> None:
    document = {**GOOD, "bucket": "unsigned-and-ignored"}
    document["fields"] = {**GOOD["fields"], "key": "elsewhere/${filename}"}
    grant = load_grant(write(tmp_path, document))
    assert (grant.prefix, grant.bucket) == ("p/", "b")
    assert grant.seconds_left(dt.datetime(2029, 12, 31, 23, 59, 30, tzinfo=dt.timezone.utc)) == 30
    assert grant.form("p/x.txt")["key"] == "p/x.txt"
    assert "policy" not in repr(grant)


PREFIX_ONLY = [["starts-with", "$key", "p/"]]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (changed(drop="x-amz-signature"), "its SigV4 form has no x-amz-signature field"),
        (changed(drop="x-amz-date"), "its SigV4 form has no x-amz-date field"),
        (changed(**{"x-amz-algorithm": "AWS4-HMAC-SHA1"}), "x-amz-algorithm is 'AWS4-HMAC-SHA1'"),
        (changed(**{"x-amz-credential": "AKIA/2026/eu"}), "x-amz-credential is not KEY/"),
        (
            changed(**{"x-amz-date": "20261125T000000Z"}),
            "x-amz-date '20261125T000000Z' is not the day",
        ),
        (
            changed(conditions=[*PREFIX_ONLY, {"bucket": "b"}, {"x-amz-date": "20261124T170000Z"}]),
            "its x-amz-date field breaks the policy's own condition",
        ),
        (
            {
                "url": GOOD["url"],
                "fields": {"key": "p/x", "policy": GOOD["fields"]["policy"], "AWSAccessKeyId": "A"},
            },
            "its SigV2 (no x-amz-algorithm) form has no signature field",
        ),
        (changed(conditions=PREFIX_ONLY), 'its policy has no {"bucket": ...} condition'),
        (
            changed(url="https://other.s3.eu-west-1.amazonaws.com/"),
            "its policy allows bucket 'b', but its URL points at host 'other.s3",
        ),
        (
            changed(url="http://127.0.0.1:9000/other/"),
            "its policy allows bucket 'b', but its URL points at bucket 'other'",
        ),
    ],
)
def test_a_grant_s3_would_refuse_is_refused_at_load_in_one_line(
    tmp_path: Path, document: Any, message: str
) -> None:
    """What S3 checks before the signature, the agent checks at load (tests/agent/
    test_conformance.py has each store's own answer)."""
    with pytest.raises(ConfigError) as caught:
        load_grant(write(tmp_path, document))
    assert "would be refused by S3: " + message in caught.value.message
    assert "\n" not in caught.value.message and caught.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    "url",
    [
        "https://b.s3.eu-west-1.amazonaws.com/",
        "https://s3.eu-west-1.amazonaws.com/b/",
        "http://127.0.0.1:9000/b/",
        "https://b.storage.example.com/",
    ],
)
def test_path_style_virtual_hosted_and_custom_endpoints_are_taken(tmp_path: Path, url: str) -> None:
    assert load_grant(write(tmp_path, changed(url=url))).bucket == "b"


def test_a_sigv2_grant_is_taken(tmp_path: Path) -> None:
    fields = {"key": "p/x", "policy": GOOD["fields"]["policy"], "AWSAccessKeyId": "A"}
    fields["signature"] = "c2lnbmVk"
    assert load_grant(write(tmp_path, {"url": GOOD["url"], "fields": fields})).prefix == "p/"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "is not JSON"),
        ([], "is not a JSON object"),
        ({"fields": GOOD["fields"]}, 'has no "url"'),
        ({"url": "ftp://x/", "fields": GOOD["fields"]}, 'has no "url"'),
        ({"url": GOOD["url"], "fields": {"key": "k"}}, 'has no "policy"'),
        ({"url": GOOD["url"], "fields": {"policy": "x", "key": "k"}}, "unreadable policy"),
        (
            {"url": GOOD["url"], "fields": {"key": "k", "policy": policy([{"key": "k"}])}},
            "it allows only the key 'k'",
        ),
    ],
)
def test_bad_grants_are_refused_naming_the_file(
    tmp_path: Path, document: Any, message: str
) -> None:
    path = write(tmp_path, document)
    with pytest.raises(ConfigError, match=message) as caught:
        load_grant(path)
    assert str(path) in caught.value.message
    assert caught.value.exit_code == ExitCode.CONFIG


def test_missing_grant_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: write one with postbox-issuer grant"):
        load_grant(tmp_path / "nope.json")


def test_expired_grant_has_its_own_exit_code(tmp_path: Path) -> None:
    document = {**GOOD, "fields": {**GOOD["fields"]}}
    document["fields"]["policy"] = policy(
        [{"bucket": "b"}, ["starts-with", "$key", "p/"]], "2020-01-01T00:00:00Z"
    )
    grant = load_grant(write(tmp_path, document))
    with pytest.raises(GrantExpired) as caught:
        Deadline().ensure_alive(grant)
    assert caught.value.exit_code == ExitCode.EXPIRED


PUT_URL = (
    "https://b.s3.eu-west-1.amazonaws.com/runs/1/out%20put.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20261123%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20261123T120000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123"
)


def test_a_presigned_put_url_is_a_one_object_grant(tmp_path: Path) -> None:
    grant = load_grant(write(tmp_path, {"url": PUT_URL, "headers": {"Content-Type": "text/csv"}}))
    assert isinstance(grant, PutGrant)
    assert grant.single_key == "runs/1/out put.csv"
    assert grant.expiration == dt.datetime(2026, 11, 23, 13, tzinfo=dt.timezone.utc)
    assert grant.seconds_left(dt.datetime(2026, 11, 23, 12, 59, 30, tzinfo=dt.timezone.utc)) == 30
    assert grant.key_for(PurePosixPath("anything/at/all.txt")) == "runs/1/out put.csv"
    assert "abc123" not in repr(grant)


def test_a_path_style_put_url_takes_its_key_from_the_grant_when_the_path_ends_with_it(
    tmp_path: Path,
) -> None:
    url = PUT_URL.replace("https://b.s3.eu-west-1.amazonaws.com/", "http://127.0.0.1:9000/b/")
    assert load_grant(write(tmp_path, {"url": url, "key": "runs/1/out put.csv"})).single_key == (
        "runs/1/out put.csv"
    )
    assert load_grant(write(tmp_path, {"url": url, "key": "elsewhere"})).single_key == (
        "b/runs/1/out put.csv"
    )


def test_a_put_url_without_its_expiry_is_refused(tmp_path: Path) -> None:
    url = PUT_URL.replace("&X-Amz-Expires=3600", "")
    with pytest.raises(ConfigError, match="without a valid X-Amz-Date and X-Amz-Expires"):
        load_grant(write(tmp_path, {"url": url}))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_grant_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, GOOD)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"has mode {mode:04o}, readable by others: chmod 600"):
        load_grant(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_grant_is_read(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, GOOD)
    path.chmod(mode)
    assert load_grant(path).prefix == "p/"


def test_a_grant_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    require_root("giving a file to another user")
    path = write(tmp_path, GOOD)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to user 65534, not to the agent's user"):
        load_grant(path)


@pytest.mark.parametrize("kind", ["FIFO", "folder"])
def test_a_grant_path_that_is_not_a_regular_file_is_refused_without_blocking(
    tmp_path: Path, kind: str
) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the agent would hang at start (or
    at a rotation) and not honour SIGTERM. The load runs on a thread here, so a hang fails the
    test instead of stopping the suite."""
    path = tmp_path / "grant.json"
    if kind == "FIFO":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    said: list[BaseException] = []

    def load() -> None:
        try:
            load_grant(path)
        except BaseException as exc:
            said.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(10)
    if loader.is_alive() and kind == "FIFO":  # let the blocked open go, then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        loader.join(10)
        pytest.fail("loading the grant blocked")
    assert len(said) == 1 and isinstance(said[0], ConfigError)
    assert f"grant file {path} is a {kind}, not a regular file" in said[0].message
