"""The daemon's rules of time, pure: the stop and its budget, a preemption deadline as an end
time, the lines said once, the walks owed. No clock is read here, nothing sleeps, logs, locks or
touches a file: time is a parameter (`now`, monotonic seconds) and what is to be said comes back
as text. The decision core (agent/core.py) holds one of each.

The rules (README, "Batch jobs on machines that go away"):

- A first SIGTERM (or Ctrl-C) stops nothing under way: the files that are complete, and those
  settling, are sent for up to the stop budget (POSTBOX_STOP_BUDGET_SECONDS), and never past a
  preemption notice's deadline. The drain ends sooner once nothing complete is left, every
  walk asked for has ended, and every event of the watch dir from before the signal has come
  in (the barrier: a marker the watcher must hear back). A second signal, or a first with no
  budget, stops at once.
- A preemption notice's deadline is an end time: a signal that comes later drains only until
  then, and one past it not at all.
- No upload starts at or past the end of the drain or the deadline: no file, no part of a file
  sent in parts, no manifest (`starts_until`, which the workers read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol


class Once:
    """The lines said once each, by what they are about (a key), until forgotten: the one
    "say it once" of the daemon's threads. `most` bounds how many it keeps (past it, a line
    is said each time rather than memory grown without end)."""

    def __init__(self, most: int = 10_000) -> None:
        self._said: set[str] = set()
        self._most = most

    def __contains__(self, key: str) -> bool:
        return key in self._said

    def first(self, key: str = "") -> bool:
        """True the first time `key` is asked for (say it then), False after."""
        if key in self._said:
            return False
        if len(self._said) < self._most:
            self._said.add(key)
        return True

    def forget(self, key: str = "") -> None:
        """`key` is said anew the next time."""
        self._said.discard(key)

    def clear(self) -> None:
        self._said.clear()


EXCLUDED = "excluded"  # what `wait` is told of a file the filters exclude (agent/question.py)


class Filters(Protocol):
    """What the daemon needs of agent/filters.py's `Filters` (given by the shell)."""

    @property
    def include(self) -> str: ...
    @property
    def exclude(self) -> str: ...
    def excluded(self, relpath: str) -> str: ...
    def describe(self) -> str: ...


class Excluded:
    """The filters in force (POSTBOX_INCLUDE and POSTBOX_EXCLUDE: agent/filters.py judges a
    path; the shell gives them, None: every file is sent) and the files they kept back in this
    run, each counted once: their names up to `most` (past it, the count is a floor: `more`)."""

    def __init__(self, filters: Optional[Filters] = None, most: int = 10_000) -> None:
        self.filters = filters
        self._seen: set[str] = set()
        self._most = most
        self.more = False  # more were excluded than are counted

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._seen

    def why(self, relpath: str) -> str:
        """Why the filters keep the file at `relpath` back; "" if it is sent."""
        return self.filters.excluded(relpath) if self.filters is not None else ""

    def judge(self, relpath: str) -> tuple[bool, str]:
        """Whether the file at `relpath` is kept back, and why when it is first counted (to be
        said once). Judged once a file: its events come by the dozen."""
        if self.filters is None:
            return False, ""
        if relpath in self._seen:
            return True, ""
        why = self.filters.excluded(relpath)
        return bool(why), why if why and self.add(relpath) else ""

    def add(self, relpath: str) -> bool:
        """Count `relpath`: True the first time (as far as it can tell)."""
        if relpath in self._seen:
            return False
        if len(self._seen) < self._most:
            self._seen.add(relpath)
        else:
            self.more = True
        return True


class Owed:
    """The folders of the files the ledger had no room for (an event let go while as many
    files were on their way as the room holds): each walked once half the room is free, and
    one under another owed folder with it. What is walked is the scanner's to do."""

    def __init__(self) -> None:
        self._folders: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._folders)

    def owe(self, relpath: str) -> None:
        """An event about `relpath` was let go: its folder ("" for the watch dir) is owed."""
        self._folders.add(relpath.rpartition("/")[0])

    def due(self, held: int, most: int) -> list[str | None]:
        """With `held` files on their way in a room of `most`: the walks to make now (None:
        the whole watch dir), and none is owed after; none while more than half are held."""
        if not self._folders or held > most // 2:
            return []
        owed, self._folders = self._folders, set()
        if "" in owed:
            return [None]
        return [folder for folder in sorted(owed) if not _under_any(folder, owed)]


def _under_any(folder: str, folders: set[str]) -> bool:
    """`folder` lies under another of `folders`."""
    parts = folder.split("/")
    return any("/".join(parts[:i]) in folders for i in range(1, len(parts)))


RATE_WEIGHT = 0.3  # weight of the newest upload in the observed rate (bytes per second)
RATE_MIN_BYTES = 64 * 1024  # smaller uploads measure latency, not throughput


class Pace:
    """The rate uploads go at, bytes per second, from those that ended (None: none measured);
    a delivery paces a file against the grant's expiry by it (agent/delivery.py)."""

    def __init__(self) -> None:
        self.rate: Optional[float] = None

    def observe(self, size: int, seconds: float) -> None:
        if size < RATE_MIN_BYTES or seconds <= 0:
            return
        rate = size / seconds
        self.rate = (
            rate if self.rate is None else RATE_WEIGHT * rate + (1 - RATE_WEIGHT) * self.rate
        )


class Chores:
    """The daemon's chores, each at its own pace (seconds; 0: never), by a monotonic clock whose
    `now` is passed in. Each is due at once, but those named `later`: a period from `start`."""

    def __init__(self, every: dict[str, float], start: float, *later: str) -> None:
        self._every = every
        self._last = dict.fromkeys(later, start)

    def due(self, chore: str, now: float) -> bool:
        """Whether `chore` is due; if it is, it counts as done now."""
        every = self._every[chore]
        if not every or now - self._last.get(chore, -math.inf) < every:
            return False
        self._last[chore] = now
        return True


@dataclass
class Walks:
    """The walks asked for and those ended (they run in turn, each comes back once)."""

    asked: int = 0
    ended: int = 0

    @property
    def caught_up(self) -> bool:
        return self.ended >= self.asked


STATUS_EVERY_SECONDS = 10.0  # STATUS= and the metrics file
SNAPSHOT_EVERY_SECONDS = 2.0  # status.json: how often it may change
RECORD_RETRY_SECONDS = 10.0  # how often a journal that could not record is tried again


def daemon_chores(rescan: float, report_every: float, start: float) -> Chores:
    """The daemon's chores: the rescan (`rescan` seconds apart, 0: none), the journal's backlog,
    status.json, and STATUS= with the metrics file (`report_every`). Each is due a period after
    `start`, but status.json, at once."""
    every = {"scan": rescan, "record": RECORD_RETRY_SECONDS,
             "snapshot": SNAPSHOT_EVERY_SECONDS, "status": report_every}  # fmt: skip
    return Chores(every, start, "scan", "record", "status")


def seconds(value: float) -> str:
    """A length of time as a line says it: `3.0 s`, `90 s`."""
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


class Timing:
    """The stop and the preemption deadline, on the dispatcher's clock (monotonic)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.signals = 0  # SIGTERM and SIGINT so far
        self.began: Optional[float] = None  # when the drain began
        # While draining: the marker the watch dir's events must bring back before the drain
        # may end; None once heard, or if none was made.
        self.barrier: Optional[str] = None
        self._deadlines: dict[str, float] = {}  # the final notices in force: their deadlines
        # No upload starts at or past this (math.inf: none set). A float the workers read as
        # it stands: the dispatcher alone writes it, whole.
        self.starts_until = math.inf

    # Signals.
    def signal(self) -> None:
        """From the signal handler: a count, nothing that takes a lock."""
        self.signals += 1

    @property
    def aborted(self) -> bool:
        """A second signal came: stop at once."""
        return self.signals >= 2

    @property
    def at_once(self) -> bool:
        """The signals so far ask for a stop with no drain (a second one, or no budget)."""
        return self.aborted or (self.signals > 0 and not self.budget)

    def begin(self, now: float, due: int) -> Optional[str]:
        """A first signal, seen at `now` with `due` files complete or on their way: the drain
        begins, and its one line (None if it had begun, or no signal came)."""
        if self.began is not None or not self.signals:
            return None
        self.began = now
        self._changed()
        left = max(0.0, self.until - now)
        if left <= 0:
            return (
                f"stopping: the preemption deadline has passed: no upload starts; {due} "
                "complete file(s) stay for the next start (a second signal stops at once)"
            )
        return (
            f"stopping: sending the {due} complete file(s) first, for up to {seconds(left)} "
            "(a second signal stops at once)"
        )

    @property
    def until(self) -> float:
        """When the drain ends at the latest: its budget, or the deadline if sooner (math.inf
        while not draining)."""
        if self.began is None:
            return math.inf
        return min(self.began + self.budget, self.deadline)

    def over(self, now: float, busy: int, scanned: bool) -> bool:
        """While draining: its time is up, or nothing complete is left to send (`busy`: files
        due, settling or sending; `scanned`: the walks asked for, the one at the signal among
        them, have ended) and the barrier came back."""
        if self.began is None:
            return False
        return now >= self.until or (self.barrier is None and scanned and not busy)

    def wake_at(self) -> float:
        return self.until

    # Preemption notices.
    @property
    def deadline(self) -> float:
        """The soonest deadline of the final notices in force (math.inf: none)."""
        return min(self._deadlines.values(), default=math.inf)

    def notice(self, what: str, deadline: float) -> None:
        """A final notice (`what` the cloud's name for it) that the machine goes at `deadline`
        (monotonic; math.inf: the cloud did not say when)."""
        self._deadlines[what] = deadline
        self._changed()

    def withdrawn(self, what: str) -> bool:
        """The cloud gives the notice no longer: True if another stands."""
        self._deadlines.pop(what, None)
        self._changed()
        return bool(self._deadlines)

    def may_start(self, now: float) -> bool:
        """An upload (a file, a part, a manifest) may begin at `now`."""
        return now < self.starts_until

    def _changed(self) -> None:
        self.starts_until = min(self.until, self.deadline)

    # What is said.
    def cut(self, cut: int, waiting: int, where: object, sent: int) -> str:
        """The last line of a stop at once: the uploads cut, the files that never began."""
        left = f"{cut} upload(s) under way cut"
        if waiting:
            left += f" and {waiting} complete file(s) not begun"
        return (
            f"stopped at once (a second signal): {left}; their files stay in {where} and are "
            f"sent at the next start; {sent} file(s) uploaded in this run"
        )
