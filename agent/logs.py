"""Logging for both commands: one line per event, to stderr, secrets redacted before output;
(`printable`, agent/shown.py, makes any text safe inside one line.)

Redaction runs on the formatted line, tracebacks included, so no path can leak a signature,
a security token or a policy into the journal. A traceback is kept on its record's line, its
line breaks escaped (`\\n`): a file name in an exception's message cannot start a line of its
own, and journald keeps one entry per event. `configure` also routes what Python would print
itself (an exception that ends the program or a thread) through the same handler.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Optional, TextIO

from agent.shown import printable

_SECRET = re.compile(
    r"""(?ix)
    (x-amz-signature|x-amz-security-token|x-amz-credential|signature|policy)  # the name
    (["']?\s*[:=]\s*["']?)                                                      # = or ": "
    ([A-Za-z0-9+/=%_.~-]{16,})                                                  # the value
    """
)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)


def one_line(record: logging.LogRecord) -> bool:
    """A logging filter: the message (not a traceback) is escaped into one printable line, so no
    file name or store answer can add a line to the log, whoever formats it."""
    record.msg, record.args = printable(record.getMessage()), None
    return True


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # What is left of a line break is logging's own, between a message and its traceback.
        return redact(super().format(record).replace("\n", "\\n"))

    def formatException(self, ei: Any) -> str:
        return printable(super().formatException(ei))


class JournalFormatter(RedactingFormatter):
    """For stderr connected to journald: `<N>` sets each line's priority (journalctl -p), and
    journald stamps the time itself."""

    PRIORITY: ClassVar[dict[str, int]] = {
        "CRITICAL": 2,
        "ERROR": 3,
        "WARNING": 4,
        "INFO": 6,
        "DEBUG": 7,
    }

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    """POSTBOX_LOG_FORMAT=json: one JSON object per line for log shippers (Fluent Bit, Vector),
    every text in it redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=True)


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """systemd sets $JOURNAL_STREAM to the device and inode of the stream it connected to the
    journal; stderr is that stream unless it was redirected since."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(2)
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def configure(level: str = "INFO", stream: Optional[TextIO] = None, form: str = "text") -> None:
    """Every record of every logger, to `stream` (default stderr), as one redacted line: JSON
    with `form="json"`, priority-prefixed without a time when stderr is the journal."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if form == "json":
        formatter = JsonFormatter()
    elif stream is None and stderr_is_journal():
        formatter = JournalFormatter()
    else:  # a terminal or a file: the time from the format
        formatter = RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handler.setFormatter(formatter)
    handler.addFilter(one_line)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 at DEBUG prints request lines; keep it at WARNING unless asked.
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("watchdog").setLevel(max(logging.WARNING, root.level))
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    # A library's warning (watchdog's, say) is a record like any other: one line, with its
    # priority, never Python's own two lines on stderr.
    logging.captureWarnings(True)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, tb: Optional[TracebackType]
) -> None:
    logging.getLogger("agent").critical(
        "unexpected error, a bug (please report it)", exc_info=(kind, error, tb)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("agent").critical(
        "unexpected error in %s, a bug (please report it)",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
