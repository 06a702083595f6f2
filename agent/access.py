"""What `wait` and `status`, run as the job's user, may read of what the agent keeps, and the one
line that tells a user who may not how to be let in.

The agent runs as `postbox`; the watch dir is postbox:postbox 2770, the state dir (the journal,
status.json) 0750 and the socket's folder 0750, so a member of the group `postbox` reads them
and anyone else is refused by the kernel. A refusal is never taken for an answer: a folder
`wait` cannot list or a state dir `status` cannot read ends the command with `NoPermission`
(exit 77), never with "stored" or "no status yet".
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from pathlib import Path
from typing import Any, Optional

from agent.errors import NoPermission
from agent.shown import printable

STATUS_HEARTBEAT_SECONDS = 30.0  # the daemon writes status.json at least this often
STALE_SECONDS = 2 * STATUS_HEARTBEAT_SECONDS + 5  # older than this: the daemon is not writing


def refusal(path: Path, exc: OSError, *, what: str = "") -> NoPermission:
    """The line for `path` this user may not read: what, why, and how to be let in (the group
    that owns it, or the folder above it that does exist)."""
    gid = _gid_of(path)
    group = _name_of(gid) if gid else None
    if group is None:
        join = "run it as root"
    elif gid == os.getegid() or gid in os.getgroups():  # in the group: the folder is closed
        join = (
            f"its owner (or root) can open it to the group {group}: chmod -R g+rX "
            f"{printable(str(path))}; or run it as root"
        )
    else:
        join = (
            f"run it as a member of the group {group} (sudo usermod -aG {group} {_user()}, "
            "then log in again) or as root"
        )
    named = f"{what} {printable(str(path))}" if what else printable(str(path))
    return NoPermission(f"cannot read {named} ({exc.strerror or exc}): {join}")


def _gid_of(path: Path) -> int:
    """The group of `path`, or of the nearest folder above it that this user can see."""
    for place in (path, *path.parents):
        try:
            return place.stat().st_gid
        except OSError:
            continue
    return 0


def _name_of(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "$USER"


def read_run(path: Path) -> Optional[dict[str, Any]]:
    """What the daemon last wrote to status.json (agent/status.py); None where it has written
    none, or none that can be read as one. PermissionError: this user may not read it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def alive(run: dict[str, Any], now: float) -> bool:
    """The daemon that wrote `run` is running: not stopped, written lately, its process there."""
    if run.get("stopped") or now - float(run.get("written_at", 0)) > STALE_SECONDS:
        return False
    try:
        os.kill(int(run.get("pid", 0)), 0)
    except PermissionError:  # another user's process: it exists
        return True
    except (OSError, ValueError):
        return False
    return True


def stopped_expired(run: Optional[dict[str, Any]], now: float) -> bool:
    """The daemon that wrote `run` stopped, and its grant has expired by now (its time left when
    it stopped, by the store's clock, counted from then: this machine's clock only measures the
    time since)."""
    if not run or not run.get("stopped"):
        return False
    left = run.get("grant_left")
    if not isinstance(left, (int, float)):
        return False
    return float(run.get("written_at", 0)) + left <= now
