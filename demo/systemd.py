"""What systemd does for the agent in the demo, the tests and the benchmarks: the notify socket."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path


class NotifyListener:
    """Receives the agent's sd_notify messages, as systemd would for Type=notify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, socket.timeout):
                self.messages.append(self._sock.recv(4096).decode())

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not any(text in m for m in self.messages):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
