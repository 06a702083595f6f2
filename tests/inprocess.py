"""The agent in this process, on a thread: real inotify, journal and HTTP, a clock the test moves.

For what a test must not leave to the wall clock (an expiry) and for many quick runs (property
tests). `postbox-agent run` as a process is tests/agentprocess.py.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from agent.clock import StoreClock, utc_now
from agent.files import ignore_lease_breaks
from agent.logs import configure
from agent.notify import Notifier
from agent.rules import STATUS_EVERY_SECONDS
from agent.service import Agent
from agent.settings import Settings
from agent.wiring import parts
from tests.agentprocess import eventually


@dataclass
class FakeClock:
    """UTC time that moves only when the test says."""

    now: dt.datetime = field(default_factory=utc_now)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Running:
    agent: Agent
    clock: FakeClock
    log: io.StringIO
    thread: threading.Thread
    result: list[int]

    def text(self) -> str:
        return self.log.getvalue()

    def ready(self) -> Running:
        assert eventually(lambda: "start-up scan" in self.text() or not self.thread.is_alive())
        assert "start-up scan" in self.text(), self.text()
        return self

    def wait(self, timeout: float = 60) -> Optional[int]:
        self.thread.join(timeout)
        return self.result[0] if self.result else None


@contextmanager
def running(
    watch: Path,
    state: Path,
    grant: Path,
    clock: Optional[FakeClock] = None,
    *,
    store_clock: bool = False,
    notifier: Optional[Notifier] = None,
    report_every: float = STATUS_EVERY_SECONDS,
    room: Optional[int] = None,
    **settings: object,
) -> Iterator[Running]:
    """Run an agent until the block ends (then stop it as SIGTERM would and wait for it).

    `clock` is this machine's; with `store_clock`, the agent judges time by the store's, learnt
    from its answers (agent/clock.py), as `postbox-agent run` does. `room`: how many files
    on their way the agent holds before walks wait and events are let go (agent/scanner.py)."""
    options = Settings(
        watch_dir=watch,
        state_dir=state,
        grant_file=grant,
        **{"settle_seconds": 0.05, "expiry_margin_seconds": 0, **settings},  # type: ignore[arg-type]
    )
    clock = clock or FakeClock()
    judge: Callable[[], dt.datetime] = StoreClock(clock) if store_clock else clock
    ignore_lease_breaks()
    log = io.StringIO()
    configure("INFO", log)
    wired = parts(options, clock=judge, user_agent="test")
    agent = wired.agent(notifier, report_every=report_every)
    if room is not None:
        agent.parts.scanner.room.most = agent.core.room = room
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()), name="agent")
    thread.start()
    try:
        yield Running(agent, clock, log, thread, result)
    finally:
        agent.stopping.set()
        thread.join(60)
        logging.getLogger().handlers.clear()
        sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
