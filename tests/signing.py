"""Sign a POST policy the way S3 checks it (SigV4 or SigV2), from a policy document the test
writes itself: so a grant can hold exactly the flaw a row is about (an expiration in another
form, no bucket condition) and still carry a good signature, and the store's answer is about
that flaw only. The keys are the local test servers' own (demo/stores.py)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from demo.stores import Store


def expiration(minutes: float = 30, form: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)).strftime(form)


def sign_v4(store: Store, document: dict[str, Any]) -> dict[str, str]:
    """The SigV4 form fields for `document` (its conditions gain the x-amz-* ones, as boto3's
    generate_presigned_post adds them)."""
    now = dt.datetime.now(dt.timezone.utc)
    day, stamp = now.strftime("%Y%m%d"), now.strftime("%Y%m%dT%H%M%SZ")
    credential = f"{store.access_key}/{day}/{store.region}/s3/aws4_request"
    fields = {
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": credential,
        "x-amz-date": stamp,
    }
    signed = {
        **document,
        "conditions": [*document["conditions"], *({k: v} for k, v in fields.items())],
    }
    policy = base64.b64encode(json.dumps(signed).encode()).decode()
    key = ("AWS4" + store.secret_key).encode()
    for part in (day, store.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, policy.encode(), hashlib.sha256).hexdigest()
    return {**fields, "policy": policy, "x-amz-signature": signature}


def sign_v2(store: Store, document: dict[str, Any]) -> dict[str, str]:
    policy = base64.b64encode(json.dumps(document).encode()).decode()
    digest = hmac.new(store.secret_key.encode(), policy.encode(), hashlib.sha1).digest()
    return {
        "AWSAccessKeyId": store.access_key,
        "policy": policy,
        "signature": base64.b64encode(digest).decode(),
    }


def resigned(grant: Path, store: Store, *conditions: Any, drop: tuple[str, ...] = ()) -> Path:
    """The grant file, its policy signed again (SigV4) with `conditions` added and every
    condition on a field of `drop` taken out: a grant as `postbox-issuer grant` makes it, with
    exactly the rules a test is about."""
    document = json.loads(grant.read_text())
    fields = document["fields"]
    policy = json.loads(base64.b64decode(fields["policy"]))
    signing = {"x-amz-algorithm", "x-amz-credential", "x-amz-date"}  # sign_v4 adds them anew
    kept = [c for c in policy["conditions"] if _field(c) not in signing | set(drop)]
    policy["conditions"] = [*kept, *conditions]
    for name in [n for n in fields if n.lower() in drop]:
        del fields[name]
    fields.update(sign_v4(store, policy))
    grant.write_text(json.dumps(document))
    return grant


def _field(condition: Any) -> str:
    """The field a condition of a policy document is on, lower case."""
    if isinstance(condition, dict):
        return str(next(iter(condition))).lower()
    return str(condition[1]).lstrip("$").lower()
