"""What the agent says it is doing: written by the daemon, read by `postbox-agent status`.

The daemon's side (`Reports`): the STATUS= line it sends systemd (`status_line`), and
`STATE_DIR/status.json` (`StatusFile`, from `snapshot`), which it writes when anything changed,
looking every 2 s, and every 30 s; the metrics file (agent/metrics.py). Each is built from the
ledger, the uploads under way and this run's own facts (`Run`).

`postbox-agent status`, for a person at a shell or (`--json`) a script, reads the state dir while
the daemon runs, never writing: status.json for this run, and the journal, read without writing
(`journal.read_only`), for what outlives a restart: how many files were ever sent, and every
refusal kept there (by the store or before sending) whose file is still the version refused.
Exit codes: 0 the agent is running; 6 it is not (what it said last is shown); 78 bad settings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agent.access import STATUS_HEARTBEAT_SECONDS, alive, read_run, refusal
from agent.body import InFlight
from agent.clock import format_left
from agent.errors import ExitCode, JournalError
from agent.files import FileVersion, replace_file
from agent.grant import AnyGrant, describe_keys
from agent.heard import Notice
from agent.journal import read_only
from agent.keeper import GrantKeeper
from agent.ledger import Ledger
from agent.logs import printable
from agent.metrics import MetricsFile, collect
from agent.outcome import Outcome, Result
from agent.scanner import Unreadable
from agent.settings import Settings
from agent.states import PENDING, WAITING, State

logger = logging.getLogger(__name__)

STATUS_WAITING_LIMIT = 100  # files listed as waiting (refused, failed...); the counts say all
JOURNAL_WHILE_RUNNING = (
    "the agent's own while it runs (a reader's lock would pause its writes); the group reads it "
    "once the agent has stopped, root and postbox at any time: sudo -u postbox postbox-agent status"
)
_REFUSED = (State.REFUSED, State.TOO_LONG, State.UNREADABLE)  # counted as refused in STATUS=


# The daemon's side.
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


def left(ledger: Ledger, watch_dir: Path, *, unheld: bool = False) -> str:
    """What a stop (or a preemption's deadline) leaves in the watch dir unsent, for its line:
    ', none left', or how many by state, where, and the first LEFT_NAMED names. `unheld`: files
    the agent had no room to hold were not walked yet (agent/scanner.py), and are not counted."""
    counts = left_counts(ledger.counts())
    beyond = f"; more in {watch_dir} not yet walked (more than the agent holds at once)"
    if not counts:
        return beyond if unheld else ", none left"
    said = ", ".join(f"{n} {state}" for state, n in counts.items())
    names = ledger.paths(*LEFT)
    shown = ", ".join(printable(n) for n in names[:LEFT_NAMED])
    more = f" and {len(names) - LEFT_NAMED} more" if len(names) > LEFT_NAMED else ""
    return f", {sum(counts.values())} left in {watch_dir} ({said}): {shown}{more}" + (
        beyond if unheld else ""
    )


def snapshot(
    ledger: Ledger,
    run: Run,
    inflight: InFlight,
    grant: AnyGrant,
    key_prefix: str,
    *,
    notice: Optional[Notice] = None,
    unreadable: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """What `postbox-agent status` shows of this run (without the time it is written);
    `unreadable`: the folders the agent cannot list, and why (agent/scanner.py)."""
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
        "sending": [
            {"key": key, "bytes": progress.size, "done": progress.done}
            for key, progress in list(inflight.sending.items())
        ],
        "in_parts": [
            {"key": key, "parts_done": n, "parts": total, "bytes_done": sent, "bytes": size}
            for key, (n, total, sent, size) in list(inflight.parts.items())
        ],
        "waiting": [{"path": p, "state": st.value, "reason": why} for p, st, why in waiting],
        "unreadable_folders": [{"path": p, "reason": why} for p, why in folders],
        "last_error": run.last_error,
    }


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
        ledger: Ledger,
        inflight: InFlight,
        grants: GrantKeeper,
        unreadable: Optional[Unreadable] = None,
    ) -> None:
        self.key_prefix = settings.key_prefix
        self.ledger, self.inflight, self.grants = ledger, inflight, grants
        self.unreadable = unreadable  # the folders the walks could not list
        self.run = Run()
        self.notice: Optional[Notice] = None  # the cloud takes the machine back
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
            notice=self.notice,
            unreadable=folders,
        )
        left = self.grants.seconds_left() if stopped else 0.0
        self.status_file.write(body, now, stopped=stopped, grant_left=left)

    def write_metrics(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(
                collect(
                    self.ledger,
                    self.inflight.retries,
                    self.run.last_success,
                    self.grants.seconds_left(),
                    parts=list(self.inflight.parts.values()),
                )
            )


# `postbox-agent status`.


def status(settings: Settings, *, as_json: bool = False, now: Optional[float] = None) -> int:
    now = time.time() if now is None else now
    try:
        run = read_run(settings.status_path)
    except PermissionError as exc:  # not in the group postbox: say so, never "no status yet"
        raise refusal(settings.state_dir, exc, what="the state dir") from None
    try:
        sent_ever, refusals, unreadable = _journal(settings.journal_path, settings.watch_dir)
    except PermissionError:  # the group's to read only once the agent closed it
        sent_ever, refusals, unreadable = None, [], JOURNAL_WHILE_RUNNING
    running = run is not None and alive(run, now)
    report: dict[str, Any] = {
        "running": running,
        "run": run,
        "uploaded_ever": sent_ever,
        "refusals": refusals,
        "journal_error": unreadable,
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report, now), end="")
    return ExitCode.OK if running else ExitCode.NOT_RUNNING


def _journal(
    path: Path, watch_dir: Path
) -> tuple[Optional[int], list[dict[str, Any]], Optional[str]]:
    """Files ever sent, the refusals that still hold (the file is the version refused), and why
    the journal cannot be read (None: it can). PermissionError: this user may not read it."""
    if not path.exists():
        return 0, [], None
    try:
        sent, kept = read_only(path)
    except JournalError as exc:
        return None, [], exc.message
    refusals = [
        {"path": r.relpath, "reason": r.reason, "at": r.at}
        for r in kept
        if (now := FileVersion.at(watch_dir / r.relpath)) is not None and now.matches(r.version)
    ]
    return sent, refusals, None


def _text(report: dict[str, Any], now: float) -> str:
    run = report["run"]
    if run is None:
        rows = [("agent", "no status yet: the agent has not run with this state dir")]
    else:
        rows = _run_rows(run, report["running"], now)
    ever = report["uploaded_ever"]
    if report["journal_error"] == JOURNAL_WHILE_RUNNING:
        rows.append(("journal", JOURNAL_WHILE_RUNNING))
    elif report["journal_error"]:
        rows.append(("journal", f"CANNOT BE READ: {report['journal_error']}"))
    else:
        rows.append(("journal", f"{ever} file(s) sent since it began"))
    if report["refusals"]:
        rows.append(("kept", f"{len(report['refusals'])} refusal(s), until a new grant:"))
        for refusal in report["refusals"]:
            rows.append(("", f"{printable(refusal['path'])}: {refusal['reason']}"))
    return "".join(f"{name:<11}{value}\n" for name, value in rows)


def _run_rows(run: dict[str, Any], running: bool, now: float) -> list[tuple[str, str]]:
    """What status.json says of the last run, row by row."""
    rows: list[tuple[str, str]] = []
    age = now - float(run.get("written_at", now))
    state = f"running (pid {run.get('pid')})" if running else "NOT running"
    rows.append(("agent", f"{state}; this status is {age:.0f} s old"))
    if run.get("stopped"):
        stopped = run.get("left") or {}
        said = ", ".join(f"{n} {st}" for st, n in stopped.items())
        rows.append(("stopped", f"with {sum(stopped.values())} file(s) left unsent"
                                + (f" ({said})" if said else "")))  # fmt: skip
    notice = run.get("notice")
    if notice:
        rows.append(("notice", Notice(**notice).describe(now)))
    grant = run.get("grant", {})
    expires = dt.datetime.strptime(grant["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.timezone.utc
    )
    left = expires.timestamp() - now
    when = f"in {format_left(left)}" if left > 0 else "EXPIRED"
    rows.append(("grant", f"{grant['store']} {grant['keys']}, expires {grant['expires']} "
                          f"({when}, by this machine's clock)"))  # fmt: skip
    counts = run.get("counts", {})
    pending = sum(counts.get(s.value, 0) for s in PENDING)
    rows.append(("uploaded", f"{counts.get('sent', 0)} in this run"))
    rows.append(("pending", f"{pending} file(s)"))
    sending = run.get("sending", [])
    rows.append(("sending", f"{len(sending)}"))
    for upload in sending:
        size, done = upload["bytes"], upload["done"]
        share = f" ({100 * done // size}%)" if size else ""
        rows.append(("", f"{printable(upload['key'])}: {done} of {size} bytes{share}"))
    for whole in run.get("in_parts", []):
        rows.append(("in parts", f"{printable(whole['key'])}: {whole['parts_done']} of "
                                 f"{whole['parts']} parts, {whole['bytes_done']} of "
                                 f"{whole['bytes']} bytes"))  # fmt: skip
    rows.extend(_waiting_rows(run, counts))
    error = run.get("last_error")
    if error:
        at = dt.datetime.fromtimestamp(error["at"], dt.timezone.utc)
        rows.append(("last error", f"{at:%Y-%m-%d %H:%M:%S} UTC: {error['message']}"))
    return rows


def _waiting_rows(run: dict[str, Any], counts: dict[str, int]) -> list[tuple[str, str]]:
    """The files waiting (refused, failed, too long, unreadable), and the folders the agent
    cannot list."""
    rows: list[tuple[str, str]] = []
    waiting = run.get("waiting", [])
    for kind in (s.value for s in WAITING):
        rows.append((kind, str(counts.get(kind, 0))))
        for entry in waiting:
            if entry["state"] == kind:
                rows.append(("", f"{printable(entry['path'])}: {entry['reason']}"))
    folders = run.get("unreadable_folders", [])
    if folders:
        rows.append(("folders", f"{len(folders)} the agent cannot list, their files not sent:"))
        for entry in folders:
            rows.append(("", f"{printable(entry['path'] or '.')}: {entry['reason']}"))
    return rows
