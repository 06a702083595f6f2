"""The walks of the watch dir, on a thread of their own, off the path between an event and a send:
at start (the daemon is READY once it ends), on a rescan, and for a folder moved in. What a walk
finds that the journal lacks goes on the inbox, one folder at a time; a walk of the whole watch
dir also checks that inotify watches every folder, and asks for polling when it does not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

from agent.errors import JournalError
from agent.files import FileVersion
from agent.inbox import Broken, Found, Poll, Put, Walked
from agent.journal import Journal, still_refused
from agent.keys import is_utf8
from agent.logs import printable
from agent.watcher import WatchDir, inotify_watches, walk

logger = logging.getLogger(__name__)


class Scanner:
    def __init__(
        self,
        watch_dir: WatchDir,
        journal: Journal,
        put: Put,
        stopping: threading.Event,
        grant: Callable[[], str] = lambda: "",
    ) -> None:
        self.watch_dir = watch_dir
        self.journal = journal
        self._put = put
        self._stopping = stopping
        self._grant = grant  # the identity of the grant in force: refusals under it are kept
        self._unlistable: set[str] = set()  # folders said to be unlistable, each said once
        self.ready = False  # the start-up walk has ended (set by the dispatcher, in `walked`)
        self._whole = [0, 0]  # walks of the whole watch dir asked for, and ended
        self._pool = ThreadPoolExecutor(1, "scan")

    def later(self, folder: Optional[str] = None) -> None:
        """Walk `folder` (None: the whole watch dir) on the scanner's thread."""
        self._whole[0] += folder is None
        self._pool.submit(self.walk, folder).add_done_callback(self._ended)

    def walked(self, folder: Optional[str]) -> bool:
        """On the dispatcher, as a walk's end is applied: True the first time a walk of the whole
        watch dir ends (the start-up scan: the daemon is ready)."""
        self._whole[1] += folder is None
        if folder is not None or self.ready:
            return False
        self.ready = True
        return True

    @property
    def caught_up(self) -> bool:
        """Every walk of the whole watch dir asked for has ended (they run in turn)."""
        return self._whole[1] >= self._whole[0]

    def close(self) -> None:
        """Wait for the walk under way, which ends early once the agent is stopping."""
        self._pool.shutdown(wait=True)

    def _ended(self, future: Future[None]) -> None:
        error = future.exception()
        if error is not None:
            self._put(Broken("scan", error))

    def walk(self, folder: Optional[str] = None) -> None:
        """Put every file under `folder` (None: all) that the journal lacks on the inbox.

        One folder at a time, with one journal query per folder; files already sent are not
        held. A walk of the whole watch dir also checks that inotify watches every folder."""
        queued = seen = folders = refused = 0
        grant = self._grant()
        root = self.watch_dir.root
        for _, files in walk(root, folder or "", self._stopping.is_set, self._cannot_list):
            folders += 1
            seen += len(files)
            if not files:
                continue
            # A name that is not UTF-8 is never a journal row: it goes on to be refused by name.
            sent = self.journal.sent_versions([relpath for relpath, _ in files if is_utf8(relpath)])
            found, adopted = [], []
            for relpath, st in files:
                version, recorded = FileVersion.of(st), sent.get(relpath)
                if not version.matches(recorded):
                    found.append((relpath, version))
                elif recorded is not None and recorded.ctime_ns is None:
                    adopted.append((relpath, version))
            if adopted:
                self._adopt(adopted)
            found, kept = self._refused(found, grant)
            if found or kept:
                queued += len(found)
                refused += len(kept)
                self._put(Found(found, kept, grant))
        if folder is None and not self._stopping.is_set():
            self._check_watches(folders)
            if not self.ready:
                logger.info(
                    "start-up scan: %d file(s) to send, %d already sent%s",
                    queued,
                    seen - queued - refused,
                    f", {refused} refused before under this grant (they wait for a new one; "
                    "postbox-agent status lists them)"
                    if refused
                    else "",
                )
        self._put(Walked(folder))

    def _refused(
        self, found: list[tuple[str, FileVersion]], grant: str
    ) -> tuple[list[tuple[str, FileVersion]], list[tuple[str, FileVersion, str]]]:
        """Of the files found, those the journal keeps as refused under `grant`, this version."""
        kept = self.journal.refusals([relpath for relpath, _ in found if is_utf8(relpath)])
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

    def _cannot_list(self, folder: str, why: str) -> None:
        """Said once for each folder, however many walks meet it."""
        if folder not in self._unlistable:
            self._unlistable.add(folder)
            logger.warning("cannot list %s (%s)", printable(folder), why)

    def _adopt(self, versions: list[tuple[str, FileVersion]]) -> None:
        """Rows from before the journal kept the ctime: record it now (agent/journal.py)."""
        try:
            self.journal.adopt(versions)
        except JournalError as exc:  # the next walk tries again; nothing is sent meanwhile
            logger.warning("%s", exc.message)

    def _check_watches(self, folders: int) -> None:
        """Poll instead when inotify could not watch every folder (watchdog skips them quietly).

        Folders may appear between the walk and the count; one short look again tells a limit
        from that race."""
        if self.watch_dir.polling:
            return
        for _ in range(3):
            watches = inotify_watches()
            if watches >= folders:
                return
            time.sleep(0.2)
        self._put(Poll(f"{watches} of {folders} folders watched"))
