"""Durations and sizes as operators write them: `90s`, `1h30m`, `1w`; `512`, `10MiB`, `5GiB`."""

from __future__ import annotations

import re

from agent.clock import seconds_in
from issuer.errors import InputError

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}

MAX_POST_SIZE = 5 * 1024**3  # S3 refuses a larger POST upload (EntityTooLarge)


def parse_duration(text: str, option: str = "--expires") -> int:
    """Seconds in `text` (`90s`, `30m`, `1h30m`, `2d`, `1w`); a number needs a unit, so `6` is
    refused rather than guessed."""
    seconds = seconds_in(text)
    if not seconds:
        raise InputError(
            f"{option} {text!r} is not a duration: write it like 90s, 30m, 1h30m, 2d or 1w"
        )
    return seconds


def parse_size(text: str, option: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise InputError(f"{option} {text!r} is not a size: write it like 512, 10MiB or 5GiB")
    size = int(match.group(1)) * _BYTES[match.group(2) or "B"]
    if size > MAX_POST_SIZE:
        raise InputError(f"{option} {text} is over 5GiB, the largest object S3 accepts by POST")
    return size


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_size(size: int) -> str:
    """In the largest binary unit that divides `size` exactly: 1GiB, 10MiB, 512 B."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _BYTES[unit] == 0:
            return f"{size // _BYTES[unit]}{unit}"
    return f"{size} B" if size != 1 else "1 byte"
