"""The store's clock, learnt from its answers: expiry is judged by it, not by this machine's;
and how long a span is, said.

A VM at first boot often has a wrong clock until NTP syncs; the store decides whether a policy
has expired by its own. Every answer from the store carries a `Date` header (one-second
resolution); the offset is the store's time minus the middle of the request as this machine saw
it. Until a first answer, the machine's own clock is all there is. Thread-safe: workers observe,
the dispatcher reads.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import threading
from collections.abc import Callable
from typing import Optional

logger = logging.getLogger(__name__)

NOISE_SECONDS = 2.0  # Date has one-second resolution, and the request takes time
SAY_SECONDS = 60.0  # an offset this large is logged (once, and again if it changes this much)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoreClock:
    def __init__(self, local: Callable[[], dt.datetime] = utc_now) -> None:
        self.local = local
        self.offset = 0.0  # seconds the store is ahead of this machine
        self._said = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        return self.local() + dt.timedelta(seconds=self.offset)

    def observe(self, date: Optional[str], sent: dt.datetime, received: dt.datetime) -> None:
        """Learn from one answer's `Date` header; `sent` and `received` by `local`."""
        if not date:
            return
        try:
            said = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if said.tzinfo is None:
            return  # not an HTTP date (HTTP dates are GMT)
        offset = (said - (sent + (received - sent) / 2)).total_seconds()
        with self._lock:
            if abs(offset - self.offset) <= NOISE_SECONDS:
                return
            self.offset = offset
            if abs(offset - self._said) < SAY_SECONDS:
                return
            self._said = offset
        if abs(offset) >= SAY_SECONDS:
            logger.warning(
                "this machine's clock is %s %s the store's: expiry is judged by the store's",
                _span(abs(offset)),
                "behind" if offset > 0 else "ahead of",
            )
        else:
            logger.info("this machine's clock agrees with the store's again")


def _span(seconds: float) -> str:
    """To the minute: a Date has one-second resolution, and only large offsets are said."""
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"about {hours}h{minutes:02d}m" if hours else f"about {minutes}m"


_DURATION = re.compile(r"^(?:\d+[wdhms])+$")
_PART = re.compile(r"(\d+)([wdhms])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds_in(text: str) -> Optional[int]:
    """Seconds in a duration as operators write it (`90s`, `30m`, `1h30m`, `2d`, `1w`); None if
    it is not one. A number needs a unit, so `6` is not guessed; case matters (1M is not 1m)."""
    compact = text.strip()
    parts = _PART.findall(compact) if _DURATION.match(compact) else []
    units = [unit for _, unit in parts]
    if not parts or len(set(units)) != len(units):
        return None
    return sum(int(number) * _SECONDS[unit] for number, unit in parts)


def format_left(seconds: float) -> str:
    """A time left, to the second under an hour: `4m05s`, `2h07m`."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
