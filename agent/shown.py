"""A text as one log line shows it: `printable` makes any text (a file name, a store's answer) safe
inside one line. Pure, so the decision core (agent/core.py) says names as the rest of the agent
does; agent/logs.py hands it on."""

from __future__ import annotations

import sys
import unicodedata


def printable(text: str) -> str:
    """`text` made safe for one log line: undecodable bytes, control and format characters
    (newlines, escapes, bidi overrides) and line separators escaped."""
    if any("\udc80" <= ch <= "\udcff" for ch in text):  # a name's bytes, as os.fsencode gives
        raw = text.encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
        text = raw.decode("utf-8", "backslashreplace")
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if _unsafe(ch) else ch for ch in text
    )


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")
