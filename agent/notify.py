"""systemd's notification protocol (sd_notify): READY=1, STATUS=..., STOPPING=1.

Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call does nothing.
"""

from __future__ import annotations

import logging
import socket
from typing import Optional

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: Optional[str]) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None

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
