"""An S3-event function: joins a file the agents sent in parts as soon as its manifest lands.

Deploy as an AWS Lambda function (Python 3.11+) with `s3-postbox[issuer]` in its package, on
the bucket's `s3:ObjectCreated:*` events filtered to the suffix `/manifest.json`. Its role needs
what `postbox-issuer assemble` needs (README, "Files of any size"; examples/renew-policy.json).
The same code as the command: one manifest at a time (the event's key is the prefix), checked,
joined with UploadPartCopy (a part the store will not copy, as RGW will not one whose key holds
`%`, streams through the function instead), checked again, then its parts removed. An event
delivered twice finds the file joined and does nothing more; a manifest whose parts differ is
left as it is and the function fails, so the event shows in the function's errors.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

import boto3

from issuer.assemble import NAMESPACE, assemble

MANIFEST_SUFFIX = "/manifest.json"


def handler(event: dict[str, Any], context: object = None) -> dict[str, list[str]]:
    s3 = boto3.client("s3")
    done: dict[str, list[str]] = {"assembled": [], "finished": []}
    broken = []
    for record in event.get("Records", []):
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # event keys are URL-encoded
        if f"{NAMESPACE}/" not in key or not key.endswith(MANIFEST_SUFFIX):
            continue  # not a manifest: nothing to join
        report = assemble(s3, bucket, key)
        done["assembled"] += report.assembled
        done["finished"] += report.finished
        broken += [f"s3://{bucket}/{manifest}: {why}" for manifest, why in report.broken]
    if broken:
        raise RuntimeError("not assembled: " + "; ".join(broken))
    return done
