"""A watched file's states (agent/ledger.py moves files between them), the sets of them that
status and the metrics name, the ledger's entry for one file, and `Entries`: every watched
file's entry, one per path, and how many are in each state, which the ledger reads and writes
through (its transitions, the settle timer and the order of the due files are the ledger's).
Pure: no I/O, no threads, no clock."""

from __future__ import annotations

import enum
from collections import Counter
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


class Entries:
    """Every change of state goes through `_set`, `_move` or `_drop`, which keep the counts."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._counts: Counter[State] = Counter()
        self.sent = 0  # files sent since start (their entries are not kept: the journal has them)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: str) -> bool:
        return path in self._entries

    def state(self, path: str) -> Optional[State]:
        entry = self._entries.get(path)
        return None if entry is None else entry.state

    def moved_in(self, path: str) -> bool:
        """It became due by a move, which proves it complete only if no writer holds it: the
        delivery asks the kernel before sending."""
        entry = self._entries.get(path)
        return entry is not None and entry.moved_in

    def close_seen(self, path: str) -> bool:
        """Its writer's close (or a rename into place) was seen, rather than a quiet spell only:
        what after-upload needs to know when the kernel cannot say whether a writer is left."""
        entry = self._entries.get(path)
        return entry is not None and entry.closed

    def count(self, *states: State) -> int:
        return sum(self._counts[s] for s in states)

    def waiting(self, limit: int) -> list[tuple[str, State, str]]:
        """Up to `limit` files waiting for a new grant or for readable permissions: (path,
        state, why)."""
        found: list[tuple[str, State, str]] = []
        if not self.count(*KEPT_BY_SCAN):  # the common case: no walk over every pending file
            return found
        for path, entry in self._entries.items():
            if entry.state in KEPT_BY_SCAN:
                found.append((path, entry.state, entry.reason))
                if len(found) == limit:
                    break
        return found

    def states_of(self, paths: list[str]) -> dict[str, tuple[str, str]]:
        """The state (its value) and why, of each of `paths` the ledger holds (postbox-agent
        wait asks)."""
        entries = self._entries
        return {p: (e.state.value, e.reason) for p in paths if (e := entries.get(p)) is not None}

    def size_of(self, *states: State) -> int:
        """The bytes of the files in `states` whose size the ledger knows (last seen)."""
        return sum(
            e.version.size
            for e in self._entries.values()
            if e.state in states and e.version is not None
        )

    def counts(self) -> dict[str, int]:
        """Files in each state (every state named, zeros included), and `sent` since start."""
        return {**{s.value: self._counts[s] for s in State}, "sent": self.sent}

    def paths(self, *states: State) -> list[str]:
        wanted = set(states) or set(State)
        return [p for p, e in self._entries.items() if e.state in wanted]

    def unrecorded(self) -> list[tuple[str, Unrecorded]]:
        return [
            (p, e.unrecorded)
            for p, e in self._entries.items()
            if e.state is State.UNRECORDED and e.unrecorded is not None
        ]

    def _set(self, path: str, entry: Entry) -> None:
        old = self._entries.get(path)
        if old is not None:
            self._counts[old.state] -= 1
        self._entries[path] = entry
        self._counts[entry.state] += 1

    def _move(self, entry: Entry, state: State) -> None:
        self._counts[entry.state] -= 1
        entry.state = state
        self._counts[state] += 1

    def _drop(self, path: str) -> None:
        entry = self._entries.pop(path)
        self._counts[entry.state] -= 1
