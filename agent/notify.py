"""systemd's notification protocol (sd_notify): READY=1, STATUS=..., STOPPING=1, WATCHDOG=1,
EXTEND_TIMEOUT_USEC=...

Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call does nothing; without
$WATCHDOG_USEC (no WatchdogSec= in the unit, or meant for another process) no WATCHDOG=1 is sent.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Optional

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: Optional[str], watchdog_seconds: Optional[float] = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None
        # sd_watchdog_enabled(3): ping at half the interval systemd gave.
        self.watchdog_every = watchdog_seconds / 2 if watchdog_seconds else None
        self._next_ping = 0.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        """$NOTIFY_SOCKET, and $WATCHDOG_USEC when $WATCHDOG_PID is unset or this process."""
        watchdog = None
        if environ.get("WATCHDOG_PID", str(pid)) == str(pid):
            try:
                watchdog = int(environ.get("WATCHDOG_USEC", "0")) / 1e6 or None
            except ValueError:
                watchdog = None
        return cls(environ.get("NOTIFY_SOCKET"), watchdog)

    def send(self, *lines: str) -> None:
        if not self._address:
            return
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait on the receiver: a full queue must not stall the dispatcher (or
                # keep it from seeing SIGTERM); a lost STATUS line is replaced 10 s later.
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            logger.debug("cannot notify systemd (%s)", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self, now: float) -> None:
        """WATCHDOG=1 when due (`now`: a monotonic time). Called from the main loop alone, so a
        loop that hangs stops the pings, and systemd kills and restarts the agent."""
        if self.watchdog_every is None or now < self._next_ping:
            return
        self.send("WATCHDOG=1")
        self._next_ping = now + self.watchdog_every

    def extend_timeout(self, seconds: float, status: str) -> None:
        """While stopping: systemd waits `seconds` more for the next message, beyond its
        TimeoutStopSec=, as long as these keep coming."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={status}")
