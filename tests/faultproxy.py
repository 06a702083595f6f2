"""A small HTTP proxy on 127.0.0.1 between the agent and the store that answers with faults.

Each request takes the next answer from `script` (then `default`): "forward" passes it to the
store, `(status, code, message)` answers with an S3 error document instead. Every request is
counted with the size of the body it carried, so a test can say "nothing was sent", and recorded
as an `Exchange` (the form's key, the status answered, when it began and ended), so a test can say
which uploads were under way at a given moment and which the store confirmed.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Union

import requests

Answer = Union[str, tuple[int, str, str]]
FORWARD = "forward"
_KEY_FIELD = re.compile(rb'name="key"\r\n\r\n(.*?)\r\n', re.DOTALL)


@dataclass
class Exchange:
    """One request through the proxy; `status` is 0 until the answer went out."""

    method: str
    key: str
    began: float  # time.monotonic()
    status: int = 0  # what the store (or the script) answered; -1: the body was cut short
    delivered: bool = False  # the answer reached the agent


@dataclass
class FaultProxy:
    upstream: str
    script: list[Answer] = field(default_factory=list)
    default: Answer = FORWARD
    requests: list[tuple[str, int]] = field(default_factory=list)  # (method, body bytes)
    bodies: list[bytes] = field(default_factory=list)  # the first 64 KiB of each body
    exchanges: list[Exchange] = field(default_factory=list)
    keep_bodies: bool = True
    url: str = ""

    def next_answer(self) -> Answer:
        return self.script.pop(0) if self.script else self.default

    @property
    def posts(self) -> int:
        return sum(1 for method, _ in self.requests if method == "POST")


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self._answer("POST")

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            exchange = Exchange(method, "", time.monotonic())
            proxy.exchanges.append(exchange)
            body = self.rfile.read(length) if length else b""
            found = _KEY_FIELD.search(body[:65536])
            exchange.key = found.group(1).decode("utf-8", "replace") if found else ""
            if len(body) < length:  # the agent went away mid-body: S3 would store nothing
                exchange.status = -1
                self.close_connection = True
                return
            proxy.requests.append((method, len(body)))
            if proxy.keep_bodies:
                proxy.bodies.append(body[:65536])
            answer = proxy.next_answer()
            if answer == FORWARD:
                upstream = requests.request(
                    method,
                    proxy.upstream + self.path,
                    data=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    timeout=30,
                )
                exchange.status = upstream.status_code
                self._send(upstream.status_code, upstream.content, upstream.headers.get("ETag"))
            else:
                status, code, message = answer
                document = (
                    f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code>"
                    f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
                ).encode()
                exchange.status = status
                self._send(status, document, None)
            exchange.delivered = True

        def _send(self, status: int, body: bytes, etag: str | None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if etag:
                self.send_header("ETag", etag)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """An agent that went away (killed, timed out) is part of the tests; nothing else is."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
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
