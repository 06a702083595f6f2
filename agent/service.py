"""The daemon, the shell around its decision core: start → scan → dispatch (until stop or
expiry) → drain → stop.

Four kinds of thread put messages on the inbox (agent/messages.py, agent/inbox.py): watchdog's
observer (what changed: agent/watcher.py), the scanner (what a walk found: agent/scanner.py),
`concurrency` workers (one file's delivery each: agent/delivery.py) and the renewal
(agent/keeper.py); the wait socket and the preemption watch put theirs too. The dispatcher, the
thread that calls `run`, takes each in turn and gives it, with the time, to the core
(agent/core.py), which decides; the shell carries out what it returns (a file to send, a
folder to walk, a line to say, systemd to tell) with no tick between an event and a send. Every
half second it also looks after the grant, the watch dir, the rescan, a journal that could not
record, and what the agent reports; a journal found damaged stops it (exit 65). Signal handlers
only call `signal`.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import PurePosixPath
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
    Relook,
    Rescan,
    Say,
    Send,
    Tick,
    Tried,
    Walk,
)
from agent.asking import Asked, WaitSocket
from agent.clock import Chores
from agent.core import Core
from agent.delivery import Delivery, refused_name
from agent.errors import ExitCode, JournalError, RejectedUploadError
from agent.grant import AnyGrant
from agent.inbox import Crashed, Done, Message, Poll, Renewed, Rewatch
from agent.journal import Journal
from agent.keeper import GrantKeeper
from agent.messages import Change, Changed, Notice, Signal, Withdrawn
from agent.notice import PreemptionWatch, cloud_of
from agent.notify import Notifier
from agent.outcome import Job, Outcome, Result
from agent.rules import Once
from agent.scanner import Room, Scanner
from agent.settings import Settings
from agent.shown import printable
from agent.states import State
from agent.status import Reports, left, left_counts
from agent.uploader import Uploader
from agent.versions import FileVersion
from agent.watcher import WatchDir

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 0.5  # grant file, watch dir, rescans, journal, expiry
STATUS_EVERY_SECONDS = 10.0
DRAIN_REPORT_SECONDS = 10.0  # while stopping: EXTEND_TIMEOUT_USEC and STATUS this often
SNAPSHOT_EVERY_SECONDS = 2.0  # status.json: how often it may change
RECORD_RETRY_SECONDS = 10.0  # how often a journal that could not record is tried again


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
        self.settings, self.uploader = settings, uploader
        self.notifier = notifier or Notifier(None)
        self.stopping = stopping or threading.Event()
        self.monotonic = monotonic
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        put = self._inbox.put
        room = Room()
        self.core = Core(settings.settle_seconds, settings.concurrency,
                         settings.stop_budget_seconds, room.most, lambda: room.queued)  # fmt: skip
        stop = self.core.stop  # the workers ask it before each upload they begin
        self.delivery = Delivery(settings, uploader, journal, monotonic=monotonic,
                                 may_start=lambda: stop.may_start(self.monotonic()))  # fmt: skip
        self.grants = GrantKeeper(settings, grant, uploader.deadline, put, taken=self._taken)
        self.watch_dir = WatchDir(settings.watch_dir, put)
        identity = lambda: self.grants.grant.identity  # noqa: E731  (refusals under it are kept)
        self.scanner = Scanner(self.watch_dir, journal, put, self.stopping, identity, room=room)
        self.reports = Reports(
            settings, self.core, uploader.inflight, self.grants, self.scanner.unreadable
        )
        self.wait_socket = WaitSocket(settings.socket_path, settings.watch_dir, journal, put)
        self._workers = ThreadPoolExecutor(settings.concurrency, "upload")
        self._running: set[Future[Outcome]] = set()  # uploads submitted and not yet ended
        cloud = cloud_of(settings.preemption_watch, settings.instance_data)
        self.preemption = cloud and PreemptionWatch(  # its times by the store's clock
            cloud, settings.metadata_url, put, self.stopping, clock=self._store_now
        )
        self._said = Once()  # "damaged": the journal's damage
        self._chores = Chores(  # housekeeping, each chore at its own pace
            {
                "scan": settings.rescan_seconds,
                "record": RECORD_RETRY_SECONDS,
                "snapshot": SNAPSHOT_EVERY_SECONDS,  # built this often, written if changed
                "status": report_every,  # STATUS= and the metrics file
            },
            monotonic(),
            *("scan", "record", "status"),  # a period from now; status.json at once
        )

    # The lifecycle, as a table of contents.
    def run(self) -> int:
        self.start()
        try:
            self._tell(Rescan())  # the start-up walk: READY=1 once it ends
            code = self.main_loop()
        finally:
            self.notifier.stopping("stopping")
            self.watch_dir.stop()
            self.drain()
        if self.delivery.journal.damaged:  # said before the last line; as at start
            return ExitCode.JOURNAL_DAMAGED
        if code == ExitCode.EXPIRED:  # counted once the uploads in flight have ended
            return self.grants.after_expiry(len(self.core.ledger), self.watch_dir.root)
        if left_counts(self.core.ledger.counts()) or self._unheld:  # said in the last line
            return ExitCode.FILES_LEFT
        return code

    def start(self) -> None:
        """Watch before scanning, so no file can fall between the scan and the first event."""
        self.uploader.probe(self.grants.grant)  # the store's Date, before expiry is judged
        self.grants.start()
        self.watch_dir.open()
        self.wait_socket.open()
        if self.preemption:
            self.preemption.start()
        logger.info("watching %s: %s", self.watch_dir.root, self.grants.describe())

    def main_loop(self) -> int:
        """Apply messages as they come, then what the time allows; housekeeping between."""
        next_chores, core = self.monotonic(), self.core
        while not self.stopping.is_set():
            now = self.monotonic()
            self.notifier.watchdog(now)  # only this loop pings: if it hangs, systemd restarts
            if self._say_damaged():
                self.stopping.set()  # as at expiry; exit 65, which the unit does not restart
                return ExitCode.JOURNAL_DAMAGED
            if now >= next_chores:
                if self.grants.expired_for_good():  # what is under way ends; nothing starts
                    self.stopping.set()
                    self.grants.say_expired(core.ledger.count(State.SENDING))
                    return ExitCode.EXPIRED
                self._housekeeping(now)
                next_chores = now + HOUSEKEEPING_SECONDS
            self._wait(min(next_chores, core.ledger.next_timer() or math.inf, core.stop.until))
            startable = self.uploader.deadline.to_start(self.grants.grant) > 0
            self._tell(Tick(startable and not self.delivery.journal.damaged))
            if core.drained:
                break
        if not core.stop.aborted:
            sending = core.ledger.count(State.SENDING)
            logger.info("stopping: %d upload(s) in flight will finish", sending)
        return ExitCode.OK

    def signal(self) -> None:
        """What SIGTERM and SIGINT do. From the handler: a count and a message, nothing that
        takes a lock (SimpleQueue.put is reentrant); the core decides as it applies it."""
        self.core.stop.signal()
        self._inbox.put(Signal())

    def _housekeeping(self, now: float) -> None:
        """The grant, the watch dir; and, each at its own pace, the rescan, the journal's
        backlog, status.json, STATUS= and the metrics file."""
        self.grants.check(now)
        if self.watch_dir.follow(now) or self._chores.due("scan", now):
            self._tell(Rescan())
        if self.core.ledger.count(State.UNRECORDED) and self._chores.due("record", now):
            self._record_again()
        if self._chores.due("snapshot", now):
            self.reports.write_status(now)
        if self._chores.due("status", now):
            self.notifier.status(self.reports.line())
            self.reports.write_metrics()

    def _say_damaged(self) -> bool:
        """The journal is damaged: True, and its one line (the file, the way out) once."""
        damaged = self.delivery.journal.damaged
        if damaged and self._said.first("damaged"):
            logger.error("%s", damaged)
        return damaged is not None

    def drain(self) -> None:
        """Let in-flight uploads finish (systemd's stop timeout bounds this), then close; a
        second signal ends the wait at once."""
        self.stopping.set()
        self.scanner.close()  # a walk ends early once `stopping` is set
        self.grants.close()
        self._workers.shutdown(wait=False)
        while self._running and not self.core.stop.aborted:
            # systemd's TimeoutStopSec would kill a long upload mid-body: ask for more time as
            # long as uploads are under way (each is bounded by the read timeout).
            self.notifier.watchdog(self.monotonic())  # in case systemd still watches
            self.notifier.extend_timeout(
                3 * DRAIN_REPORT_SECONDS, f"stopping: {len(self._running)} upload(s) finishing"
            )
            self._wait(self.monotonic() + DRAIN_REPORT_SECONDS, only_outcomes=True)
        self._say_damaged()  # found by the last uploads: said before the last line
        core, stopped = self.core, ""
        if self._running:  # a second signal: what is under way is cut by the process's exit
            waiting = core.on_its_way - core.ledger.count(State.SENDING)
            stopped = core.stop.cut(len(self._running), waiting, self.watch_dir.root,
                                    core.ledger.sent)  # fmt: skip
        if not stopped:
            self._workers.shutdown(wait=True)
            self._wait(self.monotonic(), only_outcomes=True)  # the outcomes of the last uploads
            self.wait_socket.close()
            self.delivery.journal.close()
        self.reports.write_metrics()
        self.reports.write_status(self.monotonic(), stopped=True)
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
        while True:
            if not only_outcomes or isinstance(message, (Done, Asked, Notice, Withdrawn)):
                _HANDLERS.get(type(message), Agent._tell)(self, message)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _tell(self, message: object) -> list[Action]:
        """Apply `message` in the core, at the time now, and carry out what it returns."""
        actions = self.core.apply(message, Now(self.monotonic(), self._store_now()))
        for action in actions:
            _CARRY.get(type(action), _kept)(self, action)
        return actions

    def _send(self, a: Send) -> None:
        """Deliver one file under the grant in force, on a free worker."""
        grant, path = self.grants.grant, self.watch_dir.root / a.relpath
        try:
            key = grant.key_for(PurePosixPath(a.relpath), self.settings.key_prefix)
        except RejectedUploadError as exc:
            self._tell(Landed(a.relpath, refused_name(path, a.relpath, grant, exc)))
            return
        job = Job(path, a.relpath, key, grant, a.rate, busy=a.busy, close_seen=a.close_seen,
                  moved_in=a.moved_in)  # fmt: skip
        future = self._workers.submit(self.delivery.deliver, job)
        self._running.add(future)
        future.add_done_callback(functools.partial(self._done, job))

    def _done(self, job: Job, future: Future[Outcome]) -> None:
        """Runs on the worker as its future completes: the outcome goes to the dispatcher."""
        self._running.discard(future)  # first: drain waits on the inbox while any runs
        self._inbox.put(Done(job, future))

    def _landed(self, message: Done) -> None:
        job, error = message.job, message.future.exception()
        if error is not None:  # a bug in one delivery must not end the daemon silently
            logger.error("upload of %s failed unexpectedly", printable(job.key))
            raise error  # main logs its traceback
        outcome = message.future.result()
        self.reports.run.note(outcome, self._store_now())
        self._tell(Landed(job.relpath, outcome))

    def _asked(self, message: Asked) -> None:
        """postbox-agent wait: how each path stands, and what tells an expiry apart."""
        left = self.grants.seconds_left()
        standing = {"grant_left": left, "expired": left <= 0 and not self.grants.renewable()}
        (answer,) = [a for a in self._tell(Question(message.paths)) if isinstance(a, Answer)]
        held = answer.held
        if self.scanner.unreadable:  # in a folder it cannot list: unreadable, and why
            unseen = [path for path in message.paths if path not in held]
            held.update(self.scanner.unreadable.states_of(unseen))
        message.answer.set_result((standing, held))

    def _relook(self, a: Relook) -> None:
        """A folder's mode or owner changed: one the agent could not list may be readable now.
        It is watched (watchdog passed over it), then walked."""
        if a.relpath not in self.scanner.unreadable:
            return
        if self.watch_dir.rewatch(self.monotonic()):
            self._tell(Changed(Change.DIRECTORY, a.relpath))
        else:
            self._tell(Rescan())

    def _record_again(self) -> None:
        waiting = self.core.ledger.unrecorded()
        for relpath, item in waiting:
            try:
                self.delivery.record_then_release(item)
            except JournalError:
                return
            self._tell(Landed(relpath, Outcome(Result.SENT, item.receipt.version)))
        logger.info("the journal records again (%d recorded): uploads resume", len(waiting))

    def _taken(self) -> int:
        """A new grant is in force: every file that waited for one is tried again."""
        return sum(a.count for a in self._tell(GrantTaken()) if isinstance(a, Tried))

    def _look(self, a: Look) -> None:
        root = self.watch_dir.root
        self._tell(Looked({p: FileVersion.at(root / p) for p in a.paths}, a.why))

    def _say(self, a: Say) -> None:
        logger.log(a.level, "%s", a.line + self._left() if a.left else a.line)

    def _left(self) -> str:
        return left(self.core.ledger, self.watch_dir.root, unheld=self._unheld)

    @property
    def _unheld(self) -> bool:
        """Files the agent had no room for were not walked yet: a stop leaves them uncounted."""
        return bool(self.core.owed) or self.scanner.cut_full

    def _store_now(self) -> float:
        return self.uploader.deadline.now().timestamp()


def _kept(agent: Agent, action: Action) -> None:
    """An action its caller reads (`Answer`, `Tried`): nothing to carry out."""


def _held(agent: Agent, a: Held) -> None:
    room = agent.scanner.room
    room.applied(a.applied, a.count) if a.applied else room.held(a.count)


# What the shell does with each action of the core, and with each message that is its own.
_CARRY: dict[type, Callable[[Agent, Any], object]] = {
    Send: Agent._send,
    Walk: lambda agent, a: agent.scanner.later(a.folder),
    Look: Agent._look,
    Say: Agent._say,
    Notify: lambda agent, a: (
        agent.notifier.ready(agent.reports.line())
        if a.what == "ready"
        else agent.notifier.stopping(a.text)
    ),
    Held: _held,
    MakeBarrier: lambda agent, a: agent._tell(BarrierMade(agent.watch_dir.barrier())),
    Halt: lambda agent, a: agent.stopping.set(),
    Relook: Agent._relook,
}
_HANDLERS: dict[type, Callable[[Agent, Any], object]] = {
    Done: Agent._landed,
    Asked: Agent._asked,
    Poll: lambda agent, m: agent.watch_dir.fall_back_to_polling(m.why),
    Rewatch: lambda agent, m: (agent.watch_dir.rewatch(agent.monotonic()), agent._tell(Rescan())),
    Crashed: lambda agent, m: _raise(m.error),  # a bug: end the daemon through main's logging
    Renewed: lambda agent, m: agent.grants.renewed(m.future),
}  # every other message is the core's (agent/core.py: `_RULES`)


def _raise(error: BaseException) -> None:
    raise error
