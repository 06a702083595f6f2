"""One file to one object: a streaming multipart POST, what the store's answer means, and retries.

`Uploader.upload(grant, path, key)` opens the file once per attempt (agent.files: beneath the
watch dir, checked by fstat), judges it against the grant, streams it (a multipart POST, or the
body of a PUT; memory bounded by a few 1 MiB blocks, MD5 computed on the way), and reads the
answer: 2xx is done, 5xx/429/timeouts/resets are retried with exponential backoff and jitter until
the grant's deadline, any other refusal is final. requests' exceptions become ours in `_send`, and
nowhere else.

The grant is an argument, not the uploader's state: every attempt of one upload uses the grant
the upload was decided under, whatever grant the agent takes meanwhile.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import logging
import os
import queue
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Optional
from urllib.parse import parse_qs

import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter
from requests_toolbelt import MultipartEncoder

from agent import __version__
from agent.clock import StoreClock, format_left, utc_now
from agent.errors import (
    FileChangedError,
    PreflightError,
    RejectedUploadError,
    TransientUploadError,
    UploadError,
)
from agent.files import FileVersion, anchor, open_beneath
from agent.grant import AnyGrant, Grant, PutGrant
from agent.logs import printable
from agent.policy import MAX_POST_SIZE, violations

if TYPE_CHECKING:
    from _typeshed import SupportsRead

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024  # what is read from the file and written to the socket at once
READ_AHEAD_BYTES = 8 * CHUNK_SIZE  # bodies from this size on are read and hashed on a thread
READ_AHEAD_DEPTH = 2  # blocks read ahead of the socket
LARGE_BYTES = 64 * 1024**2  # an upload this large says when it starts, and how it goes
PROGRESS_SECONDS = 10.0  # at most one progress line this often, per upload
_MAX_ERROR_BODY = 64 * 1024
USER_AGENT = f"s3-postbox-agent/{__version__}"  # every request the agent makes says it
# Answers worth another try: the store is busy or failed, not the request wrong (AWS: "Retry
# behavior"); 400 RequestTimeout/IncompleteBody means the body arrived too slowly or cut short.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"RequestTimeout", "IncompleteBody", "SlowDown", "InternalError"})
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Receipt:
    """What the store confirmed for one file."""

    key: str
    version: FileVersion
    md5: str
    etag: str
    status: int


@dataclass(frozen=True)
class Probe:
    """The store's answer to an unsigned HEAD of the grant's URL; `status` None: no answer."""

    status: Optional[int]
    region: Optional[str] = None  # x-amz-bucket-region, where the store names it
    error: str = ""  # why there was no answer (the exception's name)


@dataclass(frozen=True)
class Stored:
    """What a 2xx answer says was stored; empty where the answer does not say (200, 204)."""

    etag: str
    key: str = ""  # the key the store says it kept, where it says one


@dataclass(frozen=True)
class Answer:
    """The store's answer to one POST, as far as the agent reads it."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 120.0


class _HashingBody:
    """The file part of the form: reads exactly `size` bytes, hashing them on the way.

    `len` (remaining bytes) is how requests-toolbelt learns the part's length; a file that ends
    early raises FileChangedError instead of sending a short body. A large body is read and
    hashed on a thread of its own, a few blocks ahead, so MD5 runs while the socket sends
    (hashlib and socket writes both release the GIL); `close` ends that thread.
    """

    def __init__(self, stream: IO[bytes], size: int, progress: Optional[_Progress] = None) -> None:
        self._stream = stream
        self._left = size
        self._progress = progress
        self.md5 = hashlib.md5()  # noqa: S324  (S3's ETag for a single-part upload is its MD5)
        self._ahead = _ReadAhead(stream, size, self.md5) if size >= READ_AHEAD_BYTES else None
        self._block = b""

    @property
    def len(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        want = min(want, CHUNK_SIZE)
        if want == 0:
            return b""
        if self._ahead is None:
            data = self._stream.read(want)
            self.md5.update(data)
        else:
            if not self._block:
                self._block = self._ahead.next()
            data, self._block = self._block[:want], self._block[want:]
        if not data:
            raise FileChangedError("the file became shorter while it was read")
        self._left -= len(data)
        if self._progress is not None:
            self._progress.advance(len(data))
        return data

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()


class _Progress:
    """A large upload's lines: one as it starts (key, size), then bytes, rate and time left at
    most every PROGRESS_SECONDS while it goes on; the line at its end is the delivery's."""

    def __init__(
        self, key: str, size: int, monotonic: Callable[[], float], *, loud: bool = True
    ) -> None:
        self.key, self.size, self.monotonic, self.loud = key, size, monotonic, loud
        self.started = self.last = monotonic()
        self.done = 0  # bytes read for the socket so far (postbox-agent status shows them)
        if loud:
            logger.info("sending %s (%s)", printable(key), _mib(size))

    def advance(self, sent: int) -> None:
        self.done += sent
        if not self.loud:
            return
        now = self.monotonic()
        if now - self.last < PROGRESS_SECONDS or self.done >= self.size:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-6)
        left = (self.size - self.done) / rate
        logger.info(
            "sending %s: %s of %s (%d%%), %s/s, about %s left",
            printable(self.key),
            _mib(self.done),
            _mib(self.size),
            100 * self.done // self.size,
            _mib(rate),
            format_left(left),
        )


def _mib(size: float) -> str:
    return f"{size / 1024**2:.1f} MiB"


class _ReadAhead:
    """Reads `size` bytes in blocks and hashes them, on its own thread, into a short queue."""

    def __init__(self, stream: IO[bytes], size: int, md5: hashlib._Hash) -> None:
        self._blocks: queue.Queue[bytes | Exception] = queue.Queue(READ_AHEAD_DEPTH)
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, args=(stream, size, md5), name="read-ahead", daemon=True
        )
        self._thread.start()

    def _run(self, stream: IO[bytes], size: int, md5: hashlib._Hash) -> None:
        try:
            while size > 0 and not self._closed:
                data = stream.read(min(CHUNK_SIZE, size))
                if not data:
                    break
                md5.update(data)
                size -= len(data)
                self._blocks.put(data)
        except Exception as exc:  # whatever ends the thread reaches the sender, which waits
            self._blocks.put(exc)
            return
        self._blocks.put(b"")

    def next(self) -> bytes:
        block = self._blocks.get()
        if isinstance(block, Exception):
            why = block.strerror if isinstance(block, OSError) else block.__class__.__name__
            raise TransientUploadError(f"the file cannot be read ({why})")
        return block

    def close(self) -> None:
        """Stop reading (the upload ended, well or not); returns once the thread is done."""
        self._closed = True
        while self._thread.is_alive():
            try:
                self._blocks.get_nowait()  # room for a put the thread may be blocked in
            except queue.Empty:
                self._thread.join(0.01)


def new_session(
    concurrency: int, ca_bundle: Optional[Path] = None, user_agent: str = USER_AGENT
) -> requests.Session:
    """The one HTTP session the agent uses: a connection pool as large as the uploads it runs at
    once (so no connection is dropped and made again), 1 MiB writes to the socket (urllib3's
    16 KiB cost a system call and a poll per 16 KiB), TLS verified (with `ca_bundle` if given)."""
    session = requests.Session()
    adapter = _Adapter(pool_connections=1, pool_maxsize=concurrency)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = str(ca_bundle) if ca_bundle else True
    if user_agent:
        session.headers["User-Agent"] = user_agent
    return session


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["blocksize"] = CHUNK_SIZE
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


class Uploader:
    def __init__(
        self,
        session: requests.Session,
        *,
        margin: float = 0.0,
        seconds_left: Optional[Callable[[AnyGrant], float]] = None,
        clock: Callable[[], dt.datetime] = utc_now,
        timeouts: Optional[Timeouts] = None,
        sleep: Optional[Callable[[float], object]] = None,
        stopping: Optional[threading.Event] = None,
        max_attempts: int = 0,
        root: Optional[Path] = None,
        monotonic: Callable[[], float] = time.monotonic,
        large_bytes: int = LARGE_BYTES,
    ) -> None:
        self._session = session
        self._monotonic = monotonic  # for progress lines
        self._large_bytes = large_bytes
        self.retries = 0  # attempts after a transient fault, since start (metrics)
        self.sending: dict[str, _Progress] = {}  # key: the upload under way (status)
        self._retries_lock = threading.Lock()
        self._clock = clock
        # A StoreClock (agent/clock.py) learns the store's time from each answer's Date.
        self._store_clock = clock if isinstance(clock, StoreClock) else None
        # Until the last moment an attempt under `grant` may start: `margin` before its expiry.
        self.seconds_left = seconds_left or (lambda g: g.seconds_left(clock()) - margin)
        self._timeouts = timeouts or Timeouts()
        self._stopping = stopping or threading.Event()
        self._sleep = sleep or self._stopping.wait  # a shutdown cuts a backoff short
        self._max_attempts = max_attempts
        self.root = root  # the watch dir: files under it are opened folder by folder from it

    def _count_retry(self) -> None:
        with self._retries_lock:
            self.retries += 1

    def probe(self, grant: AnyGrant, timeout: float = 5.0) -> Probe:
        """One unsigned HEAD to the grant's URL, which teaches the store clock the store's Date
        (any answer has one, an error too) and tells whether the bucket is there."""
        sent = self._local()
        try:
            answer = self._session.head(grant.url, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Probe(None, error=exc.__class__.__name__)
        self._learn(answer.headers, sent)
        return Probe(answer.status_code, answer.headers.get("x-amz-bucket-region"))

    def _local(self) -> dt.datetime:
        """This machine's time, which stamps a request's sending and its answer."""
        return self._store_clock.local() if self._store_clock is not None else utc_now()

    def _learn(self, headers: Mapping[str, str], sent: dt.datetime) -> None:
        if self._store_clock is not None:
            self._store_clock.observe(headers.get("Date"), sent, self._local())

    def upload(self, grant: AnyGrant, path: Path, key: str) -> Receipt:
        """Send `path` as `key` under `grant`, retrying transient faults; UploadError when not."""
        if self.seconds_left(grant) <= 0:
            raise TransientUploadError("no time left before the grant expires")
        retrying = retry_policy(
            seconds_left=lambda: self.seconds_left(grant),
            stopping=self._stopping,
            sleep=self._sleep,
            max_attempts=self._max_attempts,
            key=key,
            on_retry=self._count_retry,
        )
        return retrying(self.send_once, grant, path, key)

    def send_once(self, grant: AnyGrant, path: Path, key: str) -> Receipt:
        """One attempt: preflight, stream, classify. Raises UploadError subclasses only."""
        with open_beneath(anchor(path, self.root), path) as stream:
            before = os.fstat(stream.fileno())
            size = before.st_size
            progress = _Progress(key, size, self._monotonic, loud=size >= self._large_bytes)
            body = _HashingBody(stream, size, progress)
            self.sending[key] = progress
            try:
                if isinstance(grant, PutGrant):
                    sent: Mapping[str, str] = grant.headers
                    answer = self._put(grant, body)
                else:
                    sent = grant.form(key)
                    answer = self._post(grant, dict(sent), body, key)
            finally:
                body.close()
                self.sending.pop(key, None)
            after = os.fstat(stream.fileno())
        if FileVersion.of(after) != FileVersion.of(before):
            raise FileChangedError("the file changed while it was sent")
        stored = classify(answer, grant.redirect if isinstance(grant, Grant) else None)
        if stored.key and stored.key != key:
            raise RejectedUploadError(
                f"the store kept it as {printable(stored.key)!r}, not as the key sent",
                status=answer.status,
            )
        md5, etag = body.md5.hexdigest(), stored.etag
        # With SSE-KMS, S3's ETag is not the MD5 of the content.
        sse = {k.lower(): v for k, v in sent.items()}.get("x-amz-server-side-encryption", "")
        if _MD5_HEX.match(etag) and etag != md5 and not sse.startswith("aws:kms"):
            raise TransientUploadError(f"the store's ETag {etag} is not the MD5 {md5} sent")
        return Receipt(key, FileVersion.of(before), md5, etag, answer.status)

    def _post(self, grant: Grant, form: dict[str, str], body: _HashingBody, key: str) -> Answer:
        """Judge the form against the policy, then stream it as multipart/form-data."""
        refused = violations(grant.policy, form, body.len, grant.bucket, self._clock())
        if refused:
            raise PreflightError("; ".join(refused))
        encoder = MultipartEncoder([*form.items(), ("file", (_file_name(key), body))])
        return self._send("POST", grant.url, encoder, {"Content-Type": encoder.content_type})

    def _put(self, grant: PutGrant, body: _HashingBody) -> Answer:
        """Check the URL's expiry and S3's size limit, then stream the file as the body."""
        size = body.len
        if grant.seconds_left(self._clock()) <= 0:
            raise PreflightError(f"the URL expired at {grant.expiration:%Y-%m-%d %H:%M:%S} UTC")
        if size > MAX_POST_SIZE:
            raise PreflightError(f"size {size} is over S3's single-PUT limit of {MAX_POST_SIZE}")
        headers = {**grant.headers, "Content-Length": str(size)}
        return self._send("PUT", grant.url, body, headers)

    def _send(
        self, method: str, url: str, data: SupportsRead[bytes], headers: dict[str, str]
    ) -> Answer:
        """The seam to the network: requests' exceptions become ours here and nowhere else."""
        sent = self._local()
        try:
            with self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=(self._timeouts.connect, self._timeouts.read),
                allow_redirects=False,
                stream=True,
            ) as response:
                self._learn(response.headers, sent)
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


def _file_name(key: str) -> str:
    return key.rsplit("/", 1)[-1] or "file"


def classify(answer: Answer, redirect: Optional[str] = None) -> Stored:
    """What a 2xx answer says was stored; TransientUploadError or RejectedUploadError otherwise.

    A 201 carries the PostResponse XML (Location percent-encoded; the ETag quoted by AWS, bare
    by Ceph RGW); a 200 or 204 has no body, and the ETag, if any, is a header. A grant with a
    `redirect` (success_action_redirect) is answered 303 to that URL on success, with bucket, key
    and ETag in its query (moto leaves the ETag out).
    """
    status = answer.status
    location = answer.headers.get("Location", "")
    if status == 303 and redirect and location.startswith(redirect):
        rest = location[len(redirect) :]
        if rest[:1] in ("", "?", "&"):
            query = {k: v[0] for k, v in parse_qs(rest[1:]).items()}
            return Stored(query.get("etag", "").strip('"'), query.get("key", ""))
    if 200 <= status < 300:
        leaves = _xml_leaves(answer.body) if status == 201 else {}
        etag = leaves.get("ETag") or answer.headers.get("ETag", "")
        return Stored(etag.strip().strip('"'), leaves.get("Key", ""))
    leaves = _xml_leaves(answer.body)
    code = leaves.get("Code", "")
    message = leaves.get("Message") or answer.reason
    said = f"store answered {status} {code}: {message}".rstrip(": ")
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        raise TransientUploadError(said)
    if 300 <= status < 400:
        where = location or "elsewhere"
        said = (
            f"store redirected to {where}: the grant's URL must be the bucket's regional endpoint"
        )
    raise RejectedUploadError(said, code=code, status=status)


def _xml_leaves(document: bytes) -> dict[str, str]:
    """The text of each leaf element (first of each name, namespaces dropped).

    A document that is not well-formed is read leaf by leaf with a pattern: Ceph RGW 16.2 answers
    a 1024-byte key with a PostResponse whose Location holds stray bytes (`&#x00;`), while its Key
    and ETag are intact.
    """
    if not document.lstrip().startswith(b"<"):
        return {}
    try:
        root = ET.fromstring(document)  # noqa: S314  (bounded body; expat resolves no entities)
    except ET.ParseError:
        leaves: dict[str, str] = {}
        for name, text in re.findall(rb"<(?:\w+:)?(\w+)>([^<]*)</", document):
            leaves.setdefault(name.decode(), html.unescape(text.decode("utf-8", "replace")))
        return leaves
    found: dict[str, str] = {}
    for element in root.iter():
        if len(element) == 0:
            found.setdefault(element.tag.rsplit("}", 1)[-1], element.text or "")
    return found


class stop_at_deadline(tenacity.stop.stop_base):
    """Stop when the next attempt would start after the deadline (`seconds_left()` <= 0)."""

    def __init__(self, seconds_left: Callable[[], float]) -> None:
        self.seconds_left = seconds_left

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.seconds_left() - (retry_state.upcoming_sleep or 0.0) <= 0


def retry_policy(
    *,
    seconds_left: Callable[[], float],
    stopping: threading.Event,
    sleep: Callable[[float], object],
    max_attempts: int = 0,
    key: str = "",
    on_retry: Optional[Callable[[], None]] = None,
) -> tenacity.Retrying:
    """The one retry policy: transient faults only, exponential backoff with jitter, and no
    attempt that would start after the grant's deadline, after shutdown began, or past
    `max_attempts` (0: no limit but the deadline)."""
    stop = tenacity.stop_any(stop_at_deadline(seconds_left), tenacity.stop_when_event_set(stopping))
    if max_attempts:
        stop = tenacity.stop_any(stop, tenacity.stop_after_attempt(max_attempts))

    def log(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        if on_retry is not None:
            on_retry()
        logger.warning(
            "retrying %s in %.1fs (attempt %d failed: %s)",
            printable(key),
            state.upcoming_sleep,
            state.attempt_number,
            state.outcome.exception(),
        )

    def pause(seconds: float) -> None:
        sleep(seconds)
        if stopping.is_set():  # tenacity would start the next attempt without asking `stop`
            raise TransientUploadError("the agent is stopping: not retried")

    return tenacity.Retrying(
        stop=stop,
        wait=tenacity.wait_exponential_jitter(initial=1, max=60, jitter=1),
        retry=tenacity.retry_if_exception_type(TransientUploadError),
        before_sleep=log,
        sleep=pause,
        reraise=True,
    )
