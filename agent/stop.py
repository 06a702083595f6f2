"""How the daemon stops. A first SIGTERM (or Ctrl-C) stops nothing under way: the files that are
complete, and those settling, are sent, oldest first, for up to the stop budget
(POSTBOX_STOP_BUDGET_SECONDS), while what is still being written is left. A second signal stops
at once: the uploads under way are cut (the store keeps no partial object) and their files are
sent at the next start. The signal handler only counts (`signal`); the dispatcher asks the rest.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

logger = logging.getLogger(__name__)


class Stop:
    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.signals = 0  # SIGTERM and SIGINT so far
        self.until: Optional[float] = None  # while draining: when the budget ends (monotonic)
        self.began: Optional[float] = None  # when the drain began (monotonic)
        self.notice_until = math.inf  # a preemption notice's deadline: no drain goes past it
        # While draining: the marker the watch dir's events must bring back before the drain
        # may end (every event before the signal heard: a file closed just before it counts);
        # None once heard, or if none was made.
        self.barrier: Optional[str] = None

    def signal(self) -> None:
        """From the handler: a count, nothing that takes a lock."""
        self.signals += 1

    @property
    def aborted(self) -> bool:
        """A second signal came: stop at once."""
        return self.signals >= 2

    @property
    def at_once(self) -> bool:
        """The signals so far ask for a stop with no drain (a second one, or no budget)."""
        return self.aborted or (self.signals > 0 and not self.budget)

    def begin(self, now: float, due: int) -> bool:
        """A first signal, seen by the dispatcher at `now` with `due` files complete or on their
        way: True (and one line) the first time."""
        if self.until is not None or not self.signals:
            return False
        self.began = now
        self.until = min(now + self.budget, self.notice_until)
        logger.info(
            "stopping: sending the %d complete file(s) first, for up to %gs (a second signal "
            "stops at once)",
            due,
            max(0.0, self.until - now),
        )
        return True

    def cap(self, until: float) -> None:
        """A preemption notice's deadline (`until`, monotonic; math.inf: none, the notice was
        withdrawn): a drain, now or later, ends by then, and not before its budget would."""
        self.notice_until = until
        if self.began is not None:
            self.until = min(self.began + self.budget, until)

    def say_cut(self, cut: int, where: object, sent: int) -> None:
        logger.warning(
            "stopped at once (a second signal): %d upload(s) under way cut, their files stay in "
            "%s and are sent at the next start; %d file(s) uploaded in this run",
            cut,
            where,
            sent,
        )

    def wake_at(self) -> float:
        return math.inf if self.until is None else self.until

    def over(self, now: float, busy: int, scanned: bool) -> bool:
        """While draining: the budget ran out, or nothing complete is left to send (`busy`:
        files due, settling or sending; `scanned`: the walks asked for, the one at the signal
        among them, have ended)."""
        heard = self.barrier is None
        return self.until is not None and (now >= self.until or (heard and scanned and not busy))
