"""`postbox-issuer inspect`: any grant in plain words, offline, judged by the agent's own rules."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from demo.stores import Store
from issuer.cli import main
from issuer.errors import ExitCode
from tests.conftest import GrantMaker


@pytest.fixture
def store(moto_store: Store) -> Store:
    """inspect asks no server; the grants are signed against moto's."""
    return moto_store


def inspect(capsys: pytest.CaptureFixture[str], grant: Path, *options: str) -> str:
    assert main(["inspect", str(grant), *options]) == 0
    return capsys.readouterr().out


def test_a_post_grant_in_plain_words_and_as_json(
    make_grant: GrantMaker, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = make_grant("runs/1/", "1h30m", "--max-size", "1GiB", "--sse", "AES256")
    text = inspect(capsys, grant)
    assert f"(bucket {bucket})" in text
    assert "keys       under prefix runs/1/\n" in text
    assert "sizes      0 B to 1GiB per file\n" in text
    assert (
        "in parts   files up to about 9.8 TiB (10,000 parts), joined by postbox-issuer assemble"
        in text
    )
    assert "encryption AES256 required\n" in text
    assert "renews     no\n" in text
    assert (
        "allows     whoever holds it may upload files of 0 B to 1GiB under prefix runs/1/" in text
    )
    facts = json.loads(inspect(capsys, grant, "--format", "json"))
    assert {k: facts[k] for k in ("kind", "bucket", "prefix", "min_size", "max_size")} == {
        "kind": "post",
        "bucket": bucket,
        "prefix": "runs/1/",
        "min_size": 0,
        "max_size": 1024**3,
    }
    assert 5300 < facts["seconds_left"] <= 5400 and not facts["expired"]
    document = json.loads(grant.read_text())
    for secret in (document["fields"]["policy"], document["fields"]["x-amz-signature"]):
        assert secret not in text and secret not in json.dumps(facts)


def test_an_expired_grant_says_so_and_exits_0(
    make_grant: GrantMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = make_grant("runs/1/", "1s")
    time.sleep(1.5)  # past its one second by any clock: not a race
    text = inspect(capsys, grant)
    assert "ago)\n" in text and "allows     nothing any more" in text


def test_temporary_credentials_and_a_renewal_url_are_named(
    store: Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
    grant = tmp_path / "grant.json"
    argv = ["renew", "--bucket", bucket, "--prefix", "fleet/", "--expires", "6h"]
    argv += ["--publish", f"s3://{bucket}/grants/fleet.json", "--renew-expires", "2d"]
    assert (
        main([*argv, "--endpoint-url", store.endpoint, "--region", store.region, "-o", str(grant)])
        == 0
    )
    capsys.readouterr()
    text = inspect(capsys, grant)
    assert "temporary credentials: it stops working when their session token expires" in text
    assert "renews     from a URL that works until 20" in text
    assert "a-session-token" not in text


def test_a_put_grant_names_its_one_object(
    put_grant: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    text = inspect(capsys, put_grant("shared/report.csv"))
    assert "a presigned PUT URL" in text and "as the one object shared/report.csv" in text


def test_a_grant_the_agent_would_refuse_is_refused_in_one_line(
    make_grant: GrantMaker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(make_grant().read_text())
    document["fields"]["policy"] = "bm90IGpzb24="  # base64 of "not json"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    assert main(["inspect", str(broken)]) == ExitCode.INPUT
    error = capsys.readouterr().err
    assert "has an unreadable policy" in error and len(error.splitlines()) == 1


def test_a_note_cannot_drive_the_terminal(
    make_grant: GrantMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """The note is the one free text in a grant: an escape sequence in it is shown, not run."""
    text = inspect(capsys, make_grant("runs/1/", "1h", "--note", "clear\x1b[2Jscreen"))
    assert "\x1b" not in text and "note       clear" in text


def test_a_missing_grant_file_is_named_as_the_user_gave_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`inspect` takes the file as an argument: the error names no `--grant` option it lacks."""
    assert main(["inspect", str(tmp_path / "missing.json")]) == ExitCode.INPUT
    error = capsys.readouterr().err
    assert f"the grant file {tmp_path / 'missing.json'} cannot be read" in error
    assert "--grant" not in error and len(error.splitlines()) == 1
