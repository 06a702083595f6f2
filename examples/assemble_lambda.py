"""An S3-event function: joins a file the agents sent in parts as soon as its manifest lands.

Deploy as an AWS Lambda function (Python 3.11+) with `s3-postbox[issuer]` in its package, on
the bucket's `s3:ObjectCreated:*` events filtered to the suffix `/manifest.json`. Its role needs
what `postbox-issuer assemble` needs (README, "Files of any size"; examples/renew-policy.json).
The same code as the command, on the file the event's manifest is of: its newest version (by
the store's clock: another manifest of it, or the object at its key, may be newer) is checked,
joined with UploadPartCopy (a part the store will not copy, as RGW will not one whose key holds
`%`, streams through the function instead), checked again, then its parts removed, and older
versions' leftovers too. An event delivered twice finds the file joined and does nothing more;
a manifest whose parts differ, or that the store refuses, is left as it is and the function
fails (after joining what it could), so the event shows in the function's errors and Lambda
tries again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

import boto3

from issuer.assemble import NAMESPACE, assemble

MANIFEST_SUFFIX = "/manifest.json"


def handler(event: dict[str, Any], context: object = None) -> dict[str, list[str]]:
    s3 = boto3.client("s3")
    done: dict[str, list[str]] = {"assembled": [], "finished": [], "superseded": []}
    broken = []
    for record in event.get("Records", []):
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # event keys are URL-encoded
        if f"{NAMESPACE}/" not in key or not key.endswith(MANIFEST_SUFFIX):
            continue  # not a manifest: nothing to join
        # Every version of that file is judged with it: the newest the store took is joined
        place = key.rsplit("/", 2)[0] + "/"  # PREFIX.postbox-parts/RELPATH/
        report = assemble(s3, bucket, place)
        done["assembled"] += report.assembled
        done["finished"] += report.finished
        done["superseded"] += [manifest for manifest, _ in report.superseded]
        broken += [f"s3://{bucket}/{manifest}: {why}" for manifest, why, _ in report.broken]
    if broken:
        raise RuntimeError("not assembled: " + "; ".join(broken))
    return done
