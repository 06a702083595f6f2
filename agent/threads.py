"""The daemon's parts that act, built once from its settings (`Parts.build`): the grant kept
(agent/keeper.py), the watch dir followed (agent/watcher.py), the walks (agent/scanner.py),
the wait socket (agent/asking.py), the uploads under way (agent/workers.py), the preemption
watch (agent/notice.py) and the reports (agent/status.py); and the chores the dispatcher does
between messages, each at its own pace (`Upkeep`). The shell (agent/service.py) starts them,
feeds the core (agent/core.py) what they say and stops them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

from agent.actions import Landed, Look, Looked, Report, Rescan
from agent.asking import Asked, WaitSocket
from agent.core import Core
from agent.delivery import Delivery
from agent.errors import JournalError
from agent.grant import AnyGrant
from agent.inbox import Put
from agent.journal import Journal
from agent.keeper import GrantKeeper
from agent.messages import Change, Changed
from agent.notice import PreemptionWatch, cloud_of
from agent.notify import Notifier
from agent.outcome import Outcome, Result
from agent.rules import Once
from agent.scanner import Room, Scanner
from agent.settings import Settings
from agent.status import Reports
from agent.uploader import Uploader
from agent.versions import FileVersion
from agent.watcher import WatchDir
from agent.workers import Workers

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 0.5  # the grant, the watch dir followed, an expiry for good


@dataclass
class Parts:
    delivery: Delivery
    grants: GrantKeeper
    watch_dir: WatchDir
    scanner: Scanner
    reports: Reports
    wait_socket: WaitSocket
    workers: Workers
    preemption: Optional[PreemptionWatch]

    @classmethod
    def build(
        cls,
        settings: Settings,
        grant: AnyGrant,
        uploader: Uploader,
        journal: Journal,
        *,
        core: Core,
        room: Room,
        put: Put,
        stopping: threading.Event,
        monotonic: Callable[[], float],
        taken: Callable[[], int],
        store_now: Callable[[], float],
    ) -> Parts:
        """Each part with what it shares: the inbox's `put`, `stopping`, the core's stop (the
        workers ask it before each upload they begin) and the walks' room."""
        stop = core.stop
        delivery = Delivery(settings, uploader, journal, monotonic=monotonic,
                            may_start=lambda: stop.may_start(monotonic()))  # fmt: skip
        grants = GrantKeeper(settings, grant, uploader.deadline, put, taken=taken)
        watch_dir = WatchDir(settings.watch_dir, put)
        identity = lambda: grants.grant.identity  # noqa: E731  (refusals under it are kept)
        filters = core.excluded.filters
        scanner = Scanner(watch_dir, journal, put, stopping, identity, room=room,
                          excluded=filters.excluded if filters else lambda relpath: "")  # fmt: skip
        cloud = cloud_of(settings.preemption_watch, settings.instance_data)
        return cls(
            delivery,
            grants,
            watch_dir,
            scanner,
            Reports(settings, core, uploader.inflight, grants, scanner.unreadable),
            WaitSocket(settings.socket_path, settings.watch_dir, journal, put),
            Workers(settings.concurrency, settings.key_prefix, delivery, put),
            # its times by the store's clock
            PreemptionWatch(cloud, settings.metadata_url, put, stopping, clock=store_now)
            if cloud
            else None,
        )

    def look(self, a: Look) -> Looked:
        """What the files the core asks about are now (None: gone)."""
        root = self.watch_dir.root
        return Looked({path: FileVersion.at(root / path) for path in a.paths}, a.why)

    def rewatched(self, now: float) -> Rescan:
        """Folders a walk listed are not watched (which, unknown): watch anew, walk again."""
        self.watch_dir.rewatch(now)
        return Rescan()

    def relook(self, relpath: str, now: float) -> Union[Changed, Rescan, None]:
        """A folder's mode or owner changed: one the agent could not list may be readable now.
        It is watched anew (watchdog passed over it), then walked (or, if the watch failed, the
        whole watch dir). Any other folder's change needs nothing (None)."""
        if relpath not in self.scanner.unreadable:
            return None
        if self.watch_dir.rewatch(now):
            return Changed(Change.DIRECTORY, relpath)
        return Rescan()

    def answer(self, asked: Asked, held: dict[str, tuple[str, str]]) -> None:
        """Answer `wait` (agent/asking.py): the states the core holds (`held`), those of files
        in folders the walks could not list, and what tells an expiry apart."""
        left = self.grants.seconds_left()
        standing = {"grant_left": left, "expired": left <= 0 and not self.grants.renewable()}
        if self.scanner.unreadable:  # in a folder it cannot list: unreadable, and why
            unseen = [path for path in asked.paths if path not in held]
            held.update(self.scanner.unreadable.states_of(unseen))
        asked.answer.set_result((standing, held))


class Upkeep:
    """What the dispatcher looks after between messages, on the core's word or its own round:
    the grant, the watch dir followed, the journal's damage and backlog, and the reports. What
    the core must hear of it goes through `tell`."""

    def __init__(
        self, core: Core, parts: Parts, *, notifier: Notifier, tell: Callable[[object], object]
    ) -> None:
        self.core, self.parts, self.notifier, self._tell = core, parts, notifier, tell
        self._said = Once()  # "damaged": the journal's damage

    def expired(self, now: float) -> bool:
        """A round (HOUSEKEEPING_SECONDS apart): True if the grant expired for good; otherwise
        a grant file replaced is taken, and a watch dir made anew followed (then walked)."""
        parts = self.parts
        if parts.grants.expired_for_good():
            return True
        parts.grants.check(now)
        if parts.watch_dir.follow(now):
            self._tell(Rescan())
        return False

    def report(self, a: Report, now: float) -> None:
        if a.status:
            self.notifier.status(self.parts.reports.line())
            self.parts.reports.write_metrics()
        else:
            self.parts.reports.write_status(now)

    def say_damaged(self) -> bool:
        """The journal is damaged: True, and its one line (the file, the way out) once."""
        damaged = self.parts.delivery.journal.damaged
        if damaged and self._said.first("damaged"):
            logger.error("%s", damaged)
        return damaged is not None

    def record_again(self) -> None:
        """Record what the store took while the journal could not: uploads resume once all is."""
        waiting = self.core.ledger.unrecorded()
        for relpath, item in waiting:
            try:
                self.parts.delivery.record_then_release(item)
            except JournalError:
                return
            self._tell(Landed(relpath, Outcome(Result.SENT, item.receipt.version)))
        logger.info("the journal records again (%d recorded): uploads resume", len(waiting))
