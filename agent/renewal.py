"""Grants that renew themselves, with no credential on the VM.

A grant may carry a renewal URL (`"renew"`): a read-only, signed URL of the one object where the
operator's `postbox-issuer renew` publishes the next grant. From a moment of its own between half
and four fifths of its grant's life (`moment`: a fleet on one grant does not ask all at once), or
at start when that moment has passed, the agent fetches that object, judges it as any grant, and
more: it must be newer, for the same store and bucket, and may not widen the prefix
(unless POSTBOX_RENEW_MAY_WIDEN says so). A grant that passes is written atomically over the grant
file (mode 0600), and the daemon takes it as it takes any rotated grant. Revocation is "stop
renewing": a VM keeps uploading until its current grant expires, and no longer. Until it has a
new grant it asks again every POSTBOX_RENEW_EVERY_SECONDS, each wait drawn anew between half and
one and a half of it (`retry_after`), so a fleet's questions drift apart rather than meet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import requests

from agent.errors import ConfigError, RenewalError
from agent.files import replace_file
from agent.grant import AnyGrant, Grant, parse_grant
from agent.shown import printable

# The window an instance's first question falls in, as shares of its grant's life...
WINDOW = (0.5, 0.8)
MARGIN_SECONDS = 300.0  # ... ending at least this long before the expiry, if the life allows
LIFE_UNSAID = 7200.0  # the life taken for a grant that says no signing time: asks 60 to 24 min left
MAX_GRANT_BYTES = 64 * 1024  # a grant is a few KiB; anything larger is not one
JITTER = (0.5, 1.5)  # a wait between questions, as shares of POSTBOX_RENEW_EVERY_SECONDS


def moment(grant: AnyGrant, identity: str) -> Optional[dt.datetime]:
    """When the instance named `identity` first asks for the grant after `grant` (None: it
    cannot renew): a point of the window (half to four fifths of the grant's life, ending at
    least MARGIN_SECONDS before the expiry unless that is before half), the same one each time
    for one identity, spread evenly over the window across a fleet."""
    if grant.renew_url is None:
        return None
    signed = signed_at(grant)
    life = LIFE_UNSAID
    if signed is not None and signed < grant.expiration:
        life = (grant.expiration - signed).total_seconds()
    start = life * WINDOW[0]
    end = max(start, min(life * WINDOW[1], life - MARGIN_SECONDS))
    at = start + (end - start) * share(identity)
    return grant.expiration - dt.timedelta(seconds=life - at)


def due(grant: AnyGrant, now: dt.datetime, identity: str) -> bool:
    """Whether the instance named `identity` asks for the next grant now (if it may: the caller
    keeps the wait between questions)."""
    at = moment(grant, identity)
    return at is not None and now >= at


LATE = 0.75  # past this share of its life a grant not renewed yet is worth a warning
LATE_UNSIGNED_SECONDS = 1800  # ... for a grant that says no signing time: this close to expiry


def late(grant: AnyGrant, now: dt.datetime) -> bool:
    """The grant is past three quarters of its life (by its own signing time), or, where it
    names none, within half an hour of its expiry: a renewal that fails now matters."""
    signed = signed_at(grant)
    left = (grant.expiration - now).total_seconds()
    if signed is None:
        return left <= LATE_UNSIGNED_SECONDS
    life = (grant.expiration - signed).total_seconds()
    return left <= life * (1 - LATE)


def share(identity: str) -> float:
    """A number in [0, 1): the same for one identity, evenly spread across identities (SHA-256,
    so it is the same on every machine and Python; not a secret)."""
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def retry_after(every: float, uniform: Callable[[float, float], float]) -> float:
    """The wait before asking again: `every` times a share drawn by `uniform` (random.uniform)
    between half and one and a half, so that instances which asked together drift apart."""
    low, high = JITTER
    return every * min(high, max(low, uniform(low, high)))


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
            body = b""
            for chunk in answer.iter_content(16384):  # requests' exceptions, never urllib3's
                body += chunk
                if len(body) > MAX_GRANT_BYTES:
                    break
            status = answer.status_code
    except (requests.RequestException, OSError) as exc:
        raise RenewalError(
            f"the renewal URL did not answer ({exc.__class__.__name__})", reason="no_answer"
        ) from None
    if status == 404:
        raise RenewalError("no next grant is published yet (404)", reason="not_published")
    if status != 200:
        raise RenewalError(f"the renewal URL answered {status}", reason=f"http_{status}")
    if len(body) > MAX_GRANT_BYTES:
        raise RenewalError(
            f"the published document is over {MAX_GRANT_BYTES} bytes", reason="too_large"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise RenewalError("the published document is not JSON", reason="not_json") from None


def judge(current: AnyGrant, document: Any, source: Path, may_widen: bool = False) -> Grant:
    """The next grant, if it may replace `current`; RenewalError saying why not."""
    try:
        new = parse_grant(document, source)
    except ConfigError as exc:
        raise RenewalError(f"the published grant is refused: {exc.message}", refused=True) from None
    if not isinstance(new, Grant) or not isinstance(current, Grant):
        raise RenewalError("only POST grants renew", refused=True)
    if new.identity == current.identity:
        raise RenewalError("no newer grant is published yet (the same one)", reason="not_newer")
    if new.expiration <= current.expiration:
        raise RenewalError(
            f"the published grant expires at {new.expiration:%Y-%m-%d %H:%M:%S} UTC, no later "
            "than the current one: not newer",
            reason="not_newer",
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
