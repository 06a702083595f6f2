"""`postbox-agent status`, for a person at a shell or (`--json`) a script: what the daemon says
it is doing (agent/status.py writes it), read from the state dir while the daemon runs, never
writing: status.json for this run, and the journal, read without writing (`journal.read_only`),
for what outlives a restart: how many files were ever sent, and every refusal kept there (by the
store or before sending) whose file is still the version refused.
Exit codes: 0 the agent is running; 6 it is not (what it said last is shown); 78 bad settings.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Optional

from agent.access import alive, read_run, refusal
from agent.bandwidth import format_rate
from agent.clock import format_left
from agent.errors import ExitCode, JournalError
from agent.filters import EXCLUDE, INCLUDE
from agent.journal import read_only
from agent.messages import Notice
from agent.settings import Settings
from agent.shown import printable
from agent.states import PENDING, WAITING
from agent.versions import FileVersion

JOURNAL_WHILE_RUNNING = (
    "the agent's own while it runs (a reader's lock would pause its writes); the group reads it "
    "once the agent has stopped, root and postbox at any time: sudo -u postbox postbox-agent status"
)


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
    limit = run.get("bandwidth_limit")
    shared = f"{format_rate(limit)}, shared by every upload" if limit else "no limit"
    rows.append(("bandwidth", shared))
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
    rows.extend(_excluded_rows(run.get("excluded") or {}))
    error = run.get("last_error")
    if error:
        at = dt.datetime.fromtimestamp(error["at"], dt.timezone.utc)
        rows.append(("last error", f"{at:%Y-%m-%d %H:%M:%S} UTC: {error['message']}"))
    return rows


def _excluded_rows(excluded: dict[str, Any]) -> list[tuple[str, str]]:
    """The files POSTBOX_INCLUDE and POSTBOX_EXCLUDE kept back, when either is set."""
    named = ((INCLUDE, excluded.get("include")), (EXCLUDE, excluded.get("exclude")))
    by = " and ".join(f"{name} ({patterns})" for name, patterns in named if patterns)
    if not by:
        return []
    files = f"{excluded.get('files', 0)}{'+' if excluded.get('at_least') else ''}"
    return [("excluded", f"{files} file(s) not sent, by {by}")]


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
