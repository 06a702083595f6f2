"""The walks of the watch dir, on a thread of their own, off the path between an event and a send:
at start (the daemon is READY once it ends, or once it first waits for room), on a rescan, and
for a folder moved in. What a walk finds that the journal lacks goes on the inbox, a chunk of a
folder at a time; a walk of the whole watch dir also checks that inotify watches every folder,
and asks for polling when it does not.

A walk holds back while the ledger has `Room.most` files on their way (`Room`): a watch dir with
a million files to send is walked as they are sent, and the agent's memory holds the room's
worth of them, not a million (about 600 bytes each).

A folder a walk cannot list (a job's umask 077 makes one the agent may not read) is said once,
with the fix, and kept in `Unreadable` for `status` and `wait` until a walk lists it.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Optional

from agent.core import ROOM
from agent.errors import JournalDamaged, JournalError
from agent.inbox import Crashed, Poll, Put, Rewatch
from agent.journal import Journal, still_refused
from agent.keys import is_utf8
from agent.messages import Found, Walked, WalkWaits
from agent.rules import Once
from agent.shown import printable
from agent.unlisted import Unreadable, fix_for, user
from agent.versions import FileVersion
from agent.watcher import WatchDir, inotify_watches, walk

logger = logging.getLogger(__name__)


class StartUp(enum.Enum):
    """Where the start-up walk stands, on the scanner's thread: each state's line is said once."""

    WALKING = "walking"
    WAITED = "waited"  # it waited for room: `WalkWaits` put (the daemon is as ready as it gets)
    ENDED = "ended"  # it ended: what it found said


class Room:
    """How many files the walks' finds may have on their way (due, settling, sending) before a
    walk waits: the dispatcher says how many there are (`held`) and when a find is applied
    (`applied`); the walk asks before it puts one on the inbox (`enter`)."""

    def __init__(self, most: int = ROOM) -> None:
        self.most = most
        self._held = 0  # on their way in the ledger, as the dispatcher last said
        self._queued = 0  # put on the inbox by walks, not yet applied
        self._wanted = 0  # what a waiting walk would put: woken only once it fits
        self._changed = threading.Condition()

    def enter(self, count: int, stopping: Callable[[], bool], waiting: Callable[[], None]) -> None:
        """On the walk's thread: wait until `count` more fit (one find always does, into an
        empty room), calling `waiting` once if it must; or until `stopping()`."""
        with self._changed:
            said = False
            while self._held + self._queued and self._held + self._queued + count > self.most:
                if stopping():
                    break
                if not said:
                    said = True
                    waiting()
                self._wanted = count
                self._changed.wait(0.5)
            self._wanted = 0
            self._queued += count

    @property
    def queued(self) -> int:
        """The walks' finds put on the inbox and not yet applied (read without the lock, on the
        dispatcher: at most a chunk out of date)."""
        return self._queued

    def held(self, count: int) -> None:
        """On the dispatcher: `count` files are on their way now."""
        with self._changed:
            self._held = count
            room = count + self._queued
            if self._wanted and (not room or room + self._wanted <= self.most):
                self._changed.notify_all()  # only then: each wake is a hand-over of the GIL

    def applied(self, count: int, held: int) -> None:
        """On the dispatcher: a find of `count` files is in the ledger, which has `held` files
        on their way now."""
        with self._changed:
            self._queued -= count
            self._held = held


class Scanner:
    def __init__(
        self,
        watch_dir: WatchDir,
        journal: Journal,
        put: Put,
        stopping: threading.Event,
        grant: Callable[[], str] = lambda: "",
        *,
        room: Optional[Room] = None,
        watches: Callable[[], int] = inotify_watches,
        excluded: Callable[[str], str] = lambda relpath: "",
    ) -> None:
        self.watch_dir = watch_dir
        self.journal = journal
        self._put = put
        self._stopping = stopping
        self._grant = grant  # the identity of the grant in force: refusals under it are kept
        self.unreadable = Unreadable()  # folders a walk could not list, each said once
        self._met: set[str] = set()  # ... and those the walk under way met
        self._watches = watches  # how many folders inotify watches (the kernel's count)
        self._rewatched = False  # the last check found folders unwatched, and asked for a rewatch
        self.room = room or Room()
        # The filters' judgement (agent/filters.py): an excluded file takes no place in the room
        # and is not counted as to send; it goes to the core as such, which decides and counts.
        self._excluded = excluded
        self.start_up = StartUp.WALKING  # the start-up walk's state, each line said once
        self._whole_waiting = False  # one of the whole watch dir is asked for and not yet begun
        self._lock = threading.Lock()
        self._said = Once()  # "unread": once a walk
        self.cut_full = False  # a walk that had waited for room was cut short by the stop
        self._waited = False  # the walk under way has waited for room
        self._pool = ThreadPoolExecutor(1, "scan")

    def later(self, folder: Optional[str] = None) -> None:
        """Walk `folder` (None: the whole watch dir) on the scanner's thread, after the walks
        asked for before it; one of the whole watch dir not yet begun covers this one, and its
        `Walked` comes back at once, marked `covered`)."""
        if folder is None:
            with self._lock:  # the walk clears it under the lock before it lists a thing
                if self._whole_waiting:
                    self._put(Walked(None, covered=True))
                    return
                self._whole_waiting = True
        self._pool.submit(self.walk, folder).add_done_callback(self._ended)

    def close(self) -> None:
        """Wait for the walk under way, which ends early once the agent is stopping."""
        self._pool.shutdown(wait=True)

    def _ended(self, future: Future[None]) -> None:
        error = future.exception()
        if error is not None:
            self._put(Crashed("scan", error))

    def walk(self, folder: Optional[str] = None) -> None:
        """Put every file under `folder` (None: all) that the journal lacks on the inbox.

        A chunk of a folder at a time, with one journal query per chunk; files already sent are
        not held, and the files found wait for room in the ledger (`Room`). A walk of the whole
        watch dir also checks that inotify watches every folder."""
        if folder is None:
            with self._lock:
                self._whole_waiting = False  # a rescan asked for from now on walks again
        queued = seen = folders = refused = excluded = 0
        self._said.forget("unread")
        grant = self._grant()
        root = self.watch_dir.root
        last: Optional[str] = None
        self._waited = False
        self._met = set()
        for listed, files in walk(root, folder or "", self._stopping.is_set, self._cannot_list):
            if listed != last:  # a folder's chunks come one after another
                folders += 1
                if self.unreadable.listed(listed):
                    logger.info("can list %s now: its files are sent", printable(listed or "."))
            last = listed
            seen += len(files)
            if not files:
                continue
            found, kept, left = self._sorted(files, grant)
            excluded += len(left)
            if found or kept or left:
                queued += len(found)
                refused += len(kept)
                self.room.enter(len(found), self._stopping.is_set, partial(self._full, queued))
                self._put(Found(found, kept, grant, left))
        self.cut_full |= self._waited and self._stopping.is_set()
        if not self._stopping.is_set():
            self.unreadable.walked(folder or "", self._met)
        if folder is None and not self._stopping.is_set():
            self._check_watches(folders)
            if self.start_up is not StartUp.ENDED:
                self.start_up = StartUp.ENDED
                logger.info(
                    "start-up scan: %d file(s) to send, %d already sent%s%s",
                    queued,
                    seen - queued - refused - excluded,
                    f", {refused} refused before under this grant (they wait for a new one; "
                    "postbox-agent status lists them)"
                    if refused
                    else "",
                    f", {excluded} excluded by POSTBOX_INCLUDE/POSTBOX_EXCLUDE (not sent)"
                    if excluded
                    else "",
                )
        self._put(Walked(folder))

    def _sorted(
        self, files: list[tuple[str, os.stat_result]], grant: str
    ) -> tuple[list[tuple[str, FileVersion]], list[tuple[str, FileVersion, str]], list[str]]:
        """Of a chunk of files: those to send, those refused before under `grant`, and the
        paths the filters exclude (never looked up in the journal)."""
        left, judged = [], []
        for relpath, st in files:  # one judgement a file
            if self._excluded(relpath):
                left.append(relpath)
            else:
                judged.append((relpath, st))
        found, kept = self._refused(self._unsent(judged), grant)
        return found, kept, left

    def _unsent(self, files: list[tuple[str, os.stat_result]]) -> list[tuple[str, FileVersion]]:
        """Of a chunk of files, those the journal lacks in this version (one query); all of
        them when it cannot be read (each is looked up again before it is sent)."""
        # A name that is not UTF-8 is never a journal row: it goes on to be refused by name.
        try:
            sent = self.journal.sent_versions([p for p, _ in files if is_utf8(p)])
        except JournalError as exc:
            self._unread(exc)
            sent = {}
        found, adopted = [], []
        for relpath, st in files:
            version, recorded = FileVersion.of(st), sent.get(relpath)
            if not version.matches(recorded):
                found.append((relpath, version))
            elif recorded is not None and recorded.ctime_ns is None:
                adopted.append((relpath, version))
        if adopted:
            self._adopt(adopted)
        return found

    def _full(self, found: int) -> None:
        """A walk waits for room: the start-up walk is as ready as it gets for now."""
        self._waited = True
        if self.start_up is StartUp.WALKING:
            self.start_up = StartUp.WAITED
            self._put(WalkWaits())
            logger.info(
                "start-up scan: %d file(s) to send so far; the rest of the watch dir is "
                "walked as they are sent (%d at a time)",
                found,
                self.room.most,
            )

    def _refused(
        self, found: list[tuple[str, FileVersion]], grant: str
    ) -> tuple[list[tuple[str, FileVersion]], list[tuple[str, FileVersion, str]]]:
        """Of the files found, those the journal keeps as refused under `grant`, this version
        (none when it cannot be read: each is looked up again before it is sent)."""
        try:
            kept = self.journal.refusals([relpath for relpath, _ in found if is_utf8(relpath)])
        except JournalError as exc:
            self._unread(exc)
            return found, []
        if not kept:
            return found, []
        send, refused = [], []
        for relpath, version in found:
            why = still_refused(kept.get(relpath), version, grant)
            if why is not None:
                refused.append((relpath, version, why))
            else:
                send.append((relpath, version))
        return send, refused

    def _unread(self, exc: JournalError) -> None:
        """The journal cannot be read: said once a walk (damaged, the daemon says so and
        stops). What the walk finds goes on all the same, and each file is looked up again
        before it is sent (agent/delivery.py), so nothing is skipped and nothing sent twice."""
        if self._said.first("unread") and not isinstance(exc, JournalDamaged):
            logger.warning(
                "%s: the files this walk finds are looked up in it again before each is sent",
                exc.message,
            )

    def _cannot_list(self, directory: str, why: str) -> None:
        """Said once for each folder, however many walks meet it, until one lists it."""
        root = os.fspath(self.watch_dir.root)
        relpath = directory[len(root) + 1 :] if directory.startswith(f"{root}/") else ""
        self._met.add(relpath)
        fix = fix_for(directory, why)
        if self.unreadable.add(relpath, f"{why}: {fix}" if fix else why):
            until = f" until the agent (user {user()}) can read it: {fix}" if fix else ""
            logger.warning(
                "cannot list %s (%s): its files are not sent%s", printable(directory), why, until
            )

    def _adopt(self, versions: list[tuple[str, FileVersion]]) -> None:
        """Rows from before the journal kept the ctime: record it now (agent/journal.py)."""
        try:
            self.journal.adopt(versions)
        except JournalError as exc:  # the next walk tries again; nothing is sent meanwhile
            logger.warning("%s", exc.message)

    def _check_watches(self, folders: int) -> None:
        """When inotify does not watch every folder walked (watchdog passes over those it cannot
        watch without a word): first a new watch (`Rewatch`), which takes a folder that was
        unreadable when watchdog met it and can be read now, and meets inotify's own error if
        it is out of watches; poll instead if folders are still unwatched after it.

        Folders may appear between the walk and the count; one short look again tells a limit
        from that race."""
        if self.watch_dir.polling:
            return
        for _ in range(3):
            watches = self._watches()
            if watches >= folders:
                self._rewatched = False
                return
            time.sleep(0.2)
        why = f"{watches} of {folders} folders watched"
        self._put(Poll(why) if self._rewatched else Rewatch(why))
        self._rewatched = True
