from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError, ExitCode, GrantExpired
from agent.grant import load_grant


def policy(conditions: list[Any], expiration: str = "2030-01-01T00:00:00Z") -> str:
    document = {"expiration": expiration, "conditions": conditions}
    return base64.b64encode(json.dumps(document).encode()).decode()


GOOD = {
    "url": "https://b.s3.eu-west-1.amazonaws.com/",
    "fields": {
        "key": "p/${filename}",
        "policy": policy([{"bucket": "b"}, ["starts-with", "$key", "p/"]]),
    },
}


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "grant.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_prefix_and_bucket_come_from_the_signed_policy(tmp_path: Path) -> None:
    document = {**GOOD, "bucket": "unsigned-and-ignored"}
    document["fields"] = {**GOOD["fields"], "key": "elsewhere/${filename}"}
    grant = load_grant(write(tmp_path, document))
    assert (grant.prefix, grant.bucket) == ("p/", "b")
    assert grant.form("p/x.txt")["key"] == "p/x.txt"
    assert "policy" not in repr(grant)


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
    document["fields"]["policy"] = policy([["starts-with", "$key", "p/"]], "2020-01-01T00:00:00Z")
    grant = load_grant(write(tmp_path, document))
    with pytest.raises(GrantExpired) as caught:
        grant.ensure_alive(dt.datetime.now(dt.timezone.utc))
    assert caught.value.exit_code == ExitCode.EXPIRED
