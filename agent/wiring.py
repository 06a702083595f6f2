"""The one place an agent is put together from its settings: `postbox-agent run`, `upload` and
`check` use it, and so does the tests' in-process harness (tests/inprocess.py).

One grant, one judge of expiry (a `Deadline` on the store's clock, with the settings' margin),
one HTTP session and the uploader that uses it; the journal and the daemon on top, for the
commands that need them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from agent.bandwidth import Limiter
from agent.clock import StoreClock
from agent.deadline import Deadline
from agent.delivery import Delivery
from agent.grant import AnyGrant, load_grant
from agent.journal import Journal
from agent.notify import Notifier
from agent.rules import STATUS_EVERY_SECONDS
from agent.service import Agent
from agent.session import USER_AGENT, new_session
from agent.settings import Settings
from agent.uploader import Timeouts, Uploader


@dataclass
class Wired:
    settings: Settings
    grant: AnyGrant
    deadline: Deadline
    uploader: Uploader
    stopping: threading.Event = field(default_factory=threading.Event)

    def journal(self) -> Journal:
        """The journal, opened (StateDirError, exit 73, when the state dir cannot hold it)."""
        return Journal(self.settings.journal_path)

    def delivery(self, journal: Journal) -> Delivery:
        return Delivery(self.settings, self.uploader, journal)

    def agent(
        self, notifier: Optional[Notifier] = None, *, report_every: float = STATUS_EVERY_SECONDS
    ) -> Agent:
        return Agent(
            self.settings,
            self.grant,
            self.uploader,
            self.journal(),
            notifier=notifier,
            stopping=self.stopping,
            report_every=report_every,
        )


def parts(
    settings: Settings,
    *,
    clock: Optional[Callable[[], dt.datetime]] = None,
    user_agent: str = USER_AGENT,
) -> Wired:
    """The grant (ConfigError, exit 78, when it is bad) and what sends under it.

    `clock`: what the deadline judges by; by default a StoreClock, which learns the store's
    time from its answers (agent/clock.py). A plain clock is trusted as it is."""
    grant = load_grant(settings.grant_file)
    deadline = Deadline(clock or StoreClock(), settings.expiry_margin_seconds)
    stopping = threading.Event()
    rate = settings.bandwidth_limit
    uploader = Uploader(
        # A connection for every upload at once: each worker's, and a large file's parts.
        new_session(
            settings.concurrency * settings.part_streams,
            settings.ca_bundle,
            user_agent,
            settings.send_timeout,
        ),
        deadline=deadline,
        timeouts=Timeouts(settings.connect_timeout, settings.read_timeout),
        stopping=stopping,
        root=settings.watch_dir,
        limiter=None if rate is None else Limiter(rate, stopping),
    )
    return Wired(settings, grant, deadline, uploader, stopping)
