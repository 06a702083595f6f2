"""What the agent's threads tell its dispatcher, as values the decision core (agent/core.py)
takes: what changed under the watch dir (watchdog's events, agent/changes.py), what a walk found
and that it ended (agent/scanner.py), a signal, a preemption notice and its withdrawal
(agent/notice.py). Pure: no clock, no file, no thread. The messages that carry a thread's own
objects (a future, a socket's answer) are the shell's (agent/inbox.py)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Optional

from agent.versions import FileVersion


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


@dataclass(frozen=True)
class Found:
    """A walk found files the journal lacks (or holds in another version); and files refused
    before under the grant `grant` (its identity), as the journal keeps them: (path, version,
    why). Those wait for a new grant without being tried, and are not logged one by one.
    `excluded`: the paths the walk found that the filters exclude (not in `files`)."""

    files: list[tuple[str, FileVersion]]
    refused: list[tuple[str, FileVersion, str]] = field(default_factory=list)
    grant: str = ""
    excluded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Walked:
    """A walk of `folder` ended (None: of the whole watch dir). `covered`: it was not made, one
    of the whole watch dir asked for before and not yet begun covers it (each walk asked for
    comes back once, so the walks asked and ended tally)."""

    folder: Optional[str]
    covered: bool = False


@dataclass(frozen=True)
class Signal:
    """SIGTERM or SIGINT came: the handler counted it (agent/rules.py: `Timing.signal`) and put
    this, nothing that takes a lock."""


@dataclass(frozen=True)
class WalkWaits:
    """A walk waits for the files it found to be sent (agent/scanner.py: Room)."""


@dataclass(frozen=True)
class Notice:
    """The machine will go (`final`), at `deadline` (Unix time) if the cloud says when; or, not
    final, may go soon (EC2's rebalance recommendation)."""

    cloud: str
    what: str
    deadline: Optional[float]
    final: bool = True

    def describe(self, now: float) -> str:
        if self.deadline is None:
            return f"{self.cloud} {self.what}"
        at = dt.datetime.fromtimestamp(self.deadline, dt.timezone.utc)
        return f"{self.cloud} {self.what}, the machine goes at {at:%H:%M:%S} UTC (in " + (
            f"{max(0.0, self.deadline - now):.0f} s)"
        )


@dataclass(frozen=True)
class Withdrawn:
    """A final notice the metadata service gives no longer: the machine stays."""

    notice: Notice
