"""When a grant stops serving: the one judge of expiry that every part of the agent asks.

Time is the store's (a `StoreClock` learns it from the store's answers, agent/clock.py), not this
machine's, which may be wrong at first boot. An upload must not start within `margin` seconds
of the expiry, where it could not finish in time: `to_start` is what is left before that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from agent.clock import StoreClock, utc_now
from agent.errors import GrantExpired
from agent.grant import AnyGrant
from agent.signed import presigned_expiry


class Deadline:
    def __init__(self, clock: Callable[[], dt.datetime] = utc_now, margin: float = 0.0) -> None:
        self.clock = clock
        self.margin = margin
        # A StoreClock learns the store's time from each answer's Date; a plain clock is trusted.
        self._store_clock = clock if isinstance(clock, StoreClock) else None

    def now(self) -> dt.datetime:
        """The time by which grants are judged: the store's, as far as it is known."""
        return self.clock()

    def left(self, grant: AnyGrant) -> float:
        """Seconds until `grant` expires (negative once it has)."""
        return grant.seconds_left(self.clock())

    def to_start(self, grant: AnyGrant) -> float:
        """Seconds in which an upload under `grant` may still start: until `margin` before its
        expiry. Zero or less: no upload starts."""
        return self.left(grant) - self.margin

    def ensure_alive(self, grant: AnyGrant) -> None:
        """GrantExpired (exit 79) once `grant` has expired."""
        if self.left(grant) <= 0:
            raise GrantExpired(
                f"grant {grant.source} expired at {grant.expiration:%Y-%m-%d %H:%M:%S} UTC: "
                f"{self.fix(grant)}"
            )

    def fix(self, grant: AnyGrant) -> str:
        """How to go on once `grant` has expired: a grant whose renewal URL died too came from
        user-data that is too old to boot from (its renewal URL is signed into it)."""
        until = presigned_expiry(grant.renew_url) if grant.renew_url else None
        if until is not None and until <= self.clock():
            return (
                f"its renewal URL expired too, at {until:%Y-%m-%d %H:%M:%S} UTC: render the "
                f"user-data again (postbox-issuer user-data), or put a new grant at {grant.source}"
            )
        return "issue a new one with postbox-issuer"

    def url_alive(self, url: str) -> bool:
        """Whether a presigned URL (a renewal URL) has not expired; one that does not say lives."""
        until = presigned_expiry(url)
        return until is None or until > self.clock()

    # What the store's answers teach the clock.
    def local(self) -> dt.datetime:
        """This machine's time, which stamps a request's sending and its answer."""
        return self._store_clock.local() if self._store_clock is not None else utc_now()

    def learn(self, headers: Mapping[str, str], sent: dt.datetime) -> None:
        """An answer's `Date` header, for a request sent at `sent` (by `local`)."""
        if self._store_clock is not None:
            self._store_clock.observe(headers.get("Date"), sent, self.local())

    @property
    def offset(self) -> float:
        """Seconds the store's clock is ahead of this machine's (0 until an answer said)."""
        return self._store_clock.offset if self._store_clock is not None else 0.0
