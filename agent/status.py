"""What the agent says it is doing: written by the daemon, read by `postbox-agent status`.

The daemon's side (`Reports`): the STATUS= line it sends systemd (`status_line`), and
`STATE_DIR/status.json` (`StatusFile`, from `snapshot`), which it writes when anything changed,
looking every 2 s, and every 30 s; the metrics file (agent/metrics.py). Each is built from the
ledger, the uploads under way and this run's own facts (`Run`).

`postbox-agent status` reads what is written here: agent/readout.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agent.access import STATUS_HEARTBEAT_SECONDS
from agent.body import InFlight
from agent.clock import format_left
from agent.core import Core
from agent.files import replace_file
from agent.grant import AnyGrant, describe_keys
from agent.keeper import GrantKeeper
from agent.ledger import Ledger
from agent.messages import Notice
from agent.metrics import MetricsFile, Renewal, collect
from agent.outcome import Outcome, Result
from agent.settings import Settings
from agent.shown import printable
from agent.signed import presigned_expiry
from agent.states import PENDING, WAITING, State
from agent.unlisted import Unreadable

logger = logging.getLogger(__name__)

STATUS_WAITING_LIMIT = 100  # files listed as waiting (refused, failed...); the counts say all
_REFUSED = (State.REFUSED, State.TOO_LONG, State.UNREADABLE)  # counted as refused in STATUS=
NONE_EXCLUDED = {"files": 0, "at_least": False, "include": "", "exclude": ""}


@dataclass
class Run:
    """What this run of the daemon has seen that the ledger does not count."""

    started_at: float = field(default_factory=time.time)
    last_success: float = 0.0  # Unix time a file was last stored (0: none yet)
    last_error: Optional[dict[str, Any]] = None  # {"at", "message"}: status shows it

    def note(self, outcome: Outcome, at: float) -> None:
        """A worker's outcome, at Unix time `at`."""
        if outcome.result is Result.SENT:
            self.last_success = at
        if outcome.reason and outcome.level >= logging.ERROR:
            self.last_error = {"at": at, "message": outcome.reason}


def status_line(ledger: Ledger, seconds_left: float) -> str:
    """systemd's STATUS= line: the counts, and the grant's time left."""
    return (
        f"{ledger.sent} uploaded, {ledger.count(State.SENDING)} sending, "
        f"{ledger.count(*PENDING)} waiting, {ledger.count(*_REFUSED)} refused, "
        f"{ledger.count(State.FAILED)} failed; grant expires in {format_left(seconds_left)}"
    )


# What a stop can leave unsent: on its way, and waiting (refused, failed, too long, unreadable:
# as lost as the others on a machine that goes away). Not UNRECORDED: the store has those.
LEFT = (State.WRITING, State.SETTLING, State.DUE, State.SENDING, *WAITING)
LEFT_NAMED = 20  # files named in the line that says what is left (status.json counts them all)


def left_counts(counts: dict[str, int]) -> dict[str, int]:
    """The files a stop leaves unsent, by state, from the counts by state (`Ledger.counts`);
    the states it has none of left out."""
    return {state.value: n for state in LEFT if (n := counts.get(state.value, 0))}


def left(
    ledger: Ledger, watch_dir: Path, *, unheld: bool = False, unlisted: Sequence[str] = ()
) -> str:
    """What a stop (or a preemption's deadline) leaves in the watch dir unsent, for its line:
    ', none left', or how many by state, where, and the first LEFT_NAMED names. `unheld`: files
    the agent had no room to hold were not walked yet (agent/scanner.py), and are not counted;
    `unlisted`: folders the agent cannot list (agent/unlisted.py), whose files it cannot count."""
    counts = left_counts(ledger.counts())
    beyond = f"; more in {watch_dir} not yet walked (more than the agent holds at once)"
    beyond = beyond if unheld else ""
    if unlisted:
        shown = ", ".join(printable(folder or ".") for folder in sorted(unlisted)[:LEFT_NAMED])
        more = f" and {len(unlisted) - LEFT_NAMED} more" if len(unlisted) > LEFT_NAMED else ""
        beyond += (
            f"; {len(unlisted)} folder(s) the agent cannot list, their files not sent: "
            f"{shown}{more}"
        )
    if not counts:
        return beyond or ", none left"
    said = ", ".join(f"{n} {state}" for state, n in counts.items())
    names = ledger.paths(*LEFT)
    shown = ", ".join(printable(n) for n in names[:LEFT_NAMED])
    more = f" and {len(names) - LEFT_NAMED} more" if len(names) > LEFT_NAMED else ""
    return f", {sum(counts.values())} left in {watch_dir} ({said}): {shown}{more}{beyond}"


def snapshot(
    ledger: Ledger,
    run: Run,
    inflight: InFlight,
    grant: AnyGrant,
    key_prefix: str,
    *,
    notice: Optional[Notice] = None,
    unreadable: Optional[dict[str, str]] = None,
    bandwidth_limit: Optional[int] = None,
    excluded: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """What `postbox-agent status` shows of this run (without the time it is written);
    `unreadable`: the folders the agent cannot list, and why (agent/scanner.py);
    `bandwidth_limit`: bytes a second every upload shares (None: no limit); `excluded`: the
    files POSTBOX_INCLUDE and POSTBOX_EXCLUDE kept back (`excluded_of`)."""
    waiting = ledger.waiting(STATUS_WAITING_LIMIT)
    folders = sorted((unreadable or {}).items())[:STATUS_WAITING_LIMIT]
    return {
        "notice": None if notice is None else dataclasses.asdict(notice),
        "pid": os.getpid(),
        "started_at": run.started_at,
        "grant": {
            "expires": f"{grant.expiration:%Y-%m-%dT%H:%M:%SZ}",
            "store": grant.endpoint,
            "keys": describe_keys(grant, key_prefix),
        },
        "counts": ledger.counts(),
        "bandwidth_limit": bandwidth_limit,
        "sending": [
            {"key": key, "bytes": progress.size, "done": progress.done}
            for key, progress in list(inflight.sending.items())
        ],
        "in_parts": [
            {"key": key, **dataclasses.asdict(so_far)}
            for key, so_far in list(inflight.parts.items())
        ],
        "waiting": [{"path": p, "state": st.value, "reason": why} for p, st, why in waiting],
        "unreadable_folders": [{"path": p, "reason": why} for p, why in folders],
        "last_error": run.last_error,
        "excluded": excluded or NONE_EXCLUDED,
    }


def excluded_of(core: Core) -> dict[str, Any]:
    """The files the filters kept back in this run, each once (`at_least`: more than the
    agent counts, 10,000), and the filters."""
    filters, kept_back = core.excluded.filters, core.excluded
    return {"files": len(kept_back), "at_least": kept_back.more,
            "include": filters.include if filters else "",
            "exclude": filters.exclude if filters else ""}  # fmt: skip


class StatusFile:
    """STATE_DIR/status.json, written when what it says changed and every
    STATUS_HEARTBEAT_SECONDS (so a reader can tell a live agent from a dead one), beside it and
    renamed; a folder it cannot write is said once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: Optional[dict[str, Any]] = None
        self._at = -math.inf  # when it was last written (monotonic)
        self._failing = False

    def write(
        self, body: dict[str, Any], now: float, *, stopped: bool = False, grant_left: float = 0.0
    ) -> None:
        """`grant_left`: at a stop, the grant's seconds left (by the store's clock), so that a
        `wait` started after the agent stopped can tell an expiry from a restart."""
        fresh = now - self._at < STATUS_HEARTBEAT_SECONDS
        if body == self._last and fresh and not stopped:
            return
        self._last, self._at = body, now
        document = {**body, "written_at": time.time(), "stopped": stopped}
        if stopped:  # what it left unsent, by state (`status` says so), and the grant's time
            document["left"] = left_counts(body["counts"])
            document["grant_left"] = grant_left
        try:  # not synced: it is rewritten within seconds, and a crash makes it stale anyway
            replace_file(self.path, json.dumps(document).encode(), 0o640, durable=False)
        except OSError as exc:
            if not self._failing:
                logger.warning("cannot write %s (%s)", self.path, exc.strerror)
            self._failing = True
            return
        self._failing = False


class Reports:
    """Everything the daemon reports beside its log, built from the ledger, the uploads under
    way, the grant in force and this run's facts: status.json and, where set, the metrics file.
    Called on the dispatcher, which owns the ledger."""

    def __init__(
        self,
        settings: Settings,
        core: Core,
        inflight: InFlight,
        grants: GrantKeeper,
        unreadable: Optional[Unreadable] = None,
    ) -> None:
        self.key_prefix = settings.key_prefix
        self.bandwidth_limit = settings.bandwidth_limit
        self.core, self.ledger = core, core.ledger
        self.inflight, self.grants = inflight, grants
        self.unreadable = unreadable  # the folders the walks could not list
        self.run = Run()
        self.status_file = StatusFile(settings.status_path)
        path = settings.metrics_file
        self.metrics_file = MetricsFile(path) if path is not None else None

    def line(self) -> str:
        """systemd's STATUS= line."""
        return status_line(self.ledger, self.grants.seconds_left())

    def write_status(self, now: float, *, stopped: bool = False) -> None:
        grant, prefix = self.grants.grant, self.key_prefix
        folders = None if self.unreadable is None else self.unreadable.folders()
        body = snapshot(
            self.ledger,
            self.run,
            self.inflight,
            grant,
            prefix,
            notice=self.core.notice,  # the cloud takes the machine back
            unreadable=folders,
            bandwidth_limit=self.bandwidth_limit,
            excluded=excluded_of(self.core),
        )
        left = self.grants.seconds_left() if stopped else 0.0
        self.status_file.write(body, now, stopped=stopped, grant_left=left)

    def write_metrics(self, *, stopped: bool = False) -> None:
        if self.metrics_file is None:
            return
        grants = self.grants
        stalled = grants.deadline.to_start(grants.grant) <= 0  # no upload may start under it
        if stopped:
            state = "stopped"
        elif self.core.stop.began is not None:
            state = "stopping"
        else:
            state = "waiting_for_grant" if stalled else "running"
        left = sum(left_counts(self.ledger.counts()).values()) if stopped else 0
        url = grants.grant.renew_url
        dies = presigned_expiry(url) if url else None
        url_expires = dies.timestamp() if dies is not None else 0.0
        self.metrics_file.write(
            collect(
                self.ledger,
                self.inflight.retries,
                self.run.last_success,
                grants.seconds_left(),
                parts=list(self.inflight.parts.values()),
                bandwidth_limit=self.bandwidth_limit,
                excluded=len(self.core.excluded),
                state=state,
                stalled=stalled,
                left=left,
                expires=grants.grant.expiration.timestamp(),
                renewal=Renewal(url_expires, grants.renewed_at, grants.failing),
            )
        )
