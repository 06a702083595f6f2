"""Logging for both commands: one line per event, to stderr, secrets redacted before output.

Redaction runs on the formatted line, tracebacks included, so no path can leak a signature,
a security token or a policy into the journal. A traceback is kept on its record's line, its
line breaks escaped (`\\n`): a file name in an exception's message cannot start a line of its
own, and journald keeps one entry per event. `configure` also routes what Python would print
itself (an exception that ends the program or a thread) through the same handler.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from types import TracebackType
from typing import Any, Optional, TextIO

from agent.keys import printable

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


def configure(level: str = "INFO", stream: Optional[TextIO] = None) -> None:
    """Every record of every logger, to `stream` (default stderr), as one redacted line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    # journald stamps each line; a terminal user gets the time from the format.
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(one_line)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 at DEBUG prints request lines; keep it at WARNING unless asked.
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("watchdog").setLevel(max(logging.WARNING, root.level))
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


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
