"""Sign a POST grant: one key prefix, a size range, an expiry no later than the credentials'.

The grant is what `generate_presigned_post` returns, with the URL made regional, plus
human-facing keys (`bucket`, `issued_at`, `note`) that the agent never trusts.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Optional

from agent.policy import decode_policy
from issuer.aws import CredentialLife, aws_errors, regional_endpoint
from issuer.errors import CredentialsError, InputError
from issuer.units import format_duration

logger = logging.getLogger(__name__)

# S3 answers with the PostResponse XML (Location, Bucket, Key, ETag) only for 201.
SUCCESS_STATUS = "201"


@dataclass(frozen=True)
class GrantRequest:
    bucket: str
    prefix: str
    expires_in: int
    min_size: int = 0
    max_size: int = 5 * 1024**3
    note: Optional[str] = None


def regional_url(bucket: str, region: str, endpoint_url: Optional[str] = None) -> str:
    """The URL a POST must go to so that S3 never redirects it (307) or refuses it (400).

    A custom endpoint gets path style; a bucket name with dots too, since a virtual host name
    with dots fails TLS against S3's wildcard certificate.
    """
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/"
    endpoint = regional_endpoint(region)
    if "." in bucket:
        return f"{endpoint}/{bucket}/"
    return endpoint.replace("://", f"://{bucket}.", 1) + "/"


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


def make_grant(s3: Any, request: GrantRequest, url: str, now: dt.datetime) -> dict[str, Any]:
    if not request.prefix:
        raise InputError("--prefix is empty: a grant for the whole bucket is never issued")
    if request.min_size > request.max_size:
        raise InputError("--min-size is larger than --max-size: swap them")
    with aws_errors(f"signing a POST policy for bucket {request.bucket}"):
        post = s3.generate_presigned_post(
            Bucket=request.bucket,
            # With ${filename} at its end, botocore writes ["starts-with", "$key", prefix].
            Key=request.prefix + "${filename}",
            Fields={"success_action_status": SUCCESS_STATUS},
            Conditions=[
                {"success_action_status": SUCCESS_STATUS},
                ["content-length-range", request.min_size, request.max_size],
            ],
            ExpiresIn=request.expires_in,
        )
    policy = decode_policy(post["fields"]["policy"])
    if policy.key_prefix != request.prefix:  # guard against a change in botocore's behaviour
        raise AssertionError(f"botocore signed key prefix {policy.key_prefix!r}")
    grant: dict[str, Any] = {
        "url": url,
        "fields": post["fields"],
        "bucket": request.bucket,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if request.note:
        grant["note"] = request.note
    return grant
