"""Every watched file's state, one value per path (kept in agent/states.py's `Entries`), and how
it moves. Pure: no I/O, no threads, no clock of its own (every method that needs the time takes
`now`, in seconds); the decision core (agent/core.py) owns the one ledger.

A path is in exactly one state at a time:

    WRITING ──close──▶ DUE ──take──▶ SENDING ──sent──▶ forgotten (the journal holds it)
    (a rename) ──▶ DUE ──take──▶ SENDING ──a writer holds it──▶ WRITING
    SETTLING ──unchanged for settle_seconds──▶ DUE  SENDING ──changed──▶ SETTLING
    SENDING ──refused / failed / too long──▶ REFUSED / FAILED / TOO_LONG (until a new grant)
    SENDING ──no permission──▶ UNREADABLE (until a chmod or a rescan)
    SENDING ──stored, not journaled──▶ UNRECORDED (until the journal records it)

Events move a path (`written`, `closed`, `renamed`, `carried`, `found`, `attrib`, `gone`); a
folder's move carries each file's state to its new path (`carried`); the settle timer moves it
from SETTLING to DUE (`timers_fired` names the paths to look at, `after_settle` applies what
was seen there); workers report an `Outcome` (agent/outcome.py) and `report` applies it, in one
place. Sent paths are not kept: a daemon that has sent millions of files holds none of them
(the journal does); `sent` counts them.

Not thread-safe: one thread (the service's dispatcher) owns a ledger.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable
from typing import Optional

from agent.outcome import Outcome, Result
from agent.states import (
    KEPT_BY_SCAN,
    PENDING,
    WAIT_STATES,
    WAITING_FOR_GRANT,
    Entries,
    Entry,
    State,
)
from agent.versions import FileVersion


class Ledger(Entries):
    def __init__(self, settle_seconds: float) -> None:
        super().__init__()
        self.settle_seconds = settle_seconds
        self._due: deque[str] = deque()  # in the order they became due; stale names skipped
        self._timers: list[tuple[float, str]] = []  # (settle_at, path), a heap; stale skipped
        self.sent_bytes = 0  # their bytes
        self.not_sent: Counter[str] = Counter()  # files refused, failed... by result, since start

    def next_timer(self) -> Optional[float]:
        """When the earliest settling file is to be looked at (None: none settles)."""
        while self._timers:
            at, path = self._timers[0]
            entry = self._entries.get(path)
            if entry is not None and entry.state is State.SETTLING and entry.settle_at == at:
                return at
            heapq.heappop(self._timers)
        return None

    # Events.
    def written(self, path: str, now: float) -> None:
        """Opened and written: due at its close."""
        if not self._changed_while_sending(path):
            self._set(path, Entry(State.WRITING, now))

    def closed(self, path: str, now: float) -> None:
        """Closed after writing: complete now."""
        self._complete(path, now, closed=True, moved_in=False)

    def renamed(self, path: str, now: float, *, by_writer: bool = True) -> None:
        """Renamed into place: complete now, unless a writer still holds it (`moved_in`).
        `by_writer` False: moved with a folder above it, which says nothing of a close."""
        self._complete(path, now, closed=by_writer, moved_in=True)

    def carried(self, old: str, new: str, now: float) -> None:
        """Moved from `old` ("": from outside) to `new` because a folder above it moved: its
        writer did not move it, so the move says nothing of whether it is complete. A file on
        its way keeps its state under the new path (one still being written stays so); any
        other is judged as renamed into place, not by its writer.

        The new path may be known already: a walk of the moved folder (on the scanner's
        thread) can end before watchdog's per-file moves arrive. The old name goes all the
        same, and what it knew (a writer, a settle timer) wins over the walk's first look,
        unless the new name is being written or is on its way already."""
        entry = self._entries.get(old) if old else None
        if entry is None or entry.state not in PENDING:
            self.renamed(new, now, by_writer=False)
            return
        self._drop(old)
        current = self._entries.get(new)
        if current is not None and current.state not in (State.SETTLING, State.DUE):
            return
        self._set(new, entry)
        if entry.state is State.SETTLING:
            heapq.heappush(self._timers, (entry.settle_at, new))
        elif entry.state is State.DUE:
            self._due.append(new)

    def found(self, path: str, now: float, version: Optional[FileVersion] = None) -> None:
        """Seen without an event that says it is complete (a scan, a create): it must settle.

        A file already on its way is left alone, and so is one waiting (for a grant or a chmod)
        while it is still the version it waits with. `version` unknown: look at once."""
        entry = self._entries.get(path)
        if entry is not None and (
            entry.state not in KEPT_BY_SCAN or version is None or entry.version == version
        ):
            return
        self._settle(path, now, version, said_as=None if entry is None else entry.said_as)

    def walked(
        self,
        files: list[tuple[str, FileVersion]],
        refused: list[tuple[str, FileVersion, str]],
        grant: str,
        now: float,
    ) -> None:
        """What a walk found: files to send (`found`), and files whose version was refused
        before under `grant` (the journal keeps it; "" if that grant is no longer in force, and
        then they are tried again). Those wait for a new grant without being tried, and are
        counted, not logged one by one (the walk says how many)."""
        for path, version in files:
            self.found(path, now, version)
        for path, version, reason in refused:
            if not grant:
                self.found(path, now, version)
            elif path not in self._entries:  # one on its way, or waiting, is left alone
                self.not_sent[Result.REFUSED.value] += 1
                self._set(
                    path,
                    Entry(State.REFUSED, now, version, grant=grant, said_as=State.REFUSED,
                          reason=reason),
                )  # fmt: skip

    def attrib(self, path: str, now: float) -> bool:
        """Its permissions changed: a file that could not be read is looked at again."""
        entry = self._entries.get(path)
        if entry is None or entry.state is not State.UNREADABLE:
            return False
        self._settle(path, now, None, said_as=entry.said_as)
        return True

    def gone(self, path: str) -> bool:
        """Deleted or renamed away; True if it was waiting to be sent (not yet on its way)."""
        entry = self._entries.get(path)
        if entry is None or entry.state in (State.SENDING, State.UNRECORDED):
            return False
        self._drop(path)
        return entry.state in PENDING

    def folder_gone(self, folder: str) -> None:
        """A folder renamed or moved out of the watch dir: the names under it are gone (their
        files, if still watched, come back under their new names). One walk over the entries:
        folders move rarely, files often (`gone`)."""
        prefix = folder + "/"
        for path in [p for p in self._entries if p.startswith(prefix)]:
            self.gone(path)

    def retry_waiting(self, now: float) -> list[str]:
        """A new grant: every file waiting for one settles again (it may have changed)."""
        waiting = self.paths(*WAITING_FOR_GRANT)
        for path in waiting:
            self._settle(path, now, None, said_as=None)
        return waiting

    def hurry(self, now: float, size: Callable[[str], int], *, for_good: bool) -> int:
        """A preemption notice: every settling file is due now and, `for_good` (the machine
        goes), from now on a file settles at once; the due files go smallest first (`size`: a
        path's bytes), the most files out in the time there is. Returns how many are due."""
        if for_good:
            self.settle_seconds = 0.0
        for path, entry in list(self._entries.items()):
            if entry.state is State.SETTLING:
                self._set(path, Entry(State.DUE, now, entry.version, said_as=entry.said_as))
        due = [p for p, e in self._entries.items() if e.state is State.DUE]
        self._due = deque(sorted(due, key=size))
        return len(due)

    # The settle timer.
    def timers_fired(self, now: float) -> list[str]:
        """The settling paths whose time has come: the caller looks at each, then calls
        `after_settle`."""
        ready = []
        while self._timers and self._timers[0][0] <= now:
            at, path = heapq.heappop(self._timers)
            entry = self._entries.get(path)
            if entry is not None and entry.state is State.SETTLING and entry.settle_at == at:
                ready.append(path)
        return ready

    def after_settle(self, path: str, now: float, version: Optional[FileVersion]) -> bool:
        """What a settling file looks like now; False if it is gone (and is dropped)."""
        entry = self._entries.get(path)
        if entry is None or entry.state is not State.SETTLING:
            return True
        if version is None:
            self._drop(path)
            return False
        if version == entry.version:
            self._set(path, Entry(State.DUE, now, version, said_as=entry.said_as))
            self._due.append(path)
        else:
            self._settle(path, now, version, said_as=entry.said_as)
        return True

    # Dispatch and outcomes.
    def take(self, limit: int) -> list[str]:
        """Up to `limit` due files, oldest first, now SENDING."""
        taken: list[str] = []
        while self._due and len(taken) < limit:
            path = self._due.popleft()
            entry = self._entries.get(path)
            if entry is not None and entry.state is State.DUE:
                self._move(entry, State.SENDING)
                taken.append(path)
        return taken

    def report(self, path: str, outcome: Outcome, now: float) -> bool:
        """Apply a worker's outcome for a SENDING (or UNRECORDED) file.

        Returns True when the outcome puts the file in a waiting state it was not already
        reported in (so the caller logs it once)."""
        entry = self._entries.get(path)
        if entry is None:
            return False
        changed_meanwhile, said_as = entry.changed_meanwhile, entry.said_as
        result = outcome.result
        if result is Result.SENT:
            self.sent += 1
            self.sent_bytes += outcome.size
        if result in (Result.SENT, Result.KNOWN, Result.GONE):
            self._drop(path)
            if changed_meanwhile:  # a newer version arrived while this one was sent
                self._settle(path, now, None, said_as=None)
            return False
        if result is Result.CUT:  # only while stopping: nothing dispatches it again
            self._set(path, Entry(State.DUE, now, outcome.version))
            return False
        if result is Result.HELD and not changed_meanwhile:
            self._set(path, Entry(State.WRITING, now))  # due at its writer's close
            return False
        if result in (Result.CHANGED, Result.HELD) or (
            changed_meanwhile and result is not Result.UNRECORDED
        ):
            self._settle(path, now, None, said_as=said_as)
            return False
        state = WAIT_STATES[result]
        if state is not State.UNRECORDED:
            self.not_sent[result.value] += 1
        self._set(
            path,
            Entry(
                state,
                now,
                outcome.version,
                grant=outcome.grant,
                unrecorded=outcome.unrecorded,
                changed_meanwhile=changed_meanwhile and state is State.UNRECORDED,
                said_as=state,
                reason=outcome.reason,
            ),
        )
        return said_as is not state

    # Internals (every change of state goes through Entries' _set, _move or _drop).
    def _complete(self, path: str, now: float, *, closed: bool, moved_in: bool) -> None:
        if not self._changed_while_sending(path):
            self._set(path, Entry(State.DUE, now, closed=closed, moved_in=moved_in))
            self._due.append(path)

    def _changed_while_sending(self, path: str) -> bool:
        entry = self._entries.get(path)
        if entry is not None and entry.state in (State.SENDING, State.UNRECORDED):
            entry.changed_meanwhile = True
            return True
        return False

    def _settle(
        self,
        path: str,
        now: float,
        version: Optional[FileVersion],
        *,
        said_as: Optional[State],
    ) -> None:
        at = now if version is None else now + self.settle_seconds
        self._set(path, Entry(State.SETTLING, now, version, settle_at=at, said_as=said_as))
        heapq.heappush(self._timers, (at, path))
