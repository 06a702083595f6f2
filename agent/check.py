"""`postbox-agent check`: is this agent ready to upload? Grant, store, bucket, watch dir, state dir.

Each check says what it found and, when it fails, how to fix it; `--json` gives the same for
scripts. Exit codes (README, Exit codes): 78 bad settings or grant and 79 an expired grant (as
`run`), 4 the store did not answer, 5 something else the agent needs is missing (the bucket, the
watch dir, a state dir it can write), 0 ready.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from agent.bandwidth import format_rate
from agent.clock import format_left
from agent.errors import ExitCode, JournalError
from agent.grant import AnyGrant, Grant, describe_keys
from agent.journal import read_only
from agent.properties import describe_tags, exact, signed, tags_of
from agent.settings import Settings
from agent.uploader import Probe
from agent.wiring import parts


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def check(settings: Settings, *, as_json: bool = False) -> int:
    wired = parts(settings)  # 78 for a bad grant, as `run`
    grant, deadline = wired.grant, wired.deadline
    answer = wired.uploader.probe(grant, settings.connect_timeout)  # the store's clock, from it
    left = deadline.left(grant)
    findings = [
        _reachable(answer),
        _bucket(grant, answer),
        _watch_dir(settings),
        _state_dir(settings.state_dir),
        _journal(settings.journal_path),
    ]
    low, high = grant.size_range
    offset = deadline.offset
    policy = grant.policy if isinstance(grant, Grant) else None
    facts: dict[str, Any] = {
        "grant": str(settings.grant_file),
        "store": grant.endpoint,
        "bucket": grant.bucket,
        "keys": describe_keys(grant, settings.key_prefix),
        "sizes": [low, high],
        "properties": list(signed(grant.policy)) if isinstance(grant, Grant) else [],
        "storage_class": exact(policy, "x-amz-storage-class") if policy else None,
        "tags": tags_of(exact(policy, "tagging")) if policy else {},
        "include": settings.include,
        "exclude": settings.exclude,
        "bandwidth_limit": settings.bandwidth_limit,
        "expires": f"{grant.expiration:%Y-%m-%dT%H:%M:%SZ}",
        "seconds_left": int(left),
        "clock_offset_seconds": round(offset, 1),
    }
    if left <= 0:
        code = ExitCode.EXPIRED
    elif not findings[0].ok:
        code = ExitCode.UNREACHABLE
    elif not all(f.ok for f in findings):
        code = ExitCode.NOT_READY
    else:
        code = ExitCode.OK
    if as_json:
        facts["checks"] = [asdict(f) for f in findings]
        facts["ready"] = code == ExitCode.OK
        facts["exit_code"] = int(code)
        print(json.dumps(facts, indent=2))
        return code
    rows = [
        ("grant", facts["grant"]),
        ("store", f"{grant.endpoint} (bucket {grant.bucket or 'not named by the grant'})"),
        ("keys", facts["keys"]),
        ("sizes", f"{low} to {high} bytes"),
        ("objects", _properties(facts["properties"])),
        ("class", facts["storage_class"] or "the store's default (none signed)"),
        ("tags", describe_tags(facts["tags"])),
        ("files", settings.filters.describe()),
        ("bandwidth", _limit(settings.bandwidth_limit)),
        ("expires", f"{grant.expiration:%Y-%m-%d %H:%M:%S} UTC ({_left(left)})"),
        ("clock", f"the store's is {abs(offset):.0f} s {'ahead' if offset >= 0 else 'behind'}"),
    ]
    rows += [(f.name, f"{'ok' if f.ok else 'FAILED'}: {f.detail}") for f in findings]
    for name, value in rows:
        print(f"{name:<10} {value}")
    print(f"{'ready':<10} {'yes' if code == ExitCode.OK else f'no (exit {int(code)})'}")
    return code


def _properties(names: list[str]) -> str:
    """What each object carries of its file (agent/properties.py): the fields the grant signs."""
    if not names:
        return "carry no type, SHA-256 or time of their file: the grant signs none of them"
    return f"carry {', '.join(names)} (signed by the grant)"


def _limit(rate: Optional[int]) -> str:
    return f"{format_rate(rate)}, shared by every upload" if rate else "no limit"


def _left(seconds: float) -> str:
    return f"in {format_left(seconds)}" if seconds > 0 else "EXPIRED: sign a new grant"


def _reachable(answer: Probe) -> Finding:
    if answer.status is None:
        detail = f"no answer ({answer.error}): check the network and the URL"
        return Finding("reachable", False, detail)
    return Finding("reachable", True, f"HTTP {answer.status} to an unsigned HEAD")


def _bucket(grant: AnyGrant, answer: Probe) -> Finding:
    """A POST grant's URL is the bucket's: S3 answers an unsigned HEAD there 404 when no such
    bucket exists (403 or 200 when it does), so a misspelt bucket is found before any upload."""
    if answer.status is None:
        return Finding("bucket", False, "not asked: the store did not answer")
    if not isinstance(grant, Grant):
        return Finding("bucket", True, "not asked (a PUT URL names one object)")
    if answer.status == 404:
        return Finding(
            "bucket",
            False,
            f"{grant.bucket} does not exist (HTTP 404): sign a grant for one that does",
        )
    if answer.status in (301, 307, 400):
        region = answer.region or "another region"
        return Finding(
            "bucket", False, f"{grant.bucket} answers from {region}: sign the grant for its region"
        )
    return Finding("bucket", True, f"{grant.bucket} exists (HTTP {answer.status})")


def _watch_dir(settings: Settings) -> Finding:
    """Readable and searchable to watch it; writable too when files are deleted or moved."""
    path = settings.watch_dir
    if path.is_symlink():
        return Finding("watch dir", False, f"{path} is a symlink: set the real folder")
    if not path.is_dir():
        return Finding("watch dir", False, f"{path} does not exist: create it (the installer does)")
    need, what = os.R_OK | os.X_OK, "read"
    if settings.after_upload != "keep":
        need, what = need | os.W_OK, f"write (after upload: {settings.after_upload})"
    if not os.access(path, need):
        return Finding(
            "watch dir", False, f"{path}: this user may not {what} it: fix its owner or mode"
        )
    return Finding("watch dir", True, str(path))


def _state_dir(path: Path) -> Finding:
    """Where the journal lives: a folder this user may write, or one it may create."""
    if path.exists():
        if not path.is_dir():
            return Finding("state dir", False, f"{path} is not a folder: remove it or set another")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            return Finding(
                "state dir",
                False,
                f"{path}: this user may not read and write it: fix its owner or mode",
            )
        return Finding("state dir", True, str(path))
    parent = path.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return Finding(
            "state dir", False, f"{path} does not exist and {parent} is not writable: create it"
        )
    return Finding("state dir", True, f"{path} (created at start)")


def _journal(journal: Path) -> Finding:
    """Readable, writable and sound: a damaged journal stops `run` at start (exit 65)."""
    if not journal.exists():
        return Finding("journal", True, f"{journal} (made at start)")
    if not os.access(journal, os.R_OK | os.W_OK):
        return Finding("journal", False, f"{journal}: this user may not read and write it")
    try:
        sent, _ = read_only(journal)
    except JournalError as exc:
        return Finding("journal", False, exc.message)
    return Finding("journal", True, f"{journal} ({sent} file(s) sent)")
