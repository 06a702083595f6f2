"""The daemon: start → scan → dispatch (until stop or expiry) → drain → stop.

Four kinds of thread put messages (agent/inbox.py) on the inbox: watchdog's observer (what
changed: agent/watcher.py), the scanner (what a walk found: agent/scanner.py), `concurrency`
workers (one file's delivery each: agent/delivery.py) and the renewal (agent/keeper.py). The
dispatcher, the thread that calls `run`, owns the ledger: it applies each message, looks at
settling files when their timer fires and hands every due file to a free worker at once, with
no tick between an event and a send. Every half second it also looks after the grant, the watch
dir, the rescan, a journal that could not record, and what the agent reports; a journal found
damaged stops it (exit 65). Signal handlers only call `signal`; what the time and the signals
allow (the stop, its budget, a preemption deadline) is agent/core.py's to decide.
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
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from agent.asking import Asked, WaitSocket
from agent.clock import Chores
from agent.core import Once, Timing
from agent.delivery import Delivery, refused_name
from agent.errors import ExitCode, JournalError, RejectedUploadError
from agent.grant import AnyGrant
from agent.inbox import (
    Crashed,
    Done,
    Found,
    Message,
    Poll,
    Renewed,
    Rewatch,
    Wake,
    Walked,
    WalkWaits,
)
from agent.journal import Journal
from agent.keeper import GrantKeeper
from agent.ledger import Ledger
from agent.logs import printable
from agent.notice import Notice, PreemptionWatch, Withdrawn, cloud_of
from agent.notify import Notifier
from agent.outcome import Job, Outcome, Result
from agent.scanner import Scanner
from agent.settings import Settings
from agent.states import State
from agent.status import Reports, left, left_counts
from agent.uploader import Uploader
from agent.versions import FileVersion
from agent.watcher import Change, Changed, WatchDir

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 0.5  # grant file, watch dir, rescans, journal, expiry
STATUS_EVERY_SECONDS = 10.0
DRAIN_REPORT_SECONDS = 10.0  # while stopping: EXTEND_TIMEOUT_USEC and STATUS this often
SNAPSHOT_EVERY_SECONDS = 2.0  # status.json: how often it may change
RECORD_RETRY_SECONDS = 10.0  # how often a journal that could not record is tried again


_ON_ITS_WAY = (State.DUE, State.SETTLING, State.SENDING)  # what a first signal still sends

# The changes that tell the ledger how far a file is from complete.
_SETTLES: dict[Change, Callable[[Ledger, str, float], object]] = {
    Change.CLOSED: Ledger.closed,
    Change.RENAMED: Ledger.renamed,
    Change.WRITTEN: Ledger.written,
    Change.CREATED: Ledger.found,
    Change.ATTRIB: Ledger.attrib,
}


class Agent:
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
        self.settings = settings
        self.uploader = uploader
        self.notifier = notifier or Notifier(None)
        self.stopping = stopping or threading.Event()
        self.monotonic = monotonic
        self.ledger = Ledger(settings.settle_seconds)
        self.delivery = Delivery(
            settings,
            uploader,
            journal,
            monotonic=monotonic,
            may_start=lambda: self.stop.may_start(self.monotonic()),
        )
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.grants = GrantKeeper(
            settings, grant, uploader.deadline, self._inbox.put, taken=self._grant_taken
        )
        self.watch_dir = WatchDir(settings.watch_dir, self._inbox.put)
        identity = lambda: self.grants.grant.identity  # noqa: E731  (refusals under it are kept)
        self.scanner = Scanner(self.watch_dir, journal, self._inbox.put, self.stopping, identity)
        self.reports = Reports(
            settings, self.ledger, uploader.inflight, self.grants, self.scanner.unreadable
        )
        self.wait_socket = WaitSocket(
            settings.socket_path, settings.watch_dir, journal, self._inbox.put
        )
        self._workers = ThreadPoolExecutor(settings.concurrency, "upload")
        self._running: set[Future[Outcome]] = set()  # uploads submitted and not yet ended
        self.stop = Timing(settings.stop_budget_seconds)  # signals, budget, deadline
        cloud = cloud_of(settings.preemption_watch, settings.instance_data)
        self.preemption = cloud and PreemptionWatch(  # its times by the store's clock
            cloud,
            settings.metadata_url,
            self._inbox.put,
            self.stopping,
            clock=lambda: uploader.deadline.now().timestamp(),
        )
        self._said = Once()  # "past": the deadline's passing; "damaged": the journal's damage
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
            self.scanner.later()  # READY=1 once this start-up scan is done
            code = self.main_loop()
        finally:
            self.notifier.stopping("stopping")
            self.watch_dir.stop()
            self.drain()
        if self.delivery.journal.damaged:  # said before the last line; as at start
            return ExitCode.JOURNAL_DAMAGED
        if code == ExitCode.EXPIRED:  # counted once the uploads in flight have ended
            return self.grants.after_expiry(len(self.ledger), self.watch_dir.root)
        if left_counts(self.ledger.counts()) or self.scanner.unheld:  # said in the last line
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
        """Apply messages as they come, fire settle timers, dispatch; housekeeping between."""
        next_chores = self.monotonic()
        while not self.stopping.is_set():
            now = self.monotonic()
            self.notifier.watchdog(now)  # only this loop pings: if it hangs, systemd restarts
            if self._say_damaged():
                return self.stop_damaged()
            if now >= next_chores:
                if self.grants.expired_for_good():
                    return self.stop_expired()
                self._housekeeping(now)
                next_chores = now + HOUSEKEEPING_SECONDS
            until = min(next_chores, self.ledger.next_timer() or math.inf)
            self._wait(min(until, self.stop.wake_at()))
            now = self.monotonic()
            for path in self.ledger.timers_fired(now):
                if not self.ledger.after_settle(path, now, FileVersion.at(self._path(path))):
                    logger.info("skipped %s: deleted before it was sent", printable(path))
            self._dispatch()
            held = self.ledger.count(*_ON_ITS_WAY)
            self.scanner.room.held(held)
            self.scanner.pay(held)
            if self.stop.over(now, held, self.scanner.caught_up):
                break
        if not self.aborted:
            logger.info(
                "stopping: %d upload(s) in flight will finish", self.ledger.count(State.SENDING)
            )
        return ExitCode.OK

    @property
    def aborted(self) -> bool:
        """A second signal came: the daemon stopped at once, uploads under way cut."""
        return self.stop.aborted

    def signal(self) -> None:
        """What SIGTERM and SIGINT do (agent/core.py). From the handler: a count and a message,
        nothing that takes a lock (Event.set does: the interrupted thread may hold it); the
        dispatcher acts as it applies the message (SimpleQueue.put is reentrant)."""
        self.stop.signal()
        self._inbox.put(Wake())

    def _housekeeping(self, now: float) -> None:
        """The grant, the watch dir; and, each at its own pace, the rescan, the journal's
        backlog, status.json, STATUS= and the metrics file."""
        self.grants.check(now)
        if self.watch_dir.follow(now):
            self._rescan()
        if self._chores.due("scan", now):
            self._rescan()
        if self.ledger.count(State.UNRECORDED) and self._chores.due("record", now):
            self._record_again(now)
        if self._chores.due("snapshot", now):
            self.reports.write_status(now)
        if self._chores.due("status", now):
            self.notifier.status(self.reports.line())
            self.reports.write_metrics()

    def stop_expired(self) -> int:
        """Stop: no upload starts now. One under way goes on, and the store may still accept it
        (it began before the expiry): what was stored and what was not is said once it ended."""
        self.stopping.set()
        self.grants.say_expired(self.ledger.count(State.SENDING))
        return ExitCode.EXPIRED

    def stop_damaged(self) -> int:
        """The journal was found damaged (by any thread's read or write): it can tell nothing
        more of what was sent, nor record. Stop as at expiry: no upload starts, those under way
        end (the store may take them; their files stay unrecorded, and are sent again once the
        journal is moved aside). Exit 65, which the unit does not restart, as at start."""
        self.stopping.set()
        return ExitCode.JOURNAL_DAMAGED

    def _say_damaged(self) -> bool:
        """The journal is damaged: True, and its one line (the file and the way out) the first
        time."""
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
        while self._running and not self.aborted:
            # systemd's TimeoutStopSec would kill a long upload mid-body: ask for more time as
            # long as uploads are under way (each is bounded by the read timeout).
            sending = len(self._running)
            self.notifier.watchdog(self.monotonic())  # in case systemd still watches
            self.notifier.extend_timeout(
                3 * DRAIN_REPORT_SECONDS, f"stopping: {sending} upload(s) finishing"
            )
            self._wait(self.monotonic() + DRAIN_REPORT_SECONDS, only_outcomes=True)
        self._say_damaged()  # found by the last uploads: said before the last line
        if self._running:
            self._abort()
            return
        self._workers.shutdown(wait=True)
        self._wait(self.monotonic(), only_outcomes=True)  # the outcomes of the last uploads
        self.wait_socket.close()
        self.delivery.journal.close()
        self.reports.write_metrics()
        self.reports.write_status(self.monotonic(), stopped=True)
        logger.info("stopped: %d file(s) uploaded in this run%s", self.ledger.sent, self._left())

    def _abort(self) -> None:
        """A second signal: the uploads under way are left to be cut by the process's exit (the
        store keeps no partial object); their files stay and are sent at the next start."""
        self.reports.write_metrics()
        self.reports.write_status(self.monotonic(), stopped=True)
        waiting = self.ledger.count(*_ON_ITS_WAY) - self.ledger.count(State.SENDING)
        logger.warning(
            "%s",
            self.stop.cut(len(self._running), waiting, self.watch_dir.root, self.ledger.sent),
        )

    # The dispatcher.
    def _wait(self, until: float, *, only_outcomes: bool = False) -> None:
        """Sleep until a message comes or `until`; then apply every message waiting (while
        draining, `only_outcomes`: the uploads' outcomes, nothing new)."""
        timeout = max(0.0, until - self.monotonic())
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        now = self.monotonic()
        while True:
            if not only_outcomes or isinstance(message, (Done, Asked, Notice, Withdrawn)):
                self._apply(message, now)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, message: Message, now: float) -> None:
        """Each kind of message to its handler: one table (`_HANDLERS`, below the class)."""
        _HANDLERS[type(message)](self, message, now)

    def _found(self, message: Found, now: float) -> None:
        """A walk's find; refusals under a grant since replaced are tried again."""
        held = message.grant if message.grant == self.grants.grant.identity else ""
        self.ledger.walked(message.files, message.refused, held, now)
        self.scanner.room.applied(len(message.files), self.ledger.count(*_ON_ITS_WAY))

    def _walked(self, message: Walked, now: float) -> None:
        if self.scanner.walked(message.folder):
            self.notifier.ready(self.reports.line())

    def _walk_waits(self, message: WalkWaits, now: float) -> None:
        if self.scanner.now_ready():
            self.notifier.ready(self.reports.line())

    def _rewatch(self, message: Rewatch, now: float) -> None:
        """Folders a walk listed are not watched (which, unknown): watch anew, walk again."""
        self.watch_dir.rewatch(self.monotonic())
        self._rescan()

    def _crashed(self, message: Crashed, now: float) -> None:
        raise message.error  # a bug: end the daemon through main's logging

    def _asked(self, message: Asked, now: float) -> None:
        """postbox-agent wait: how each path stands, and what tells an expiry apart."""
        left = self.grants.seconds_left()
        standing = {"grant_left": left, "expired": left <= 0 and not self.grants.renewable()}
        held = self.ledger.states_of(message.paths)
        if self.scanner.unreadable:  # in a folder it cannot list: unreadable, and why
            unseen = [path for path in message.paths if path not in held]
            held.update(self.scanner.unreadable.states_of(unseen))
        message.answer.set_result((standing, held))

    def _signalled(self, message: Wake, now: float) -> None:
        if self.stop.at_once:
            self.stopping.set()
        elif line := self.stop.begin(self.monotonic(), self.ledger.count(*_ON_ITS_WAY)):
            logger.info("%s", line)
            self.notifier.stopping("stopping: sending what is complete first")
            # A file closed just before the signal: its event may be on its way.
            self.stop.barrier = self.watch_dir.barrier()
            self._rescan()

    def _noticed(self, notice: Notice, now: float) -> None:
        """The cloud takes the machine back (agent/notice.py): what is complete goes now,
        smallest first, without the settle wait; nothing starts past the deadline, and a stop
        drains until then at most."""
        now, store_now = self.monotonic(), self.uploader.deadline.now().timestamp()
        if notice.final:  # the deadline as an end time: a later signal drains until then
            until = math.inf if notice.deadline is None else now + notice.deadline - store_now
            self.stop.notice(notice.what, until)
        self.reports.notice = notice
        due = self.ledger.hurry(now, self._size, for_good=notice.final)
        logger.warning(
            "preemption notice: %s: sending the %d complete file(s) now, smallest first, "
            "without the settle wait%s",
            notice.describe(store_now),
            due,
            "" if notice.final else " (this once: the machine may stay)",
        )

    def _withdrawn(self, message: Withdrawn, now: float) -> None:
        """The metadata service gives a notice no longer (agent/notice.py: the cloud called the
        stop off): with no other in force, uploads go on as before the notice, each file after
        its settle wait, and a deadline that passed stops nothing."""
        notice = message.notice
        self._said.forget("past")  # another notice's deadline is said anew
        what = f"{notice.cloud} {notice.what}"
        if self.stop.withdrawn(notice.what):
            logger.warning("preemption notice withdrawn: %s; another stands", what)
            return
        self.ledger.settle_seconds = self.settings.settle_seconds
        self.reports.notice = None
        logger.warning(
            "preemption notice withdrawn: %s is no longer given: uploads go on as before, each "
            "file after its %gs settle wait",
            what,
            self.settings.settle_seconds,
        )

    def _size(self, relpath: str) -> int:
        version = FileVersion.at(self._path(relpath))
        return 0 if version is None else version.size

    def _changed(self, kind: Change, relpath: str, source: str, now: float) -> None:
        if kind is Change.RESCAN:
            self._rescan()
        elif kind is Change.DIRECTORY:
            self.scanner.later(relpath)
        elif kind is Change.FOLDER_MODE:
            self._folder_mode(relpath)
        elif kind is Change.MOVED_AWAY:
            self.ledger.gone(relpath)
        elif kind is Change.FOLDER_AWAY:
            self.ledger.folder_gone(relpath)
        elif kind is Change.BARRIER:
            if relpath == self.stop.barrier:  # every event before the signal is in
                self.stop.barrier = None
        elif kind is Change.DELETED:
            if self.ledger.gone(relpath):
                logger.info("skipped %s: deleted before it was sent", printable(relpath))
        else:
            self._admit(kind, relpath, source, now)

    def _admit(self, kind: Change, relpath: str, source: str, now: float) -> None:
        """An event that may bring a file the ledger does not hold. When it holds as many on
        their way as a walk may (agent/scanner.py: Room), the event is let go and the file's
        folder walked once there is room (the file then settles, as one a walk finds does):
        memory stays bounded however many files arrive at once."""
        known = relpath in self.ledger or source in self.ledger
        full = self.scanner.room.full(self.ledger.count(*_ON_ITS_WAY))
        if full and not known and kind is not Change.ATTRIB:
            self.scanner.owe(relpath)
        elif kind is Change.CARRIED:
            self.ledger.carried(source, relpath, now)
        else:
            _SETTLES[kind](self.ledger, relpath, now)

    def _folder_mode(self, relpath: str) -> None:
        """A folder's mode or owner changed: one the agent could not list may be readable now.
        It is watched (watchdog passed over it), then walked: a file is found, or its event
        heard."""
        if relpath not in self.scanner.unreadable:
            return
        if self.watch_dir.rewatch(self.monotonic()):
            self.scanner.later(relpath)
        else:
            self._rescan()

    def _rescan(self) -> None:
        """Walk the whole watch dir again; files that could not be read are tried again."""
        if self.scanner.ready:
            now = self.monotonic()
            for relpath in self.ledger.paths(State.UNREADABLE):
                self.ledger.attrib(relpath, now)
        self.scanner.later()

    def _dispatch(self) -> None:
        """Every due file to a free worker, with the grant and key it goes under."""
        if self.ledger.count(State.UNRECORDED) or self.delivery.journal.damaged:
            return  # the journal cannot record: no new upload until it can
        grant = self.grants.grant
        if self.uploader.deadline.to_start(grant) <= 0:
            return  # within the expiry margin: no upload could finish in time
        if not self.stop.may_start(self.monotonic()):
            self._past_notice()
            return  # the machine is going, or the drain's time is up: it would be cut
        sending = self.ledger.count(State.SENDING)
        for relpath in self.ledger.take(self.settings.concurrency - sending):
            path = self._path(relpath)
            try:
                key = grant.key_for(PurePosixPath(relpath), self.settings.key_prefix)
            except RejectedUploadError as exc:
                self._report(relpath, refused_name(path, relpath, grant, exc), self.monotonic())
                continue
            job = Job(
                path,
                relpath,
                key,
                grant,
                self.ledger.rate,
                busy=sending > 0,
                close_seen=self.ledger.close_seen(relpath),
                moved_in=self.ledger.moved_in(relpath),
            )
            sending += 1
            future = self._workers.submit(self.delivery.deliver, job)
            self._running.add(future)
            future.add_done_callback(functools.partial(self._done, job))

    def _past_notice(self) -> None:
        """The notice's deadline has passed: say once which files are left."""
        if self.monotonic() >= self.stop.deadline and self._said.first("past"):
            logger.error("preemption deadline passed: no upload starts now%s", self._left())

    def _left(self) -> str:
        return left(self.ledger, self.watch_dir.root, unheld=self.scanner.unheld)

    def _done(self, job: Job, future: Future[Outcome]) -> None:
        """Runs on the worker as its future completes: the outcome goes to the dispatcher."""
        self._running.discard(future)  # first: drain waits on the inbox while any runs
        self._inbox.put(Done(job, future))

    def _landed(self, message: Done, now: float) -> None:
        job, future = message.job, message.future
        error = future.exception()
        if error is not None:  # a bug in one delivery must not end the daemon silently
            logger.error("upload of %s failed unexpectedly", printable(job.key))
            raise error  # main logs its traceback
        self._report(job.relpath, future.result(), now)

    def _report(self, relpath: str, outcome: Outcome, now: float) -> None:
        self.reports.run.note(outcome, self.uploader.deadline.now().timestamp())
        paused = self.ledger.count(State.UNRECORDED) > 0
        first = self.ledger.report(relpath, outcome, now)
        if outcome.result is Result.UNRECORDED:
            first = not paused
        if first and outcome.reason:
            logger.log(outcome.level, "%s", outcome.reason)

    def _record_again(self, now: float) -> None:
        waiting = self.ledger.unrecorded()
        for relpath, item in waiting:
            try:
                self.delivery.record_then_release(item)
            except JournalError:
                return
            self.ledger.report(relpath, Outcome(Result.SENT, item.receipt.version), now)
        logger.info("the journal records again (%d recorded): uploads resume", len(waiting))

    def _grant_taken(self) -> int:
        """A new grant is in force: every file that waited for one is tried again."""
        return len(self.ledger.retry_waiting(self.monotonic()))

    def _path(self, relpath: str) -> Path:
        return self.watch_dir.root / relpath


# What the dispatcher does with each kind of message (agent/inbox.py, agent/asking.py,
# agent/notice.py, agent/watcher.py): one table, not a chain of isinstance.
_HANDLERS: dict[type, Callable[[Agent, Any, float], None]] = {
    Changed: lambda agent, m, now: agent._changed(m.kind, m.relpath, m.source, now),
    Done: Agent._landed,
    Found: Agent._found,
    Walked: Agent._walked,
    WalkWaits: Agent._walk_waits,
    Poll: lambda agent, m, now: agent.watch_dir.fall_back_to_polling(m.why),
    Rewatch: Agent._rewatch,
    Crashed: Agent._crashed,
    Renewed: lambda agent, m, now: agent.grants.renewed(m.future),
    Notice: Agent._noticed,
    Withdrawn: Agent._withdrawn,
    Asked: Agent._asked,
    Wake: Agent._signalled,  # a signal
}
