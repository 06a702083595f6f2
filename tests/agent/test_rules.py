"""The daemon's timing rules (agent/rules.py) on a clock the test holds: the stop's drain and its
budget, the barrier, a preemption deadline as an end time, and when no upload may start. No
test sleeps: every time is a number. The process tests (test_preemption.py, test_service.py)
hold the same rules end to end."""

from __future__ import annotations

import math

import pytest

from agent.rules import Once, Owed, Timing, seconds


def drained(budget: float = 5.0, at: float = 10.0, due: int = 3) -> Timing:
    timing = Timing(budget)
    timing.signal()
    assert timing.begin(at, due) is not None
    return timing


@pytest.mark.parametrize(
    ("now", "busy", "scanned", "barrier", "over"),
    [
        (14.9, 1, True, None, False),  # files left, time left: the drain goes on
        (15.0, 1, True, None, True),  # the budget is spent
        (11.0, 0, True, None, True),  # nothing complete left, the walks ended, events heard
        (11.0, 0, False, None, False),  # the walk asked for at the signal has not ended
        (11.0, 0, True, "marker", False),  # an event from before the signal may be on its way
        (15.0, 0, False, "marker", True),  # ... but not past the budget
    ],
)
def test_a_drain_ends_at_its_budget_or_once_nothing_complete_is_left_and_all_is_heard(
    now: float, busy: int, scanned: bool, barrier: str | None, over: bool
) -> None:
    timing = drained()
    timing.barrier = barrier
    assert timing.over(now, busy, scanned) is over
    assert timing.wake_at() == 15.0


def test_no_drain_before_a_signal_and_one_line_when_it_begins() -> None:
    timing = Timing(3.03929)
    assert timing.begin(10.0, 2) is None and not timing.over(1e9, 0, True)
    timing.signal()
    assert timing.begin(10.0, 2) == (
        "stopping: sending the 2 complete file(s) first, for up to 3.0 s (a second signal "
        "stops at once)"
    )
    assert timing.begin(11.0, 2) is None  # said once
    assert timing.until == 10.0 + 3.03929


@pytest.mark.parametrize(
    ("budget", "signals", "at_once", "aborted"),
    [(90, 1, False, False), (90, 2, True, True), (0, 1, True, False), (0, 0, False, False)],
)
def test_a_second_signal_or_no_budget_stops_at_once(
    budget: float, signals: int, at_once: bool, aborted: bool
) -> None:
    timing = Timing(budget)
    for _ in range(signals):
        timing.signal()
    assert (timing.at_once, timing.aborted) == (at_once, aborted)


@pytest.mark.parametrize(
    ("signal_at", "until"),
    [
        (101.0, 103.0),  # before the deadline: the drain ends at it, not at 101 + the budget
        (102.9, 103.0),
        (110.0, 103.0),  # after it: the deadline is an end time, not a length from the signal
        (200.0, 103.0),
    ],
)
def test_a_signal_after_a_notice_drains_until_the_deadline_at_most(
    signal_at: float, until: float
) -> None:
    """A notice at t=100 says the machine goes at t=103. However late the signal comes, the
    drain ends at 103 (it used to drain for the lead time the notice gave, counted from the
    signal: until 113 for a signal at 110)."""
    timing = Timing(90)
    timing.notice("spot interruption (terminate)", 103.0)
    timing.signal()
    line = timing.begin(signal_at, 4)
    assert timing.until == until
    assert timing.over(signal_at, 4, False) is (signal_at >= 103.0)
    assert line is not None
    if signal_at >= 103.0:
        assert "the preemption deadline has passed: no upload starts" in line
    else:
        assert f"for up to {seconds(103.0 - signal_at)}" in line


def test_a_notice_during_a_drain_brings_its_end_forward_and_its_withdrawal_back() -> None:
    timing = drained(budget=90, at=50)
    assert timing.until == 140
    timing.notice("Preempt event", 70.0)
    assert timing.until == 70 and timing.starts_until == 70
    assert timing.withdrawn("Preempt event") is False  # none other stands
    assert timing.until == 140 and timing.starts_until == 140


def test_of_several_notices_the_soonest_deadline_holds_until_it_is_withdrawn() -> None:
    timing = Timing(90)
    timing.notice("a", 200.0)
    timing.notice("b", 150.0)
    assert timing.deadline == 150.0
    assert timing.withdrawn("b") is True  # another stands
    assert timing.deadline == 200.0


@pytest.mark.parametrize(
    ("events", "now", "may"),
    [
        ([], 1e9, True),  # no notice, no stop: uploads start whenever
        ([("notice", 103.0)], 102.9, True),
        ([("notice", 103.0)], 103.0, False),  # at the deadline: nothing starts
        ([("notice", math.inf)], 1e9, True),  # a final notice that says no time
        ([("signal", 10.0)], 14.9, True),  # draining, within the budget (5 s)
        ([("signal", 10.0)], 15.0, False),  # the budget is spent: no part, no manifest
        ([("notice", 103.0), ("withdrawn", 0)], 1e9, True),  # called off: as before
    ],
)
def test_no_upload_starts_at_or_past_the_deadline_or_the_drains_end(
    events: list[tuple[str, float]], now: float, may: bool
) -> None:
    """`may_start` is what a worker asks before each file, each part and the manifest."""
    timing = Timing(5.0)
    for kind, at in events:
        if kind == "notice":
            timing.notice("what", at)
        elif kind == "withdrawn":
            timing.withdrawn("what")
        else:
            timing.signal()
            timing.begin(at, 1)
    assert timing.may_start(now) is may


def test_the_last_line_of_a_stop_at_once_counts_the_files_that_never_began() -> None:
    """It said "8 upload(s) under way cut ... 0 file(s) uploaded" and left out the 3 complete
    files that never started, which `status` counted."""
    line = Timing(90).cut(8, 3, "/srv/out", 0)
    assert line == (
        "stopped at once (a second signal): 8 upload(s) under way cut and 3 complete file(s) "
        "not begun; their files stay in /srv/out and are sent at the next start; 0 file(s) "
        "uploaded in this run"
    )
    assert "not begun" not in Timing(90).cut(8, 0, "/srv/out", 0)


@pytest.mark.parametrize(("value", "said"), [(3.03929, "3.0 s"), (0.25, "0.2 s"), (90.0, "90 s")])
def test_a_length_of_time_is_said_to_a_tenth_of_a_second_or_a_second(
    value: float, said: str
) -> None:
    assert seconds(value) == said


def test_a_line_is_said_once_by_what_it_is_about_until_forgotten_and_memory_is_bounded() -> None:
    said = Once(most=2)
    assert [said.first("a"), said.first("a"), said.first("b")] == [True, False, True]
    said.forget("a")
    assert said.first("a") is True
    assert said.first("c") is True and said.first("c") is True  # past `most`: said each time


@pytest.mark.parametrize(
    ("events", "held", "due"),
    [
        (["a/x", "b/y"], 5_001, []),  # more than half the room held: no walk yet
        (["a/x", "b/y"], 5_000, ["a", "b"]),  # half free: each folder owed, walked once
        (["a/x", "a/y"], 0, ["a"]),
        (["a/x", "a/b/y", "a-b/z"], 0, ["a", "a-b"]),  # a/b lies under a; a-b does not
        (["x", "a/y"], 0, [None]),  # a file in the watch dir itself: walk the whole of it
        ([], 0, []),
    ],
)
def test_the_folders_of_files_let_go_at_the_bound_are_walked_once_half_the_room_is_free(
    events: list[str], held: int, due: list[str | None]
) -> None:
    """The room holds 10,000 files on their way; an event that comes while it is full is let
    go and its folder owed; the walks come once half are sent, a folder under another not
    walked twice; and nothing is owed after."""
    owed = Owed()
    for relpath in events:
        owed.owe(relpath)
    assert owed.due(held, 10_000) == due
    assert bool(owed) is (not due and bool(events))
