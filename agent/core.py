"""The agent's decisions, in one pure object: `Core.apply(message, now)` takes what happened and
returns what to do. The design is h11's (sans-I/O): the core owns no thread, socket, clock or
file; the daemon (agent/service.py) is its shell, which starts the threads, feeds the core
their messages with the time (`Now`: monotonic and the store's, as values) and carries out the
actions it returns, in order.

The core holds every rule that decides what happens next: the ledger (each watched file's
state, agent/ledger.py), the memory bound (`room`: a walk's finds and the events let in while
as many files are on their way as the room holds), the walks asked for and ended, readiness,
the stop and its budget, the preemption deadline (agent/rules.py: Timing), what `wait` is told
of the files the ledger holds, which files the filters keep back (POSTBOX_INCLUDE and
POSTBOX_EXCLUDE: agent/filters.py judges a path, the core drops the file before the ledger
holds it, counts it and tells `wait`), and which lines are said once. What the shell knows and the
core asks for comes back as a message: a file's version (`Look` → `Looked`), the barrier's
name (`MakeBarrier` → `BarrierMade`), whether the journal records and the grant leaves time to
start an upload (`Tick.startable`).

Each rule's table test is tests/agent/test_core.py, on a clock the test holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any, Optional

from agent.actions import (
    Action,
    Answer,
    BarrierMade,
    GrantTaken,
    Halt,
    Held,
    Landed,
    Look,
    Looked,
    MakeBarrier,
    Notify,
    Now,
    Question,
    Record,
    Relook,
    Report,
    Rescan,
    Say,
    Send,
    Stop,
    Tick,
    Tried,
    Walk,
)
from agent.errors import ExitCode
from agent.ledger import Ledger
from agent.messages import Change, Changed, Found, Notice, Signal, Walked, WalkWaits, Withdrawn
from agent.outcome import DEBUG, ERROR, GONE_BEFORE, INFO, Result
from agent.preempted import Preemption
from agent.rules import (
    EXCLUDED,
    STATUS_EVERY_SECONDS,
    Chores,
    Excluded,
    Filters,
    Once,
    Owed,
    Pace,
    Timing,
    Walks,
    daemon_chores,
)
from agent.shown import printable
from agent.states import State

ROOM = 10_000  # files the ledger may hold on their way before events and walks wait
ON_ITS_WAY = (State.DUE, State.SETTLING, State.SENDING)  # what the room counts, a stop sends


# The changes that tell the ledger how far a file is from complete.
_SETTLES: dict[Change, Callable[[Ledger, str, float], object]] = {
    Change.CLOSED: Ledger.closed,
    Change.RENAMED: Ledger.renamed,
    Change.WRITTEN: Ledger.written,
    Change.CREATED: Ledger.found,
    Change.ATTRIB: Ledger.attrib,
}


@dataclass
class Core:
    """The daemon's decisions. One thread (the dispatcher) applies messages; the workers read
    `stop.starts_until` (a float written whole) before each upload they begin."""

    settle_seconds: float
    concurrency: int
    budget: float  # the stop's (POSTBOX_STOP_BUDGET_SECONDS)
    room: int = ROOM
    # The walks' finds on the inbox, not yet applied (the scanner's Room counts them on its
    # thread): an event is let in only while those and the files on their way leave room.
    queued: Callable[[], int] = lambda: 0
    rescan_seconds: float = 0.0  # the periodic rescan (0: none)
    report_every: float = STATUS_EVERY_SECONDS  # STATUS= and the metrics file
    started: float = 0.0  # when the daemon started (monotonic): the chores' periods count from it
    filters: InitVar[Optional[Filters]] = None  # POSTBOX_INCLUDE, POSTBOX_EXCLUDE (None: all)
    excluded: Excluded = field(init=False)  # ... and the files they kept back this run
    ledger: Ledger = field(init=False)
    chores: Chores = field(init=False)
    stop: Timing = field(init=False)
    walks: Walks = field(default_factory=Walks)
    owed: Owed = field(default_factory=Owed)  # folders with files the room had no space for
    said: Once = field(default_factory=Once)  # "full", "past"
    pace: Pace = field(default_factory=Pace)  # the rate uploads go at
    ready: bool = False  # the start-up walk ended, or waits for room
    drained: bool = False  # the stop's drain is over: the shell stops dispatching
    preemption: Preemption = field(default_factory=Preemption)  # the cloud's notice in force
    _startable: bool = True

    def __post_init__(self, filters: Optional[Filters]) -> None:
        self.excluded = Excluded(filters)
        self.ledger = Ledger(self.settle_seconds)
        self.stop = Timing(self.budget)
        self.chores = daemon_chores(self.rescan_seconds, self.report_every, self.started)

    def apply(self, message: object, now: Now) -> list[Action]:
        """What to do, in order, now that `message` came (one table: `_RULES`)."""
        actions: list[Action] = []
        _RULES[type(message)](self, message, now, actions)
        return actions

    @property
    def on_its_way(self) -> int:
        return self.ledger.count(*ON_ITS_WAY)

    # What changed under the watch dir.
    def _changed(self, m: Changed, now: Now, out: list[Action]) -> None:
        kind, relpath = m.kind, m.relpath
        if kind is Change.RESCAN:
            self._rescan(m, now, out)
        elif kind is Change.DIRECTORY:
            self._walk(relpath, out)
        elif kind is Change.FOLDER_MODE:
            out.append(Relook(relpath))
        elif kind is Change.MOVED_AWAY:
            self.ledger.gone(relpath)
        elif kind is Change.FOLDER_AWAY:
            self.ledger.folder_gone(relpath)
        elif kind is Change.BARRIER:
            if relpath == self.stop.barrier:  # every event before the signal is in
                self.stop.barrier = None
        elif kind is Change.DELETED:
            if self.ledger.gone(relpath):
                out.append(Say(INFO, f"skipped {printable(relpath)}: deleted before it was sent"))
        else:
            self._admit(m, now.mono, out)

    def _keeps_back(self, relpath: str, out: list[Action]) -> bool:
        """The filters exclude the file at `relpath`: never held, sent or journaled; counted
        (status), and said once at DEBUG. One the ledger holds is sent."""
        if relpath in self.ledger:
            return False
        kept, why = self.excluded.judge(relpath)
        if why:
            out.append(Say(DEBUG, f"not sent {printable(relpath)}: {why}"))
        return kept

    def _admit(self, m: Changed, now: float, out: list[Action]) -> None:
        """An event that may bring a file the ledger does not hold. With as many on their way
        as the room holds, the event is let go and the file's folder walked once half the room
        is free (the file then settles, as one a walk finds does): memory stays bounded however
        many files arrive at once. A file the filters exclude is not let in."""
        kind, relpath, source = m.kind, m.relpath, m.source
        if self._keeps_back(relpath, out):
            if kind is Change.CARRIED:  # moved with its folder under an excluded name
                self.ledger.gone(source)
            return
        known = relpath in self.ledger or source in self.ledger
        full = self.on_its_way + self.queued() >= self.room
        if full and not known and kind is not Change.ATTRIB:
            if self.said.first("full"):  # under a steady flood it would come every few seconds
                out.append(Say(INFO, (
                    f"{self.room} files on their way, as many as the agent holds at once: the "
                    "files that arrive meanwhile are found by a walk of their folder once half "
                    "are sent"
                )))  # fmt: skip
            self.owed.owe(relpath)
        elif kind is Change.CARRIED:
            self.ledger.carried(source, relpath, now)
        else:
            _SETTLES[kind](self.ledger, relpath, now)

    def _rescan(self, m: object, now: Now, out: list[Action]) -> None:
        """Walk the whole watch dir again; files that could not be read are tried again."""
        if self.ready:
            for relpath in self.ledger.paths(State.UNREADABLE):
                self.ledger.attrib(relpath, now.mono)
        self._walk(None, out)

    def _walk(self, folder: Optional[str], out: list[Action]) -> None:
        self.walks.asked += 1
        out.append(Walk(folder))

    # The walks.
    def _found(self, m: Found, now: Now, out: list[Action]) -> None:
        """A walk's find; refusals under a grant since replaced are tried again."""
        files, refused = m.files, m.refused
        if self.excluded.filters is not None:  # the walk judged them too: it names those
            files = [f for f in files if not self._keeps_back(f[0], out)]  # it left out
            refused = [r for r in refused if not self._keeps_back(r[0], out)]
            for relpath in m.excluded:
                self._keeps_back(relpath, out)
        self.ledger.walked(files, refused, m.grant, now.mono)
        out.append(Held(self.on_its_way, applied=len(m.files)))

    def _walked(self, m: Walked, now: Now, out: list[Action]) -> None:
        self.walks.ended += 1
        if m.folder is None and not m.covered:
            self._now_ready(out)

    def _walk_waits(self, m: WalkWaits, now: Now, out: list[Action]) -> None:
        self._now_ready(out)

    def _now_ready(self, out: list[Action]) -> None:
        """The start-up walk ended or waits for room: every file the agent could hold is in the
        ledger. READY=1, once."""
        if not self.ready:
            self.ready = True
            out.append(Notify("ready"))

    # The stop.
    def _signal(self, m: Signal, now: Now, out: list[Action]) -> None:
        if self.stop.at_once:
            out.append(Halt())
        elif line := self.stop.begin(now.mono, self.on_its_way):
            out.append(Say(INFO, line))
            out.append(Notify("stopping", "stopping: sending what is complete first"))
            out.append(MakeBarrier())  # a file closed just before the signal: its event may
            self._rescan(m, now, out)  # be on its way

    def _barrier_made(self, m: BarrierMade, now: Now, out: list[Action]) -> None:
        self.stop.barrier = m.name

    # The cloud's notices (agent/preempted.py).
    def _noticed(self, notice: Notice, now: Now, out: list[Action]) -> None:
        out.append(self.preemption.noticed(notice, now, self.stop, self.ledger))

    def _hurry(self, m: Looked, now: Now, out: list[Action]) -> None:
        out.append(self.preemption.hurry(m, now, self.ledger))

    def _withdrawn(self, m: Withdrawn, now: Now, out: list[Action]) -> None:
        stop, ledger, settle = self.stop, self.ledger, self.settle_seconds
        out.append(self.preemption.withdrawn(m, stop, ledger, settle, self.said))

    @property
    def notice(self) -> Optional[Notice]:
        """The preemption notice in force (status.json shows it)."""
        return self.preemption.notice

    # Time passing: the settle timers, the sends, the room, the drain.
    def _tick(self, m: Tick, now: Now, out: list[Action]) -> None:
        if m.damaged or m.expired:  # nothing starts; what is under way ends (the drain)
            out.append(Stop(ExitCode.JOURNAL_DAMAGED if m.damaged else ExitCode.EXPIRED))
            return
        self._startable = m.startable
        self._chores(now, out)
        fired = self.ledger.timers_fired(now.mono)
        if fired:  # the rest once the shell has looked at them (`_settled`)
            out.append(Look(fired, "settled"))
        else:
            self._after_tick(now, out)

    def _chores(self, now: Now, out: list[Action]) -> None:
        """Each at its own pace: the rescan, the journal's backlog, status.json, STATUS=."""
        due, t = self.chores.due, now.mono
        if due("scan", t):
            self._rescan(None, now, out)
        if self.ledger.count(State.UNRECORDED) and due("record", t):
            out.append(Record())
        if due("snapshot", t):
            out.append(Report())
        if due("status", t):
            out.append(Report(status=True))

    def _looked(self, m: Looked, now: Now, out: list[Action]) -> None:
        if m.why == "hurry":
            self._hurry(m, now, out)
            return
        for path, version in m.versions.items():
            if not self.ledger.after_settle(path, now.mono, version):
                out.append(Say(INFO, f"skipped {printable(path)}: {GONE_BEFORE}"))
        self._after_tick(now, out)

    def _after_tick(self, now: Now, out: list[Action]) -> None:
        self._dispatch(now, out)
        held = self.on_its_way
        out.append(Held(held))
        for folder in self.owed.due(held, self.room):  # half the room is free
            self._walk(folder, out)
        caught_up = self.walks.caught_up and not self.owed  # every walk asked for, and owed
        self.drained = self.stop.over(now.mono, held, caught_up)

    def _dispatch(self, now: Now, out: list[Action]) -> None:
        """Every due file to a free worker, while an upload may start."""
        if not self._startable or self.ledger.count(State.UNRECORDED):
            return  # the journal cannot record, or no upload could finish in time
        if not self.stop.may_start(now.mono):
            if now.mono >= self.stop.deadline and self.said.first("past"):
                out.append(Say(ERROR, "preemption deadline passed: no upload starts now",
                               left=True))  # fmt: skip
            return  # the machine is going, or the drain's time is up: it would be cut
        ledger = self.ledger
        sending = ledger.count(State.SENDING)
        for relpath in ledger.take(self.concurrency - sending):
            out.append(Send(relpath, self.pace.rate, sending > 0, ledger.close_seen(relpath),
                            ledger.moved_in(relpath)))  # fmt: skip
            sending += 1

    # Outcomes, questions, grants.
    def _landed(self, m: Landed, now: Now, out: list[Action]) -> None:
        """A delivery's outcome; its reason said once a state (or once while the journal
        cannot record: the first of those pauses uploads)."""
        outcome = m.outcome
        if outcome.result in (Result.SENT, Result.UNRECORDED):
            self.pace.observe(outcome.size, outcome.seconds)
        paused = self.ledger.count(State.UNRECORDED) > 0
        first = self.ledger.report(m.relpath, outcome, now.mono)
        if outcome.result is Result.UNRECORDED:
            first = not paused
        if first and outcome.reason:
            out.append(Say(outcome.level, outcome.reason))

    def _question(self, m: Question, now: Now, out: list[Action]) -> None:
        """The states of the files the ledger holds; those the filters exclude, as such."""
        held = self.ledger.states_of(m.paths)
        for path in m.paths:
            if why := self.excluded.why(path):
                held[path] = (EXCLUDED, why)
        out.append(Answer(held))

    def _grant_taken(self, m: GrantTaken, now: Now, out: list[Action]) -> None:
        """Every file that waited for a grant settles again (it may have changed)."""
        out.append(Tried(len(self.ledger.retry_waiting(now.mono))))


_RULES: dict[type, Callable[[Core, Any, Now, list[Action]], None]] = {
    Changed: Core._changed,
    Found: Core._found,
    Walked: Core._walked,
    WalkWaits: Core._walk_waits,
    Signal: Core._signal,
    BarrierMade: Core._barrier_made,
    Notice: Core._noticed,
    Withdrawn: Core._withdrawn,
    Tick: Core._tick,
    Looked: Core._looked,
    Landed: Core._landed,
    Question: Core._question,
    Rescan: Core._rescan,
    GrantTaken: Core._grant_taken,
}
