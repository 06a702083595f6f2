"""Presigned GET and PUT URLs: one object, one method, until the URL expires.

SigV4 signs the host, so the client that signs must already point at the bucket's regional
endpoint (issuer.aws.s3_client sees to it); the URL cannot be rewritten afterwards.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal, Optional

from issuer.aws import aws_errors
from issuer.errors import InputError
from issuer.units import format_duration

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from issuer.signer import Signer

MAX_PRESIGNED_SECONDS = 7 * 86400  # SigV4: X-Amz-Expires is at most 604800


def sign_url(
    signer: Signer,
    method: Literal["get", "put"],
    bucket: str,
    key: str,
    expires_in: int,
    *,
    now: dt.datetime,
    content_type: Optional[str] = None,
) -> str:
    """A presigned `method` URL for s3://bucket/key, signed by `signer` for the bucket's region."""
    if expires_in > MAX_PRESIGNED_SECONDS:
        raise InputError(
            f"--expires {format_duration(expires_in)} is over 7d, the longest a SigV4 URL lives"
        )
    signing = signer.open(bucket, expires_in, now)
    return presigned_url(
        signing.s3, method, bucket, key, signing.expires_in, content_type=content_type
    )


def put_grant(url: str, bucket: str, key: str, content_type: Optional[str]) -> dict[str, Any]:
    """A presigned PUT URL as a grant the agent reads (`url --format grant`): one key."""
    headers = {"Content-Type": content_type} if content_type else {}
    return {"url": url, "headers": headers, "bucket": bucket, "key": key}


def presigned_url(
    s3: S3Client,
    method: Literal["get", "put"],
    bucket: str,
    key: str,
    expires_in: int,
    *,
    content_type: Optional[str] = None,
) -> str:
    params: dict[str, str] = {"Bucket": bucket, "Key": key}
    if method == "put" and content_type:
        params["ContentType"] = content_type
    with aws_errors(f"signing a {method.upper()} URL for s3://{bucket}/{key}"):
        return str(
            s3.generate_presigned_url(
                f"{method}_object", Params=params, ExpiresIn=expires_in, HttpMethod=method.upper()
            )
        )
