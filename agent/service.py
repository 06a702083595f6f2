"""The daemon, the shell around its decision core: start → scan → dispatch (until stop or
expiry) → drain → stop.

Four kinds of thread put messages on the inbox (agent/messages.py, agent/inbox.py): watchdog's
observer (what changed: agent/watcher.py), the scanner (what a walk found: agent/scanner.py),
`concurrency` workers (one file's delivery each: agent/delivery.py) and the renewal
(agent/keeper.py); the wait socket and the preemption watch put theirs too. The dispatcher, the
thread that calls `run`, takes each in turn and gives it, with the time, to the core
(agent/core.py), which decides; the shell carries out what it returns (a file to send, a
folder to walk, a line to say, systemd to tell, a report to write, the loop to stop) with no tick
between an event and a send. Every half second it also takes a grant file replaced and follows
the watch dir (agent/threads.py: Upkeep), and tells the core of an expiry for good or a journal
found damaged. Signal handlers only call `signal`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
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
from agent.asking import Asked
from agent.bandwidth import format_rate
from agent.core import Core
from agent.errors import ExitCode
from agent.filters import Filters
from agent.grant import AnyGrant
from agent.inbox import Crashed, Done, Message, Poll, Renewed, Rewatch
from agent.journal import Journal
from agent.messages import Notice, Signal, Withdrawn
from agent.notify import Notifier
from agent.rules import STATUS_EVERY_SECONDS
from agent.scanner import Room
from agent.settings import Settings
from agent.states import State
from agent.status import left, left_counts
from agent.threads import HOUSEKEEPING_SECONDS, Parts, Upkeep
from agent.uploader import Uploader
from agent.workers import Workers

logger = logging.getLogger(__name__)

DRAIN_REPORT_SECONDS = 10.0  # while stopping: EXTEND_TIMEOUT_USEC and STATUS this often


class Agent:
    """The shell around the decision core (agent/core.py), as uvicorn's `Server` is around its
    protocol: it starts the threads, feeds the core their messages with the time, carries out
    the actions the core returns, and stops."""

    def __init__(
        self,
        settings: Settings,
        grant: AnyGrant,
        uploader: Uploader,
        journal: Journal,
        *,
        notifier: Optional[Notifier] = None,
        stopping: Optional[threading.Event] = None,
        monotonic: Callable[[], float] = time.monotonic,
        report_every: float = STATUS_EVERY_SECONDS,
    ) -> None:
        self.uploader, self.monotonic = uploader, monotonic
        self.notifier = notifier or Notifier(None)
        self.stopping = stopping or threading.Event()
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._now: Optional[Now] = None  # the time of the batch of messages being applied
        room = Room()
        self.core = Core(settings.settle_seconds, settings.concurrency,
                         settings.stop_budget_seconds, room.most, lambda: room.queued,
                         settings.rescan_seconds, report_every, monotonic(),
                         settings.filters or None)  # fmt: skip
        self.parts = Parts.build(settings, grant, uploader, journal, core=self.core, room=room,
                                 put=self._inbox.put, stopping=self.stopping, monotonic=monotonic,
                                 taken=self._taken, store_now=self._store_now)  # fmt: skip
        self._upkeep = Upkeep(self.core, self.parts, notifier=self.notifier, tell=self._tell)
        self._code: Optional[int] = None  # the core stopped the loop with this code

    # The lifecycle, as a table of contents.
    def run(self) -> int:
        self.start()
        try:
            self._tell(Rescan())  # the start-up walk: READY=1 once it ends
            code = self.main_loop()
        finally:
            self.notifier.stopping("stopping")
            self.parts.watch_dir.stop()
            self.drain()
        if self.parts.delivery.journal.damaged:  # said before the last line; as at start
            return ExitCode.JOURNAL_DAMAGED
        if code == ExitCode.EXPIRED:  # counted once the uploads in flight have ended
            return self.parts.grants.after_expiry(len(self.core.ledger), self.parts.watch_dir.root)
        if left_counts(self.core.ledger.counts()) or self._unheld or self.parts.scanner.unreadable:
            return ExitCode.FILES_LEFT
        return code

    def start(self) -> None:
        """Watch before scanning, so no file can fall between the scan and the first event."""
        self.uploader.probe(self.parts.grants.grant)  # the store's Date, before expiry is judged
        self.parts.grants.start()
        self.parts.watch_dir.open()
        self.parts.wait_socket.open()
        if self.parts.preemption:
            self.parts.preemption.start()
        logger.info("watching %s: %s; sending %s", self.parts.watch_dir.root,
                    self.parts.grants.describe(), self._sending())  # fmt: skip

    def _sending(self) -> str:
        """Which files, how fast: `every file, at most 20MiB/s in all`."""
        files, limiter = (self.core.excluded.filters or Filters()).describe(), self.uploader.limiter
        return f"{files}, at most {format_rate(limiter.rate)} in all" if limiter else files

    def main_loop(self) -> int:
        """What the time allows (the core's `Tick`), then the messages as they come, until the
        core stops the loop or the drain is over; a round of upkeep every half second."""
        next_round, core, upkeep = self.monotonic(), self.core, self._upkeep
        while not self.stopping.is_set():
            now = self.monotonic()
            self.notifier.watchdog(now)  # only this loop pings: if it hangs, systemd restarts
            damaged, expired = upkeep.say_damaged(), False
            if now >= next_round and not damaged:
                expired, next_round = upkeep.expired(now), now + HOUSEKEEPING_SECONDS
            startable = self.uploader.deadline.to_start(self.parts.grants.grant) > 0
            self._tell(Tick(startable, damaged=damaged, expired=expired))
            if self._code is not None:
                return self._code
            if core.drained:
                break
            self._wait(min(next_round, core.ledger.next_timer() or math.inf, core.stop.until))
        if not core.stop.aborted:
            sending = core.ledger.count(State.SENDING)
            logger.info("stopping: %d upload(s) in flight will finish", sending)
        return ExitCode.OK

    def _stop(self, a: Stop) -> None:
        """No upload starts; those under way end (the drain). At an expiry for good, the
        keeper's line says so and how many go on."""
        self._code = a.code
        self.stopping.set()
        if a.code == ExitCode.EXPIRED:
            self.parts.grants.say_expired(self.core.ledger.count(State.SENDING))

    def signal(self) -> None:
        """What SIGTERM and SIGINT do. From the handler: a count and a message, nothing that
        takes a lock (SimpleQueue.put is reentrant); the core decides as it applies it."""
        self.core.stop.signal()
        self._inbox.put(Signal())

    def drain(self) -> None:
        """Let in-flight uploads finish (systemd's stop timeout bounds this), then close; a
        second signal ends the wait at once."""
        self.stopping.set()
        self.parts.scanner.close()  # a walk ends early once `stopping` is set
        self.parts.grants.close()
        self.parts.workers.shutdown(wait=False)
        while self.parts.workers and not self.core.stop.aborted:
            # systemd's TimeoutStopSec would kill a long upload mid-body: ask for more time as
            # long as uploads are under way (each is bounded by the read timeout).
            self.notifier.watchdog(self.monotonic())  # in case systemd still watches
            self.notifier.extend_timeout(
                3 * DRAIN_REPORT_SECONDS, f"stopping: {len(self.parts.workers)} upload(s) finishing"
            )
            self._wait(self.monotonic() + DRAIN_REPORT_SECONDS, only_outcomes=True)
        self._upkeep.say_damaged()  # found by the last uploads: said before the last line
        core, stopped = self.core, ""
        if self.parts.workers:  # a second signal: what is under way is cut by the process's exit
            waiting = core.on_its_way - core.ledger.count(State.SENDING)
            stopped = core.stop.cut(len(self.parts.workers), waiting, self.parts.watch_dir.root,
                                    core.ledger.sent)  # fmt: skip
        if not stopped:
            self.parts.workers.shutdown(wait=True)
            self._wait(self.monotonic(), only_outcomes=True)  # the outcomes of the last uploads
            self.parts.wait_socket.close()
            self.parts.delivery.journal.close()
        self.parts.reports.write_metrics(stopped=True)
        self.parts.reports.write_status(self.monotonic(), stopped=True)
        if stopped:
            logger.warning("%s", stopped)
        else:
            logger.info("stopped: %d file(s) uploaded in this run%s", self.core.ledger.sent,
                        self._left())  # fmt: skip

    # The dispatcher: each message to the core, or to the part of the shell it is about.
    def _wait(self, until: float, *, only_outcomes: bool = False) -> None:
        """Sleep until a message comes or `until`; then apply every message waiting (while
        draining, `only_outcomes`: the uploads' outcomes, nothing new)."""
        timeout = max(0.0, until - self.monotonic())
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        self._now = self._time()  # one time for the batch: each message is applied at it
        try:
            while True:
                if not only_outcomes or isinstance(message, (Done, Asked, Notice, Withdrawn)):
                    _HANDLERS.get(type(message), Agent._tell)(self, message)
                message = self._inbox.get_nowait()
        except queue.Empty:
            return
        finally:
            self._now = None

    def _tell(self, message: object) -> list[Action]:
        """Apply `message` in the core, at the time now (the batch's, while one is applied), and
        carry out what it returns."""
        actions = self.core.apply(message, self._now or self._time())
        for action in actions:
            _CARRY.get(type(action), _kept)(self, action)
        return actions

    def _tell_any(self, message: Optional[object]) -> None:
        if message is not None:
            self._tell(message)

    def _send(self, a: Send) -> None:
        refused = self.parts.workers.send(a, self.parts.grants.grant, self.parts.watch_dir.root)
        if refused is not None:
            self._tell(Landed(a.relpath, refused))

    def _landed(self, message: Done) -> None:
        outcome = Workers.outcome(message)
        self.parts.reports.run.note(outcome, self._store_now())
        self._tell(Landed(message.job.relpath, outcome))

    def _asked(self, message: Asked) -> None:
        """postbox-agent wait: how each path stands (the core's answer), and the grant."""
        (answer,) = [a for a in self._tell(Question(message.paths)) if isinstance(a, Answer)]
        self.parts.answer(message, answer.held)

    def _taken(self) -> int:
        """A new grant is in force: every file that waited for one is tried again."""
        return sum(a.count for a in self._tell(GrantTaken()) if isinstance(a, Tried))

    def _say(self, a: Say) -> None:
        logger.log(a.level, "%s", a.line + self._left() if a.left else a.line)

    def _left(self) -> str:
        return left(self.core.ledger, self.parts.watch_dir.root, unheld=self._unheld,
                    unlisted=list(self.parts.scanner.unreadable.folders()))  # fmt: skip

    @property
    def _unheld(self) -> bool:
        """Files the agent had no room for were not walked yet: a stop leaves them uncounted."""
        return bool(self.core.owed) or self.parts.scanner.cut_full

    def _time(self) -> Now:
        return Now(self.monotonic(), self._store_now())

    def _store_now(self) -> float:
        return self.uploader.deadline.now().timestamp()


def _kept(agent: Agent, action: Action) -> None:
    """An action its caller reads (`Answer`, `Tried`): nothing to carry out."""


def _held(agent: Agent, a: Held) -> None:
    room = agent.parts.scanner.room
    room.applied(a.applied, a.count) if a.applied else room.held(a.count)


# What the shell does with each action of the core, and with each message that is its own.
_CARRY: dict[type, Callable[[Agent, Any], object]] = {
    Send: Agent._send,
    Walk: lambda agent, a: agent.parts.scanner.later(a.folder),
    Look: lambda agent, a: agent._tell(agent.parts.look(a)),
    Say: Agent._say,
    Notify: lambda agent, a: (
        agent.notifier.ready(agent.parts.reports.line())
        if a.what == "ready"
        else agent.notifier.stopping(a.text)
    ),
    Held: _held,
    MakeBarrier: lambda agent, a: agent._tell(BarrierMade(agent.parts.watch_dir.barrier())),
    Halt: lambda agent, a: agent.stopping.set(),
    Stop: Agent._stop,
    Record: lambda agent, a: agent._upkeep.record_again(),
    Report: lambda agent, a: agent._upkeep.report(a, agent.monotonic()),
    Relook: lambda agent, a: agent._tell_any(agent.parts.relook(a.relpath, agent.monotonic())),
}
_HANDLERS: dict[type, Callable[[Agent, Any], object]] = {
    Done: Agent._landed,
    Asked: Agent._asked,
    Poll: lambda agent, m: agent.parts.watch_dir.fall_back_to_polling(m.why),
    Rewatch: lambda agent, m: agent._tell(agent.parts.rewatched(agent.monotonic())),
    Crashed: lambda agent, m: _raise(m.error),  # a bug: end the daemon through main's logging
    Renewed: lambda agent, m: agent.parts.grants.renewed(m.future),
}  # every other message is the core's (agent/core.py: `_RULES`)


def _raise(error: BaseException) -> None:
    raise error
