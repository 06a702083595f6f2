"""A stand-in for the clouds' instance metadata services, on 127.0.0.1, as strict as the real
ones about what the agent's preemption watch relies on (agent/notice.py):

- EC2 IMDSv2: a PUT to /latest/api/token with a TTL header gives a token; every GET without
  that token is 401. `spot/instance-action` and `events/recommendations/rebalance` are 404
  until a notice is set.
- GCE: every request needs `Metadata-Flavor: Google` (403 without); `instance/preempted` is
  FALSE or TRUE, and with `wait_for_change=true` the answer waits until the value differs from
  the one `last_etag` names (or `timeout_sec` passes), as GCE's does.
- Azure: `Metadata: true` or 400; /metadata/scheduledevents lists the events set.

A test may set any answer at a path (`answers`: status and bytes, served as they are once the
cloud's header or token is checked), to see the watch take what no real service should send.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union
from urllib.parse import parse_qs, urlsplit

TOKEN = "AQAEAstand-in-token=="


@dataclass
class Metadata:
    url: str = ""
    spot_action: Optional[dict[str, str]] = None  # EC2's instance-action document
    rebalance: Optional[dict[str, str]] = None
    preempted: bool = False  # GCE
    events: list[dict[str, Any]] = field(default_factory=list)  # Azure's scheduled events
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # path: served as is
    requests: list[str] = field(default_factory=list)  # "METHOD path", as asked
    changed: threading.Condition = field(default_factory=threading.Condition)

    def preempt(self, preempted: bool = True) -> None:
        with self.changed:
            self.preempted = preempted
            self.changed.notify_all()


Answer = tuple[int, Union[str, bytes], dict[str, str]]  # status, body, headers


def _ec2(state: Metadata, path: str, headers: Message) -> Answer:
    if headers.get("X-aws-ec2-metadata-token") != TOKEN:
        return 401, "", {}
    document = {
        "/latest/meta-data/spot/instance-action": state.spot_action,
        "/latest/meta-data/events/recommendations/rebalance": state.rebalance,
    }.get(path)
    return (404, "", {}) if document is None else (200, json.dumps(document), {})


def _gce(state: Metadata, path: str, query: dict[str, list[str]], headers: Message) -> Answer:
    if headers.get("Metadata-Flavor") != "Google":
        return 403, "", {}
    if path != "/computeMetadata/v1/instance/preempted":
        return 404, "", {}

    def now() -> str:
        return "TRUE" if state.preempted else "FALSE"

    if query.get("wait_for_change") == ["true"]:
        last = query.get("last_etag", [now()])[0]
        with state.changed:
            state.changed.wait_for(
                lambda: now() != last, float(query.get("timeout_sec", ["60"])[0])
            )
    return 200, now(), {"ETag": now()}


def _azure(state: Metadata, headers: Message) -> Answer:
    if headers.get("Metadata") != "true":
        return 400, "", {}
    body = {"DocumentIncarnation": len(state.events), "Events": state.events}
    return 200, json.dumps(body), {}


def _get(state: Metadata, target: str, headers: Message) -> Answer:
    url = urlsplit(target)
    if url.path in state.answers:
        allowed = {
            "/latest/": headers.get("X-aws-ec2-metadata-token") == TOKEN,
            "/computeMetadata/": headers.get("Metadata-Flavor") == "Google",
            "/metadata/": headers.get("Metadata") == "true",
        }
        if all(ok for start, ok in allowed.items() if url.path.startswith(start)):
            status, body = state.answers[url.path]
            return status, body, {}
    if url.path.startswith("/latest/"):
        return _ec2(state, url.path, headers)
    if url.path.startswith("/computeMetadata/"):
        return _gce(state, url.path, parse_qs(url.query), headers)
    if url.path == "/metadata/scheduledevents":
        return _azure(state, headers)
    return 404, "", {}


@contextmanager
def metadata_server() -> Iterator[Metadata]:
    state = Metadata()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, answer: Answer) -> None:
            status, body, headers = answer
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            state.requests.append(f"PUT {self.path}")
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            ok = self.path == "/latest/api/token" and ttl
            self._send((200, TOKEN, {}) if ok else (400, "", {}))

        def do_GET(self) -> None:
            state.requests.append(f"GET {self.path}")
            self._send(_get(state, self.path, self.headers))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        with state.changed:
            state.changed.notify_all()
        server.shutdown()
        server.server_close()
