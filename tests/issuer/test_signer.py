"""The signing context: the credentials' lifetime against the one asked for, and plain http
for loopback only."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from issuer.aws import CredentialLife
from issuer.errors import CredentialsError, ExitCode, InputError
from issuer.signer import Signer, allowed_lifetime, ensure_private_transport

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.timezone.utc)


def life(expires_in: float | None, token: bool = True) -> CredentialLife:
    expires_at = NOW + dt.timedelta(seconds=expires_in) if expires_in is not None else None
    return CredentialLife("assume-role", token, expires_at)


def test_expiry_beyond_the_credentials_is_refused_in_one_line() -> None:
    with pytest.raises(CredentialsError) as caught:
        allowed_lifetime(6 * 3600, life(3600), NOW)
    assert caught.value.message == (
        "--expires 6h outlives the assume-role credentials, which expire in 1h: shorten "
        "--expires, pass --cap-to-credentials, or sign with longer-lived credentials"
    )
    assert caught.value.exit_code == ExitCode.CREDENTIALS


def test_expiry_can_be_capped_to_the_credentials(caplog: pytest.LogCaptureFixture) -> None:
    assert allowed_lifetime(6 * 3600, life(3600), NOW, cap=True) == 3600
    assert "grant expiry capped to 1h" in caplog.text
    assert allowed_lifetime(1800, life(3600), NOW) == 1800


def test_unknown_token_expiry_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert allowed_lifetime(3600, life(None), NOW) == 3600
    assert "the grant stops working when that token expires" in caplog.text
    caplog.clear()
    allowed_lifetime(3600, life(None, token=False), NOW)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        ("http://127.0.0.1:9000", False),
        ("http://localhost:9000", False),
        ("http://[::1]:9000", False),
        ("https://minio.example.internal", False),
        ("http://minio.example.internal:9000", True),
        ("http://10.0.0.5:9000", True),
    ],
)
def test_plain_http_is_for_loopback_only(endpoint: str, refused: bool) -> None:
    if refused:
        with pytest.raises(InputError, match=r"plain http .* use https://"):
            ensure_private_transport(endpoint)
    else:
        ensure_private_transport(endpoint)


def test_a_signer_for_a_plain_http_endpoint_elsewhere_is_refused_before_any_credential() -> None:
    with pytest.raises(InputError, match=r"plain http to 192\.0\.2\.1"):
        Signer(endpoint_url="http://192.0.2.1:9000", profile="no-such-profile")
