"""The file part of an upload, streamed: read in blocks, hashed on the way (MD5, S3's ETag of a
single-part upload), a large one read ahead on a thread of its own, and its progress (what
`postbox-agent status` shows and a large upload's log lines say). Memory is bounded by a few
CHUNK_SIZE blocks, whatever the file's size.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Optional

from agent.bandwidth import Limiter
from agent.clock import format_left
from agent.errors import FileChangedError, TransientUploadError
from agent.shown import printable

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024  # what is read from the file and written to the socket at once
READ_AHEAD_BYTES = 8 * CHUNK_SIZE  # bodies from this size on are read and hashed on a thread
READ_AHEAD_DEPTH = 2  # blocks read ahead of the socket
LARGE_BYTES = 64 * 1024**2  # an upload this large says when it starts, and how it goes
PROGRESS_SECONDS = 10.0  # at most one progress line this often, per upload


class HashingBody:
    """The file part of the form: reads exactly `size` bytes, hashing them on the way.

    `len` (remaining bytes) is how the form (agent/form.py) learns the part's length; a file
    that ends early raises FileChangedError instead of sending a short body. A large body is
    read and hashed on a thread of its own, a few blocks ahead, so MD5 runs while the socket
    sends (hashlib and socket writes both release the GIL); `close` ends that thread. With a
    `limiter` (agent/bandwidth.py), each read waits for its share of the bandwidth limit.
    """

    def __init__(
        self,
        stream: IO[bytes],
        size: int,
        progress: Optional[Sending] = None,
        limiter: Optional[Limiter] = None,
    ) -> None:
        self._stream = stream
        self._left = size
        self._progress = progress
        self._limiter = limiter
        self.md5 = hashlib.md5()  # noqa: S324  (S3's ETag for a single-part upload is its MD5)
        self._ahead = ReadAhead(stream, size, self.md5) if size >= READ_AHEAD_BYTES else None
        self._block = b""

    @property
    def len(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        want = min(want, CHUNK_SIZE)
        if want == 0:
            return b""
        if self._ahead is not None:
            if not self._block:
                self._block = self._ahead.next()
            want = min(want, len(self._block))  # the limit is taken for bytes that go
        if self._limiter is not None:
            want = self._limiter.take(want)
        if self._ahead is None:
            data = self._stream.read(want)
            self.md5.update(data)
        else:
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


class Sending:
    """A large upload's lines: one as it starts (key, size), then bytes, rate and time left at
    most every PROGRESS_SECONDS while it goes on; the line at its end is the delivery's.

    A file sent in parts has one of its own (`detail`: how many parts), which each part's
    quiet one adds to (`whole`) from the threads the parts go on: it speaks for the file."""

    def __init__(
        self,
        key: str,
        size: int,
        monotonic: Callable[[], float],
        *,
        loud: bool = True,
        whole: Optional[Sending] = None,
        done: int = 0,
        detail: str = "",
    ) -> None:
        self.key, self.size, self.monotonic, self.loud = key, size, monotonic, loud
        self.whole = whole
        self.started = self.last = monotonic()
        self.done = done  # bytes read for the socket so far (postbox-agent status shows them)
        self._before = done  # stored before this start (parts a restart skips): not the rate's
        self._lock = threading.Lock()
        if loud:
            logger.info("sending %s (%s%s)", printable(key), _mib(size), detail)

    def advance(self, sent: int) -> None:
        if self.whole is not None:
            self.whole.advance(sent)
        with self._lock:
            self.done += sent
            if not self.loud or sent <= 0:
                return
            now = self.monotonic()
            if now - self.last < PROGRESS_SECONDS or self.done >= self.size:
                return
            self.last = now
            done, rate = self.done, (self.done - self._before) / max(now - self.started, 1e-6)
        if rate <= 0:
            return
        logger.info(
            "sending %s: %s of %s (%d%%), %s/s, about %s left",
            printable(self.key),
            _mib(done),
            _mib(self.size),
            100 * done // self.size,
            _mib(rate),
            format_left((self.size - done) / rate),
        )

    def take_back(self) -> None:
        """The attempt failed: its bytes leave the file's count (a retry sends them again)."""
        if self.whole is not None:
            self.whole.advance(-self.done)


def _mib(size: float) -> str:
    return f"{size / 1024**2:.1f} MiB"


class ReadAhead:
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


@dataclass
class PartsSoFar:
    """A file going in parts (agent/inparts.py), so far: for status and the metrics."""

    parts_done: int
    parts: int
    bytes_done: int
    bytes: int


class InFlight:
    """What the uploads under way have done so far, for status and metrics: each one's progress
    by key, and the attempts made again after a transient fault since start. Thread-safe enough:
    workers write, the dispatcher reads a copy."""

    def __init__(self) -> None:
        self.sending: dict[str, Sending] = {}
        # Files going in parts (agent/parts.py), by their own key; each part under way is in
        # `sending` too.
        self.parts: dict[str, PartsSoFar] = {}
        self.retries = 0
        self._lock = threading.Lock()

    def retried(self) -> None:
        with self._lock:
            self.retries += 1


def read_sha256(stream: IO[bytes], size: int) -> bytes:
    """The SHA-256 of the next `size` bytes of the open file, which is put back where it stood."""
    start = stream.tell()
    digest = hashlib.sha256()
    block = memoryview(bytearray(min(CHUNK_SIZE, size)))  # a small file's own size, not 1 MiB
    left = size
    try:
        while left > 0:
            read = stream.readinto(block[: min(CHUNK_SIZE, left)])  # type: ignore[attr-defined]
            if not read:
                raise FileChangedError("the file became shorter while it was read")
            digest.update(block[:read])
            left -= read
        stream.seek(start)
    except OSError as exc:
        raise TransientUploadError(f"the file cannot be read ({exc.strerror})") from None
    return digest.digest()
