"""The ledger: events, timers and outcomes in, one state per path out. In-process, no I/O; time
is a number the test moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from agent.ledger import Ledger
from agent.outcome import Job, Outcome, Receipt, Result, Unrecorded
from agent.rules import Pace
from agent.states import State
from agent.versions import FileVersion

A, B = "a.bin", "dir/b.bin"


def sig(size: int) -> FileVersion:
    return FileVersion(size, size * 1000, 1)


# What an upload the journal could not record carries (the ledger keeps it, never reads it).
STORED = Unrecorded(
    Job(Path(A), A, f"p/{A}", grant=None),  # type: ignore[arg-type]
    Receipt(f"p/{A}", sig(1), "md5", "etag", 201),
)


class Disk:
    """What the shell would see on disk (`due` below plays the dispatcher's timer loop)."""

    def __init__(self) -> None:
        self.files: dict[str, FileVersion] = {}

    def write(self, path: str, size: int) -> None:
        self.files[path] = sig(size)

    def __call__(self, path: str) -> Optional[FileVersion]:
        return self.files.get(path)


def due(ledger: Ledger, now: float, disk: Callable[[str], Optional[FileVersion]]) -> list[str]:
    """As the dispatcher does at each timer: look at every file whose timer fired, then take
    what is due."""
    for path in ledger.timers_fired(now):
        ledger.after_settle(path, now, disk(path))
    return ledger.take(1000)


# When a file is complete: closed after writing, or unchanged for the settle interval.
def test_closed_file_is_due_at_once() -> None:
    ledger, disk = Ledger(5), Disk()
    disk.write(A, 10)
    ledger.written(A, 0)
    assert due(ledger, 1, disk) == []
    ledger.closed(A, 1)
    assert due(ledger, 1, disk) == [A]
    assert due(ledger, 2, disk) == []  # handed out once


def test_file_open_for_writing_is_never_due_however_long_it_waits() -> None:
    ledger, disk = Ledger(1), Disk()
    disk.write(A, 10)
    ledger.written(A, 0)
    assert due(ledger, 3600, disk) == []
    assert ledger.state(A) is State.WRITING


def test_found_file_is_due_once_unchanged_for_the_settle_interval() -> None:
    """The file changed at t=4, unseen; the ledger looks when its timer fires (t=5), so the file
    is due 5 s after that look, not 5 s after the write."""
    ledger, disk = Ledger(5), Disk()
    disk.write(A, 10)
    ledger.found(A, 0)
    assert due(ledger, 0, disk) == []
    disk.write(A, 20)  # still growing
    assert due(ledger, 4, disk) == []
    assert ledger.next_timer() == 5
    assert due(ledger, 5, disk) == []  # changed since the last look: another 5 s
    assert due(ledger, 9.9, disk) == []
    assert due(ledger, 10, disk) == [A]  # 5 s unchanged since it was seen changed


def test_deleted_or_vanished_files_are_dropped() -> None:
    ledger, disk = Ledger(1), Disk()
    disk.write(A, 1)
    ledger.found(A, 0)
    assert ledger.gone(A) is True
    assert len(ledger) == 0
    ledger.found(A, 0)
    del disk.files[A]
    assert due(ledger, 5, disk) == []
    assert len(ledger) == 0


# Timers, not polls.
def test_the_next_timer_is_the_earliest_settle_and_stale_timers_are_skipped() -> None:
    ledger = Ledger(5)
    assert ledger.next_timer() is None
    ledger.found(A, 10, sig(1))
    ledger.found(B, 12, sig(2))
    assert ledger.next_timer() == 15
    ledger.closed(A, 13)  # due now: its timer no longer counts
    assert ledger.next_timer() == 17
    assert ledger.timers_fired(16) == []
    assert ledger.timers_fired(17) == [B]


def test_a_found_file_with_a_known_version_waits_one_interval_only() -> None:
    ledger, disk = Ledger(5), Disk()
    disk.write(A, 10)
    ledger.found(A, 0, disk(A))
    assert due(ledger, 4.9, disk) == []
    assert due(ledger, 5, disk) == [A]


def test_take_hands_out_oldest_first_and_at_most_the_limit() -> None:
    ledger = Ledger(5)
    for n in range(5):
        ledger.closed(f"f{n}", n)
    assert ledger.take(2) == ["f0", "f1"]
    assert ledger.take(10) == ["f2", "f3", "f4"]
    assert ledger.count(State.SENDING) == 5


# Outcomes: one table, each row a worker's report for a file being sent.
@pytest.mark.parametrize(
    ("outcome", "state", "logged"),
    [
        (Outcome(Result.SENT, size=10), None, False),
        (Outcome(Result.GONE), None, False),
        (Outcome(Result.CHANGED), State.SETTLING, False),
        (Outcome(Result.REFUSED, sig(3), grant="g1"), State.REFUSED, True),
        (Outcome(Result.FAILED, sig(3), grant="g1"), State.FAILED, True),
        (Outcome(Result.TOO_LONG, sig(3), grant="g1"), State.TOO_LONG, True),
        (Outcome(Result.UNREADABLE, sig(3)), State.UNREADABLE, True),
        (Outcome(Result.UNRECORDED, sig(3), unrecorded=STORED), State.UNRECORDED, True),
    ],
)
def test_an_outcome_moves_the_file_to_its_state(
    outcome: Outcome, state: Optional[State], logged: bool
) -> None:
    ledger = Ledger(5)
    ledger.closed(A, 0)
    assert ledger.take(1) == [A]
    assert ledger.report(A, outcome, 1) is logged
    assert ledger.state(A) is state
    assert ledger.count(State.SENDING) == 0
    assert sum(v for k, v in ledger.counts().items() if k != "sent") == len(ledger)


def test_a_waiting_state_is_reported_once_while_the_file_keeps_it() -> None:
    ledger = Ledger(5)
    ledger.closed(A, 0)
    ledger.take(1)
    assert ledger.report(A, Outcome(Result.TOO_LONG, sig(3), grant="g1"), 1) is True
    ledger.found(A, 2, sig(4))  # a rescan sees a new version: it settles, then is tried again
    ledger.after_settle(A, 7, sig(4))
    ledger.take(1)
    assert ledger.report(A, Outcome(Result.TOO_LONG, sig(4), grant="g1"), 8) is False


def test_sent_files_are_counted_and_forgotten() -> None:
    ledger = Ledger(5)
    for n in range(3):
        ledger.closed(f"f{n}", 0)
    for path in ledger.take(3):
        ledger.report(path, Outcome(Result.SENT, size=1), 1)
    assert len(ledger) == 0
    assert ledger.counts()["sent"] == 3


@pytest.mark.parametrize("event", ["written", "closed"])
def test_a_file_changed_while_it_is_sent_is_looked_at_again_once_it_lands(event: str) -> None:
    ledger, disk = Ledger(5), Disk()
    ledger.closed(A, 0)
    ledger.take(1)
    getattr(ledger, event)(A, 1)
    assert ledger.state(A) is State.SENDING  # not handed out twice at once
    assert ledger.take(1) == []
    ledger.report(A, Outcome(Result.SENT, size=1), 2)
    assert ledger.state(A) is State.SETTLING
    disk.write(A, 2)
    assert due(ledger, 2, disk) == []
    assert due(ledger, 7, disk) == [A]


def test_a_scan_leaves_alone_what_is_on_its_way_or_waits_with_the_same_version() -> None:
    ledger = Ledger(5)
    ledger.written("w", 0)
    ledger.closed("s", 0)
    ledger.closed("r", 0)
    ledger.take(2)
    ledger.closed("d", 0)
    ledger.report("r", Outcome(Result.REFUSED, sig(1), grant="g1"), 1)
    before = {p: ledger.state(p) for p in ("w", "d", "s", "r")}
    for path in before:
        ledger.found(path, 2, sig(1))
    assert {p: ledger.state(p) for p in before} == before
    ledger.found("r", 3, sig(2))  # rewritten since it was refused: a new version
    assert ledger.state("r") is State.SETTLING


def test_a_new_grant_wakes_every_file_waiting_for_one_and_only_those() -> None:
    ledger = Ledger(5)
    results = [Result.REFUSED, Result.FAILED, Result.TOO_LONG, Result.UNREADABLE]
    names = [r.value for r in results]
    for name in names:
        ledger.closed(name, 0)
    ledger.take(10)
    for name, result in zip(names, results):
        ledger.report(name, Outcome(result, sig(1), grant="g1"), 1)
    assert sorted(ledger.retry_waiting(2)) == ["failed", "refused", "too long"]
    assert ledger.state("unreadable") is State.UNREADABLE
    assert ledger.count(State.SETTLING) == 3


def test_an_unreadable_file_is_looked_at_again_when_its_permissions_change() -> None:
    ledger = Ledger(5)
    ledger.closed(A, 0)
    ledger.take(1)
    ledger.report(A, Outcome(Result.UNREADABLE, sig(1)), 1)
    assert ledger.attrib(B, 2) is False
    assert ledger.attrib(A, 2) is True
    assert ledger.state(A) is State.SETTLING


def test_a_file_deleted_while_it_is_sent_stays_with_its_worker() -> None:
    ledger = Ledger(5)
    ledger.closed(A, 0)
    ledger.take(1)
    assert ledger.gone(A) is False
    assert ledger.state(A) is State.SENDING
    ledger.report(A, Outcome(Result.GONE), 1)
    assert A not in ledger


def test_an_unrecorded_file_keeps_its_receipt_until_recorded() -> None:
    ledger = Ledger(5)
    ledger.closed(A, 0)
    ledger.take(1)
    ledger.report(A, Outcome(Result.UNRECORDED, sig(1), unrecorded=STORED), 1)
    ledger.closed(A, 2)  # rewritten meanwhile
    assert ledger.unrecorded() == [(A, STORED)]
    ledger.report(A, Outcome(Result.SENT), 3)
    assert ledger.state(A) is State.SETTLING  # the newer version is sent in turn
    assert ledger.counts()["sent"] == 1


@pytest.mark.parametrize(
    ("uploads", "rate"),
    [
        ([], None),
        ([(1000, 1.0)], None),  # small uploads measure latency, not throughput
        ([(1 << 20, 1.0)], 1 << 20),
        ([(1 << 20, 1.0), (1 << 20, 0.5)], 0.3 * (2 << 20) + 0.7 * (1 << 20)),
        ([(1 << 20, 0.0)], None),
    ],
)
def test_the_pacing_estimate_weighs_the_newest_upload(
    uploads: list[tuple[int, float]], rate: Optional[float]
) -> None:
    pace = Pace()  # the core observes each upload that ended (tests/agent/test_core.py)
    for size, seconds in uploads:
        pace.observe(size, seconds)
    assert pace.rate == (None if rate is None else pytest.approx(rate))


class NoWalk(dict):  # type: ignore[type-arg]
    """The ledger's entries, as a dict that fails the test when anything walks over it."""

    def _walked(self, *args: object) -> Any:
        raise AssertionError("walked over every entry")

    __iter__ = keys = values = items = _walked  # type: ignore[assignment]


def test_counting_by_state_needs_no_walk() -> None:
    """10,000 files: counts are kept as states change, so reading them (STATUS=, status.json,
    the metrics, twice a second) is one lookup, never a walk over every entry."""
    ledger = Ledger(5)
    for n in range(10_000):
        ledger.found(f"f{n}", 0, sig(n))
    ledger.take(10)
    ledger._entries = NoWalk(ledger._entries)  # from here, a walk fails
    assert ledger.count(State.SETTLING) == 10_000
    assert ledger.counts()["settling"] == 10_000 and ledger.counts()["due"] == 0
    assert ledger.waiting(100) == []  # none waits: the common case needs no walk either


def test_a_close_seen_is_told_apart_from_a_quiet_spell_until_the_file_is_written_again() -> None:
    """What after-upload relies on where the kernel cannot say whether a writer is left."""
    ledger, disk = Ledger(1.0), Disk()
    disk.write(A, 10)
    ledger.closed(A, 0.0)  # its writer closed it
    ledger.found(B, 0.0, sig(5))  # a scan found it: no close seen
    disk.write(B, 5)
    assert due(ledger, 2.0, disk) == [A, B]
    assert (ledger.close_seen(A), ledger.close_seen(B)) == (True, False)  # and while SENDING
    ledger.report(A, Outcome(Result.SENT, sig(10)), 2.0)
    ledger.written(A, 3.0)  # opened and written again: its next close decides
    assert not ledger.close_seen(A)


def test_a_file_carried_by_its_folders_move_keeps_its_state_under_its_new_path() -> None:
    """`mv watch/ren1 watch/ren2` while a writer appends to ren1/live.log: the writer did not
    rename the file, so the move says nothing of whether it is complete. Still being written
    under the old path, it is still being written under the new one, and due at its close."""
    ledger, disk = Ledger(1.0), Disk()
    ledger.written("ren1/live.log", 0)
    ledger.found("ren1/settling.log", 0, sig(3))
    disk.write("ren2/settling.log", 3)
    ledger.carried("ren1/live.log", "ren2/live.log", 1)
    ledger.carried("ren1/settling.log", "ren2/settling.log", 1)
    assert "ren1/live.log" not in ledger and "ren1/settling.log" not in ledger
    assert ledger.state("ren2/live.log") is State.WRITING
    assert due(ledger, 60, disk) == ["ren2/settling.log"]  # its settle timer came along
    ledger.closed("ren2/live.log", 61)
    assert due(ledger, 61, disk) == ["ren2/live.log"]


def test_a_walk_of_the_moved_folder_heard_before_its_moves_leaves_no_old_name_behind() -> None:
    """The dispatcher hears the folder's move (DirMovedEvent), walks the new folder on the
    scanner's thread, and the walk can end before watchdog's per-file moves arrive. The file is
    then known under its new name already; the old name must still go, and the writer seen
    there still counts: left behind, `ren1/live.log` stayed "writing" for good (found by CI)."""
    ledger, disk = Ledger(1.0), Disk()
    ledger.written("ren1/live.log", 0)
    ledger.found("ren2/live.log", 1, sig(3))  # the walk of ren2
    ledger.carried("ren1/live.log", "ren2/live.log", 1)
    assert "ren1/live.log" not in ledger
    assert ledger.paths() == ["ren2/live.log"] and ledger.count(State.WRITING) == 1
    disk.write("ren2/live.log", 3)
    assert due(ledger, 60, disk) == []  # still written: not due after a quiet spell
    ledger.closed("ren2/live.log", 61)
    assert due(ledger, 61, disk) == ["ren2/live.log"]


def test_a_file_moved_in_is_due_but_goes_back_to_writing_while_a_writer_holds_it() -> None:
    """A rename into place (or a folder's move of a file the ledger did not know) makes it due;
    the delivery asks the kernel, and a file a writer still holds waits for its close."""
    ledger, disk = Ledger(5), Disk()
    ledger.renamed(A, 0)
    ledger.carried("", B, 0)  # moved in from outside with its folder
    assert due(ledger, 0, disk) == [A, B]
    assert ledger.moved_in(A) and ledger.moved_in(B)
    assert (ledger.close_seen(A), ledger.close_seen(B)) == (True, False)  # B: not its writer
    assert ledger.report(A, Outcome(Result.HELD, sig(1)), 1) is False
    assert ledger.state(A) is State.WRITING
    ledger.closed(A, 2)
    assert due(ledger, 2, disk) == [A] and not ledger.moved_in(A)


def test_a_folder_moved_away_takes_every_name_under_it_and_no_other() -> None:
    """Moved out of the watch dir (or its move's two halves unpaired): a file still being
    written there would otherwise wait for a close that never comes under that name."""
    ledger = Ledger(5)
    ledger.written("ren1/live.log", 0)
    ledger.found("ren1/deep/a.bin", 0, sig(1))
    ledger.written("ren10/other.log", 0)  # a name that only starts the same
    ledger.folder_gone("ren1")
    assert "ren1/live.log" not in ledger and "ren1/deep/a.bin" not in ledger
    assert ledger.state("ren10/other.log") is State.WRITING


@pytest.mark.parametrize("for_good", [True, False])
def test_a_preemption_notice_makes_settling_files_due_smallest_first(for_good: bool) -> None:
    """A final notice (the machine goes) also drops the settle wait for every file found after
    it; a rebalance recommendation (it may stay) hurries once and leaves the settle wait be."""
    ledger = Ledger(settle_seconds=60)
    sizes = {"big": 300, "small": 1, "mid": 20, "open": 5}
    ledger.closed("big", 0)  # complete: due
    ledger.found("small", 0, sig(1))  # settling for a minute
    ledger.found("mid", 0, sig(20))
    ledger.written("open", 0)  # its writer still at it: never hurried
    assert ledger.hurry(1, sizes.__getitem__, for_good=for_good) == 3
    assert ledger.take(10) == ["small", "mid", "big"]
    assert ledger.state("open") is State.WRITING
    ledger.found("late", 2, sig(7))
    fired = ledger.timers_fired(2)
    assert fired == (["late"] if for_good else [])
