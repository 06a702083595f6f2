"""`postbox-agent status`: what the agent is doing, for a person at a shell or (`--json`) a script.

Read from the state dir while the daemon runs, never written: its `status.json` (the daemon
writes it when anything changed, looking every 2 s, and every 30 s: agent/service.py) for this
run, and the journal, read without writing (`journal.read_only`), for what outlives a restart:
how many files were ever sent, and every refusal kept there (by the store or before sending)
whose file is still the version refused.
Exit codes: 0 the agent is running; 6 it is not (what it said last is shown); 78 bad settings.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from agent.clock import format_left
from agent.errors import ExitCode, JournalError
from agent.files import FileVersion
from agent.journal import read_only
from agent.logs import printable
from agent.settings import Settings

STATUS_HEARTBEAT_SECONDS = 30.0  # the daemon writes it at least this often, changed or not
STALE_SECONDS = 2 * STATUS_HEARTBEAT_SECONDS + 5  # older than this: the daemon is not writing


def status(settings: Settings, *, as_json: bool = False, now: Optional[float] = None) -> int:
    now = time.time() if now is None else now
    run = _read_run(settings.status_path)
    running = run is not None and _alive(run, now)
    sent_ever, refusals = _journal(settings.journal_path, settings.watch_dir)
    report: dict[str, Any] = {
        "running": running,
        "run": run,
        "uploaded_ever": sent_ever,
        "refusals": refusals,
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report, now), end="")
    return ExitCode.OK if running else ExitCode.NOT_RUNNING


def _read_run(path: Path) -> Optional[dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _alive(run: dict[str, Any], now: float) -> bool:
    if run.get("stopped") or now - float(run.get("written_at", 0)) > STALE_SECONDS:
        return False
    try:
        os.kill(int(run.get("pid", 0)), 0)
    except PermissionError:  # another user's process: it exists
        return True
    except (OSError, ValueError):
        return False
    return True


def _journal(path: Path, watch_dir: Path) -> tuple[Optional[int], list[dict[str, Any]]]:
    """Files ever sent, and the refusals that still hold (the file is the version refused)."""
    if not path.exists():
        return 0, []
    try:
        sent, kept = read_only(path)
    except JournalError:
        return None, []
    refusals = [
        {"path": r.relpath, "reason": r.reason, "at": r.at}
        for r in kept
        if FileVersion.at(watch_dir / r.relpath) == r.version
    ]
    return sent, refusals


def _text(report: dict[str, Any], now: float) -> str:
    run = report["run"]
    rows: list[tuple[str, str]] = []
    if run is None:
        rows.append(("agent", "no status yet: the agent has not run with this state dir"))
    else:
        age = now - float(run.get("written_at", now))
        state = f"running (pid {run.get('pid')})" if report["running"] else "NOT running"
        rows.append(("agent", f"{state}; this status is {age:.0f} s old"))
        grant = run.get("grant", {})
        expires = dt.datetime.strptime(grant["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.timezone.utc
        )
        left = expires.timestamp() - now
        when = f"in {format_left(left)}" if left > 0 else "EXPIRED"
        rows.append(("grant", f"{grant['store']} {grant['keys']}, expires {grant['expires']} "
                              f"({when}, by this machine's clock)"))  # fmt: skip
        counts = run.get("counts", {})
        pending = sum(counts.get(s, 0) for s in ("writing", "settling", "due"))
        rows.append(("uploaded", f"{counts.get('sent', 0)} in this run"))
        rows.append(("pending", f"{pending} file(s)"))
        sending = run.get("sending", [])
        rows.append(("sending", f"{len(sending)}"))
        for upload in sending:
            size, done = upload["bytes"], upload["done"]
            share = f" ({100 * done // size}%)" if size else ""
            rows.append(("", f"{printable(upload['key'])}: {done} of {size} bytes{share}"))
        waiting = run.get("waiting", [])
        for kind in ("refused", "failed", "too long", "unreadable"):
            count = counts.get(kind, 0)
            rows.append((kind, str(count)))
            for entry in waiting:
                if entry["state"] == kind:
                    rows.append(("", f"{printable(entry['path'])}: {entry['reason']}"))
        error = run.get("last_error")
        if error:
            at = dt.datetime.fromtimestamp(error["at"], dt.timezone.utc)
            rows.append(("last error", f"{at:%Y-%m-%d %H:%M:%S} UTC: {error['message']}"))
    ever = report["uploaded_ever"]
    rows.append(("journal", f"{'?' if ever is None else ever} file(s) sent since it began"))
    if report["refusals"]:
        rows.append(("kept", f"{len(report['refusals'])} refusal(s), until a new grant:"))
        for refusal in report["refusals"]:
            rows.append(("", f"{printable(refusal['path'])}: {refusal['reason']}"))
    return "".join(f"{name:<11}{value}\n" for name, value in rows)
