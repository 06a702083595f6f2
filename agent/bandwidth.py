"""The bandwidth limit (POSTBOX_BANDWIDTH_LIMIT): one rate shared by every upload of the agent.

`parse_rate` reads the setting (`20MiB/s`, `500KiB/s`, `1.5GiB/s`, `10MB/s`) and `format_rate`
shows it; `parse_size` reads the sizes of other settings in the same units (`64MiB`, `100MB`).
`Bucket` is the token bucket's arithmetic, pure: time is the `now` it is given.
`Limiter` is the one bucket every body's reads draw from (agent/body.py), whatever the thread:
whole files, parts and manifests alike. It sleeps with the `wait` it is given (the daemon's
`stopping.wait`), so a stop wakes it; from the stop on it no longer holds anything back: the
uploads under way finish as fast as the link allows, since the machine is going away.

What it does not limit: the file's reads for its SHA-256 (local disk, not the link), the
form's fields around the file (a few KiB an upload), HEAD and GET requests (the probe, the
renewal), and the store's answers.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

MIN_RATE = 1024  # bytes a second: below 1KiB/s, an upload would trickle past a store's patience
BURST_SECONDS = 0.1  # what may go at once after a pause, and at most one read's share
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_BINARY = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)([iI]?)B\s*/\s*s\s*$")
_SIGNED = re.compile(r"^\s*[-+]")
_BITS = re.compile(r"(?i:bit)|b\s*/\s*s|bps")  # a lower-case b is a bit
_SIZE = re.compile(r"^\s*\d+(?:\.\d+)?\s*[kKmMgG]?[iI]?B\s*$")
_IN_BITS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)(?:b|bit|bits)\s*(?:/\s*s|ps)\s*$")
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kKmMgG]?)([iI]?)B)?\s*$")
_NONE = ", or leave it empty for no limit"
EXAMPLES = "like 20MiB/s, 500KiB/s, 1.5GiB/s or 10MB/s (MB: 10^6 bytes, MiB: 2^20)"


class RateError(ValueError):
    """A limit that is not a rate; the message says why and how to write one."""


def parse_rate(text: str) -> Optional[int]:
    """Bytes a second in `text`; None for an empty text (no limit). The byte's `B` is upper
    case, as `b` is a bit; the rest in any case; a number needs its unit and `/s`."""
    if not text.strip():
        return None
    match = _RATE.match(text)
    if match is None:
        raise RateError(_why_not(text))
    number, prefix, binary = match.groups()
    if binary and not prefix:  # `iB/s`
        raise RateError(_why_not(text))
    rate = round(float(number) * (_BINARY if binary else _UNITS)[prefix.lower()])
    if rate < MIN_RATE:
        raise RateError(f"{text!r} is below the smallest limit, 1KiB/s: give a larger rate{_NONE}")
    return rate


def parse_size(text: str) -> int:
    """Bytes in `text`: a whole number of bytes, or a number with its unit (`6MiB`, `6MB`,
    `1.5GiB`; `B` upper case, as for a rate)."""
    match = _BYTES.match(text)
    if match is not None:
        number, prefix, binary = match.groups()
        unit = (_BINARY if binary else _UNITS).get((prefix or "").lower())
        if unit and (number.isdigit() or unit > 1) and not (binary and not prefix):
            return round(float(number) * unit)
    if _RATE.match(text):
        raise RateError(f"{text!r} is a rate, not a size: drop the /s, like 64MiB")
    raise RateError(
        f"{text!r} is not a size: write bytes, or a number with its unit, like 64MiB, 512KiB "
        "or 100MB (MB: 10^6 bytes, MiB: 2^20)"
    )


def _why_not(text: str) -> str:
    if _SIGNED.match(text):
        return f"{text!r} is not a rate: give a positive rate {EXAMPLES}{_NONE}"
    if _BITS.search(text):
        bits = _IN_BITS.match(text)
        if bits is None:
            return f"{text!r} is in bits: give bytes a second {EXAMPLES}; 100 Mbit/s is 12.5MB/s"
        number, prefix, binary = bits.groups()
        rate = float(number) / 8 * (_BINARY if binary else _UNITS)[prefix.lower()]
        return f"{text!r} is in bits: give bytes a second {EXAMPLES}; it is {_bytes(rate)}"
    if _SIZE.match(text):
        return f"{text!r} is a size, not a rate: add /s, {EXAMPLES}"
    return f"{text!r} is not a rate: write bytes a second {EXAMPLES}{_NONE}"


def _bytes(rate: float) -> str:
    """A rate in bytes a second, in the decimal unit that keeps it short: `6.25MB/s`."""
    for prefix, unit in (("G", 1000**3), ("M", 1000**2), ("k", 1000)):
        if rate >= unit:
            return f"{rate / unit:.4g}{prefix}B/s"
    return f"{rate:.4g}B/s"


def format_rate(rate: int) -> str:
    """In the largest unit that divides `rate` exactly, binary first: 20MiB/s, 10MB/s."""
    for table, suffix in ((_BINARY, "iB/s"), (_UNITS, "B/s")):
        for prefix in ("g", "m", "k"):
            unit = table[prefix]
            if rate % unit == 0:
                shown = prefix.upper() if table is _BINARY or prefix != "k" else "k"
                return f"{rate // unit}{shown}{suffix}"
    return f"{rate}B/s"


@dataclass
class Bucket:
    """A token bucket of `burst` bytes filled at `rate` bytes a second; pure (time is `now`).

    Kept as the time its tokens were last at zero (`empty_at`): a grant moves it on by the
    bytes' time, so grants made at once get consecutive slots, in the order asked."""

    rate: float
    burst: int
    empty_at: float = -math.inf

    @classmethod
    def for_rate(cls, rate: float) -> Bucket:
        return cls(rate, max(1, int(rate * BURST_SECONDS)))

    def take(self, want: int, now: float) -> tuple[int, float]:
        """(bytes granted, seconds to wait before sending them): at most one burst, so one
        read never holds the link, nor the readers behind it, longer than BURST_SECONDS."""
        granted = max(1, min(want, self.burst))
        self.empty_at = max(self.empty_at, now - self.burst / self.rate) + granted / self.rate
        return granted, max(0.0, self.empty_at - now)


class Limiter:
    """The one bucket every upload draws from, on whatever thread it runs."""

    def __init__(
        self,
        rate: int,
        stopping: threading.Event,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Optional[Callable[[float], bool]] = None,
    ) -> None:
        self.rate = rate
        self._bucket = Bucket.for_rate(rate)
        self._stopping = stopping
        self._monotonic = monotonic
        self._wait = wait or stopping.wait  # True: the stop woke it
        self._lock = threading.Lock()

    def take(self, want: int) -> int:
        """How many of `want` bytes may be read for the socket now, once the rate allows them
        (this waits for it); all `want` from the stop on."""
        if want <= 0 or self._stopping.is_set():
            return want
        with self._lock:
            granted, seconds = self._bucket.take(want, self._monotonic())
        if seconds > 0:
            self._wait(seconds)
        return granted
