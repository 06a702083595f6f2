"""The daemon's decisions (agent/core.py) on a clock the test holds: each message given with its
time, each action read back. No thread, no file, no sleep: the settle wait, the stop's budget
and barrier, a preemption deadline as an end time, the room, readiness, and what `wait` is
told. The process tests (test_service.py, test_preemption.py, test_room.py) hold the same rules
end to end."""

from __future__ import annotations

from typing import Optional

import pytest

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
    Report,
    Rescan,
    Say,
    Send,
    Stop,
    Tick,
    Tried,
    Walk,
)
from agent.core import Core
from agent.errors import ExitCode
from agent.filters import Filters
from agent.messages import Change, Changed, Found, Notice, Signal, Walked, WalkWaits, Withdrawn
from agent.outcome import ERROR, Outcome, Result
from agent.states import State
from agent.versions import FileVersion

STORE = 1_800_000_000.0  # the store's clock, Unix seconds, when the monotonic clock reads 0


def at(t: float) -> Now:
    return Now(t, STORE + t)


def v(size: int = 10) -> FileVersion:
    return FileVersion(size, size * 1000, 1)


class Daemon:
    """A core and the shell's part a test needs: the files' versions it looks at, the actions
    it was given."""

    def __init__(self, **options: object) -> None:
        self.core = Core(**{"settle_seconds": 2.0, "concurrency": 2, "budget": 5.0, **options})  # type: ignore[arg-type]
        self.files: dict[str, Optional[FileVersion]] = {}
        self.said: list[Action] = []

    def tell(self, message: object, t: float) -> list[Action]:
        """Apply `message` at `t`; answer each `Look` as the shell does (the files' versions)."""
        actions = self.core.apply(message, at(t))
        self.said += actions
        for action in list(actions):
            if isinstance(action, Look):
                versions = {p: self.files.get(p) for p in action.paths}
                actions += self.tell(Looked(versions, action.why), t)
        return actions

    def tick(self, t: float) -> list[Action]:
        return self.tell(Tick(), t)

    def ready(self, t: float = 0.0) -> None:
        self.tell(Rescan(), t)
        self.tell(Walked(None), t)

    def closed(self, path: str, t: float, size: int = 10) -> None:
        self.files[path] = v(size)
        self.tell(Changed(Change.CLOSED, path), t)


def sent(actions: list[Action]) -> list[str]:
    return [a.relpath for a in actions if isinstance(a, Send)]


def lines(actions: list[Action]) -> list[str]:
    return [a.line for a in actions if isinstance(a, Say)]


def sent_ok(path: str, size: int = 10) -> Landed:
    return Landed(path, Outcome(Result.SENT, v(size), size=size, seconds=0.1))


# The settle wait.
@pytest.mark.parametrize(
    ("changed_at", "looked_at", "sends"),
    [
        (None, 1.99, []),  # its settle time has not come
        (None, 2.0, ["a.out"]),  # unchanged for settle_seconds: due, and sent in the same tick
        (1.0, 2.0, []),  # it changed meanwhile: it settles again, from when it was seen changed
        (1.0, 4.0, ["a.out"]),  # ... and goes once unchanged for another settle_seconds
    ],
)
def test_a_file_seen_without_a_close_goes_once_unchanged_for_the_settle_wait(
    changed_at: Optional[float], looked_at: float, sends: list[str]
) -> None:
    d = Daemon()
    d.ready()
    d.files["a.out"] = v(10)
    d.tell(Changed(Change.CREATED, "a.out"), 0.0)
    assert sent(d.tick(0.0)) == []  # looked at once (no version known), then settling
    if changed_at is not None:
        d.files["a.out"] = v(20)
        assert sent(d.tick(2.0 if looked_at > 2.0 else changed_at)) == []
    assert sent(d.tick(looked_at)) == sends


def test_a_closed_file_goes_at_once_and_no_more_at_once_than_the_workers() -> None:
    d = Daemon()
    d.ready()
    for name in ("a", "b", "c"):
        d.closed(name, 0.0)
    actions = d.tick(0.0)
    assert sent(actions) == ["a", "b"]
    assert [a.busy for a in actions if isinstance(a, Send)] == [False, True]
    assert sent(d.tick(0.1)) == []  # both workers busy
    d.tell(sent_ok("a"), 0.2)
    assert sent(d.tick(0.2)) == ["c"]


def test_a_file_deleted_while_it_settled_is_skipped_and_said() -> None:
    d = Daemon()
    d.files["gone.txt"] = v()
    d.tell(Found([("gone.txt", v())]), 0.0)
    d.files["gone.txt"] = None
    actions = d.tick(2.0)
    assert sent(actions) == []
    assert lines(actions) == [  # no event yet says whether it was deleted or moved
        "skipped gone.txt: gone before it was sent (deleted, or moved out of the watch dir or "
        "excluded)"
    ]


@pytest.mark.parametrize("startable", [True, False])
def test_nothing_starts_while_the_shell_says_no_upload_could_finish(startable: bool) -> None:
    """The journal cannot record, or the grant is within its expiry margin: the shell says so in
    the tick; the files wait, none is lost."""
    d = Daemon()
    d.closed("a", 0.0)
    assert sent(d.tell(Tick(startable), 0.0)) == (["a"] if startable else [])


# The stop: budget, drain, barrier.
def stopping(d: Daemon, t: float) -> list[Action]:
    d.core.stop.signal()
    return d.tell(Signal(), t)


def test_a_first_signal_begins_the_drain_says_so_and_asks_for_a_barrier_and_a_walk() -> None:
    d = Daemon()
    d.ready()
    d.closed("a", 0.0)
    actions = stopping(d, 1.0)
    assert lines(actions) == [
        "stopping: sending the 1 complete file(s) first, for up to 5.0 s (a second signal "
        "stops at once)"
    ]
    assert Notify("stopping", "stopping: sending what is complete first") in actions
    assert MakeBarrier() in actions and Walk(None) in actions


@pytest.mark.parametrize(
    ("barrier_heard", "walk_ended", "files_left", "t", "drained"),
    [
        (True, True, False, 1.5, True),  # all heard, nothing left: over before the budget
        (False, True, False, 1.5, False),  # the barrier has not come back
        (True, False, False, 1.5, False),  # the walk asked for at the signal has not ended
        (True, True, True, 1.5, False),  # a file is still on its way
        (False, False, True, 6.0, True),  # the budget (5 s from 1.0) is spent: over regardless
    ],
)
def test_no_stop_ends_before_its_own_barrier_came_back_nor_past_its_budget(
    barrier_heard: bool, walk_ended: bool, files_left: bool, t: float, drained: bool
) -> None:
    d = Daemon()
    d.ready()
    if files_left:
        d.files["late"] = v()
        d.tell(Changed(Change.CREATED, "late"), 0.5)
    stopping(d, 1.0)
    d.tell(BarrierMade(".postbox-barrier-1"), 1.0)
    d.tell(Changed(Change.BARRIER, ".postbox-barrier-0"), 1.1)  # another marker: not this one
    if barrier_heard:
        d.tell(Changed(Change.BARRIER, ".postbox-barrier-1"), 1.2)
    if walk_ended:
        d.tell(Walked(None), 1.3)
    d.core.concurrency = 0  # what is on its way stays on its way
    d.tick(t)
    assert d.core.drained is drained


@pytest.mark.parametrize(("budget", "second"), [(5.0, True), (0.0, False)])
def test_a_second_signal_or_a_first_with_no_budget_halts_at_once(
    budget: float, second: bool
) -> None:
    d = Daemon(budget=budget)
    d.ready()
    first = stopping(d, 1.0)
    assert (Halt() in first) is (not second)
    if second:
        assert Halt() in stopping(d, 2.0)


# A preemption notice's deadline: an end time.
def noticed(d: Daemon, t: float, lead: Optional[float], what: str = "spot") -> list[Action]:
    deadline = None if lead is None else STORE + t + lead
    return d.tell(Notice("EC2", what, deadline), t)


@pytest.mark.parametrize(("t", "sends"), [(102.9, ["late"]), (103.0, []), (110.0, [])])
def test_no_upload_starts_at_or_past_the_deadline(t: float, sends: list[str]) -> None:
    d = Daemon()
    d.ready()
    noticed(d, 100.0, 3.0)
    d.closed("late", t)
    actions = d.tick(t)
    assert sent(actions) == sends
    if not sends:
        assert [a for a in actions if isinstance(a, Say)] == [
            Say(ERROR, "preemption deadline passed: no upload starts now", left=True)
        ]
        d.closed("later", t + 1)
        assert lines(d.tick(t + 1)) == []  # said once
    assert d.core.stop.starts_until == 103.0  # what the workers read before a part or manifest


@pytest.mark.parametrize(("signal_at", "until"), [(101.0, 103.0), (110.0, 103.0), (90.0, 95.0)])
def test_a_signal_after_a_notice_drains_only_until_the_deadline(
    signal_at: float, until: float
) -> None:
    """A notice at t=100 that the machine goes at 103, and a 5 s stop budget: a signal at 101
    drains until 103; one at 110 does not drain, its end being past (before, it drained until
    113); one before the notice keeps its budget's end, 95."""
    d = Daemon()
    d.ready()
    if signal_at < 100:
        stopping(d, signal_at)
        noticed(d, 100.0, 3.0)
        assert d.core.stop.until == until
        return
    noticed(d, 100.0, 3.0)
    actions = stopping(d, signal_at)
    assert d.core.stop.until == until
    if signal_at >= 103.0:
        assert "the preemption deadline has passed" in lines(actions)[0]


def test_a_notice_sends_what_is_complete_now_smallest_first_without_the_settle_wait() -> None:
    d = Daemon(concurrency=3)
    d.ready()
    for name, size in (("big", 300), ("small", 1), ("mid", 20)):
        d.files[name] = v(size)
        d.tell(Found([(name, v(size))]), 0.0)
    actions = noticed(d, 1.0, 120.0)
    assert "sending the 3 complete file(s) now, smallest first" in lines(actions)[0]
    assert sent(d.tick(1.0)) == ["small", "mid", "big"]
    d.files["new"] = v()
    d.tell(Changed(Change.CREATED, "new"), 1.5)
    assert sent(d.tick(1.5)) == []  # the workers are busy; it settles at once all the same
    d.tell(sent_ok("small", 1), 1.6)
    assert sent(d.tick(1.6)) == ["new"]


def test_a_withdrawn_notice_lets_uploads_start_again_after_the_settle_wait() -> None:
    d = Daemon()
    d.ready()
    notice = Notice("EC2", "spot", STORE + 100.0 + 3.0)
    d.tell(notice, 100.0)
    d.closed("a", 104.0)
    assert sent(d.tick(104.0)) == []
    d.tell(Withdrawn(notice), 105.0)
    assert sent(d.tick(105.0)) == ["a"]
    assert d.core.notice is None and d.core.ledger.settle_seconds == 2.0


# The room: memory bounded however many files arrive at once.
def test_a_full_room_lets_events_go_and_walks_their_folders_once_half_is_free() -> None:
    d = Daemon(room=4, concurrency=0)
    d.ready()
    for n in range(4):
        d.closed(f"in/{n}", 0.0)
    d.closed("in/4", 0.1)
    d.closed("out/5", 0.1)
    assert "in/4" not in d.core.ledger and "out/5" not in d.core.ledger
    full = [line for line in lines(d.said) if "as many as the agent holds at once" in line]
    assert len(full) == 1  # said once
    assert [a for a in d.tick(0.2) if isinstance(a, Walk)] == []  # 4 held: no room yet
    assert Held(4) in d.said
    d.core.concurrency = 2
    d.tick(0.3)
    for n in range(2):
        d.tell(sent_ok(f"in/{n}"), 0.4)
    assert [a for a in d.tick(0.5) if isinstance(a, Walk)] == [Walk("in"), Walk("out")]
    assert not d.core.owed


def test_an_event_waits_for_the_walks_finds_on_the_inbox_too() -> None:
    queued = [3]
    d = Daemon(room=4, concurrency=0)
    d.core.queued = lambda: queued[0]
    d.ready()
    d.closed("a", 0.0)
    d.closed("b", 0.0)  # 1 held + 3 queued: full
    assert "a" in d.core.ledger and "b" not in d.core.ledger


def test_a_known_file_and_a_permission_change_are_let_in_even_when_full() -> None:
    d = Daemon(room=1, concurrency=0)
    d.ready()
    d.closed("a", 0.0)
    d.tell(Changed(Change.WRITTEN, "a"), 0.1)  # written again: it waits for its close
    d.tell(Changed(Change.ATTRIB, "z"), 0.1)  # a chmod: only ever retries a file it holds
    assert d.core.ledger.state("a") is State.WRITING
    assert not d.core.owed


# Readiness and the walks' tally.
@pytest.mark.parametrize(
    ("messages", "ready"),
    [
        ([Walked("sub")], False),  # a folder's walk is not the start-up walk
        ([Walked(None, covered=True)], False),  # covered by the start-up walk, still to come
        ([Walked(None)], True),
        ([WalkWaits()], True),  # the start-up walk waits for room: as ready as it gets
        ([WalkWaits(), Walked(None)], True),
    ],
)
def test_ready_once_the_start_up_walk_ended_or_waits_for_room(
    messages: list[object], ready: bool
) -> None:
    d = Daemon()
    d.tell(Rescan(), 0.0)
    for message in messages:
        d.tell(message, 0.1)
    assert [a for a in d.said if isinstance(a, Notify)] == ([Notify("ready")] if ready else [])


def test_a_stop_waits_for_every_walk_asked_including_one_covered() -> None:
    d = Daemon()
    d.ready()
    d.tell(Rescan(), 1.0)
    d.tell(Changed(Change.DIRECTORY, "moved-in"), 1.0)
    stopping(d, 2.0)  # asks for a third
    d.tell(BarrierMade(None), 2.0)
    d.tell(Walked("moved-in"), 2.1)
    d.tell(Walked(None, covered=True), 2.1)
    d.tick(2.2)
    assert not d.core.drained
    d.tell(Walked(None), 2.3)
    d.tick(2.3)
    assert d.core.drained


# The filters (POSTBOX_INCLUDE, POSTBOX_EXCLUDE).
LOGS = Filters(include="", exclude="logs/,*.log")


def test_an_excluded_file_is_never_held_nor_sent_and_counted_once() -> None:
    d = Daemon(filters=LOGS)
    d.ready()
    for name in ("logs/a.txt", "run/x.log", "run/result.csv"):
        d.files[name] = v()
        d.tell(Changed(Change.WRITTEN, name), 0.0)
        d.tell(Changed(Change.CLOSED, name), 0.1)
    assert sent(d.tick(0.1)) == ["run/result.csv"]
    d.tell(Changed(Change.CLOSED, "run/x.log"), 0.2)  # written again: still once
    assert sent(d.tick(5.0)) == []
    assert "logs/a.txt" not in d.core.ledger and "run/x.log" not in d.core.ledger
    assert len(d.core.excluded) == 2
    assert lines(d.said) == [
        "not sent logs/a.txt: excluded by POSTBOX_EXCLUDE (logs/)",
        "not sent run/x.log: excluded by POSTBOX_EXCLUDE (*.log)",
    ]


def test_only_what_include_names_is_sent_and_exclude_wins_over_it() -> None:
    d = Daemon(filters=Filters(include="*.csv,out/**", exclude="out/tmp/"))
    d.ready()
    for name in ("a.csv", "deep/b.csv", "out/c.bin", "out/tmp/d.csv", "e.txt"):
        d.closed(name, 0.0)
    assert sorted(sent(d.tick(0.0))) == ["a.csv", "deep/b.csv"]
    d.tell(sent_ok("a.csv"), 0.1)
    assert sent(d.tick(0.1)) == ["out/c.bin"]
    assert len(d.core.excluded) == 2


def test_a_walks_excluded_finds_are_dropped_refusals_too() -> None:
    d = Daemon(filters=LOGS)
    found = [("a.txt", v()), ("logs/b.txt", v()), ("logs/deep/c.txt", v())]
    refused = [("old.log", v(), "refused: 403"), ("kept.bin", v(), "refused: 403")]
    actions = d.tell(Found(found, refused, grant="g1"), 0.0)
    assert Held(1, applied=3) in actions  # the walk's room: every find was applied
    assert sorted(d.core.ledger.paths()) == ["a.txt", "kept.bin"]
    assert len(d.core.excluded) == 3


def test_the_finds_a_walk_left_out_as_excluded_are_counted_not_held() -> None:
    """The walk judges by the same filters, so an excluded file takes no place in the room;
    what it names as excluded the core counts, and never holds."""
    d = Daemon(filters=LOGS)
    actions = d.tell(Found([("a.txt", v())], [], "g1", ["logs/b.txt", "c.log"]), 0.0)
    assert Held(1, applied=1) in actions
    assert sorted(d.core.ledger.paths()) == ["a.txt"]
    assert len(d.core.excluded) == 2 and "c.log" in d.core.excluded


def test_a_file_carried_under_an_excluded_name_is_forgotten_and_one_carried_out_is_new() -> None:
    d = Daemon(filters=LOGS)
    d.ready()
    d.files["run/a"] = v()
    d.tell(Changed(Change.WRITTEN, "run/a"), 0.0)  # being written
    d.tell(Changed(Change.CARRIED, "logs/a", "run/a"), 0.5)  # `mv run logs`
    assert "run/a" not in d.core.ledger and "logs/a" not in d.core.ledger
    d.files["back/a"] = v()
    d.tell(Changed(Change.CARRIED, "back/a", "logs/a"), 1.0)  # `mv logs back`: never known
    assert sent(d.tick(1.0)) == ["back/a"]  # judged as a rename into place


def test_wait_is_told_an_excluded_file_is_excluded_and_why() -> None:
    d = Daemon(filters=LOGS)
    d.ready()
    d.closed("a", 0.0)
    (answer,) = d.tell(Question(["a", "logs/b", "c.log", "gone.txt"]), 0.1)
    assert answer == Answer({
        "a": ("due", ""),
        "logs/b": ("excluded", "excluded by POSTBOX_EXCLUDE (logs/)"),
        "c.log": ("excluded", "excluded by POSTBOX_EXCLUDE (*.log)"),
    })  # fmt: skip


# What `wait` is told; grants; outcomes.
def test_wait_is_told_the_state_and_why_of_each_file_the_ledger_holds() -> None:
    d = Daemon()
    d.ready()
    d.closed("a", 0.0)
    d.files["b"] = v()
    d.tell(Changed(Change.CREATED, "b"), 0.0)
    d.tick(0.0)
    d.tell(Landed("a", Outcome(Result.FAILED, v(), reason="a failed: 503")), 0.5)
    (answer,) = d.tell(Question(["a", "b", "c"]), 0.6)
    assert answer == Answer({"a": ("failed", "a failed: 503"), "b": ("settling", "")})


def test_a_refused_file_waits_for_a_new_grant_which_tries_it_again_and_says_anew() -> None:
    d = Daemon()
    d.ready()
    d.closed("a", 0.0)
    d.tick(0.0)
    refused = Outcome(Result.REFUSED, v(), grant="g1", reason="a refused: too large")
    assert lines(d.tell(Landed("a", refused), 0.1)) == ["a refused: too large"]
    assert sent(d.tick(5.0)) == []  # not tried again under the same grant
    assert d.tell(GrantTaken(), 6.0) == [Tried(1)]
    assert sent(d.tick(6.0)) == []  # it settles again first: it may have changed
    assert sent(d.tick(8.0)) == ["a"]
    assert lines(d.tell(Landed("a", refused), 8.1)) == ["a refused: too large"]


def test_a_journal_that_cannot_record_is_said_once_and_pauses_every_upload() -> None:
    d = Daemon()
    d.ready()
    for name in ("a", "b", "c"):
        d.closed(name, 0.0)
    d.tick(0.0)
    unrecorded = Outcome(Result.UNRECORDED, v(), reason="journal cannot record: disk full")
    assert lines(d.tell(Landed("a", unrecorded), 0.1)) == ["journal cannot record: disk full"]
    assert lines(d.tell(Landed("b", unrecorded), 0.2)) == []
    assert sent(d.tick(0.3)) == []  # c waits until the journal records again
    d.tell(sent_ok("a"), 1.0)
    d.tell(sent_ok("b"), 1.0)
    assert sent(d.tick(1.0)) == ["c"]


# The loop's end, and the chores between messages.
@pytest.mark.parametrize(
    ("damaged", "expired", "code"),
    [
        (True, False, ExitCode.JOURNAL_DAMAGED),
        (False, True, ExitCode.EXPIRED),
        (True, True, ExitCode.JOURNAL_DAMAGED),
    ],
)
def test_a_damaged_journal_or_a_grant_expired_for_good_stops_and_nothing_starts(
    damaged: bool, expired: bool, code: ExitCode
) -> None:
    """The journal can record nothing more (exit 65, which the unit does not restart), or no
    grant will come (exit 79): the loop stops with that code and sends nothing, the drain lets
    what is under way end. A damaged journal wins: its way out comes first."""
    d = Daemon()
    d.ready()
    d.closed("a", 0.0)
    actions = d.tell(Tick(True, damaged=damaged, expired=expired), 0.0)
    assert actions == [Stop(code)]


def chores(actions: list[Action]) -> list[object]:
    return [a for a in actions if isinstance(a, (Record, Report)) or a == Walk(None)]


def test_the_chores_go_each_at_its_own_pace_from_the_start() -> None:
    """status.json at once and every 2 s at most; STATUS= and the metrics file every
    report_every; the rescan every rescan_seconds (0: never); the journal's backlog every 10 s,
    and only while a file waits to be recorded."""
    d = Daemon(rescan_seconds=30.0, report_every=10.0, started=100.0)
    d.core.ready = True
    assert chores(d.tick(100.0)) == [Report()]
    assert chores(d.tick(101.9)) == []
    assert chores(d.tick(102.0)) == [Report()]
    assert chores(d.tick(110.0)) == [Report(), Report(status=True)]
    d.closed("a", 110.0)
    d.tick(110.0)
    d.tell(Landed("a", Outcome(Result.UNRECORDED, v(), reason="journal cannot record")), 110.5)
    assert chores(d.tick(130.0)) == [Walk(None), Record(), Report(), Report(status=True)]
    assert chores(d.tick(131.0)) == []


def test_no_rescan_when_its_period_is_none() -> None:
    d = Daemon(rescan_seconds=0.0, started=0.0)
    d.ready()
    assert [a for a in d.tick(1e6) if isinstance(a, Walk)] == []
