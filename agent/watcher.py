"""What changes under the watch dir: watchdog's events in, `Changed(kind, relpath)` on a queue out;
the watch dir followed when it is removed and made again (`WatchDir`); and the walk (`walk`)
that finds files no event announced.

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

Nor can inotify watch a folder the agent may not read (a job's umask 077 makes one): watchdog
passes over it without a word, and never looks again when its mode changes. The agent does:
`WatchDir.rewatch` starts a new observer, which watches every folder readable now, and hands
over to it at a marker file (`_Handover`), so no event is lost or heard twice on the way.
"""

from __future__ import annotations

import enum
import errno
import itertools
import logging
import os
import threading
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
from watchdog.observers.inotify import InotifyObserver

try:  # watchdog >= 7 (Python >= 3.11) tells a permission change from a write
    from watchdog.events import DirAttribEvent, FileAttribEvent
except ImportError:  # watchdog 6 reports both as FileModifiedEvent (DirModifiedEvent: a folder)
    DirAttribEvent = FileAttribEvent = None  # type: ignore[assignment,misc]
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.errors import ConfigError
from agent.files import folder_identity
from agent.keys import TEMPORARY_SUFFIXES, is_temporary
from agent.logs import printable

logger = logging.getLogger(__name__)


class Change(enum.Enum):
    """What the handler puts on the queue, with the path it concerns."""

    WRITTEN = "written"  # modified: a writer may still be at it
    CLOSED = "closed"  # closed after writing: finished
    RENAMED = "renamed"  # renamed into place: finished unless a writer still holds it
    CARRIED = "carried"  # moved by a folder above it: its writer did not move it
    CREATED = "created"  # there, with no word yet on its writer: must settle
    DELETED = "deleted"
    DIRECTORY = "dir"  # a folder made or moved in: it may hold files no event announces
    ATTRIB = "attrib"  # permissions or owner changed: a file that could not be read may be now
    FOLDER_MODE = "folder mode"  # a folder's permissions or owner changed: it may be readable now
    MOVED_AWAY = "moved"  # renamed: the old name is gone, the new one arrives as RENAMED
    FOLDER_AWAY = "folder moved"  # a folder renamed or moved out: every name under it is gone
    RESCAN = "rescan"  # events were lost: walk the whole watch dir again
    BARRIER = "barrier"  # the agent's own marker: every event before it has been heard


@dataclass(frozen=True)
class Changed:
    """One change under the watch dir, as the handler puts it on the agent's inbox: `relpath`
    is `/`-separated from the watch dir ("" for a RESCAN of all of it), never a temporary name."""

    kind: Change
    relpath: str
    source: str = ""  # CARRIED: where it was under the watch dir ("": outside it)


Sink = Callable[[Changed], None]  # where changes go: `put` of the agent's inbox
POLL_SECONDS = 2.0  # how often the polling fallback looks at the watch dir
HANDOVER_SECONDS = 10.0  # a handover whose marker is not heard by then is forced (`follow`)
WALK_CHUNK = 1000  # files a walk yields at a time, so a folder of any size is held in pieces
BARRIER_PREFIX = ".postbox-barrier-"  # the agent's marker: a temporary name, never sent
# What watchdog logs (and all it does) when inotify's queue overflowed; see `_OverflowAlarm`.
_OVERFLOW_LOGGER = "watchdog.observers.inotify"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


class _Handover:
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

    def __init__(self, root: Path, put: Sink, taking_over: Optional[_Handover] = None) -> None:
        self._root = os.fspath(root) + "/"
        self._put = put
        self.taking_over = taking_over  # a new observer's: silent until the marker
        self.handing_over: Optional[_Handover] = None  # the old one's: silent from the marker on

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

    def __init__(self, root: Path, put: Sink, taking_over: Optional[_Handover] = None) -> None:
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

    def hand_over(self, handover: Optional[_Handover]) -> None:
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
_BARRIERS = itertools.count()


class WatchDir:
    """The watch dir, watched from `open` until `stop`, and followed: removed (its watch dies with
    it) or replaced, it is watched again once a folder is there (`follow`)."""

    def __init__(self, root: Path, put: Sink) -> None:
        self.root = root
        self._put = put
        self._watcher: Optional[Watcher] = None
        self._identity: Optional[tuple[int, int]] = None
        self._retiring: Optional[tuple[Watcher, _Handover, float]] = None  # (old, how, since)
        self._again = False  # a rewatch asked for during a handover: once it ends

    def open(self) -> None:
        """Make the folder if it is missing and watch it. ConfigError for a symlink (the agent
        follows no link, the watch dir's own included) or a folder that cannot be made."""
        if self.root.is_symlink():
            raise ConfigError(
                f"watch dir {self.root} is a symlink, which the agent never follows: set "
                f"POSTBOX_WATCH_DIR to the folder itself ({self.root.resolve()})"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"watch dir {self.root} cannot be created ({exc.strerror}): create it or set "
                "POSTBOX_WATCH_DIR"
            ) from None
        self._watch()

    @property
    def polling(self) -> bool:
        """Watched by polling (inotify could not watch every folder), or not watched at all."""
        return self._watcher is None or self._watcher.polling

    def fall_back_to_polling(self, why: str) -> None:
        if self._watcher is not None:
            self._watcher.fall_back_to_polling(why)

    def rewatch(self, now: float) -> bool:
        """Watch every folder that can be read now (watchdog passed over those it could not, and
        never looks again): a new observer takes over from this one. False if events may have
        been lost on the way (no marker could be made: walk the whole watch dir)."""
        old = self._watcher
        if self._retiring is not None:  # its new observer may have looked before this chmod
            self._again = True
            return True
        if old is None or old.polling:
            return True  # polled, it sees every folder
        handover = _Handover(f"{BARRIER_PREFIX}{os.getpid()}-{next(_BARRIERS)}")
        old.hand_over(handover)
        new = Watcher(self.root, self._put, handover)
        try:
            new.start()
        except OSError:  # the watch dir is going (`follow` sees to it): the old one goes on
            old.hand_over(None)
            return True
        self._watcher = new
        if new.polling or self._mark(handover.name) is None:
            handover.force()
            old.stop()
            return new.polling
        self._retiring = (old, handover, now)
        return True

    def follow(self, now: float) -> bool:
        """Watch the folder again if it was removed or replaced; True when it is watched anew
        (then it may hold files no event announced: walk it). Ends a handover (`rewatch`) once
        its marker is heard, or forces it after HANDOVER_SECONDS (True then too)."""
        if self._retiring is not None:
            old, handover, since = self._retiring
            if not handover.reached.is_set() and now - since >= HANDOVER_SECONDS:
                handover.force()
                logger.warning("a new watch of %s missed its marker: walking it", self.root)
                self._retiring = None
                old.stop()
                return True
            if handover.reached.is_set():
                self._retiring = None
                old.stop()
                if self._again:  # asked for meanwhile: what changed since is walked, whole
                    self._again = False
                    self.rewatch(now)
                    return True
        seen = folder_identity(self.root)
        watcher = self._watcher
        if seen == self._identity and (seen is None or (watcher is not None and watcher.alive())):
            return False
        self.stop()
        if seen is None:
            logger.warning(
                "watch dir %s was removed or replaced by what is not a folder (a symlink is never "
                "followed): waiting for a folder there",
                self.root,
            )
            self._identity = None
            return False
        self._watch()
        logger.warning("watch dir %s was created again: watching it", self.root)
        return True

    def barrier(self) -> Optional[str]:
        """Make and remove a marker file in the watch dir: inotify reports events in order, so
        once its creation is heard (`Change.BARRIER`, with the name returned), every event that
        came before it has been too. None if no such word will come (the folder cannot be
        written, or it is polled); then what was heard is all there is."""
        if self.polling:
            return None
        return self._mark(f"{BARRIER_PREFIX}{os.getpid()}-{next(_BARRIERS)}")

    def _mark(self, name: str) -> Optional[str]:
        try:
            os.close(os.open(self.root / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(self.root / name)
        except OSError:
            return None
        return name

    def stop(self) -> None:
        if self._retiring is not None:
            self._retiring[0].stop()
            self._retiring = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _watch(self) -> None:
        self._identity = folder_identity(self.root)
        self._watcher = Watcher(self.root, self._put)
        self._watcher.start()


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


def walk(
    root: Path,
    start: str,
    stopping: Callable[[], bool],
    unlistable: Callable[[str, str], None],
    passed_over: Callable[[str], None] = lambda relpath: None,
) -> Iterator[tuple[str, list[tuple[str, os.stat_result]]]]:
    """Every regular file under `root`/`start` (symlinks not followed), one folder at a time:
    yields each folder's relative path and its files' relative paths with their lstat, at most
    WALK_CHUNK files at a time (a folder's chunks come one after another, the last possibly empty).

    Temporary names (`.*`, `*.tmp`, `*.part`) are pruned, folders and files alike, by their own
    name (the folder they are in was checked on the way down). Memory holds one chunk of names
    at a time (a listing is read as the walk goes), and the walk ends early once `stopping()`
    says so. A folder that cannot be listed goes to `unlistable(folder, why)`; a temporary name
    pruned, or an entry that is neither a folder nor a regular file, to `passed_over(relpath)`.
    """
    stack = [start]
    base = os.fspath(root)
    while stack and not stopping():
        folder = stack.pop()
        directory = os.path.join(base, folder) if folder else base
        listing = _opened(directory, unlistable)
        if listing is None:
            continue
        files: list[tuple[str, os.stat_result]] = []
        with listing:
            for entry in _listed(listing, directory, unlistable):
                name = entry.name
                relpath = f"{folder}/{name}" if folder else name
                if name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES):
                    passed_over(relpath)
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(relpath)
                    elif entry.is_file(follow_symlinks=False):
                        files.append((relpath, entry.stat(follow_symlinks=False)))
                    else:  # a symlink, a FIFO, a socket: never sent
                        passed_over(relpath)
                except OSError:
                    continue
                if len(files) == WALK_CHUNK:  # a folder of a million: a thousand at a time
                    yield folder, files
                    files = []
                    if stopping():
                        return
        yield folder, files


def _opened(
    directory: str, unlistable: Callable[[str, str], None]
) -> Optional[os._ScandirIterator[str]]:  # os.scandir's own type, in typeshed only
    """A folder's listing, to read as the walk goes; None if it cannot be listed (the caller
    says so: the scanner once a folder) or is gone since it was seen (nothing to say)."""
    try:
        return os.scandir(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        unlistable(directory, exc.strerror or str(exc))
        return None


def _listed(
    listing: Iterator[os.DirEntry[str]], directory: str, unlistable: Callable[[str, str], None]
) -> Iterator[os.DirEntry[str]]:
    """A folder's entries as they are read; one that fails half-way is said so, and ends."""
    try:
        yield from listing
    except OSError as exc:
        unlistable(directory, exc.strerror or str(exc))
