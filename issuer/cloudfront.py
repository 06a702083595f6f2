"""CloudFront signed URLs: a canned policy (expiry only) or a custom one (start time, IP range,
wildcard resource), signed with the key group's RSA private key, as botocore's CloudFrontSigner
writes them.

CloudFront verifies RSA-SHA1 signatures (PKCS#1 v1.5) and uses its own URL-safe base64 alphabet
(`+` → `-`, `=` → `_`, `/` → `~`). No AWS credentials are involved: the private key is the secret.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from botocore.signers import CloudFrontSigner
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from issuer.errors import InputError


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InputError(f"--private-key {path} cannot be read ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(
            f"--private-key {path} is not an unencrypted PEM private key: give the key group's "
            "RSA key (openssl genrsa -out private_key.pem 2048)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InputError(f"--private-key {path} is not an RSA key: CloudFront signs with RSA only")
    return key


def signed_url(
    url: str,
    key_pair_id: str,
    key: rsa.RSAPrivateKey,
    expires_at: dt.datetime,
    *,
    not_before: Optional[dt.datetime] = None,
    ip_range: Optional[str] = None,
    resource: Optional[str] = None,
) -> str:
    """A canned-policy URL; a custom-policy one when a start, an IP range or a resource is set."""
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise InputError(f"--url {url!r} is not a URL: give one like https://d111.cloudfront.net/a")
    if not key_pair_id:
        raise InputError("--key-pair-id is empty: give the public key's ID in the key group")
    if not_before is not None and not_before >= expires_at:
        raise InputError("--not-before is not before the expiry: move it earlier")
    if ip_range is not None:
        try:
            ip_range = str(ipaddress.ip_network(ip_range, strict=False))
        except ValueError:
            raise InputError(
                f"--ip {ip_range!r} is not an address range like 192.0.2.0/24"
            ) from None
    if resource is not None and urlsplit(resource).scheme not in ("http", "https"):
        raise InputError(
            f"--resource {resource!r} must be a URL pattern like https://d111.cloudfront.net/*"
        )

    signer = CloudFrontSigner(key_pair_id, lambda message: _sign(key, message))
    if not_before is None and ip_range is None and resource is None:
        return str(signer.generate_presigned_url(url, date_less_than=expires_at))
    policy = signer.build_policy(resource or url, expires_at, not_before, ip_range)
    return str(signer.generate_presigned_url(url, policy=policy))


def _sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    # CloudFront verifies SHA-1 RSA signatures; this is its protocol, not our choice of hash.
    return key.sign(message, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303


def parse_time(text: str, option: str) -> dt.datetime:
    """An ISO 8601 time; without a zone, UTC."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{option} {text!r} is not a time: write it like 2026-11-24T09:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
