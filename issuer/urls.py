"""Presigned GET and PUT URLs: one object, one method, until the URL expires.

SigV4 signs the host, so the client that signs must already point at the bucket's regional
endpoint (issuer.aws.s3_client sees to it); the URL cannot be rewritten afterwards.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from issuer.aws import aws_errors

MAX_PRESIGNED_SECONDS = 7 * 86400  # SigV4: X-Amz-Expires is at most 604800


def presigned_url(
    s3: Any,
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
