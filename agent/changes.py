"""What changes under the watch dir, as watchdog tells it: its events in, `Changed(kind,
relpath)` out, on the agent's inbox. The watch dir itself is followed by agent/watcher.py
(`WatchDir`); the walk that finds files no event announced is agent/walk.py.

The watchdog handler only translates an event and enqueues it; the service's ledger decides
when a file is complete:

- a file written here is complete when it is closed after writing (inotify IN_CLOSE_WRITE), or
  renamed into place, from inside the watch dir or from outside it (IN_MOVED_TO), once no
  writer holds it (the delivery asks the kernel: agent.files.open_for_writing);
- a file moved because a folder above it moved was not moved by its writer: it keeps the state
  it had under its old name (one still being written stays so), and one the agent did not know
  is judged as a rename into place;
- a file that arrives without such an event (found by a scan, created as a hard link, on a network
  filesystem) is complete when it has not changed for `settle_seconds`.

Events can be lost: inotify drops them when its queue overflows (watchdog then rebuilds its
watches and logs a warning, but tells its handler nothing), and cannot watch more folders than
`fs.inotify.max_user_watches` allows. The watcher turns the first into a RESCAN change and the
second into polling; the service's periodic rescan catches whatever else slips through.

One observer can take over from another at a marker file (`Handover`), so that no event is lost
or heard twice on the way: agent/watcher.py does so when folders may have become readable.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
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
from watchdog.observers.inotify import InotifyObserver

try:  # watchdog >= 7 (Python >= 3.11) tells a permission change from a write
    from watchdog.events import DirAttribEvent, FileAttribEvent
except ImportError:  # watchdog 6 reports both as FileModifiedEvent (DirModifiedEvent: a folder)
    DirAttribEvent = FileAttribEvent = None  # type: ignore[assignment,misc]
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.keys import is_temporary
from agent.messages import Change, Changed
from agent.shown import printable

logger = logging.getLogger(__name__)


Sink = Callable[[Changed], None]  # where changes go: `put` of the agent's inbox
POLL_SECONDS = 2.0  # how often the polling fallback looks at the watch dir
HANDOVER_SECONDS = (
    10.0  # a handover whose marker is not heard by then is forced (`WatchDir.follow`)
)
BARRIER_PREFIX = ".postbox-barrier-"  # the agent's marker: a temporary name, never sent
# What watchdog logs (and all it does) when inotify's queue overflowed; see `_OverflowAlarm`.
_OVERFLOW_LOGGER = "watchdog.observers.inotify"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


class Handover:
    """One observer takes over from another at a marker file made once both watch (`name`): the
    old one's events before the marker, then the new one's after it, in that order; none twice
    (the new one's before it are the old one's), none lost (the new one watched before it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reached = threading.Event()  # the old one has put every event before the marker
        self.forced = False  # the marker was not heard in time: the new one goes on at once

    def marks(self, event: FileSystemEvent, relpath: Optional[str]) -> bool:
        return isinstance(event, FileCreatedEvent) and relpath == self.name

    def force(self) -> None:
        self.forced = True
        self.reached.set()


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: translates and enqueues, nothing else."""

    def __init__(self, root: Path, put: Sink, taking_over: Optional[Handover] = None) -> None:
        self._root = os.fspath(root) + "/"
        self._put = put
        self.taking_over = taking_over  # a new observer's: silent until the marker
        self.handing_over: Optional[Handover] = None  # the old one's: silent from the marker on

    def on_any_event(self, event: FileSystemEvent) -> None:
        if (self.taking_over or self.handing_over) and self._handed_over(event):
            return
        kind = _KINDS.get(type(event))
        if kind is None:
            return
        if isinstance(event, FileMovedEvent) and event.is_synthetic:
            # A file inside a folder that was moved (watchdog makes one event per file): it
            # keeps its state under its new name; its source is "" when it came from outside.
            self._emit(Change.CARRIED, event.dest_path, self._relpath(event.src_path) or "")
        elif isinstance(event, (FileMovedEvent, DirMovedEvent)):
            # With full events, a rename from outside has no source and one to outside no
            # destination (watchdog: InotifyObserver(generate_full_events=True)). A folder moved
            # within the watch dir is followed by a move of each file in it (CARRIED); one moved
            # out (or whose two halves watchdog could not pair) takes every name under it.
            if isinstance(event, DirMovedEvent) and event.src_path and not event.dest_path:
                self._emit(Change.FOLDER_AWAY, event.src_path)
            elif event.src_path and isinstance(event, FileMovedEvent):
                self._emit(Change.MOVED_AWAY, event.src_path)
            if event.dest_path:
                self._emit(kind, event.dest_path)
        else:
            self._emit(kind, event.src_path)

    def _handed_over(self, event: FileSystemEvent) -> bool:
        """True for an event the other observer of a handover puts, not this one."""
        relpath = self._relpath(event.src_path)
        old = self.handing_over
        if old is not None:
            if old.marks(event, relpath):
                old.reached.set()
            return old.reached.is_set()
        new = self.taking_over
        assert new is not None
        if new.marks(event, relpath) or new.forced:
            # Its events come after the old one's: it waits (the old one is as far, or nearly).
            new.reached.wait(HANDOVER_SECONDS)
            self.taking_over = None
            return not new.forced
        return True

    def _emit(self, kind: Change, path: bytes | str, source: str = "") -> None:
        """A path under the watch dir, but a temporary name (ignored until renamed) other than
        the agent's own marker (`WatchDir.barrier`)."""
        relpath = self._relpath(path)
        if relpath is None:
            return
        if not is_temporary(relpath):
            self._put(Changed(kind, relpath, source))
        elif kind is Change.CREATED and relpath.startswith(BARRIER_PREFIX):
            self._put(Changed(Change.BARRIER, relpath))

    def _relpath(self, path: bytes | str) -> Optional[str]:
        text = os.fsdecode(path)
        return text[len(self._root) :] if text.startswith(self._root) else None


_KINDS: dict[type, Change] = {
    FileModifiedEvent: Change.WRITTEN,
    FileClosedEvent: Change.CLOSED,
    FileMovedEvent: Change.RENAMED,  # into place, from here or elsewhere: finished, if no writer
    FileCreatedEvent: Change.CREATED,
    FileDeletedEvent: Change.DELETED,
    DirCreatedEvent: Change.DIRECTORY,  # a folder moved in brings files no event announces
    DirMovedEvent: Change.DIRECTORY,
}

if FileAttribEvent is not None:
    _KINDS[FileAttribEvent] = Change.ATTRIB
    _KINDS[DirAttribEvent] = Change.FOLDER_MODE
else:
    # watchdog 6 (the last for Python < 3.11) reports a chmod or chown as FileModifiedEvent too,
    # so "modified" cannot mean "open for writing" there: a file chmodded after its close would
    # wait forever. It means "changed: must settle" instead (and wakes unreadable files).
    _KINDS[FileModifiedEvent] = Change.CREATED


class _OverflowAlarm(logging.Filter):
    """Turns watchdog's "Inotify queue overflowed" log record into a RESCAN change.

    watchdog (7.x) handles an IN_Q_OVERFLOW by rebuilding its watches and logging that warning;
    the events the kernel dropped are gone and its handlers are not told. The record is the only
    signal, so the agent listens for it (tests/agent/test_changes.py overflows a real queue)."""

    def __init__(self, put: Sink) -> None:
        super().__init__()
        self._put = put

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_OVERFLOW_MESSAGE):
            self._put(Changed(Change.RESCAN, ""))
        return True


class Watcher:
    """watchdog's observer on the watch dir, feeding `events`; polls if inotify runs out."""

    def __init__(self, root: Path, put: Sink, taking_over: Optional[Handover] = None) -> None:
        self.root = root
        self._handler = _Handler(root, put, taking_over)
        self._alarm = _OverflowAlarm(put)
        self.polling = False
        self._observer: BaseObserver = InotifyObserver(generate_full_events=True)

    def start(self) -> None:
        watchdog_log = logging.getLogger(_OVERFLOW_LOGGER)
        watchdog_log.setLevel(logging.WARNING)  # the record must be made whatever our level
        watchdog_log.addFilter(self._alarm)
        try:
            self._run(self._observer)
        except OSError as exc:
            if exc.errno not in _RAISE:
                raise
            self.fall_back_to_polling(f"{exc.strerror or exc}: raise {_RAISE[exc.errno]}")

    def fall_back_to_polling(self, why: str) -> None:
        """`why`: what inotify said, and the fix where it names one."""
        if self.polling:
            return
        self._observer.stop()
        self._handler.handing_over = self._handler.taking_over = None  # polled: it sees all
        logger.warning(
            "inotify cannot watch all of %s (%s): looking for changes every %gs instead",
            printable(str(self.root)),
            why,
            POLL_SECONDS,
        )
        self.polling = True
        self._observer = PollingObserver(timeout=POLL_SECONDS)
        self._run(self._observer)

    def _run(self, observer: BaseObserver) -> None:
        # Only the events the agent reads: watchdog's default mask adds IN_OPEN and
        # IN_CLOSE_NOWRITE, which the agent's own reading of every file and folder would raise.
        observer.schedule(
            self._handler,
            str(self.root),
            recursive=True,
            event_filter=list(_KINDS),
        )
        observer.start()

    def hand_over(self, handover: Optional[Handover]) -> None:
        """From the marker of `handover` on, the observer taking over puts the events."""
        self._handler.handing_over = handover

    def alive(self) -> bool:
        """False once the watch is gone (watchdog stops it when the watch dir is deleted)."""
        emitters = self._observer.emitters
        return self._observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)

    def stop(self) -> None:
        logging.getLogger(_OVERFLOW_LOGGER).removeFilter(self._alarm)
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)


# What inotify runs out of, and the limit to raise (inotify(7), /proc/sys/fs/inotify).
_RAISE = {
    errno.ENOSPC: "fs.inotify.max_user_watches",
    errno.EMFILE: "fs.inotify.max_user_instances",
}


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
