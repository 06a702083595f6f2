"""The watch dir, watched (`WatchDir`) from `open` until `stop`: made if it is missing, and
followed when it is removed and made again. What an observer on it hears becomes `Changed` in
agent/changes.py; the walk that finds files no event announced is agent/walk.py.

Nor can inotify watch a folder the agent may not read (a job's umask 077 makes one): watchdog
passes over it without a word, and never looks again when its mode changes. The agent does:
`WatchDir.rewatch` starts a new observer, which watches every folder readable now, and hands
over to it at a marker file (`changes.Handover`), so no event is lost or heard twice on the way.
A marker (`WatchDir.barrier`) also tells when every event before it has been heard.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Optional

from agent.changes import (
    BARRIER_PREFIX,
    HANDOVER_SECONDS,
    Handover,
    Sink,
    Watcher,
    inotify_watches,
)
from agent.errors import ConfigError
from agent.files import folder_identity
from agent.messages import Change, Changed
from agent.walk import walk

# Change and Changed live in agent/messages.py, inotify_watches and walk in agent/changes.py
# and agent/walk.py; the scanner and the tests import them from here.
__all__ = ["Change", "Changed", "WatchDir", "inotify_watches", "walk"]

logger = logging.getLogger(__name__)

_BARRIERS = itertools.count()


class WatchDir:
    """The watch dir, watched from `open` until `stop`, and followed: removed (its watch dies with
    it) or replaced, it is watched again once a folder is there (`follow`)."""

    def __init__(self, root: Path, put: Sink) -> None:
        self.root = root
        self._put = put
        self._watcher: Optional[Watcher] = None
        self._identity: Optional[tuple[int, int]] = None
        self._retiring: Optional[tuple[Watcher, Handover, float]] = None  # (old, how, since)
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
        handover = Handover(f"{BARRIER_PREFIX}{os.getpid()}-{next(_BARRIERS)}")
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
