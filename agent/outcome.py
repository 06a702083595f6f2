"""What one file's delivery is given and what it gives back: the values the daemon, its workers
and the ledger pass between them (no behaviour here).

A `Job` is decided once, before a file is sent: the file, its key and the grant it goes under. The
uploader answers with a `Receipt` (what the store confirmed); the delivery step turns that, or the
reason there is none, into an `Outcome`, which the ledger applies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from agent.versions import FileVersion

if TYPE_CHECKING:  # types only: the values stay pure (the ledger and the core hold them)
    from pathlib import Path

    from agent.grant import AnyGrant

# logging's levels, for the lines pure modules return (they may not import logging). A waiting
# state's line is said at ERROR unless it says another.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


@dataclass(frozen=True)
class Job:
    path: Path  # where the file is
    relpath: str  # its name under the watch dir, `/`-separated: the journal's name for it
    key: str
    grant: AnyGrant
    rate: Optional[float] = None  # bytes per second observed so far; None: not known yet
    busy: bool = False  # another upload is under way (it may be taking a one-key grant's key)
    close_seen: bool = False  # its writer's close was seen, not only a quiet spell
    moved_in: bool = False  # renamed (or carried) into place: sent only if no writer holds it


@dataclass(frozen=True)
class Receipt:
    """What the store confirmed for one file (sent in parts: no MD5 of the whole, the ETag of
    its manifest, status 0)."""

    key: str
    version: FileVersion
    md5: str
    etag: str
    status: int


@dataclass(frozen=True)
class Unrecorded:
    """An upload the store confirmed and the journal could not record yet (`in_parts`: the
    file went in parts, and the receipt is its manifest's: agent/parts.py)."""

    job: Job
    receipt: Receipt
    in_parts: bool = False


# A file not there when it was to be sent: no event said why yet (a move's comes a moment later).
GONE_BEFORE = "gone before it was sent (deleted, or moved out of the watch dir or excluded)"


class Result(enum.Enum):
    """What a worker says happened to one file."""

    SENT = "sent"  # stored and journaled
    KNOWN = "known"  # the journal says this version was sent already
    UNRECORDED = "unrecorded"
    REFUSED = "refused"
    FAILED = "failed"
    TOO_LONG = "too long"
    UNREADABLE = "unreadable"
    CHANGED = "changed"  # changed while it was read: settles again
    HELD = "held"  # moved into place while a writer still holds it: due at its close
    GONE = "gone"  # deleted or moved away before it was sent
    CUT = "cut"  # the stop (or a damaged journal, which stops) came first: due at the next start


@dataclass(frozen=True)
class Outcome:
    result: Result
    version: Optional[FileVersion] = None  # the version the result concerns
    grant: str = ""  # the grant it was sent (or refused) under
    size: int = 0  # bytes sent, for the rate
    seconds: float = 0.0  # how long sending took, for the rate
    unrecorded: Optional[Unrecorded] = None  # UNRECORDED: what to record once the journal can
    reason: str = ""  # a waiting state's one log line
    level: int = ERROR  # ... and its level (logging's)
