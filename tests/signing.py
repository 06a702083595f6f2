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
