"""Grants that renew themselves, with no credential on the VM.

A grant may carry a renewal URL (`"renew"`): a read-only, signed URL of the one object where the
operator's `postbox-issuer renew` publishes the next grant. From half-way through its grant's
life (or at start, when the grant has expired), the agent fetches that object, judges it as any
grant, and more: it must be newer, for the same store and bucket, and may not widen the prefix
(unless POSTBOX_RENEW_MAY_WIDEN says so). A grant that passes is written atomically over the grant
file (mode 0600), and the daemon takes it as it takes any rotated grant. Revocation is "stop
renewing": a VM keeps uploading until its current grant expires, and no longer.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

import requests

from agent.errors import ConfigError, RenewalError
from agent.files import replace_file
from agent.grant import AnyGrant, Grant, parse_grant
from agent.logs import printable

RENEW_AT = 0.5  # fetch once less than this share of the grant's life is left
RENEW_WITHOUT_LIFETIME = 3600.0  # ... or this many seconds, when the grant says no signing time
MAX_GRANT_BYTES = 64 * 1024  # a grant is a few KiB; anything larger is not one


def due(grant: AnyGrant, now: dt.datetime) -> bool:
    """Whether to ask for the next grant now."""
    if grant.renew_url is None:
        return False
    left = grant.seconds_left(now)
    signed = signed_at(grant)
    if signed is None:
        return left <= RENEW_WITHOUT_LIFETIME
    return left <= RENEW_AT * (grant.expiration - signed).total_seconds()


def signed_at(grant: AnyGrant) -> Optional[dt.datetime]:
    """When a SigV4 POST grant was signed (its x-amz-date); None if it does not say."""
    if not isinstance(grant, Grant):
        return None
    date = next((v for k, v in grant.fields.items() if k.lower() == "x-amz-date"), None)
    try:
        return dt.datetime.strptime(date or "", "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def fetch(session: requests.Session, url: str, timeout: float) -> Any:
    """The published document, parsed; RenewalError saying why not."""
    try:
        with session.get(url, timeout=timeout, stream=True, allow_redirects=False) as answer:
            body = answer.raw.read(MAX_GRANT_BYTES + 1, decode_content=True)
            status = answer.status_code
    except (requests.RequestException, OSError) as exc:
        raise RenewalError(f"the renewal URL did not answer ({exc.__class__.__name__})") from None
    if status == 404:
        raise RenewalError("no next grant is published yet (404)")
    if status != 200:
        raise RenewalError(f"the renewal URL answered {status}")
    if len(body) > MAX_GRANT_BYTES:
        raise RenewalError(f"the published document is over {MAX_GRANT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise RenewalError("the published document is not JSON") from None


def judge(current: AnyGrant, document: Any, source: Path, may_widen: bool = False) -> Grant:
    """The next grant, if it may replace `current`; RenewalError saying why not."""
    try:
        new = parse_grant(document, source)
    except ConfigError as exc:
        raise RenewalError(f"the published grant is refused: {exc.message}", refused=True) from None
    if not isinstance(new, Grant) or not isinstance(current, Grant):
        raise RenewalError("only POST grants renew", refused=True)
    if new.identity == current.identity:
        raise RenewalError("no newer grant is published yet (the same one)")
    if new.expiration <= current.expiration:
        raise RenewalError(
            f"the published grant expires at {new.expiration:%Y-%m-%d %H:%M:%S} UTC, no later "
            "than the current one: not newer"
        )
    if new.endpoint != current.endpoint or new.bucket != current.bucket:
        raise RenewalError(
            f"the published grant is for {new.endpoint} bucket {new.bucket!r}, not "
            f"{current.endpoint} bucket {current.bucket!r}: refused",
            refused=True,
        )
    if not may_widen and not new.prefix.startswith(current.prefix):
        raise RenewalError(
            f"the published grant's prefix {printable(new.prefix)!r} is not within "
            f"{printable(current.prefix)!r}: refused (POSTBOX_RENEW_MAY_WIDEN=true allows it)",
            refused=True,
        )
    return new


def write(path: Path, document: Any) -> None:
    """Replace the grant file at once (write, sync, rename): never half a grant on disk."""
    replace_file(path, (json.dumps(document, indent=2) + "\n").encode(), 0o600)
