"""A small HTTP proxy on 127.0.0.1 between the agent and the store that answers with faults.

Each request takes the next answer from `script` (then `default`): "forward" passes it to the
store, `(status, code, message)` answers with an S3 error document instead. Every request is
counted with the size of the body it carried, so a test can say "nothing was sent".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Union

import requests

Answer = Union[str, tuple[int, str, str]]
FORWARD = "forward"


@dataclass
class FaultProxy:
    upstream: str
    script: list[Answer] = field(default_factory=list)
    default: Answer = FORWARD
    requests: list[tuple[str, int]] = field(default_factory=list)  # (method, body bytes)
    bodies: list[bytes] = field(default_factory=list)  # the first 64 KiB of each body
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
            body = self.rfile.read(length) if length else b""
            proxy.requests.append((method, len(body)))
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
                self._send(upstream.status_code, upstream.content, upstream.headers.get("ETag"))
            else:
                status, code, message = answer
                document = (
                    f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code>"
                    f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
                ).encode()
                self._send(status, document, None)

        def _send(self, status: int, body: bytes, etag: str | None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if etag:
                self.send_header("ETag", etag)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


@contextmanager
def fault_proxy(upstream: str, *script: Answer, default: Answer = FORWARD) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, list(script), default)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
