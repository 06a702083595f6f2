"""Whose credentials sign, and for which bucket: the context every signed artefact is made in.

A `Signer` holds the operator's choices (profile, region, endpoint, whether to cap the expiry to
the credentials', whether to ask the store about the bucket); `Signer.open` turns them into a
`Signing`: a boto3 client on the bucket's own regional endpoint and the lifetime the credentials
allow. The grant, the GET/PUT URLs, the renewal URL and the wheelhouse URL are all signed in one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

from issuer import aws
from issuer.aws import CredentialLife
from issuer.errors import CredentialsError, InputError
from issuer.units import format_duration

if TYPE_CHECKING:  # boto3-stubs, a development dependency: types only
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signing:
    """A client for `bucket`'s region, and how long what it signs may live."""

    s3: S3Client
    bucket: str
    region: str
    expires_in: int
    endpoint_url: Optional[str] = None
    slow: Optional[S3Client] = None  # the same, waiting `slow_read_timeout` for an answer


@dataclass(frozen=True)
class Signer:
    profile: Optional[str] = None
    region: Optional[str] = None  # None: looked up from the bucket
    endpoint_url: Optional[str] = None  # an S3-compatible store instead of AWS
    cap_to_credentials: bool = False  # shorten the expiry to the credentials' instead of refusing
    check_bucket: bool = True  # ask the store whether the bucket is there, and in that region
    skip_check: str = "--no-check"  # the command's option that skips it ("": it has none)
    read_timeout: float = 60  # seconds an answer may take
    slow_read_timeout: Optional[float] = None  # ... for a second client, for slow calls
    connections: int = 10  # requests at once the client may make (assemble's copies)

    def __post_init__(self) -> None:
        if self.endpoint_url:
            ensure_private_transport(self.endpoint_url)

    def open(self, bucket: str, expires_in: int, now: dt.datetime) -> Signing:
        """The credentials, their lifetime against `expires_in`, and `bucket`'s region."""
        session = aws.session(self.profile, self.region)
        life = aws.credential_life(session.get_credentials())
        expires_in = allowed_lifetime(expires_in, life, now, cap=self.cap_to_credentials)
        region = self.region or session.region_name or "us-east-1"
        looked_up = not self.region and not self.endpoint_url
        if looked_up:  # the lookup is a check of its own: a missing bucket is refused there
            region = aws.bucket_region(aws.s3_client(session, region), bucket)
        s3 = aws.s3_client(
            session,
            region,
            self.endpoint_url,
            bucket,
            read_timeout=self.read_timeout,
            connections=self.connections,
        )
        if not looked_up and self.check_bucket:
            aws.check_bucket(s3, bucket, region, self.skip_check)
        slow = None
        if self.slow_read_timeout is not None:
            slow = aws.s3_client(
                session,
                region,
                self.endpoint_url,
                bucket,
                read_timeout=self.slow_read_timeout,
                connections=self.connections,
            )
        return Signing(s3, bucket, region, expires_in, self.endpoint_url, slow)


def ensure_private_transport(
    url: str,
    option: str = "--endpoint-url",
    risk: str = "uploads and their grant would cross the network unencrypted",
) -> None:
    """A grant, a URL or code fetched over plain HTTP can be read or changed on the way: only
    loopback may use it."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise InputError(f"{option} {url!r} is not an http(s) URL: give one like https://host/...")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(
            f"{option} {url} is plain http to {host}: {risk}; use https:// (http is for "
            "127.0.0.1 only)"
        )


def allowed_lifetime(
    expires_in: int, life: CredentialLife, now: dt.datetime, *, cap: bool = False
) -> int:
    """`expires_in`, or less when `cap` and the credentials die sooner; refuse otherwise."""
    if life.expires_at is None:
        if life.temporary:
            logger.warning(
                "the credentials carry a session token of unknown expiry (%s): the grant stops "
                "working when that token expires, whatever its own expiry says",
                life.method,
            )
        return expires_in
    remaining = int((life.expires_at - now).total_seconds())
    if expires_in <= remaining:
        return expires_in
    if cap and remaining > 60:
        logger.warning(
            "grant expiry capped to %s: the %s credentials that sign it expire at %s",
            format_duration(remaining),
            life.method,
            f"{life.expires_at:%Y-%m-%d %H:%M:%S %Z}",
        )
        return remaining
    raise CredentialsError(
        f"--expires {format_duration(expires_in)} outlives the {life.method} credentials, which "
        f"expire in {format_duration(max(remaining, 0))}: shorten --expires, pass "
        "--cap-to-credentials, or sign with longer-lived credentials"
    )
