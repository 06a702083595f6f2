"""The daemon: start → scan → dispatch (until stop or expiry) → drain → stop.

Four kinds of thread, one job each:

- watchdog's observer translates inotify events and puts them on the inbox;
- one scanner walks the watch dir (at start, on a rescan, for a folder moved in) and puts what
  it finds on the inbox, off the path between an event and a send;
- `concurrency` workers run one file's delivery (agent.delivery) each, and put the outcome on
  the inbox;
- the dispatcher (the thread that calls `run`) owns the ledger: it applies each message, looks at
  settling files when their timer fires, and hands every due file to a free worker at once. It
  sleeps until a message comes or the next timer is due: no tick between an event and a send.

Every half second the dispatcher also looks after what can change under it: the grant file (a
newer grant is taken without a restart), the watch dir (removed and re-created: watched again),
the periodic rescan, a journal that could not record (uploads pause until it can), and systemd's
STATUS line. Signal handlers only set `stopping`.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from agent import renewal
from agent.clock import format_left, utc_now
from agent.delivery import Delivery, Job, Unrecorded
from agent.errors import ConfigError, ExitCode, JournalError, RejectedUploadError
from agent.files import FileVersion, folder_identity, replace_file
from agent.grant import AnyGrant, describe_keys, load_grant, presigned_expiry
from agent.journal import Journal
from agent.keys import is_temporary, is_utf8
from agent.ledger import PENDING, WAITING_FOR_GRANT, Ledger, Outcome, Result, State
from agent.logs import printable
from agent.metrics import Metric, MetricsFile
from agent.notify import Notifier
from agent.renewal import RenewalError
from agent.settings import Settings
from agent.status import STATUS_HEARTBEAT_SECONDS
from agent.uploader import Uploader, new_session
from agent.watcher import Change, Watcher, inotify_watches, scan

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 0.5  # grant file, watch dir, rescans, journal, expiry
STATUS_EVERY_SECONDS = 10.0
DRAIN_REPORT_SECONDS = 10.0  # while stopping: EXTEND_TIMEOUT_USEC and STATUS this often
SNAPSHOT_EVERY_SECONDS = 2.0  # how often it may change (built this often; written if changed)
STATUS_WAITING_LIMIT = 100  # files listed as waiting (refused, failed...); the counts say all
RECORD_RETRY_SECONDS = 10.0  # how often a journal that could not record is tried again


class _Inbox(enum.Enum):
    """What the workers, the scans and the renewal put in the agent's inbox (the watcher puts a
    Change there)."""

    DONE = "done"  # (DONE, job, future): a worker finished a delivery
    FOUND = "found"  # (FOUND, [(relpath, version), ...]): a scan found files not yet sent
    SCANNED = "scanned"  # (SCANNED, folder): a scan ended
    POLL = "poll"  # (POLL, why): inotify could not watch every folder
    BROKEN = "broken"  # (BROKEN, what, exception): a thread of the agent ended by a bug
    RENEWED = "renewed"  # (RENEWED, future): a renewal (fetch, judge, write) ended


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
        clock: Callable[[], dt.datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.grant = grant
        self.uploader = uploader
        self.journal = journal
        self.notifier = notifier or Notifier(None)
        self.stopping = stopping or threading.Event()
        self.clock = clock
        self.monotonic = monotonic
        self.root = settings.watch_dir
        self.ledger = Ledger(settings.settle_seconds)
        self.delivery = Delivery(settings, uploader, journal, monotonic=monotonic)
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._workers = ThreadPoolExecutor(settings.concurrency, "upload")
        self._scanner = ThreadPoolExecutor(1, "scan")
        self._watcher: Optional[Watcher] = None
        self._root_id: Optional[tuple[int, ...]] = None
        self._last_done: dict[str, float] = {}  # chore -> when main_loop last did it (monotonic)
        self._grant_id = FileVersion.at(settings.grant_file, follow=True)
        self._ready = False
        self._renewer = ThreadPoolExecutor(1, "renew")
        self._renew_session = new_session(1, settings.ca_bundle)
        self._renewing = False
        self._next_renewal = 0.0
        self._said: set[str] = set()  # renewal and expiry lines already logged
        self._running: set[Future[Outcome]] = set()  # uploads submitted and not yet ended
        self._last_success = 0.0  # Unix time a file was last stored
        self._started_at = time.time()
        self._last_error: Optional[dict[str, Any]] = None  # {"at", "message"}: status shows it
        self._last_snapshot: Optional[dict[str, Any]] = None
        self._snapshot_at = -math.inf
        path = settings.metrics_file
        self._metrics_file = MetricsFile(path) if path is not None else None

    # The lifecycle, as a table of contents.
    def run(self) -> int:
        self.start()
        try:
            self._scan_later(None)  # READY=1 once this start-up scan is done
            code = self.main_loop()
        finally:
            self.notifier.stopping("stopping")
            if self._watcher is not None:
                self._watcher.stop()
            self.drain()
        if code == ExitCode.EXPIRED:  # counted once the uploads in flight have ended
            if not len(self.ledger):  # a grant that ran its course: not a failure of the unit
                logger.info("grant expired with every file uploaded: stopping (exit 0)")
                return ExitCode.OK
            logger.error(
                "grant expired: %d file(s) not uploaded, left in %s; issue a new grant",
                len(self.ledger),
                self.root,
            )
        return code

    def start(self) -> None:
        """Watch before scanning, so no file can fall between the scan and the first event."""
        if self.root.is_symlink():  # the agent follows no link, the watch dir's own included
            raise ConfigError(
                f"watch dir {self.root} is a symlink, which the agent never follows: set "
                f"POSTBOX_WATCH_DIR to the folder itself ({self.root.resolve()})"
            )
        self.uploader.probe(self.grant)  # the store's Date, before expiry is judged (clock.py)
        if renewal.due(self.grant, self.clock()):
            try:  # at once, before the first upload: the grant may have expired long ago
                self._take_renewed(self._renew(self.grant))
            except RenewalError as exc:
                self._not_renewed(exc)
        if not self._renewable():
            self.grant.ensure_alive(self.clock())
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"watch dir {self.root} cannot be created ({exc.strerror}): create it or set "
                "POSTBOX_WATCH_DIR"
            ) from None
        self._watch()
        logger.info(
            "watching %s: uploads to %s %s, grant expires in %s",
            self.root,
            self.grant.endpoint,
            describe_keys(self.grant, self.settings.key_prefix),
            format_left(self._seconds_to_expiry()),
        )

    def main_loop(self) -> int:
        """Apply messages as they come, fire settle timers, dispatch; housekeeping between."""
        start = next_chores = self.monotonic()
        # The first status snapshot at once (status shows a starting agent too), the rest later.
        self._last_done = {"scan": start, "record": start, "status": start}
        while not self.stopping.is_set():
            now = self.monotonic()
            self.notifier.watchdog(now)  # only this loop pings: if it hangs, systemd restarts
            if now >= next_chores:
                if self._expired_for_good():
                    return self.expired()
                self._housekeeping(now)
                next_chores = now + HOUSEKEEPING_SECONDS
            self._wait(min(next_chores, self.ledger.next_timer() or math.inf))
            now = self.monotonic()
            for path in self.ledger.ripe(now):
                if not self.ledger.looked(path, now, FileVersion.at(self._path(path))):
                    logger.info("skipped %s: deleted before it was sent", printable(path))
            self._dispatch()
        logger.info(
            "stopping: %d upload(s) in flight will finish", self.ledger.count(State.SENDING)
        )
        return ExitCode.OK

    def _expired_for_good(self) -> bool:
        """The grant expired and no renewal URL can bring the next one."""
        if self._seconds_to_expiry() > 0:
            return False
        if not self._renewable():
            return True
        self._say(
            f"grant expired at {self.grant.expiration:%Y-%m-%d %H:%M:%S} UTC: no upload starts "
            "until the next grant comes from its renewal URL",
            logging.WARNING,
        )
        return False

    def _housekeeping(self, now: float) -> None:
        """The grant file, the renewal, the watch dir; and, each at its own pace, the rescan, the
        journal's backlog, status.json, STATUS= and the metrics file."""
        self._check_grant()
        self._check_renewal(now)
        self._check_root()
        rescan = self.settings.rescan_seconds
        if rescan and self._due("scan", rescan, now):
            self._apply((Change.RESCAN, self.root), now)
        if self.ledger.count(State.UNRECORDED) and self._due("record", RECORD_RETRY_SECONDS, now):
            self._record_again(now)
        if self._due("snapshot", SNAPSHOT_EVERY_SECONDS, now):
            self._write_snapshot(now)
        if self._due("status", STATUS_EVERY_SECONDS, now):
            self.notifier.status(self.describe())
            self._write_metrics()

    def _due(self, chore: str, every: float, now: float) -> bool:
        """Whether `chore` is due (last done `every` seconds ago or more); if so, it is done now."""
        if now - self._last_done.get(chore, -math.inf) < every:
            return False
        self._last_done[chore] = now
        return True

    def expired(self) -> int:
        """No upload starts now. One under way goes on, and the store may still accept it (it
        began before the expiry): what was stored and what was not is said once it has ended."""
        self.stopping.set()
        logger.error(
            "grant expired at %s UTC: no upload starts now; %d under way go on, the store may "
            "still accept them",
            f"{self.grant.expiration:%Y-%m-%d %H:%M:%S}",
            self.ledger.count(State.SENDING),
        )
        return ExitCode.EXPIRED

    def drain(self) -> None:
        """Let in-flight uploads finish (systemd's stop timeout bounds this), then close."""
        self.stopping.set()
        self._scanner.shutdown(wait=True)  # a walk ends early once `stopping` is set
        self._renewer.shutdown(wait=True)  # one fetch, bounded by the connect timeout
        self._workers.shutdown(wait=False)
        while self._running:
            # systemd's TimeoutStopSec would kill a long upload mid-body: ask for more time as
            # long as uploads are under way (each is bounded by the read timeout).
            sending = len(self._running)
            self.notifier.watchdog(self.monotonic())  # in case systemd still watches
            self.notifier.extend_timeout(
                3 * DRAIN_REPORT_SECONDS, f"stopping: {sending} upload(s) finishing"
            )
            self._drain_wait(DRAIN_REPORT_SECONDS)
        self._workers.shutdown(wait=True)
        while True:  # the outcomes of the last uploads
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message[0] == _Inbox.DONE:
                self._apply(message, self.monotonic())
        self.journal.close()
        self._write_metrics()
        self._write_snapshot(self.monotonic(), stopped=True)
        logger.info("stopped: %d file(s) uploaded in this run", self.ledger.sent)

    def describe(self) -> str:
        waiting = self.ledger.count(*PENDING)
        refused = self.ledger.count(State.REFUSED, State.TOO_LONG, State.UNREADABLE)
        return (
            f"{self.ledger.sent} uploaded, {self.ledger.count(State.SENDING)} sending, "
            f"{waiting} waiting, {refused} refused, {self.ledger.count(State.FAILED)} failed; "
            f"grant expires in {format_left(self._seconds_to_expiry())}"
        )

    def metrics(self) -> list[Metric]:
        """What POSTBOX_METRICS_FILE holds (agent/metrics.py); every count since this start."""
        not_sent: dict[tuple[tuple[str, str], ...], float] = {
            (("result", str(result.value)),): float(self.ledger.not_sent[result.value])
            for result in (Result.REFUSED, Result.FAILED, Result.TOO_LONG, Result.UNREADABLE)
        }
        return [
            Metric.one("postbox_uploaded_files_total", "counter", "Files the store stored",
                       self.ledger.sent),
            Metric.one("postbox_uploaded_bytes_total", "counter", "Bytes of the files stored",
                       self.ledger.sent_bytes),
            Metric("postbox_not_uploaded_files_total", "counter",
                   "Files refused or failed, by result (each time a file is)", not_sent),
            Metric.one("postbox_retries_total", "counter",
                       "Upload attempts made again after a transient fault",
                       self.uploader.retries),
            Metric.one("postbox_pending_files", "gauge", "Files waiting to be sent",
                       self.ledger.count(*PENDING)),
            Metric.one("postbox_pending_bytes", "gauge",
                       "Bytes of the waiting files whose size is known",
                       self.ledger.size_of(*PENDING)),
            Metric.one("postbox_waiting_for_grant_files", "gauge",
                       "Files refused, failed or too long under this grant: tried again under "
                       "the next", self.ledger.count(*WAITING_FOR_GRANT)),
            Metric.one("postbox_inflight_files", "gauge", "Uploads under way",
                       self.ledger.count(State.SENDING)),
            Metric.one("postbox_inflight_bytes", "gauge",
                       "Bytes of the uploads under way whose size is known",
                       self.ledger.size_of(State.SENDING)),
            Metric.one("postbox_grant_seconds_left", "gauge",
                       "Seconds until the grant expires, by the store's clock",
                       round(self._seconds_to_expiry(), 1)),
            Metric.one("postbox_last_success_timestamp_seconds", "gauge",
                       "When a file was last stored (Unix time; 0: none since start)",
                       self._last_success),
        ]  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """What `postbox-agent status` shows of this run (agent/status.py reads it)."""
        waiting = self.ledger.waiting(STATUS_WAITING_LIMIT)
        return {
            "pid": os.getpid(),
            "started_at": self._started_at,
            "grant": {
                "expires": f"{self.grant.expiration:%Y-%m-%dT%H:%M:%SZ}",
                "store": self.grant.endpoint,
                "keys": describe_keys(self.grant, self.settings.key_prefix),
            },
            "counts": self.ledger.counts(),
            "sending": [
                {"key": key, "bytes": progress.size, "done": progress.done}
                for key, progress in list(self.uploader.sending.items())
            ],
            "waiting": [{"path": p, "state": st.value, "reason": why} for p, st, why in waiting],
            "last_error": self._last_error,
        }

    def _write_snapshot(self, now: float, *, stopped: bool = False) -> None:
        """STATE_DIR/status.json when what it says changed, and every STATUS_HEARTBEAT_SECONDS
        (so a reader can tell a live agent from a dead one); written beside it and renamed."""
        body = self.snapshot()
        fresh = now - self._snapshot_at < STATUS_HEARTBEAT_SECONDS
        if body == self._last_snapshot and fresh and not stopped:
            return
        self._last_snapshot, self._snapshot_at = body, now
        document = {**body, "written_at": time.time(), "stopped": stopped}
        path = self.settings.status_path
        try:  # not synced: it is rewritten within seconds, and a crash makes it stale anyway
            replace_file(path, json.dumps(document).encode(), 0o600, durable=False)
        except OSError as exc:
            self._say(f"cannot write {path} ({exc.strerror})", logging.WARNING)

    def _write_metrics(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(self.metrics())

    def _drain_wait(self, seconds: float) -> None:
        """Up to `seconds`, applying the outcomes of uploads as they end."""
        try:
            message = self._inbox.get(timeout=seconds)
        except queue.Empty:
            return
        if message[0] == _Inbox.DONE:
            self._apply(message, self.monotonic())

    # The dispatcher.
    def _wait(self, until: float) -> None:
        """Sleep until a message comes or `until`; then apply every message waiting."""
        timeout = max(0.0, until - self.monotonic())
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        now = self.monotonic()
        while True:
            self._apply(message, now)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, message: tuple[Any, ...], now: float) -> None:
        kind = message[0]
        if kind == _Inbox.DONE:
            self._landed(message[1], message[2], now)
        elif kind == _Inbox.FOUND:
            for relpath, version in message[1]:
                self.ledger.found(relpath, now, version)
        elif kind == _Inbox.SCANNED:
            self._scanned(message[1])
        elif kind == _Inbox.POLL:
            if self._watcher is not None:
                self._watcher.fall_back_to_polling(message[1])
        elif kind == _Inbox.BROKEN:  # a bug: end the daemon through main's logging, never hang
            raise message[2]
        elif kind == _Inbox.RENEWED:
            self._renewed(message[1])
        else:
            self._event(message[0], message[1], now)

    def _event(self, kind: Change, path: Path, now: float) -> None:
        relpath = self._relpath(path)
        if relpath is None:
            if kind is Change.RESCAN and path == self.root:
                self._scan_later(None)
            return  # not under the watch dir (an overflow of a watcher since replaced)
        if is_temporary(relpath):
            return
        settles = {
            Change.CLOSED: self.ledger.closed,
            Change.WRITTEN: self.ledger.written,
            Change.CREATED: self.ledger.found,
            Change.ATTRIB: self.ledger.attrib,
        }.get(kind)
        if settles is not None:
            settles(relpath, now)
        elif kind is Change.DIRECTORY:
            self._scan_later(relpath)
        elif kind is Change.MOVED_AWAY:
            self.ledger.gone(relpath)
        elif kind is Change.DELETED and self.ledger.gone(relpath):
            logger.info("skipped %s: deleted before it was sent", printable(relpath))

    def _dispatch(self) -> None:
        """Every due file to a free worker, with the grant and key it goes under."""
        if self.ledger.count(State.UNRECORDED):
            return  # the journal cannot record: no new upload until it can
        if self.uploader.seconds_left(self.grant) <= 0:
            return  # within the expiry margin: no upload could finish in time
        sending = self.ledger.count(State.SENDING)
        for relpath in self.ledger.take(self.settings.concurrency - sending):
            path = self._path(relpath)
            try:
                key = self.grant.key_for(PurePosixPath(relpath), self.settings.key_prefix)
            except RejectedUploadError as exc:
                self._report(relpath, self._refuse_name(path, relpath, exc), self.monotonic())
                continue
            job = Job(
                path,
                relpath,
                key,
                self.grant,
                self.ledger.rate,
                busy=sending > 0,
                close_seen=self.ledger.close_seen(relpath),
            )
            sending += 1
            future = self._workers.submit(self.delivery.deliver, job)
            self._running.add(future)
            future.add_done_callback(functools.partial(self._done, job))

    def _done(self, job: Job, future: Future[Outcome]) -> None:
        """Runs on the worker as its future completes: the outcome goes to the dispatcher."""
        self._running.discard(future)  # first: drain waits on the inbox while any runs
        self._inbox.put((_Inbox.DONE, job, future))

    def _landed(self, job: Job, future: Future[Outcome], now: float) -> None:
        error = future.exception()
        if error is not None:  # a bug in one delivery must not end the daemon silently
            logger.error("upload of %s failed unexpectedly", printable(job.key))
            raise error  # main logs its traceback
        self._report(job.relpath, future.result(), now)

    def _report(self, relpath: str, outcome: Outcome, now: float) -> None:
        if outcome.result is Result.SENT:
            self._last_success = self.clock().timestamp()
        paused = self.ledger.count(State.UNRECORDED) > 0
        first = self.ledger.report(relpath, outcome, now)
        if outcome.result is Result.UNRECORDED:
            first = not paused
        if first and outcome.reason:
            logger.log(outcome.level, "%s", outcome.reason)
        if outcome.reason and outcome.level >= logging.ERROR:
            self._last_error = {"at": self.clock().timestamp(), "message": outcome.reason}

    def _refuse_name(self, path: Path, relpath: str, exc: RejectedUploadError) -> Outcome:
        version = FileVersion.at(path)
        if version is None:
            return Outcome(Result.GONE)
        return Outcome(
            Result.REFUSED,
            version,
            self.grant.identity,
            reason=f"refused {printable(relpath)}: {exc}; left in place",
        )

    def _record_again(self, now: float) -> None:
        waiting = self.ledger.unrecorded()
        for n, (relpath, item) in enumerate(waiting):
            assert isinstance(item, Unrecorded)
            try:
                self.delivery.keep(item.job, item.receipt)
            except JournalError:
                return
            self.ledger.report(relpath, Outcome(Result.SENT, item.receipt.version), now)
            if n == len(waiting) - 1:
                logger.info("the journal records again (%d recorded): uploads resume", len(waiting))

    # Scans, on the scanner thread.
    def _scan_later(self, folder: Optional[str]) -> None:
        """Walk `folder` (None: the whole watch dir) on the scanner thread."""
        if folder is None and self._ready:  # a full rescan: unreadable files are tried again
            now = self.monotonic()
            for relpath in self.ledger.paths(State.UNREADABLE):
                self.ledger.attrib(relpath, now)
        self._scanner.submit(self.scan, folder).add_done_callback(self._scan_done)

    def _scan_done(self, future: Future[None]) -> None:
        error = future.exception()
        if error is not None:
            self._inbox.put((_Inbox.BROKEN, "scan", error))

    def scan(self, folder: Optional[str] = None) -> None:
        """Put every file under `folder` (None: all) that the journal lacks on the inbox.

        One folder at a time, with one journal query per folder; files already sent are not
        held. A walk of the whole watch dir also checks that inotify watches every folder."""
        queued = seen = folders = 0
        for _, files in scan(self.root, folder or "", self.stopping.is_set):
            folders += 1
            seen += len(files)
            if not files:
                continue
            # A name that is not UTF-8 is never a journal row: it goes on to be refused by name.
            sent = self.journal.sent_versions([relpath for relpath, _ in files if is_utf8(relpath)])
            found = [
                (relpath, version)
                for relpath, st in files
                if sent.get(relpath) != (version := FileVersion.of(st))
            ]
            if found:
                queued += len(found)
                self._inbox.put((_Inbox.FOUND, found))
        if folder is None and not self.stopping.is_set():
            self._check_watches(folders)
            if not self._ready:
                logger.info(
                    "start-up scan: %d file(s) to send, %d already sent", queued, seen - queued
                )
        self._inbox.put((_Inbox.SCANNED, folder))

    def _scanned(self, folder: Optional[str]) -> None:
        if folder is None and not self._ready:
            self._ready = True
            self.notifier.ready(self.describe())

    def _check_watches(self, folders: int) -> None:
        """Poll instead when inotify could not watch every folder (watchdog skips them quietly).

        Folders may appear between the walk and the count; one short look again tells a limit
        from that race."""
        watcher = self._watcher
        if watcher is None or watcher.polling:
            return
        for _ in range(3):
            watches = inotify_watches()
            if watches >= folders:
                return
            time.sleep(0.2)
        self._inbox.put((_Inbox.POLL, f"{watches} of {folders} folders watched"))

    # What can change under the agent.
    def _watch(self) -> None:
        self._root_id = folder_identity(self.root)
        self._watcher = Watcher(self.root, self._inbox.put)
        self._watcher.start()

    def _check_grant(self) -> None:
        """A grant file replaced on disk is taken as soon as it is valid (grant rotation)."""
        if self._renewing:
            return  # the renewal writes the file and takes the grant itself
        seen = FileVersion.at(self.settings.grant_file, follow=True)
        if seen == self._grant_id:
            return
        self._grant_id = seen
        try:
            grant = load_grant(self.settings.grant_file)
            grant.ensure_alive(self.clock())
        except ConfigError as exc:
            logger.error("new grant not taken, the current one stays: %s", exc.message)
            return
        self._take(grant, "new")

    def _renewable(self) -> bool:
        """The grant names a renewal URL that has not expired itself."""
        url = self.grant.renew_url
        if url is None:
            return False
        until = presigned_expiry(url)
        return until is None or until > self.clock()

    def _check_renewal(self, now: float) -> None:
        """Ask for the next grant once it is due, every renew_every_seconds, on its own thread."""
        if self._renewing or now < self._next_renewal or not renewal.due(self.grant, self.clock()):
            return
        self._renewing, self._next_renewal = True, now + self.settings.renew_every_seconds
        future = self._renewer.submit(self._renew, self.grant)
        future.add_done_callback(lambda done: self._inbox.put((_Inbox.RENEWED, done)))

    def _renew(self, grant: AnyGrant) -> AnyGrant:
        """Fetch, judge and write the next grant (on the renew thread, or at start)."""
        assert grant.renew_url is not None
        document = renewal.fetch(
            self._renew_session, grant.renew_url, self.settings.connect_timeout
        )
        new = renewal.judge(
            grant, document, self.settings.grant_file, self.settings.renew_may_widen
        )
        try:
            renewal.write(self.settings.grant_file, document)
        except OSError as exc:
            raise RenewalError(
                f"the next grant cannot be written to {self.settings.grant_file} "
                f"({exc.strerror}): make its folder writable by the agent's user"
            ) from None
        return new

    def _renewed(self, future: Future[AnyGrant]) -> None:
        self._renewing = False
        error = future.exception()
        if isinstance(error, RenewalError):
            self._not_renewed(error)
        elif error is not None:
            raise error
        else:
            self._take_renewed(future.result())

    def _not_renewed(self, why: RenewalError) -> None:
        level = logging.WARNING if why.refused else logging.INFO
        self._say(f"next grant not taken, the current one stays: {why}", level)

    def _take_renewed(self, grant: AnyGrant) -> None:
        # The renewal wrote the grant file itself: not a rotation for _check_grant to take again.
        self._grant_id = FileVersion.at(self.settings.grant_file, follow=True)
        self._take(grant, "renewed")

    def _take(self, grant: AnyGrant, how: str) -> None:
        """Upload under `grant` from now on; what waited for a new grant is tried again."""
        self.grant = grant
        self._said.clear()
        waiting = self.ledger.retry_waiting(self.monotonic())
        logger.info(
            "%s grant taken: uploads to %s %s, expires in %s; %d waiting file(s) tried again",
            how,
            self.grant.endpoint,
            describe_keys(self.grant, self.settings.key_prefix),
            format_left(self._seconds_to_expiry()),
            len(waiting),
        )

    def _say(self, line: str, level: int = logging.INFO) -> None:
        """Log a line once (until the grant changes): a retried renewal does not flood the log."""
        if line not in self._said:
            self._said.add(line)
            logger.log(level, "%s", line)

    def _check_root(self) -> None:
        """The watch dir removed (its watch dies with it) or replaced: follow the new one."""
        seen = folder_identity(self.root)
        watcher = self._watcher
        if seen == self._root_id and (seen is None or (watcher is not None and watcher.alive())):
            return
        if watcher is not None:
            watcher.stop()
            self._watcher = None
        if seen is None:
            logger.warning(
                "watch dir %s was removed or replaced by what is not a folder (a symlink is never "
                "followed): waiting for a folder there",
                self.root,
            )
            self._root_id = None
            return
        self._watch()
        logger.warning("watch dir %s was created again: watching it", self.root)
        self._scan_later(None)

    # Small things.
    def _seconds_to_expiry(self) -> float:
        return self.grant.seconds_left(self.clock())

    def _relpath(self, path: Path) -> Optional[str]:
        """`path` relative to the watch dir, `/`-separated; None if not under it (or it)."""
        text, root = os.fspath(path), os.fspath(self.root)
        if not text.startswith(root + "/"):
            return None
        return text[len(root) + 1 :]

    def _path(self, relpath: str) -> Path:
        return self.root / relpath
