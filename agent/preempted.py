"""What a cloud's preemption notice asks of the daemon (README, "Batch jobs on machines that go
away"), pure: the core holds one `Preemption` and carries out what it returns.

A notice puts what is complete first, smallest first and without the settle wait; a final one
(the machine is being taken back) makes its deadline an end time: nothing starts past it, and a
stop drains until then at most (agent/rules.py: Timing). A notice the metadata service no
longer gives is withdrawn: with no other in force, uploads go on as before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from agent.actions import Look, Looked, Now, Say
from agent.ledger import Ledger
from agent.messages import Notice, Withdrawn
from agent.outcome import WARNING
from agent.rules import Once, Timing
from agent.states import State


@dataclass
class Preemption:
    notice: Optional[Notice] = None  # the notice in force (status.json shows it)

    def noticed(self, notice: Notice, now: Now, stop: Timing, ledger: Ledger) -> Look:
        """The cloud takes the machine back (agent/notice.py): the deadline of a final notice
        becomes the stop's end time; the files settling or due are looked at for their sizes."""
        if notice.final:  # the deadline as an end time: a later signal drains until then
            until = float("inf") if notice.deadline is None else (
                now.mono + notice.deadline - now.store
            )  # fmt: skip
            stop.notice(notice.what, until)
        self.notice = notice
        return Look(ledger.paths(State.SETTLING, State.DUE), "hurry")

    def hurry(self, m: Looked, now: Now, ledger: Ledger) -> Say:
        """What is complete goes now, smallest first (their sizes: `m`), without the settle
        wait: for good under a final notice, this once under another."""
        notice = self.notice
        assert notice is not None  # a `Look` for "hurry" follows a notice
        size = lambda path: getattr(m.versions.get(path), "size", 0)  # noqa: E731
        due = ledger.hurry(now.mono, size, for_good=notice.final)
        return Say(WARNING, (
            f"preemption notice: {notice.describe(now.store)}: sending the {due} complete "
            "file(s) now, smallest first, without the settle wait"
            + ("" if notice.final else " (this once: the machine may stay)")
        ))  # fmt: skip

    def withdrawn(
        self, m: Withdrawn, stop: Timing, ledger: Ledger, settle_seconds: float, said: Once
    ) -> Say:
        """The metadata service gives a notice no longer (the cloud called the stop off): with
        no other in force, uploads go on as before the notice, each file after its settle wait,
        and a deadline that passed stops nothing."""
        said.forget("past")  # another notice's deadline is said anew
        what = f"{m.notice.cloud} {m.notice.what}"
        if stop.withdrawn(m.notice.what):
            return Say(WARNING, f"preemption notice withdrawn: {what}; another stands")
        ledger.settle_seconds = settle_seconds
        self.notice = None
        return Say(WARNING, (
            f"preemption notice withdrawn: {what} is no longer given: uploads go on as before, "
            f"each file after its {settle_seconds:g}s settle wait"
        ))  # fmt: skip
