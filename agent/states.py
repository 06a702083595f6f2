"""A watched file's states (agent/ledger.py moves files between them), the sets of them that
status and the metrics name, and the ledger's entry for one file. Values, no behaviour."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from agent.outcome import Result, Unrecorded
from agent.versions import FileVersion


class State(enum.Enum):
    WRITING = "writing"  # open for writing: due at its close, however long that takes
    SETTLING = "settling"  # seen without a close: due once unchanged for settle_seconds
    DUE = "due"  # complete: waits for a worker
    SENDING = "sending"
    UNRECORDED = "unrecorded"  # the store has it, the journal could not record it yet
    REFUSED = "refused"  # refused for good under one grant
    FAILED = "failed"  # transient faults outlasted the retries under one grant
    TOO_LONG = "too long"  # would not finish before the grant expires, at the observed rate
    UNREADABLE = "unreadable"  # no permission: tried again when its permissions change


# The states of a file on its way to being sent: written, settling or due.
PENDING = frozenset({State.WRITING, State.SETTLING, State.DUE})
# The states in which a file waits for a new grant, and is tried again under it.
WAITING_FOR_GRANT = frozenset({State.REFUSED, State.FAILED, State.TOO_LONG})
# The states a scan leaves alone while the file's version is the one they concern.
KEPT_BY_SCAN = frozenset({*WAITING_FOR_GRANT, State.UNREADABLE})
# The states `waiting` lists (postbox-agent status), in the order status shows them.
WAITING = (State.REFUSED, State.FAILED, State.TOO_LONG, State.UNREADABLE)


WAIT_STATES = {
    Result.REFUSED: State.REFUSED,
    Result.FAILED: State.FAILED,
    Result.TOO_LONG: State.TOO_LONG,
    Result.UNREADABLE: State.UNREADABLE,
    Result.UNRECORDED: State.UNRECORDED,
}


@dataclass
class Entry:
    state: State
    since: float
    version: Optional[FileVersion] = None  # SETTLING: last seen; waiting states: the version
    settle_at: float = 0.0  # SETTLING: when to look at it again
    grant: str = ""  # waiting states: the grant it waits past
    changed_meanwhile: bool = False  # SENDING: changed meanwhile, look again once it lands
    unrecorded: Optional[Unrecorded] = None  # UNRECORDED: what to record
    said_as: Optional[State] = None  # the waiting state its line was said as: each said once
    closed: bool = False  # DUE, SENDING: its writer's close was seen (not only a quiet spell)
    moved_in: bool = False  # DUE, SENDING: moved into place: sent only if no writer holds it
    reason: str = ""  # waiting states: why (postbox-agent status)
