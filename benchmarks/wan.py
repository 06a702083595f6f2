"""A simulated WAN on 127.0.0.1: a TCP proxy that adds round-trip time and caps each connection.

One TCP stream to S3 carries far less than an instance's bandwidth (its window, the round
trip); this stands in for that: every byte arrives `rtt / 2` late in each direction, and each
connection is paced to `rate` bytes a second in each direction. It also counts the bytes sent
upstream, and when the first and the last of them went, so a benchmark can say how much a
resume sent in all, and at what rate a limited agent sends (rtt 0, no rate: a counter).
Standard library only: for each direction of each connection, a thread reads as bytes come and
another forwards them when due.
Between the two, at most WINDOW bytes wait, as a TCP window holds a link's bytes in flight: a
sender is held back by the link, as on a real one, instead of handing the proxy its whole file
at once (the proxy held 1.6 GB of a 2 GiB file sent whole, and spent the CPU to hold it).
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

CHUNK = 256 * 1024
WINDOW = 16 * CHUNK  # 4 MiB: over the 1 MiB a 50 MiB/s link at 20 ms holds in flight


class Wan:
    def __init__(self, upstream: str, rtt: float, rate: float) -> None:
        target = urlsplit(upstream)
        self._address = (target.hostname or "127.0.0.1", target.port or 80)
        self.rtt, self.rate = rtt, rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.upstream_bytes = 0  # sent towards the server, every connection
        self.first_at, self.last_at = 0.0, 0.0  # when the first and the last of them went
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def serve(self) -> None:
        self._listener.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self._address)
            for end in (client, server):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, server, upstream=True)
            self._pipe(server, client, upstream=False)

    def reset(self) -> None:
        """Count from here (after a start's probe, say)."""
        with self._lock:
            self.upstream_bytes, self.first_at, self.last_at = 0, 0.0, 0.0

    def upstream_rate(self) -> float:
        """Bytes a second sent upstream, from the first to the last counted."""
        with self._lock:
            return self.upstream_bytes / max(self.last_at - self.first_at, 1e-9)

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()

    def _pipe(self, source: socket.socket, sink: socket.socket, *, upstream: bool) -> None:
        line: queue.Queue[tuple[float, bytes]] = queue.Queue(WINDOW // CHUNK)
        threading.Thread(target=self._read, args=(source, line), daemon=True).start()
        args = (line, source, sink, upstream)
        threading.Thread(target=self._forward, args=args, daemon=True).start()

    def _read(self, source: socket.socket, line: queue.Queue[tuple[float, bytes]]) -> None:
        with suppress(OSError):
            while chunk := source.recv(CHUNK):
                line.put((time.monotonic(), chunk))
        line.put((0.0, b""))

    def _forward(
        self,
        line: queue.Queue[tuple[float, bytes]],
        source: socket.socket,
        sink: socket.socket,
        upstream: bool,
    ) -> None:
        """Each chunk `rtt / 2` after it came, the whole paced to `rate`: latency, not a pause
        per chunk."""
        began, moved = time.monotonic(), 0
        with suppress(OSError):
            while True:
                came, chunk = line.get()
                if not chunk:
                    break
                moved += len(chunk)
                pause = max(came + self.rtt / 2, began + moved / self.rate) - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                sink.sendall(chunk)
                if upstream:
                    with self._lock:
                        self.upstream_bytes += len(chunk)
                        self.last_at = time.monotonic()
                        self.first_at = self.first_at or self.last_at
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@contextmanager
def wan(upstream: str, *, rtt: float = 0.020, rate: float = 50 * 1024**2) -> Iterator[Wan]:
    proxy = Wan(upstream, rtt, rate)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(5)
