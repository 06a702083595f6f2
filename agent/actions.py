"""What the decision core (agent/core.py) and its shell (agent/service.py) say to each other beyond
the threads' messages (agent/messages.py): the time a message is applied at (`Now`), the
messages only the dispatcher makes, and the actions the core returns for the shell to carry out,
in order. Values only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from agent.outcome import Outcome
from agent.versions import FileVersion


@dataclass(frozen=True)
class Now:
    """The time a message is applied at: `mono`, the dispatcher's monotonic seconds (every
    timer, the stop, the deadline); `store`, the store's time as Unix seconds (a notice's
    deadline is said in it)."""

    mono: float
    store: float


# The messages only the dispatcher makes (the threads': agent/messages.py, agent/heard.py).
@dataclass(frozen=True)
class Tick:
    """Between messages: the settle timers, the walks owed, the sends, the drain's end.
    `startable`: the journal records and the grant leaves time to finish an upload begun now."""

    startable: bool = True
    damaged: bool = False  # the journal was found damaged: stop (exit 65)
    expired: bool = False  # the grant expired and no renewal can bring the next: stop (exit 79)


@dataclass(frozen=True)
class Looked:
    """What the files `Look` named are now (None: gone), for `why` (`Look.why`)."""

    versions: dict[str, Optional[FileVersion]]
    why: str


@dataclass(frozen=True)
class Landed:
    """One file's delivery ended with `outcome` (or the shell refused its name)."""

    relpath: str
    outcome: Outcome


@dataclass(frozen=True)
class Question:
    """`postbox-agent wait` asks how these files stand (agent/asking.py)."""

    paths: list[str]


@dataclass(frozen=True)
class Rescan:
    """Walk the whole watch dir again (the rescan's period, a watch dir followed anew)."""


@dataclass(frozen=True)
class BarrierMade:
    """The marker a stop's barrier waits to hear back is `name` (None: none could be made)."""

    name: Optional[str]


@dataclass(frozen=True)
class GrantTaken:
    """A new grant is in force."""


# The actions, carried out by the shell in the order given.
@dataclass(frozen=True)
class Send:
    """Deliver this file (agent/delivery.py), under the grant in force."""

    relpath: str
    rate: Optional[float]  # the observed bytes per second (pacing)
    busy: bool  # other uploads are under way
    close_seen: bool
    moved_in: bool


@dataclass(frozen=True)
class Walk:
    """Walk `folder` (None: the whole watch dir); a `Walked` comes back for each."""

    folder: Optional[str]


@dataclass(frozen=True)
class Look:
    """Look at these files and answer with `Looked` (the settle timer fired; a notice's
    smallest-first order needs their sizes)."""

    paths: list[str]
    why: str


@dataclass(frozen=True)
class Say:
    """Log `line` at `level`; `left`: followed by the files left (the shell knows the folder)."""

    level: int
    line: str
    left: bool = False


@dataclass(frozen=True)
class Notify:
    """Tell systemd: `ready` (READY=1) or `stopping` (STOPPING=1, with `text`)."""

    what: str
    text: str = ""


@dataclass(frozen=True)
class Held:
    """This many files are on their way (the walks' room, on their thread); `applied`: a
    walk's find of that many files is in the ledger now."""

    count: int
    applied: int = 0


@dataclass(frozen=True)
class MakeBarrier:
    """Make the marker every event from before the signal comes ahead of (`BarrierMade`)."""


@dataclass(frozen=True)
class Stop:
    """Stop the main loop with `code`: no upload starts; those under way end (the drain)."""

    code: int


@dataclass(frozen=True)
class Record:
    """Record what the store took while the journal could not (the journal's backlog)."""


@dataclass(frozen=True)
class Report:
    """Write status.json (`status` False), or tell systemd STATUS= and write the metrics file."""

    status: bool = False


@dataclass(frozen=True)
class Halt:
    """Stop at once: uploads under way are cut."""


@dataclass(frozen=True)
class Relook:
    """A folder's mode changed: if it is one a walk could not list, watch it anew and walk it
    (the shell keeps those folders: agent/unlisted.py)."""

    relpath: str


@dataclass(frozen=True)
class Answer:
    """What `wait` is told of the files the ledger holds: path → (state, why)."""

    held: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Tried:
    """How many files that waited for a grant are tried again under the new one."""

    count: int


Action = Union[
    Send,
    Walk,
    Look,
    Say,
    Notify,
    Held,
    MakeBarrier,
    Halt,
    Relook,
    Answer,
    Tried,
    Stop,
    Record,
    Report,
]
