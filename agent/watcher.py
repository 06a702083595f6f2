"""Which files under the watch dir are complete: watchdog events and scans in, settled paths out.

The watchdog handler only translates an event into `(kind, path)` on a queue; `Settler` decides,
on the service's thread, when a file is complete:

- a file written here is complete when it is closed after writing (inotify IN_CLOSE_WRITE) or
  renamed into place;
- a file that arrives without a close event (found by a scan, moved in from elsewhere, on a
  network filesystem) is complete when it has not changed for `settle_seconds`.

A file still open for writing is never due, however long it stays unchanged.

Events can be lost: inotify drops them when its queue overflows (watchdog then rebuilds its
watches and logs a warning, but tells its handler nothing), and cannot watch more folders than
`fs.inotify.max_user_watches` allows. The watcher turns the first into a RESCAN event and the
second into polling; the service's periodic rescan catches whatever else slips through.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

try:  # watchdog >= 7 (Python >= 3.11) tells a permission change from a write
    from watchdog.events import FileAttribEvent
except ImportError:  # watchdog 6 reports both as FileModifiedEvent
    FileAttribEvent = None  # type: ignore[assignment,misc]
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.journal import Signature
from agent.keys import printable

logger = logging.getLogger(__name__)

# What the handler puts on the queue: the kind of change and the path it concerns.
WRITTEN, CLOSED, CREATED, DELETED, DIRECTORY = "written", "closed", "created", "deleted", "dir"
ATTRIB = "attrib"  # permissions or owner changed: a file that could not be read may be now
MOVED_AWAY = "moved"  # renamed: the old name is gone, the new one arrives as CLOSED
RESCAN = "rescan"  # events were lost: walk the whole watch dir again
Event = tuple[str, Path]
POLL_SECONDS = 2.0  # how often the polling fallback looks at the watch dir
# What watchdog logs (and all it does) when inotify's queue overflowed; see `_OverflowAlarm`.
_OVERFLOW_LOGGER = "watchdog.observers.inotify"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


@dataclass
class _Pending:
    open_for_write: bool
    closed: bool
    since: float
    signature: Optional[Signature] = None


class Settler:
    """Pure bookkeeping: events and the clock in, complete paths out. Not thread-safe."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._pending: dict[Path, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def paths(self) -> list[Path]:
        return list(self._pending)

    def apply(self, kind: str, path: Path, now: float) -> None:
        if kind == WRITTEN:
            self._pending[path] = _Pending(open_for_write=True, closed=False, since=now)
        elif kind == CLOSED:
            self._pending[path] = _Pending(open_for_write=False, closed=True, since=now)
        elif kind == CREATED:
            self.found(path, now)
        elif kind == DELETED:
            if self._pending.pop(path, None) is not None:
                logger.info("skipped %s: deleted before it was sent", printable(str(path)))
        elif kind == MOVED_AWAY:
            self._pending.pop(path, None)

    def found(self, path: Path, now: float) -> None:
        """A file seen without an event that says it is complete: it must settle."""
        if path not in self._pending:
            self._pending[path] = _Pending(open_for_write=False, closed=False, since=now)

    def due(self, now: float, signature: Callable[[Path], Optional[Signature]]) -> list[Path]:
        """The files complete now, removed from the pending set; vanished files are dropped."""
        ready = []
        for path, p in list(self._pending.items()):
            if p.open_for_write:
                continue
            current = signature(path)
            if current is None:
                del self._pending[path]
                logger.info("skipped %s: deleted before it was sent", printable(str(path)))
                continue
            if p.closed:
                ready.append(path)
            elif current != p.signature:
                p.signature, p.since = current, now
            elif now - p.since >= self.settle_seconds:
                ready.append(path)
        for path in ready:
            del self._pending[path]
        return ready


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: translates and enqueues, nothing else."""

    def __init__(self, events: queue.SimpleQueue[Event]) -> None:
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(type(event))
        if kind is None:
            return
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            self._events.put((MOVED_AWAY, Path(os.fsdecode(event.src_path))))
            path = Path(os.fsdecode(event.dest_path))
        else:
            path = Path(os.fsdecode(event.src_path))
        self._events.put((kind, path))


_KINDS: dict[type, str] = {
    FileModifiedEvent: WRITTEN,
    FileClosedEvent: CLOSED,
    FileMovedEvent: CLOSED,  # a rename into place is how careful writers finish a file
    FileCreatedEvent: CREATED,
    FileDeletedEvent: DELETED,
    DirCreatedEvent: DIRECTORY,  # a folder moved in brings files no event announces
    DirMovedEvent: DIRECTORY,
}

if FileAttribEvent is not None:
    _KINDS[FileAttribEvent] = ATTRIB
else:
    # watchdog 6 (the last for Python < 3.11) reports a chmod or chown as FileModifiedEvent too,
    # so "modified" cannot mean "open for writing" there: a file chmodded after its close would
    # wait forever. It means "changed: must settle" instead (and wakes unreadable files).
    _KINDS[FileModifiedEvent] = CREATED


class _OverflowAlarm(logging.Filter):
    """Turns watchdog's "Inotify queue overflowed" log record into a RESCAN event.

    watchdog (7.x) handles an IN_Q_OVERFLOW by rebuilding its watches and logging that warning;
    the events the kernel dropped are gone and its handlers are not told. The record is the only
    signal, so the agent listens for it (tests/agent/test_changes.py overflows a real queue)."""

    def __init__(self, events: queue.SimpleQueue[Event], root: Path) -> None:
        super().__init__()
        self._events, self._root = events, root

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_OVERFLOW_MESSAGE):
            self._events.put((RESCAN, self._root))
        return True


class Watcher:
    """watchdog's observer on the watch dir, feeding `events`; polls if inotify runs out."""

    def __init__(self, root: Path, events: queue.SimpleQueue[Event]) -> None:
        self.root = root
        self._events = events
        self._alarm = _OverflowAlarm(events, root)
        self.polling = False
        self._observer: BaseObserver = Observer()

    def start(self) -> None:
        watchdog_log = logging.getLogger(_OVERFLOW_LOGGER)
        watchdog_log.setLevel(logging.WARNING)  # the record must be made whatever our level
        watchdog_log.addFilter(self._alarm)
        try:
            self._run(self._observer)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            self.fall_back_to_polling(exc.strerror or str(exc))

    def fall_back_to_polling(self, why: str) -> None:
        if self.polling:
            return
        self._observer.stop()
        logger.warning(
            "inotify cannot watch all of %s (%s: raise fs.inotify.max_user_watches): looking "
            "for changes every %gs instead",
            printable(str(self.root)),
            why,
            POLL_SECONDS,
        )
        self.polling = True
        self._observer = PollingObserver(timeout=POLL_SECONDS)
        self._run(self._observer)

    def _run(self, observer: BaseObserver) -> None:
        observer.schedule(_Handler(self._events), str(self.root), recursive=True)
        observer.start()

    def alive(self) -> bool:
        """False once the watch is gone (watchdog stops it when the watch dir is deleted)."""
        emitters = self._observer.emitters
        return self._observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)

    def stop(self) -> None:
        logging.getLogger(_OVERFLOW_LOGGER).removeFilter(self._alarm)
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)


def inotify_watches() -> int:
    """How many inotify watches this process holds, as the kernel counts them (proc(5): fdinfo).

    watchdog ignores a sub-folder it cannot watch (the limit is fs.inotify.max_user_watches), so
    the service compares this with the folders a scan walked."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                count += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def scan(
    directory: Path,
    skip: Callable[[Path], bool],
    folders: Optional[list[Path]] = None,
) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file under `directory` (symlinks not followed), with its lstat.

    `skip(path)` prunes folders and files; folders are walked one at a time, so memory does not
    grow with the number of files. Each folder walked is appended to `folders`, if given.
    """
    stack = [directory]
    while stack:
        current = stack.pop()
        if folders is not None:
            folders.append(current)
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            logger.warning("cannot list %s (%s)", printable(str(current)), exc.strerror)
            continue
        for entry in entries:
            path = Path(entry.path)
            if skip(path):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    yield path, entry.stat(follow_symlinks=False)
            except OSError:
                continue
