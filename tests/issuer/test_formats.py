"""`postbox-issuer grant --format curl|html`: the command and the page, used as people would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from demo.stores import Store, s3_client
from issuer.cli import main
from tests.conftest import require_tool


def grant_as(form: str, store: Store, bucket: str, out: Path, *options: str) -> str:
    argv = ["grant", "--bucket", bucket, "--prefix", "shared/", "--expires", "10m", *options]
    argv += ["--endpoint-url", store.endpoint, "--region", store.region]
    assert main([*argv, "--format", form, "-o", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    return out.read_text()


def run_curl(command: str, curl: str, data: Path) -> subprocess.CompletedProcess[str]:
    """The printed command, as a user pastes it, with FILE set."""
    return subprocess.run(
        ["bash", "-c", command.replace("curl ", f"{curl} ", 1)],
        env={**os.environ, "FILE": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", ["report 1.csv", "a;b,c.csv", 'q"uote\\d.csv', "type=x.csv"])
def test_curl_command_uploads_one_file_under_its_name(
    name: str, store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """`;` and `,` separate options and files in curl's -F syntax: the path is quoted for it, and
    the key is the file's name as set by the command, not S3's ${filename}."""
    curl = require_tool("curl")
    command = grant_as("curl", store, bucket, tmp_path / "upload.sh")
    assert " -L" not in command and "--location" not in command
    data = tmp_path / name
    data.write_bytes(b"a,b\n1,2\n")
    result = run_curl(command, curl, data)
    assert result.returncode == 0, result.stderr + result.stdout
    assert s3.get_object(Bucket=bucket, Key=f"shared/{name}")["Body"].read() == b"a,b\n1,2\n"


def test_curl_shows_the_stores_refusal(rgw_store: Store, tmp_path: Path) -> None:
    """RGW: a file over the grant's size range is refused (moto would store it); curl exits
    non-zero and prints S3's error document."""
    curl = require_tool("curl")
    s3_client(rgw_store).create_bucket(Bucket="curl-refusal")
    command = grant_as("curl", rgw_store, "curl-refusal", tmp_path / "up.sh", "--max-size", "4")
    data = tmp_path / "big.bin"
    data.write_bytes(b"12345")
    result = run_curl(command, curl, data)
    assert result.returncode != 0
    assert "EntityTooLarge" in result.stdout


def test_curl_without_file_says_what_to_set(store: Store, bucket: str, tmp_path: Path) -> None:
    command = grant_as("curl", store, bucket, tmp_path / "upload.sh")
    env = {k: v for k, v in os.environ.items() if k != "FILE"}
    result = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "set FILE to the path of the file to upload" in result.stderr


def test_html_page_embeds_the_grant_without_breaking_out_of_its_script(
    store: Store, bucket: str, tmp_path: Path
) -> None:
    page = grant_as("html", store, bucket, tmp_path / "upload.html", "--note", "</script><b>x")
    assert "</script><b>x" not in page
    assert "\\u003c/script>\\u003cb>x" in page
    assert page.count("</script>") == 2
