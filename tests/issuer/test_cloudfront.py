"""`postbox-issuer cloudfront-url`: signatures checked with the public key, policies decoded."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from issuer.cli import main
from issuer.errors import ExitCode

URL = "https://d111111abcdef8.cloudfront.net/runs/42/report.csv"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
    path = tmp_path / "private_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


def sign(capsys: pytest.CaptureFixture[str], key_file: Path, *options: str) -> dict[str, str]:
    argv = ["cloudfront-url", "--url", URL, "--key-pair-id", "K2JCJMDEHXQW5F"]
    assert main([*argv, "--private-key", str(key_file), *options]) == 0
    signed = capsys.readouterr().out.strip()
    assert signed.startswith(URL + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(signed).query, keep_blank_values=True).items()}


def cloudfront_b64decode(text: str) -> bytes:
    """CloudFront's alphabet: - for +, _ for =, ~ for /."""
    assert re.fullmatch(r"[A-Za-z0-9\-_~]+", text), "not CloudFront's URL-safe alphabet"
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def canned_policy(url: str, expires: int) -> bytes:
    """The canned policy CloudFront rebuilds from a URL and its Expires, byte for byte."""
    statement = {"Resource": url, "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
    return json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()


def verify(key: rsa.RSAPrivateKey, signature: str, policy: bytes) -> None:
    sha1 = hashes.SHA1()  # noqa: S303  (CloudFront's protocol for signed URLs)
    key.public_key().verify(cloudfront_b64decode(signature), policy, padding.PKCS1v15(), sha1)


def test_canned_policy_url_verifies_with_the_public_key(
    capsys: pytest.CaptureFixture[str], key_file: Path, key: rsa.RSAPrivateKey
) -> None:
    params = sign(capsys, key_file, "--expires", "2h")
    assert set(params) == {"Expires", "Signature", "Key-Pair-Id"}
    assert params["Key-Pair-Id"] == "K2JCJMDEHXQW5F"
    expires = int(params["Expires"])
    assert abs(expires - (time.time() + 7200)) < 5
    verify(key, params["Signature"], canned_policy(URL, expires))


def test_custom_policy_carries_start_ip_range_and_wildcard(
    capsys: pytest.CaptureFixture[str], key_file: Path, key: rsa.RSAPrivateKey
) -> None:
    params = sign(
        capsys, key_file, "--expires", "1d", "--not-before", "2026-11-24T09:00:00Z",
        "--ip", "192.0.2.7/24", "--resource", "https://d111111abcdef8.cloudfront.net/runs/42/*",
    )  # fmt: skip
    assert set(params) == {"Policy", "Signature", "Key-Pair-Id"}
    policy = cloudfront_b64decode(params["Policy"])
    verify(key, params["Signature"], policy)
    (statement,) = json.loads(policy)["Statement"]
    assert statement["Resource"] == "https://d111111abcdef8.cloudfront.net/runs/42/*"
    condition = statement["Condition"]
    assert condition["DateGreaterThan"]["AWS:EpochTime"] == 1795510800  # 2026-11-24T09:00:00Z
    assert condition["IpAddress"]["AWS:SourceIp"] == "192.0.2.0/24"
    assert abs(condition["DateLessThan"]["AWS:EpochTime"] - (time.time() + 86400)) < 5


def test_a_tampered_url_does_not_verify(
    capsys: pytest.CaptureFixture[str], key_file: Path, key: rsa.RSAPrivateKey
) -> None:
    params = sign(capsys, key_file)
    with pytest.raises(InvalidSignature):
        verify(
            key, params["Signature"], canned_policy(URL.replace("42", "43"), int(params["Expires"]))
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ip", "not-an-ip"], "is not an address range"),
        (["--not-before", "tomorrow"], "is not a time"),
        (["--resource", "runs/*"], "must be a URL pattern"),
        (["--not-before", "2999-01-01T00:00:00Z"], "is not before the expiry"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], key_file: Path, options: list[str], message: str
) -> None:
    argv = ["cloudfront-url", "--url", URL, "--key-pair-id", "K", "--private-key", str(key_file)]
    assert main([*argv, *options]) == ExitCode.INPUT
    assert message in capsys.readouterr().err


def test_a_key_that_is_not_rsa_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    argv = ["cloudfront-url", "--url", URL, "--key-pair-id", "K", "--private-key", str(path)]
    assert main(argv) == ExitCode.INPUT
    assert "is not an RSA key" in capsys.readouterr().err
