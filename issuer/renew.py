"""`postbox-issuer renew`: keep a fleet's grant fresh, with no credential on any instance.

Each run signs the next grant (same bucket, prefix, sizes and encryption) with a renewal URL
inside (a presigned GET of the object it is published at) and publishes it there, unless the
grant already published is still fresh (more than half its life left, and its renewal URL too):
idempotent, safe to run from cron, a systemd timer or a function as often as wanted. The agents
fetch the published grant from half-way through their own grant's life (agent/renewal.py).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Optional

from agent.errors import ConfigError
from agent.grant import Grant, parse_grant, presigned_expiry
from agent.renewal import signed_at
from issuer.aws import aws_errors
from issuer.errors import InputError


def published(s3: Any, bucket: str, key: str) -> Optional[dict[str, Any]]:
    """The grant published at s3://bucket/key now, if any (a missing or broken one: None)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    except Exception as exc:  # a 404 from stores that answer NoSuchKey otherwise
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def still_fresh(document: dict[str, Any], prefix: str, bucket: str, now: dt.datetime) -> bool:
    """More than half its life left, for the same bucket and prefix, with a renewal URL that
    has more than half of its own life left too."""
    try:
        grant = parse_grant(document)
    except ConfigError:
        return False
    if not isinstance(grant, Grant) or grant.prefix != prefix or grant.bucket != bucket:
        return False
    signed = signed_at(grant)
    renew_until = presigned_expiry(grant.renew_url or "")
    if signed is None or renew_until is None:
        return False
    half = (grant.expiration - signed) / 2
    return grant.expiration - now > half and renew_until - now > (renew_until - signed) / 2


def publish(s3: Any, bucket: str, key: str, document: dict[str, Any]) -> None:
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
    if "{uuid}" in prefix:
        raise InputError(
            "--prefix with {uuid} would change at every renewal: give a fixed prefix (each "
            "instance's own segment comes from the agent's POSTBOX_KEY_PREFIX)"
        )
