"""One file to one object: the store client. `Uploader.upload(grant, path, key)` opens the file
once per attempt (agent.files: beneath the watch dir, checked by fstat), judges it against the
grant, reads it once for its SHA-256 where the grant signs one (agent.properties; the form's
fields precede the file), streams it (agent.body: a multipart POST, or the body of a PUT), and
reads the answer (agent.answer); transient faults are retried by the one retry policy
(agent.retry) until the grant's deadline (agent.deadline). requests' exceptions become ours in
`_send`, and nowhere else; the session it sends through is made in agent.session.

The grant is an argument, not the uploader's state: every attempt of one upload uses the grant
the upload was decided under, whatever grant the agent takes meanwhile.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional, cast

import requests
import tenacity
import urllib3
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from agent.answer import Answer, classify
from agent.bandwidth import Limiter
from agent.body import LARGE_BYTES, HashingBody, InFlight, Sending, read_sha256
from agent.deadline import Deadline
from agent.errors import (
    FileChangedError,
    PreflightError,
    RejectedUploadError,
    TransientUploadError,
    UploadError,
)
from agent.files import anchor, open_beneath
from agent.form import FormBody, file_name
from agent.grant import AnyGrant, Grant, PutGrant
from agent.outcome import Receipt
from agent.policy import MAX_POST_SIZE, Policy, violations
from agent.properties import (
    MANIFEST_TYPE,
    content_type,
    needs_sha256,
    object_fields,
    without_sha256,
)
from agent.retry import retry_policy
from agent.shown import printable
from agent.versions import FileVersion

if TYPE_CHECKING:
    from _typeshed import SupportsRead

logger = logging.getLogger(__name__)
_Route = tuple[BaseAdapter, Mapping[str, str], Any]  # an adapter, its proxies, its verification

_MAX_ERROR_BODY = 64 * 1024
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Probe:
    """The store's answer to an unsigned HEAD of the grant's URL; `status` None: no answer."""

    status: Optional[int]
    region: Optional[str] = None  # x-amz-bucket-region, where the store names it
    error: str = ""  # why there was no answer (the exception's name)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 120.0


class Uploader:
    def __init__(
        self,
        session: requests.Session,
        *,
        deadline: Optional[Deadline] = None,
        timeouts: Optional[Timeouts] = None,
        sleep: Optional[Callable[[float], object]] = None,
        stopping: Optional[threading.Event] = None,
        max_attempts: int = 0,
        root: Optional[Path] = None,
        monotonic: Callable[[], float] = time.monotonic,
        large_bytes: int = LARGE_BYTES,
        inflight: Optional[InFlight] = None,
        limiter: Optional[Limiter] = None,
    ) -> None:
        self._session = session
        self.limiter = limiter  # POSTBOX_BANDWIDTH_LIMIT, shared by every body sent
        self._monotonic = monotonic  # for progress lines
        self._large_bytes = large_bytes
        self.inflight = inflight or InFlight()  # what status and the metrics read
        self.deadline = deadline or Deadline()  # when no attempt may start, and the store's time
        self._timeouts = timeouts or Timeouts()
        self._stopping = stopping or threading.Event()
        self._sleep = sleep or self._stopping.wait  # a shutdown cuts a backoff short
        self._max_attempts = max_attempts
        self.root = root  # the watch dir: files under it are opened folder by folder from it
        # Per URL: the adapter, and the proxies and TLS verification the environment asks for,
        # looked up once (requests' Session.request looked them up, and ~/.netrc, per upload).
        self._routes: dict[str, _Route] = {}

    @property
    def stopping(self) -> bool:
        """The daemon is stopping: no new upload should begin."""
        return self._stopping.is_set()

    def probe(self, grant: AnyGrant, timeout: float = 5.0) -> Probe:
        """One unsigned HEAD to the grant's URL, which teaches the store clock the store's Date
        (any answer has one, an error too) and tells whether the bucket is there."""
        sent = self.deadline.local()
        try:
            answer = self._session.head(grant.url, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Probe(None, error=exc.__class__.__name__)
        self.deadline.learn(answer.headers, sent)
        return Probe(answer.status_code, answer.headers.get("x-amz-bucket-region"))

    def upload(
        self, grant: AnyGrant, path: Path, key: str, piece: Optional[Piece] = None
    ) -> Receipt:
        """Send `path` (or the `piece` of it) as `key` under `grant`, retrying transient
        faults; UploadError when not."""
        return self._retrying(grant, key)(self.send_once, grant, path, key, piece)

    def send_once(
        self, grant: AnyGrant, path: Path, key: str, piece: Optional[Piece] = None
    ) -> Receipt:
        """One attempt: preflight, stream, classify. Raises UploadError subclasses only."""
        with open_beneath(anchor(path, self.root), path) as stream:
            before = os.fstat(stream.fileno())
            size = before.st_size if piece is None else piece.size
            if piece is not None:
                if piece.version != FileVersion.of(before):
                    raise FileChangedError("the file changed between its parts")
                stream.seek(piece.offset)
            if piece is None or piece.whole is None:
                progress = self.progress(key, size)
            else:  # a part speaks through its file's progress, which it adds to
                progress = Sending(key, size, self._monotonic, loud=False, whole=piece.whole)
            try:
                return self._stream(grant, stream, before, key, progress, name=path.name)
            except BaseException:
                progress.take_back()
                raise

    def progress(self, key: str, size: int, *, done: int = 0, detail: str = "") -> Sending:
        """An upload's progress, which speaks (as it starts, then how it goes) from
        `large_bytes` on; `done`: bytes stored before (a file's parts a restart skips)."""
        loud = size >= self._large_bytes
        return Sending(key, size, self._monotonic, loud=loud, done=done, detail=detail)

    def _stream(
        self,
        grant: AnyGrant,
        stream: IO[bytes],
        before: os.stat_result,
        key: str,
        progress: Sending,
        *,
        name: str,
    ) -> Receipt:
        """Send `progress.size` bytes of the open file called `name`, from where it stands, as
        `key`; the store's answer, classified."""
        sent: Mapping[str, str] = (
            grant.headers
            if isinstance(grant, PutGrant)
            else self._form(
                grant, key, stream, progress.size, name=name, mtime_ns=before.st_mtime_ns
            )
        )
        body = HashingBody(stream, progress.size, progress, self.limiter)
        self.inflight.sending[key] = progress
        try:
            if isinstance(grant, PutGrant):
                answer = self._put(grant, body)
            else:
                answer = self._post(grant, dict(sent), body, key)
        finally:
            body.close()
            self.inflight.sending.pop(key, None)
        after = os.fstat(stream.fileno())
        if FileVersion.of(after) != FileVersion.of(before):
            raise FileChangedError("the file changed while it was sent")
        md5 = body.md5.hexdigest()
        etag = _confirmed(answer, grant, sent, key, md5)
        return Receipt(key, FileVersion.of(before), md5, etag, answer.status)

    def _form(
        self, grant: Grant, key: str, stream: IO[bytes], size: int, *, name: str, mtime_ns: int
    ) -> dict[str, str]:
        """The form for `key`: the grant's fields, and the object's properties its policy signs
        (agent/properties.py). Its SHA-256 precedes the file in the form: when the policy names
        it, the next `size` bytes are read once for it, and the stream put back; the form is
        judged on the rest first, so a file the grant refuses is not read for nothing. A change
        after the read is the one the versions before and after the send find."""
        form = grant.form(key)
        policy = grant.policy
        kind = content_type(name)
        sha256 = None
        if needs_sha256(policy):
            early = {
                **form,
                **object_fields(policy, form, kind=kind, mtime_ns=mtime_ns, sha256=None),
            }
            self._judge(grant, without_sha256(policy), early, size)
            sha256 = read_sha256(stream, size)
        return {**form, **object_fields(policy, form, kind=kind, mtime_ns=mtime_ns, sha256=sha256)}

    def upload_bytes(self, grant: Grant, key: str, data: bytes, *, mtime_ns: int) -> str:
        """Send `data` as `key` (a manifest: agent/parts.py, whose file's time is `mtime_ns`),
        retrying transient faults; the store's ETag. UploadError when not."""
        return self._retrying(grant, key)(self._bytes_once, grant, key, data, mtime_ns)

    def _retrying(self, grant: AnyGrant, key: str) -> tenacity.Retrying:
        """The one retry policy (agent/retry.py), until the grant's deadline."""
        if self.deadline.to_start(grant) <= 0:
            raise TransientUploadError("no time left before the grant expires")
        return retry_policy(
            seconds_left=lambda: self.deadline.to_start(grant),
            stopping=self._stopping,
            sleep=self._sleep,
            max_attempts=self._max_attempts,
            key=key,
            on_retry=self.inflight.retried,
        )

    def _bytes_once(self, grant: Grant, key: str, data: bytes, mtime_ns: int) -> str:
        body = HashingBody(io.BytesIO(data), len(data), limiter=self.limiter)
        given = grant.form(key)
        sha256 = hashlib.sha256(data).digest() if needs_sha256(grant.policy) else None
        form = {
            **given,
            **object_fields(
                grant.policy, given, kind=MANIFEST_TYPE, mtime_ns=mtime_ns, sha256=sha256
            ),
        }
        answer = self._post(grant, form, body, key)
        return _confirmed(answer, grant, form, key, body.md5.hexdigest())

    def _judge(self, grant: Grant, policy: Policy, form: Mapping[str, str], size: int) -> None:
        """PreflightError naming every rule of `policy` the form would break."""
        refused = violations(policy, form, size, grant.bucket, self.deadline.now())
        if refused:
            raise PreflightError("; ".join(refused))

    def _post(self, grant: Grant, form: dict[str, str], body: HashingBody, key: str) -> Answer:
        """Judge the form against the policy, then stream it as multipart/form-data."""
        self._judge(grant, grant.policy, form, body.len)
        encoded = FormBody(form, file_name(key), body)
        headers = {"Content-Type": encoded.content_type, "Content-Length": str(encoded.len)}
        return self._send("POST", grant.url, encoded, headers)

    def _put(self, grant: PutGrant, body: HashingBody) -> Answer:
        """Check the URL's expiry and S3's size limit, then stream the file as the body."""
        size = body.len
        if self.deadline.left(grant) <= 0:
            raise PreflightError(f"the URL expired at {grant.expiration:%Y-%m-%d %H:%M:%S} UTC")
        if size > MAX_POST_SIZE:
            raise PreflightError(f"size {size} is over S3's single-PUT limit of {MAX_POST_SIZE}")
        headers = {**grant.headers, "Content-Length": str(size)}
        return self._send("PUT", grant.url, body, headers)

    def _route(self, url: str) -> _Route:
        """The session's adapter for `url`, and the proxies and verification its environment
        settings give (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE...), as Session.request would
        take them, once per URL. The upload goes straight to the adapter: no cookies, hooks,
        redirects or netrc lookups, which an upload has no use for and paid for each time."""
        route = self._routes.get(url)
        if route is None:
            session = self._session
            settings = session.merge_environment_settings(url, {}, None, session.verify, None)
            route = (session.get_adapter(url), dict(settings["proxies"]), settings["verify"])
            self._routes[url] = route
        return route

    def _send(
        self, method: str, url: str, data: SupportsRead[bytes], headers: dict[str, str]
    ) -> Answer:
        """The seam to the network: requests' exceptions become ours here and nowhere else."""
        sent = self.deadline.local()
        try:
            adapter, proxies, verify = self._route(url)
            request = requests.PreparedRequest()
            request.method, request.url = method, url
            request.body = data  # type: ignore[assignment]  # read in blocks by urllib3
            request.headers = CaseInsensitiveDict(
                {**cast(Mapping[str, str], self._session.headers), **headers}
            )
            with adapter.send(
                request,
                stream=True,
                timeout=(self._timeouts.connect, self._timeouts.read),
                verify=verify,
                proxies=proxies,
            ) as response:
                self.deadline.learn(response.headers, sent)
                # An error document or a PostResponse is small: read a bounded amount.
                content = response.raw.read(_MAX_ERROR_BODY, decode_content=True)
                return Answer(
                    response.status_code, response.reason or "", response.headers, content
                )
        except UploadError:
            raise
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            raise TransientUploadError("the store did not answer in time") from None
        # Reading the answer's body through `raw` raises urllib3's own exceptions (an answer cut
        # short is a ProtocolError), not requests'.
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientUploadError(f"connection failed ({exc.__class__.__name__})") from None


def _confirmed(answer: Answer, grant: AnyGrant, sent: Mapping[str, str], key: str, md5: str) -> str:
    """The store's ETag, once its answer says it stored `key` with the MD5 sent."""
    stored = classify(answer, grant.redirect if isinstance(grant, Grant) else None)
    if stored.key and stored.key != key:
        raise RejectedUploadError(
            f"the store kept it as {printable(stored.key)!r}, not as the key sent",
            status=answer.status,
        )
    etag = stored.etag
    # With SSE-KMS, S3's ETag is not the MD5 of the content.
    sse = {k.lower(): v for k, v in sent.items()}.get("x-amz-server-side-encryption", "")
    if _MD5_HEX.match(etag) and etag != md5 and not sse.startswith("aws:kms"):
        raise TransientUploadError(f"the store's ETag {etag} is not the MD5 {md5} sent")
    return etag


@dataclass(frozen=True)
class Piece:
    """A byte range of one version of a file, sent as an object of its own (agent/parts.py)."""

    offset: int
    size: int
    version: FileVersion
    whole: Optional[Sending] = None  # the file's progress, which this piece's bytes add to
