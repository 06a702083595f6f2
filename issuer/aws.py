"""The issuer's one seam to AWS: sessions, clients, credentials' lifetime, botocore's errors.

botocore's exceptions become ours in `aws_errors()` and nowhere else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import boto3
import botocore.credentials
import botocore.exceptions
from botocore.config import Config

from issuer.errors import CredentialsError, StoreError

if TYPE_CHECKING:  # boto3-stubs, a development dependency: types only
    from mypy_boto3_s3 import S3Client

NO_CREDENTIALS = (
    "no AWS credentials found: configure them (aws configure, AWS_PROFILE, an instance role)"
)


@contextlib.contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise CredentialsError(NO_CREDENTIALS) from None
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        answer = f"{error.get('Code') or '?'} {error.get('Message') or ''}".rstrip()
        raise StoreError(f"{doing}: AWS answered {answer}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StoreError(f"{doing}: {exc}") from None


def session(profile: Optional[str] = None, region: Optional[str] = None) -> boto3.Session:
    with aws_errors("reading the AWS profile"):
        return boto3.Session(profile_name=profile, region_name=region)


def regional_endpoint(region: str) -> str:
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://s3.{region}.{domain}"


def s3_client(
    aws: boto3.Session,
    region: str,
    endpoint_url: Optional[str] = None,
    bucket: str = "",
    *,
    read_timeout: float = 60,
    connections: int = 10,
) -> S3Client:
    """An S3 client signing with SigV4 for the bucket's own regional endpoint.

    Presigned URLs sign the host, so the host must be right at signing time: the regional one
    (never the global `s3.amazonaws.com`, which redirects), virtual-hosted except for bucket names
    with dots (a dotted host name fails TLS against S3's wildcard certificate), and path style
    for a custom endpoint (moto, Ceph, MinIO).
    """
    style: Literal["path", "virtual"] = "path" if endpoint_url or "." in bucket else "virtual"
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": style},
        read_timeout=read_timeout,
        max_pool_connections=connections,
    )
    endpoint = endpoint_url or regional_endpoint(region)
    with aws_errors("creating an S3 client"):
        return aws.client("s3", region_name=region, endpoint_url=endpoint, config=config)


def read_object(s3: S3Client, bucket: str, key: str) -> Optional[bytes]:
    """The object's bytes, or None when there is no such object. S3 answers a key that does
    not exist with 403, not 404, to a caller who may not list the bucket: StoreError naming
    the two permissions that tell the cases apart."""
    with aws_errors(f"reading s3://{bucket}/{key}"):
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if missing(exc):
                return None
            if error_code(exc) in ("AccessDenied", "403"):
                raise StoreError(
                    f"s3://{bucket}/{key} cannot be read (AccessDenied): missing, or not "
                    "readable by these credentials (S3 says 403 for a missing key to who may "
                    f"not list the bucket): give them s3:GetObject on it and s3:ListBucket on "
                    f"arn:aws:s3:::{bucket} (examples/renew-policy.json)"
                ) from None
            raise


def object_metadata(s3: S3Client, bucket: str, key: str) -> Optional[Mapping[str, str]]:
    """The object's user metadata (x-amz-meta-*), or None when there is no such object."""
    with aws_errors(f"looking for s3://{bucket}/{key}"):
        try:
            return s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
        except botocore.exceptions.ClientError as exc:
            if missing(exc):
                return None
            raise


def error_code(exc: botocore.exceptions.ClientError) -> str:
    """The store's code for what it refused ("" if it gave none)."""
    return str(exc.response.get("Error", {}).get("Code") or "")


def missing(exc: botocore.exceptions.ClientError) -> bool:
    """S3 says NoSuchKey to GET and a bare 404 to HEAD; other stores vary between the two."""
    return error_code(exc) in ("404", "NoSuchKey", "NotFound")


@dataclass(frozen=True)
class CredentialLife:
    """How long the credentials that sign a grant live; a grant dies with its session token."""

    method: str
    temporary: bool
    expires_at: Optional[dt.datetime]


def credential_life(credentials: Optional[botocore.credentials.Credentials]) -> CredentialLife:
    if credentials is None:
        raise CredentialsError(NO_CREDENTIALS)
    with aws_errors("reading the AWS credentials"):
        frozen = credentials.get_frozen_credentials()
    # botocore keeps the expiry of refreshable credentials (STS, SSO, instance and container
    # roles) only in this attribute; it is the one private name this project reads.
    expires_at = getattr(credentials, "_expiry_time", None)
    if isinstance(expires_at, dt.datetime) and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.timezone.utc)
    return CredentialLife(
        method=getattr(credentials, "method", "unknown"),
        temporary=bool(frozen.token) or expires_at is not None,
        expires_at=expires_at if isinstance(expires_at, dt.datetime) else None,
    )


def _head_bucket(s3: S3Client, bucket: str, hint: str = "") -> tuple[str, Mapping[str, str]]:
    """HeadBucket's error code ("" for none) and headers: S3 names the bucket's region in
    `x-amz-bucket-region` even with a 403 or a 301. A bucket that does not exist is StoreError
    (`hint`: what else the user may do); the store not answering is BotoCoreError."""
    try:
        return "", s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise StoreError(
                f"bucket {bucket} does not exist: create it or fix --bucket{hint}"
            ) from None
        return code, exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})


def bucket_region(s3: S3Client, bucket: str) -> str:
    """The bucket's region, from the `x-amz-bucket-region` header S3 sends even with a 403."""
    try:
        _, headers = _head_bucket(s3, bucket)
    except (botocore.exceptions.BotoCoreError, CredentialsError) as exc:
        raise StoreError(
            f"cannot look up bucket {bucket}'s region ({exc}): pass --region"
        ) from None
    region = headers.get("x-amz-bucket-region")
    if not region:
        raise StoreError(f"cannot tell bucket {bucket}'s region: pass --region")
    return str(region)


def check_bucket(s3: S3Client, bucket: str, region: str, skip: str = "--no-check") -> None:
    """The bucket exists, in `region`, reachable with these credentials: a grant for a misspelt
    bucket would otherwise be refused on every VM. A 403 passes: the bucket exists, and signing
    needs s3:PutObject, not the s3:ListBucket that HeadBucket asks for. `skip`: the command's
    option that skips this check, if it has one ("": none, and no line offers one)."""
    try:
        code, headers = _head_bucket(s3, bucket, f" ({skip} skips this)" if skip else "")
    except botocore.exceptions.BotoCoreError as exc:
        offline = f", or sign offline with {skip}" if skip else ""
        raise StoreError(
            f"cannot reach bucket {bucket} ({exc}): check the network or --endpoint-url{offline}"
        ) from None
    if code not in ("", "403", "AccessDenied", "301", "PermanentRedirect", "400"):
        raise StoreError(f"bucket {bucket}: the store answered {code}")
    actual = headers.get("x-amz-bucket-region")
    if actual and actual != region:
        raise StoreError(f"bucket {bucket} is in {actual}, not {region}: fix --region")
