"""The daemon: start → scan → watch → (until stop or expiry) → drain → stop.

Signal handlers only set `stopping`; the main loop notices it. The observer thread only enqueues;
this thread settles and dispatches; a bounded pool of workers uploads, journals and applies
`after_upload`. A file is deleted or moved only after the store said 2xx and the journal kept it.

Each tick the main loop also looks after what can change under it: the grant file (a newer grant
is taken without a restart), the watch dir (removed and re-created: watched again), a periodic
rescan (events can be lost), and a journal that could not record (uploads pause until it can).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Optional

from agent.errors import (
    ConfigError,
    ExitCode,
    FileChangedError,
    FileGoneError,
    JournalError,
    PreflightError,
    RejectedUploadError,
    UnreadableError,
    UploadError,
)
from agent.grant import AnyGrant, load_grant
from agent.journal import Journal, Signature
from agent.keys import is_temporary, printable
from agent.notify import Notifier
from agent.settings import Settings
from agent.uploader import Receipt, Uploader, utc_now
from agent.watcher import (
    ATTRIB,
    CREATED,
    DIRECTORY,
    RESCAN,
    Event,
    Settler,
    Watcher,
    inotify_watches,
    scan,
)

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2
STATUS_EVERY_SECONDS = 10.0
RECORD_RETRY_SECONDS = 10.0  # how often a journal that could not record is tried again
RATE_WEIGHT = 0.3  # weight of the newest upload in the observed rate (bytes per second)


def format_left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Agent:
    def __init__(
        self,
        settings: Settings,
        uploader: Uploader,
        journal: Journal,
        *,
        notifier: Optional[Notifier] = None,
        stopping: Optional[threading.Event] = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.uploader = uploader
        self.grant = uploader.grant
        self.journal = journal
        self.notifier = notifier or Notifier(None)
        self.stopping = stopping or threading.Event()
        self.clock = clock
        self.root = settings.watch_dir
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._settler = Settler(settings.settle_seconds)
        self._backlog: deque[Path] = deque()
        self._in_flight: dict[Path, Future[None]] = {}
        self._again: set[Path] = set()  # changed while in flight: look again once it lands
        self._refused: dict[Path, Signature] = {}  # refused for good under this grant
        self._failed: set[Path] = set()  # transient faults outlasted the retries
        self._unreadable: set[Path] = set()  # tried again when its permissions change
        self._unrecorded: list[tuple[Path, str, Receipt]] = []  # stored, not yet journaled
        self._too_long: set[Path] = set()  # would not finish before expiry at the observed rate
        self._rate: Optional[float] = None  # bytes per second, from finished uploads
        self._fatal: Optional[BaseException] = None
        self._lock = threading.Lock()  # guards the sets workers touch
        self._pool = ThreadPoolExecutor(settings.concurrency, "upload")
        self._watcher: Optional[Watcher] = None
        self._root_id: Optional[tuple[int, ...]] = None
        self._grant_id = _identity(settings.grant_file)
        self.uploaded = 0

    # The lifecycle, as a table of contents.
    def run(self) -> int:
        self.start()
        try:
            self.scan()
            self.notifier.ready(self.describe())
            return self.main_loop()
        finally:
            self.notifier.stopping("stopping")
            if self._watcher is not None:
                self._watcher.stop()
            self.drain()

    def start(self) -> None:
        """Watch before scanning, so no file can fall between the scan and the first event."""
        self.grant.ensure_alive(self.clock())
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"watch dir {self.root} cannot be created ({exc.strerror}): create it or set "
                "POSTBOX_WATCH_DIR"
            ) from None
        self._watch()
        logger.info(
            "watching %s: uploads to %s %s, grant expires in %s",
            self.root,
            self.grant.endpoint,
            describe_keys(self.grant),
            format_left(self._seconds_to_expiry()),
        )

    def _watch(self) -> None:
        self._root_id = _folder(self.root)
        self._watcher = Watcher(self.root, self._events)
        self._watcher.start()

    def scan(self, directory: Optional[Path] = None) -> None:
        """Queue every file not yet sent; files already in the journal are not held in memory.

        A walk of the whole watch dir (at start, a rescan) also checks that inotify watches every
        folder it walked."""
        now, queued = time.monotonic(), 0
        folders: Optional[list[Path]] = [] if directory in (None, self.root) else None
        for path, st in scan(directory or self.root, self._skip, folders):
            if not self.journal.is_sent(self._relpath(path), Signature.of(st)):
                self._settler.found(path, now)
                queued += 1
        if folders is not None:
            self._check_watches(len(folders))
        if directory is None:
            logger.info(
                "start-up scan: %d file(s) to send, %d already sent", queued, self.journal.count()
            )

    def main_loop(self) -> int:
        last_status = last_scan = last_record = time.monotonic()
        rescan = self.settings.rescan_seconds
        while not self.stopping.wait(TICK_SECONDS):
            if self._fatal is not None:
                raise self._fatal
            self._check_grant()
            if self._seconds_to_expiry() <= 0:
                return self.expired()
            self._check_root()
            if rescan and time.monotonic() - last_scan >= rescan:
                self._events.put((RESCAN, self.root))
                last_scan = time.monotonic()
            self._take_events()
            if self._unrecorded and time.monotonic() - last_record >= RECORD_RETRY_SECONDS:
                self._record_again()
                last_record = time.monotonic()
            if not self._unrecorded:
                self._dispatch()
            if time.monotonic() - last_status >= STATUS_EVERY_SECONDS:
                self.notifier.status(self.describe())
                last_status = time.monotonic()
        logger.info("stopping: %d upload(s) in flight will finish", len(self._in_flight))
        return ExitCode.OK

    def expired(self) -> int:
        self.stopping.set()
        left = len(self._left())
        logger.error(
            "grant expired at %s UTC: %d file(s) not uploaded, left in %s; issue a new grant",
            f"{self.grant.expiration:%Y-%m-%d %H:%M:%S}",
            left,
            self.root,
        )
        return ExitCode.EXPIRED

    def drain(self) -> None:
        """Let in-flight uploads finish (systemd's stop timeout bounds this), then close."""
        self.stopping.set()
        self._pool.shutdown(wait=True)
        self.journal.close()
        logger.info("stopped: %d file(s) uploaded in this run", self.uploaded)

    # The moving parts.
    def describe(self) -> str:
        return (
            f"{self.uploaded} uploaded, {len(self._in_flight)} sending, "
            f"{len(self._settler) + len(self._backlog)} waiting; "
            f"grant expires in {format_left(self._seconds_to_expiry())}"
        )

    def _seconds_to_expiry(self) -> float:
        return self.grant.seconds_left(self.clock())

    def _relpath(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _skip(self, path: Path) -> bool:
        try:
            return is_temporary(PurePosixPath(self._relpath(path)))
        except ValueError:
            return True  # not under the watch dir

    def _take_events(self) -> None:
        now = time.monotonic()
        while True:
            try:
                kind, path = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == RESCAN:
                self._rescan(path)
            elif kind == DIRECTORY:
                if not self._skip(path):
                    self.scan(path)
            elif kind == ATTRIB:
                with self._lock:
                    retry = path in self._unreadable
                    self._unreadable.discard(path)
                if retry:
                    self._settler.found(path, now)
            elif not self._skip(path):
                self._settler.apply(kind, path, now)

    def _check_watches(self, folders: int) -> None:
        """Poll instead when inotify could not watch every folder (watchdog skips them quietly).

        Folders may appear between the walk and the count; one short look again tells a limit
        from that race."""
        watcher = self._watcher
        if watcher is None or watcher.polling:
            return
        for _ in range(3):
            watches = inotify_watches()
            if watches >= folders:
                return
            time.sleep(0.2)
        watcher.fall_back_to_polling(f"{watches} of {folders} folders watched")

    def _watcher_alive(self) -> bool:
        return self._watcher is not None and self._watcher.alive()

    def _rescan(self, root: Path) -> None:
        """A full walk: catches files whose events were lost; unreadable files are tried again."""
        if root != self.root:  # an overflow reported by a watcher since replaced
            return
        with self._lock:
            self._unreadable.clear()
        logger.debug("rescanning %s", self.root)
        self.scan(self.root)

    def _check_grant(self) -> None:
        """A grant file replaced on disk is taken as soon as it is valid (grant rotation)."""
        seen = _identity(self.settings.grant_file)
        if seen == self._grant_id:
            return
        self._grant_id = seen
        try:
            grant = load_grant(self.settings.grant_file)
            grant.ensure_alive(self.clock())
        except ConfigError as exc:
            logger.error("new grant not taken, the current one stays: %s", exc.message)
            return
        self.grant = self.uploader.grant = grant
        with self._lock:
            waiting = set(self._refused) | self._failed | self._too_long
            self._refused.clear()
            self._failed.clear()
            self._too_long.clear()
        now = time.monotonic()
        for path in waiting:
            self._settler.found(path, now)
        logger.info(
            "new grant taken: uploads to %s %s, expires in %s; %d waiting file(s) tried again",
            self.grant.endpoint,
            describe_keys(self.grant),
            format_left(self._seconds_to_expiry()),
            len(waiting),
        )

    def _check_root(self) -> None:
        """The watch dir removed (its watch dies with it) or replaced: follow the new one."""
        seen = _folder(self.root)
        if seen == self._root_id and (seen is None or self._watcher_alive()):
            return
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if seen is None:
            logger.warning("watch dir %s was removed: waiting for it to come back", self.root)
            self._root_id = None
            return
        self._watch()
        logger.warning("watch dir %s was created again: watching it", self.root)
        self.scan(self.root)

    def _dispatch(self) -> None:
        self._backlog.extend(self._settler.due(time.monotonic(), _signature))
        if self.uploader.seconds_left() <= 0:
            return  # within the expiry margin: no upload could finish in time
        while self._backlog and len(self._in_flight) < self.settings.concurrency:
            path = self._backlog.popleft()
            with self._lock:
                busy = path in self._in_flight
                if busy:
                    self._again.add(path)
            if not busy:
                self._submit(path)

    def _submit(self, path: Path) -> None:
        signature = _signature(path)
        if signature is None:
            return
        relpath = self._relpath(path)
        if self.journal.is_sent(relpath, signature) or self._refused.get(path) == signature:
            return
        earlier = self.journal.refusal(relpath, signature, self.grant.identity)
        if earlier is not None:
            with self._lock:
                self._refused[path] = signature
            logger.warning(
                "not sending %s: the store refused it under this grant (%s); it waits for a "
                "new grant",
                printable(relpath),
                earlier,
            )
            return
        try:
            key = self.grant.key_for(PurePosixPath(relpath))
            self._ensure_key_free(key, relpath)
        except RejectedUploadError as exc:
            self._refuse(path, signature, exc)
            return
        if not self._could_finish(path, signature.size):
            return
        with self._lock:
            future = self._pool.submit(self._upload, path, relpath, key)
            self._in_flight[path] = future
        future.add_done_callback(lambda _: self._landed(path))

    def _could_finish(self, path: Path, size: int) -> bool:
        """No upload starts that the observed rate says cannot finish before the expiry margin.

        Before the first upload finishes there is no rate, and every file may start."""
        if self._rate is None:
            return True
        needed, left = size / self._rate, self.uploader.seconds_left()
        if needed <= left:
            return True
        with self._lock:
            first = path not in self._too_long
            self._too_long.add(path)
        if first:
            logger.warning(
                "not starting %s: %d bytes need about %s at the observed %.0f bytes/s, and the "
                "grant allows %s more; it waits for a new grant",
                printable(self._relpath(path)),
                size,
                format_left(needed),
                self._rate,
                format_left(left),
            )
        return False

    def _observe(self, size: int, seconds: float) -> None:
        if size < 64 * 1024 or seconds <= 0:
            return  # small files measure latency, not throughput
        rate = size / seconds
        with self._lock:
            old = self._rate
            self._rate = rate if old is None else RATE_WEIGHT * rate + (1 - RATE_WEIGHT) * old

    def _upload(self, path: Path, relpath: str, key: str) -> None:
        try:
            self._send(path, relpath, key)
        except Exception as exc:  # a bug in one upload must not end the daemon silently
            logger.exception("upload of %s failed unexpectedly", printable(key))
            self._fatal = exc

    def _send(self, path: Path, relpath: str, key: str) -> None:
        """Runs on a worker: send, journal, then (only then) delete or move."""
        began = time.monotonic()
        try:
            receipt = self.uploader.upload(path, key)
        except FileGoneError:
            logger.info("skipped %s: deleted before it was sent", printable(key))
            return
        except UnreadableError as exc:
            with self._lock:
                self._unreadable.add(path)
            logger.error(
                "cannot read %s: %s; tried again when its permissions change",
                printable(relpath),
                exc,
            )
            return
        except FileChangedError as exc:
            logger.info(
                "%s changed while it was sent (%s): will send it once it settles",
                printable(key),
                exc,
            )
            self._events.put((CREATED, path))
            return
        except RejectedUploadError as exc:
            signature = _signature(path)
            if signature is not None:
                self._refuse(path, signature, exc)
            return
        except UploadError as exc:
            logger.error("not uploaded %s: %s; left in place", printable(key), exc)
            with self._lock:
                self._failed.add(path)
            return
        self._observe(receipt.signature.size, time.monotonic() - began)
        logger.info(
            "uploaded %s (%d bytes, md5 %s, %d)",
            printable(key),
            receipt.signature.size,
            receipt.md5,
            receipt.status,
        )
        self._keep(path, relpath, receipt)

    def _keep(self, path: Path, relpath: str, receipt: Receipt, *, quiet: bool = False) -> bool:
        """Journal a stored upload, then (only then) delete or move the file.

        A journal that cannot record (a full or read-only state dir) pauses new uploads: the
        receipt waits in memory and is recorded again every RECORD_RETRY_SECONDS."""
        try:
            self.journal.record(relpath, receipt.signature, receipt.key, receipt.md5, receipt.etag)
        except JournalError as exc:
            with self._lock:
                first = not self._unrecorded and not quiet
                self._unrecorded.append((path, relpath, receipt))
            if first:
                logger.error(
                    "%s; new uploads pause until the state dir %s can record again",
                    exc.message,
                    self.settings.state_dir,
                )
            return False
        with self._lock:
            self._failed.discard(path)
            self.uploaded += 1
        after_upload(self.settings, path, relpath, receipt)
        return True

    def _record_again(self) -> None:
        with self._lock:
            waiting, self._unrecorded = self._unrecorded, []
        for n, (path, relpath, receipt) in enumerate(waiting):
            if not self._keep(path, relpath, receipt, quiet=True):
                with self._lock:
                    self._unrecorded.extend(waiting[n + 1 :])
                return
        logger.info("the journal records again (%d recorded): uploads resume", len(waiting))

    def _ensure_key_free(self, key: str, relpath: str) -> None:
        with self._lock:
            busy = bool(self._in_flight)
        ensure_key_free(self.grant, self.journal, key, relpath, busy=busy)

    def _refuse(self, path: Path, signature: Signature, exc: RejectedUploadError) -> None:
        with self._lock:
            self._refused[path] = signature
        relpath = self._relpath(path)
        logger.error("refused %s: %s; left in place", printable(relpath), exc)
        if exc.status:  # the store's refusal, not a local one: remembered across restarts
            try:
                self.journal.refuse(relpath, signature, self.grant.identity, exc.message)
            except JournalError as error:
                logger.warning("%s", error.message)

    def _landed(self, path: Path) -> None:
        """Runs on the worker as its future completes."""
        with self._lock:
            self._in_flight.pop(path, None)
            again = path in self._again
            self._again.discard(path)
        if again:
            self._events.put((CREATED, path))

    def _left(self) -> set[Path]:
        with self._lock:
            return (
                set(self._settler.paths())
                | set(self._backlog)
                | set(self._in_flight)
                | self._failed
                | set(self._refused)
                | self._unreadable
                | self._too_long
            )


def ensure_key_free(
    grant: AnyGrant, journal: Journal, key: str, relpath: str, *, busy: bool = False
) -> None:
    """A single-key grant (a PUT URL) takes one file: the first to settle, and only it.

    `busy`: another upload is under way, which may be taking the key right now."""
    if grant.single_key is None:
        return
    owner = journal.owner_of(key)
    if busy or (owner is not None and owner != relpath):
        raise PreflightError(
            f"the grant allows one object ({printable(key)}), taken by "
            f"{printable(owner or 'a file being sent')}: it waits for a new grant"
        )


def describe_keys(grant: AnyGrant) -> str:
    if grant.single_key is not None:
        return f"as the one object {printable(grant.single_key)}"
    return f"under prefix {printable(grant.prefix)}"


def after_upload(settings: Settings, path: Path, relpath: str, receipt: Receipt) -> None:
    """Keep, delete or move a file the store confirmed and the journal recorded."""
    action = settings.after_upload
    if action == "keep" or _signature(path) != receipt.signature:
        return  # a newer version is there now: it will be sent in turn
    try:
        if action == "delete":
            path.unlink()
        else:
            target = settings.uploaded_dir / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except OSError as exc:
        logger.warning(
            "uploaded %s but cannot %s it (%s)", printable(relpath), action, exc.strerror
        )


def _identity(path: Path) -> Optional[tuple[int, ...]]:
    """What tells a file rewritten or replaced from the same one: inode, mtime and size."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _folder(path: Path) -> Optional[tuple[int, ...]]:
    """What tells a folder replaced from the same one (its mtime changes with every new file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _signature(path: Path) -> Optional[Signature]:
    try:
        return Signature.of(path.lstat())
    except OSError:
        return None
