"""`postbox-issuer renew`: keep a fleet's grant fresh, with no credential on any instance.

Each run signs the next grant (same bucket, prefix, sizes, encryption, and the same properties
for every object: Content-Type and metadata conditions, storage class, tags) with a renewal URL
inside (a presigned GET of the object it is published at) and publishes it there, unless the
grant already published is still fresh (more than half its life left, and its renewal URL too)
and signs what this run would:
idempotent, safe to run from cron, a systemd timer or a function as often as wanted. The agents
fetch the published grant from a moment of their own between half and four fifths of their
grant's life (agent/renewal.py).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional

from agent.errors import ConfigError
from agent.grant import Grant, parse_grant
from agent.renewal import signed_at
from agent.signed import presigned_expiry
from issuer.aws import aws_errors, read_object
from issuer.errors import InputError
from issuer.grant import GrantRequest, make_grant, policy_rules, rules
from issuer.signer import Signer
from issuer.units import format_duration
from issuer.urls import MAX_PRESIGNED_SECONDS, presigned_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def publish_place(url: str) -> tuple[str, str]:
    """`s3://BUCKET/KEY`, where a fleet's grant is published, as (bucket, key)."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket or not key:
        raise InputError(f"--publish {url!r} is not s3://BUCKET/KEY")
    return bucket, key


def renew(
    request: GrantRequest,
    signer: Signer,
    place: tuple[str, str],
    renew_in: int,
    now: dt.datetime,
    *,
    force: bool = False,
) -> tuple[dict[str, Any], bool]:
    """The grant published at `place` (bucket, key), and whether this run published it: a new
    one, unless the one there is still fresh (or `force`)."""
    bucket, key = place
    check_places(request.bucket, request.prefix, bucket, key)
    if renew_in > MAX_PRESIGNED_SECONDS:
        raise InputError(
            f"--renew-expires {format_duration(renew_in)} is over 7d, a SigV4 URL's limit"
        )
    shared = bucket == request.bucket  # then one context signs both, for the longer life
    context = signer.open(bucket, max(request.expires_in, renew_in) if shared else renew_in, now)
    current = published(context.s3, bucket, key)
    if current is not None and not force and still_fresh(current, request, now):
        return current, False
    grant_context = context if shared else signer.open(request.bucket, request.expires_in, now)
    lifetime = min(request.expires_in, grant_context.expires_in)
    document = make_grant(replace(grant_context, expires_in=lifetime), request, now)
    document["renew"] = presigned_url(
        context.s3, "get", bucket, key, min(renew_in, context.expires_in)
    )
    publish(context.s3, bucket, key, document)
    return document, True


def published(s3: S3Client, bucket: str, key: str) -> Optional[dict[str, Any]]:
    """The grant published at s3://bucket/key now, if any (a missing or broken one: None)."""
    body = read_object(s3, bucket, key)
    if body is None:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def still_fresh(document: dict[str, Any], request: GrantRequest, now: dt.datetime) -> bool:
    """More than half its life left, for the same bucket and prefix and signing the same rules
    (sizes, encryption, storage class, tags, the uploader's fields: a changed option publishes
    at once), with a renewal URL that has more than half of its own life left too."""
    try:
        grant = parse_grant(document)
    except ConfigError:
        return False
    if not isinstance(grant, Grant):
        return False
    if (grant.prefix, grant.bucket) != (request.prefix, request.bucket):
        return False
    if policy_rules(grant.policy) != rules(request):
        return False
    signed = signed_at(grant)
    renew_until = presigned_expiry(grant.renew_url or "")
    if signed is None or renew_until is None:
        return False
    half = (grant.expiration - signed) / 2
    return grant.expiration - now > half and renew_until - now > (renew_until - signed) / 2


def publish(s3: S3Client, bucket: str, key: str, document: dict[str, Any]) -> None:
    body = (json.dumps(document, indent=2) + "\n").encode()
    with aws_errors(f"publishing the next grant at s3://{bucket}/{key}"):
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            CacheControl="no-store",  # a CDN in front must not serve an old grant
        )


def check_places(bucket: str, prefix: str, publish_bucket: str, publish_key: str) -> None:
    """The published grant must be out of the fleet's reach: under the upload prefix, any
    instance could overwrite it with a grant of its own choosing for all the others."""
    if publish_bucket == bucket and publish_key.startswith(prefix):
        raise InputError(
            f"--publish s3://{publish_bucket}/{publish_key} is under the grant's prefix "
            f"{prefix!r}, where every instance may write: publish it outside the prefix"
        )
