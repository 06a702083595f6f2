"""What a grant's signature rests on, checked as S3 checks it before the signature itself: a
POST form's SigV4 (or SigV2) fields, and the policy's own conditions on them; the bucket the
grant's URL points at; and when a SigV4 presigned URL stops working. Pure: agent/grant.py
refuses a grant S3 would refuse, with the reason these give, and `presigned_expiry` dates a PUT
grant (the issuer's too).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

from agent.policy import Policy

# What S3 checks of a POST form before it can check the signature, and the agent can too.
_SIGV4 = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature")
_SIGV2 = ("awsaccesskeyid", "signature")
_SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"


def signature_fields(fields: Mapping[str, str], policy: Policy) -> str:
    """Why S3 would refuse the grant's signature fields, before checking the signature: one of
    the fields its algorithm needs is missing or malformed, or breaks the policy's own condition
    on it. '' if none. SigV4 when any SigV4 field is there, else SigV2 (S3 answers a form without
    x-amz-algorithm as SigV2)."""
    form = {name.lower(): value for name, value in fields.items()}
    v4 = any(name in form for name in _SIGV4)
    needed = _SIGV4 if v4 else _SIGV2
    missing = [name for name in needed if not form.get(name)]
    if missing:
        kind = "SigV4" if v4 else "SigV2 (no x-amz-algorithm)"
        return f"its {kind} form has no {', '.join(missing)} field"
    broken = [
        c
        for c in policy.conditions
        if c.field in needed
        and (
            (c.op == "eq" and form[c.field] != c.value)
            or (c.op == "starts-with" and not form[c.field].startswith(c.value))
        )
    ]
    if broken:
        first = broken[0]
        return f"its {first.field} field breaks the policy's own condition ({first.describe()})"
    return _sigv4_form(*(form[n] for n in _SIGV4[:3])) if v4 else ""


def _sigv4_form(algorithm: str, credential: str, date: str) -> str:
    if algorithm != _SIGV4_ALGORITHM:
        return f"x-amz-algorithm is {algorithm!r}, not {_SIGV4_ALGORITHM!r}"
    scope = credential.split("/")
    if len(scope) != 5 or scope[3:] != ["s3", "aws4_request"] or not scope[1].isdigit():
        return "x-amz-credential is not KEY/YYYYMMDD/REGION/s3/aws4_request"
    try:
        dt.datetime.strptime(date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return f"x-amz-date {date!r} is not YYYYMMDDTHHMMSSZ"
    if date[:8] != scope[1]:
        return f"x-amz-date {date!r} is not the day of x-amz-credential's scope ({scope[1]})"
    return ""


def wrong_bucket(url: str, policy: Policy) -> str:
    """Why the policy's bucket is not the one the URL points at; '' if it is. Path style names the
    bucket as the path's first segment (any endpoint); virtual-hosted, as the host's first labels
    (bucket.s3.eu-west-1.amazonaws.com, bucket.storage.example.com), with an empty path."""
    bucket = policy.bucket
    if bucket is None:
        return 'its policy has no {"bucket": ...} condition, which S3 requires'
    parts = urlsplit(url)
    segment = unquote(parts.path).strip("/").split("/")[0]
    host = (parts.hostname or "").lower()
    if segment == bucket or (not segment and (host == bucket or host.startswith(bucket + "."))):
        return ""
    where = f"bucket {segment!r}" if segment else f"host {host!r}"
    return f"its policy allows bucket {bucket!r}, but its URL points at {where}"


def presigned_expiry(url: str) -> Optional[dt.datetime]:
    """When a SigV4 presigned URL stops working (its signed X-Amz-Date + X-Amz-Expires); None if
    it does not say (a CloudFront signed URL says it in its own policy)."""
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    try:
        signed = dt.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        lifetime = int(query["X-Amz-Expires"])
    except (KeyError, ValueError):
        return None
    return signed.replace(tzinfo=dt.timezone.utc) + dt.timedelta(seconds=lifetime)
