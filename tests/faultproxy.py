"""A small HTTP proxy on 127.0.0.1 between the agent and the store that answers with faults.

Each request takes the next answer from its key's script (`by_key`), else from `script`, else
`default`:

- FORWARD passes it to the store and its answer back;
- `(status, code, message)` answers with an S3 error document instead;
- RESET reads part of the body, then resets the connection (TCP RST);
- CLOSE reads the body, then closes the connection without answering;
- STALL reads the body, then answers nothing for `stall_seconds`, then closes;
- TRUNCATE passes it to the store (which stores the object), then sends only half the answer;
- HOLD reads nothing for `stall_seconds`, or until the test sets `released` (the agent's send
  blocks once the socket buffers are full), then reads the body and passes it to the store.

It also serves as the agent's HTTP_PROXY (a request naming the whole URL). HEAD requests (the
agent's clock probe at start) are passed to the store and only counted in
`heads`. Every other request is counted with the size of the body it carried, so a test can say
"nothing was sent", and recorded as an `Exchange` (the form's key, when it began, what was
answered), so a test can say which uploads were under way at a given moment, which the store
confirmed, and how far apart the attempts were.

Python's http.server is enough here (toxiproxy and mitmproxy are not packaged for Debian 12, and
a fault needs to know the upload's key, which only an HTTP-aware proxy sees).
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Union
from urllib.parse import urlsplit

import requests

FORWARD, RESET, CLOSE, STALL, TRUNCATE = "forward", "reset", "close", "stall", "truncate"
HOLD = "hold"
Answer = Union[str, tuple[int, str, str]]
_KEY_FIELD = re.compile(rb'name="key"\r\n\r\n(.*?)\r\n', re.DOTALL)
_RESET_AFTER = 64 * 1024  # bytes of the body read before a RESET


@dataclass
class Exchange:
    """One request through the proxy."""

    method: str
    key: str
    began: float  # time.monotonic()
    answer: str = ""  # FORWARD, a fault's name, or the scripted status as text
    status: int = 0  # what the store (or the script) answered; -1: the body was cut short
    delivered: bool = False  # the whole answer went out to the agent


@dataclass
class FaultProxy:
    upstream: str
    script: list[Answer] = field(default_factory=list)
    default: Answer = FORWARD
    by_key: dict[str, list[Answer]] = field(default_factory=dict)
    stall_seconds: float = 5.0
    hold_all: bool = False  # every request waits `stall_seconds` before its body is read
    requests: list[tuple[str, int]] = field(default_factory=list)  # (method, body bytes)
    bodies: list[bytes] = field(default_factory=list)  # the first 64 KiB of each body
    exchanges: list[Exchange] = field(default_factory=list)
    keep_bodies: bool = True
    heads: int = 0  # HEAD requests (the agent's clock probe), forwarded, in no other count
    released: threading.Event = field(default_factory=threading.Event)  # ends every HOLD now
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, key: str) -> Answer:
        with self._lock:
            if self.by_key.get(key):
                return self.by_key[key].pop(0)
            return self.script.pop(0) if self.script else self.default

    @property
    def posts(self) -> int:
        return sum(1 for method, _ in self.requests if method == "POST")

    def attempts(self, key: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.key == key]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self._answer("POST")

        def do_GET(self) -> None:  # a renewal URL's fetch (agent/renewal.py)
            self._answer("GET")

        def do_HEAD(self) -> None:
            """The agent's start-up probe for the store's Date (agent/clock.py): passed to the
            store and counted in `heads`, apart from the uploads the scripts are about."""
            proxy.heads += 1
            upstream = requests.head(proxy.upstream + self._target(), timeout=30)
            self.send_response(upstream.status_code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _target(self) -> str:
            """The path asked for: a client sending through this proxy as its HTTP_PROXY
            names the whole URL (absolute-form), one sent to it as the store only the path."""
            if "://" not in self.path:
                return self.path
            parts = urlsplit(self.path)
            return parts.path + (f"?{parts.query}" if parts.query else "")

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            exchange = Exchange(method, "", time.monotonic())
            proxy.exchanges.append(exchange)
            if proxy.hold_all:
                time.sleep(proxy.stall_seconds)
            head = self.rfile.read(min(length, _RESET_AFTER)) if length else b""
            found = _KEY_FIELD.search(head)
            exchange.key = found.group(1).decode("utf-8", "replace") if found else ""
            answer = proxy.next_answer(exchange.key)
            exchange.answer = answer if isinstance(answer, str) else str(answer[0])
            if answer == RESET:
                proxy.requests.append((method, len(head)))
                self._reset()
                return
            if answer == HOLD:
                proxy.released.wait(proxy.stall_seconds)
            body = head + (self.rfile.read(length - len(head)) if length > len(head) else b"")
            proxy.requests.append((method, len(body)))
            if proxy.keep_bodies:
                proxy.bodies.append(body[:65536])
            if len(body) < length:  # the agent went away mid-body: S3 would store nothing
                exchange.status = -1
                self.close_connection = True
                return
            if answer in (CLOSE, STALL):
                if answer == STALL:
                    time.sleep(proxy.stall_seconds)
                self.close_connection = True
                return
            if answer in (FORWARD, TRUNCATE, HOLD):
                upstream = requests.request(
                    method,
                    proxy.upstream + self._target(),
                    data=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    timeout=30,
                )
                exchange.status = upstream.status_code
                etag = upstream.headers.get("ETag")
                self._send(upstream.status_code, upstream.content, etag, whole=answer != TRUNCATE)
            else:
                assert isinstance(answer, tuple), answer
                status, code, message = answer
                document = (
                    f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code>"
                    f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
                ).encode()
                exchange.status = status
                self._send(status, document, None)
            exchange.delivered = answer != TRUNCATE

        def _reset(self) -> None:
            """Abort the connection: SO_LINGER 0 makes close() send a TCP RST."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        def _send(self, status: int, body: bytes, etag: str | None, whole: bool = True) -> None:
            self.send_response(status)
            # A truncated answer promises more than it sends (at least 2 bytes, even for moto's
            # empty 201), so the agent sees the answer end early.
            self.send_header("Content-Length", str(len(body) if whole else max(len(body), 2)))
            if etag:
                self.send_header("ETag", etag)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body if whole else body[: len(body) // 2])
            self.wfile.flush()
            if not whole:
                self.close_connection = True

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """An agent that went away (killed, timed out) is part of the tests; nothing else is."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, ValueError, OSError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def fault_proxy(upstream: str, *script: Answer, default: Answer = FORWARD) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, list(script), default)
    server = _Server(("127.0.0.1", 0), _handler(proxy))
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
