"""When an upload may begin: the commit gap and the time to start, for every worker.

Two versions of one file never reach the store within COMMIT_GAP of each other (the whole
file, or the manifest of its parts: the request that commits a version): S3 dates an object to
the second, and `assemble` takes a file's newest version by that date (issuer/assemble.py).
And nothing begins (a file, a part, a manifest) once `may_start` says no: past a preemption
deadline, or the end of a stop's drain (agent/core.py decides; the workers ask here).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

COMMIT_GAP = 1.1  # seconds: a second and a margin for the store's clock against this one


class Cut(Exception):
    """The stop (or a preemption deadline) came before an upload began: the file is left for
    the next start. Its message, if any, says how far it got."""


class Commits:
    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        may_start: Callable[[], bool] = lambda: True,
    ) -> None:
        self._monotonic = monotonic
        self._sleep = sleep
        self._may_start = may_start
        self._last: OrderedDict[str, float] = OrderedDict()  # key: when its last one ended
        self._lock = threading.Lock()

    def check(self) -> None:
        """Cut, unless an upload may begin now."""
        if not self._may_start():
            raise Cut()

    @contextmanager
    def commit(self, key: str) -> Iterator[None]:
        """The request that stores a version of the file at `key` (whole, or its manifest):
        begun COMMIT_GAP after the last one for that key ended, whatever it answered, and only
        if an upload may begin then (Cut if not)."""
        with self._lock:
            last = self._last.get(key)
        if last is not None and last + COMMIT_GAP > self._monotonic():
            self._sleep(last + COMMIT_GAP - self._monotonic())
        self.check()
        try:
            yield
        finally:
            now = self._monotonic()
            with self._lock:
                self._last[key] = now
                self._last.move_to_end(key)
                while next(iter(self._last.values())) + COMMIT_GAP <= now:
                    self._last.popitem(last=False)  # past the gap: forgotten (not the last)
