"""`postbox-issuer url get|put`: presigned URLs, used with plain HTTP against both servers."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from demo.stores import Store, s3_client
from issuer.cli import main
from issuer.errors import ExitCode


def url(capsys: pytest.CaptureFixture[str], store: Store, *argv: str) -> str:
    options = ["--endpoint-url", store.endpoint, "--region", store.region]
    assert main(["url", *argv, *options]) == 0
    return capsys.readouterr().out.strip()


def test_put_then_get_through_presigned_urls(
    capsys: pytest.CaptureFixture[str], store: Store, s3: Any, bucket: str
) -> None:
    key = "shared/report 1+2.csv"
    put = url(capsys, store, "put", "--bucket", bucket, "--key", key, "--expires", "10m")
    assert requests.put(put, data=b"a,b\n1,2\n", timeout=10).status_code == 200
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"a,b\n1,2\n"
    get = url(capsys, store, "get", "--bucket", bucket, "--key", key, "--expires", "10m")
    answer = requests.get(get, timeout=10)
    assert (answer.status_code, answer.content) == (200, b"a,b\n1,2\n")
    assert parse_qs(urlsplit(get).query)["X-Amz-Expires"] == ["600"]


def test_a_get_url_reads_only_its_own_key(
    capsys: pytest.CaptureFixture[str], rgw_store: Store
) -> None:
    """RGW: the signature covers the path, so another key with the same query is refused.
    (moto does not check presigned signatures.)"""
    s3 = s3_client(rgw_store)
    s3.create_bucket(Bucket="only-own")
    s3.put_object(Bucket="only-own", Key="a.txt", Body=b"a")
    s3.put_object(Bucket="only-own", Key="b.txt", Body=b"b")
    get = url(capsys, rgw_store, "get", "--bucket", "only-own", "--key", "a.txt", "--expires", "1h")
    assert requests.get(get, timeout=10).content == b"a"
    assert requests.get(get.replace("/a.txt?", "/b.txt?"), timeout=10).status_code == 403


def test_an_expired_url_is_refused(capsys: pytest.CaptureFixture[str], rgw_store: Store) -> None:
    """RGW only: moto serves a presigned URL after its X-Amz-Expires has passed."""
    s3 = s3_client(rgw_store)
    s3.create_bucket(Bucket="expired-urls")
    s3.put_object(Bucket="expired-urls", Key="k", Body=b"x")
    get = url(capsys, rgw_store, "get", "--bucket", "expired-urls", "--key", "k", "--expires", "1s")
    time.sleep(2.5)
    assert requests.get(get, timeout=10).status_code == 403


@pytest.mark.parametrize(
    ("bucket", "host", "path"),
    [
        ("results", "results.s3.eu-west-1.amazonaws.com", "/a/b.txt"),
        ("my.results", "s3.eu-west-1.amazonaws.com", "/my.results/a/b.txt"),
    ],
)
def test_urls_are_signed_for_the_regional_host(
    capsys: pytest.CaptureFixture[str], bucket: str, host: str, path: str
) -> None:
    """Signing needs no network (--no-check: the bucket is not asked whether it exists): the
    URL names the regional endpoint, not s3.amazonaws.com."""
    argv = ["url", "get", "--bucket", bucket, "--key", "a/b.txt", "--expires", "1h"]
    assert main([*argv, "--region", "eu-west-1", "--no-check"]) == 0
    signed = urlsplit(capsys.readouterr().out.strip())
    assert (signed.scheme, signed.netloc, signed.path) == ("https", host, path)


def test_more_than_seven_days_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["url", "get", "--bucket", "b", "--key", "k", "--expires", "8d", "--region", "eu-west-1"]
    assert main(argv) == ExitCode.INPUT
    assert "over 7d" in capsys.readouterr().err
