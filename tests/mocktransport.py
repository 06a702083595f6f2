"""A store without a server, for the fast tier: a requests transport adapter that hands every
request to a handler the test writes, as httpx's MockTransport does. The request's body is read
to its end first, as a server reads it, so the agent streams and hashes the file for real.

The real-server tests (moto, Ceph RGW) stay the reference; this tier is for the delivery and
retry rules, table by table, in milliseconds.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import requests
import urllib3
from requests.adapters import BaseAdapter


@dataclass(frozen=True)
class Sent:
    """One request as the store would have received it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def field(self, name: str) -> Optional[str]:
        """A multipart form field's value (None if the form has no such field)."""
        marker = f'name="{name}"\r\n\r\n'.encode()
        start = self.body.find(marker)
        if start < 0:
            return None
        start += len(marker)
        return self.body[start : self.body.index(b"\r\n--", start)].decode()

    def file(self) -> bytes:
        """The form's file part (a POST), or the whole body (a PUT)."""
        if self.method != "POST":
            return self.body
        start = self.body.index(b"\r\n\r\n", self.body.index(b'name="file"')) + 4
        return self.body[start : self.body.rindex(b"\r\n--")]


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
Handler = Callable[[Sent], Union[Answer, Exception]]  # an exception is raised as requests would


@dataclass
class MockTransport(BaseAdapter):
    handler: Handler
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        sent = Sent(
            request.method or "", request.url or "", dict(request.headers), _read(request.body)
        )
        self.sent.append(sent)
        answer = self.handler(sent)
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body), headers=headers, status=status, preload_content=False
        )
        response = requests.Response()
        response.status_code, response.headers, response.raw = status, raw.headers, raw
        response.reason, response.url, response.request = "", sent.url, request
        return response

    def close(self) -> None:
        pass


def _read(body: Any) -> bytes:
    """The whole body, however the agent streams it (bytes, or a file-like read in blocks)."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    chunks = []
    while chunk := body.read(1024 * 1024):
        chunks.append(chunk)
    return b"".join(chunks)


def session(transport: MockTransport) -> requests.Session:
    """A session whose every request goes to `transport`."""
    mocked = requests.Session()
    mocked.mount("http://", transport)
    mocked.mount("https://", transport)
    return mocked


def post_response(key: str, etag: str) -> Answer:
    """S3's 201 to a POST with success_action_status=201 (the ETag quoted, as AWS quotes it)."""
    xml = (
        "<?xml version='1.0' encoding='UTF-8'?><PostResponse><Location>x</Location>"
        f'<Bucket>fast</Bucket><Key>{key}</Key><ETag>"{etag}"</ETag></PostResponse>'
    )
    return 201, {"Content-Type": "application/xml"}, xml.encode()


def error(status: int, code: str, message: str) -> Answer:
    xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return status, {"Content-Type": "application/xml"}, xml.encode()
