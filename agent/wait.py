"""`postbox-agent wait [PATH...]`: return once every file in the watch dir (or under the PATHs)
when it is called is stored, or can never be under the grant in force.

It lists the files itself, as the agent's own walk does (temporary names and symlinks left out),
then asks the running agent how they stand over its socket (agent/asking.py), about every half
second, until none is left: a file being written counts, and is waited for. It reads no grant
and writes nothing, so a batch job in the group `postbox` runs it without sudo. A file counts as
stored only once the agent's journal has recorded the store's answer.

Exit codes (agent/errors.py): 0 every file stored; 3 some refused or gone unsent (named, with
why); 124 timed out (what is left is said); 79 the grant expired with files left; 6 the agent
does not answer (not running, or down longer than `--agent-grace`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from agent.asking import CHANGED, STORED, UNKNOWN, ask
from agent.clock import format_left
from agent.errors import ExitCode
from agent.logs import printable
from agent.settings import Settings
from agent.states import WAITING
from agent.watcher import walk

POLL_SECONDS = 0.5
ASK_SECONDS = 60.0  # one answer (of 10,000 files at most: asking.Bounds) takes this at most
ASK_LEAST = 1.0  # and this long at least, whatever is left of --agent-grace or --timeout
LIST_LIMIT = 20  # files named in a line; the rest are counted (`--json` names them all)
_NOT_STORED = {state.value for state in WAITING}  # refused, failed, too long, unreadable


@dataclass
class Tally:
    """What one `wait` has seen: the files it waits for and how each stands."""

    sizes: dict[str, int]  # every file it waits for: its size when listed
    left: dict[str, str] = field(init=False)  # not settled yet: its last status
    stored: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # why, or "gone"

    def __post_init__(self) -> None:
        self.left = {relpath: "unseen" for relpath in self.sizes}

    def apply(self, files: dict[str, list[str]], root: Path) -> None:
        for relpath, (answered, why) in files.items():
            if relpath not in self.left:
                continue
            status = answered
            if answered == CHANGED:  # the journal has an older version: this one is on its way
                status = "unseen"
            elif answered == UNKNOWN:  # not heard of yet, or gone unsent: look, as the job
                status = "unseen" if os.path.lexists(root / relpath) else "gone"
            if status == STORED:
                del self.left[relpath]
                self.stored[relpath] = self.sizes[relpath]
            elif status in _NOT_STORED or status == "gone":
                del self.left[relpath]
                self.refused[relpath] = why or "no longer in the watch dir, never sent"
            else:
                self.left[relpath] = status

    def bytes_left(self) -> int:
        return sum(self.sizes[relpath] for relpath in self.left)

    def by_status(self) -> str:
        counts = Counter(self.left.values())
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def wait(
    settings: Settings,
    paths: list[Path],
    *,
    timeout: Optional[float] = None,
    as_json: bool = False,
    every: float = 10.0,
    grace: float = 30.0,
    out: IO[str] = sys.stdout,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """See the module's docstring; `every`: seconds between progress lines when `out` is not a
    terminal; `grace`: how long the agent may not answer (a restart) before it counts as not
    running."""
    tally = Tally(listed(settings.watch_dir, paths))
    started = monotonic()
    reached = started  # when the agent last answered (or when we began)
    expires_at = None  # when the grant in force expires, by the last answer (monotonic)
    said_at = started
    progress = Progress(out, as_json, started)
    while True:
        try:
            answer = ask(
                settings.wait_socket,
                list(tally.left),
                _ask_within(grace, reached, started, timeout, monotonic()),
            )
        except (OSError, ValueError):
            answer = None
        now = monotonic()
        if answer is not None:
            reached = now
            agent = answer.get("agent", {})
            expires_at = now + float(agent.get("grant_left", 0))
            tally.apply(answer.get("files", {}), settings.watch_dir)
        if not tally.left:
            code = ExitCode.FILES_LEFT if tally.refused else ExitCode.OK
            return progress.end(tally, code, now)
        if answer is not None and agent.get("expired"):
            return progress.end(tally, ExitCode.EXPIRED, now)
        if answer is None and expires_at is not None and now >= expires_at:
            return progress.end(tally, ExitCode.EXPIRED, now)  # it stopped at the expiry
        if answer is None and now - reached >= grace:
            return progress.end(tally, ExitCode.NOT_RUNNING, now, socket=settings.wait_socket)
        if timeout is not None and now - started >= timeout:
            return progress.end(tally, ExitCode.TIMED_OUT, now)
        if progress.tty or now - said_at >= every:
            progress.show(tally, now)
            said_at = now
        pause = POLL_SECONDS if timeout is None else min(POLL_SECONDS, started + timeout - now)
        sleep(max(0.0, pause))


def _ask_within(
    grace: float, reached: float, started: float, timeout: Optional[float], now: float
) -> float:
    """How long one answer may take: no longer than the agent may stay silent (a socket that
    takes the question and never answers is not running), nor past `--timeout`."""
    within = min(ASK_SECONDS, reached + grace - now)
    if timeout is not None:
        within = min(within, started + timeout - now)
    return max(ASK_LEAST, within)


def listed(watch_dir: Path, paths: list[Path]) -> dict[str, int]:
    """The files `wait` waits for, relative to the watch dir, with their sizes: every file under
    each of `paths` (the whole watch dir if none), as the agent's walk sees them. A PATH that
    is not there is asked about all the same: it may have been sent and then removed."""
    root = watch_dir.absolute()
    found: dict[str, int] = {}
    starts = []
    for path in paths or [root]:
        absolute = Path(path).absolute()
        try:
            relpath = absolute.relative_to(root).as_posix()
        except ValueError:
            raise WaitUsage(
                f"{printable(str(path))} is not under the watch dir {root}: name a file or "
                "folder in it"
            ) from None
        relpath = "" if relpath == "." else relpath
        if absolute.is_dir() and not absolute.is_symlink():
            starts.append(relpath)
        else:
            found[relpath] = absolute.lstat().st_size if absolute.exists() else 0
    for start in starts:
        for _, files in walk(root, start, lambda: False, _unlistable):
            found.update((relpath, st.st_size) for relpath, st in files)
    return found


class WaitUsage(ValueError):
    """A PATH outside the watch dir: a bad command line (exit 2)."""


def _unlistable(folder: str, why: str) -> None:
    print(f"cannot list {printable(folder)} ({why}): its files are not waited for", file=sys.stderr)


class Progress:
    """What `wait` shows: a line redrawn on a terminal, a line every `every` s otherwise, and one
    result at the end (JSON with `--json`)."""

    def __init__(self, out: IO[str], as_json: bool, started: float) -> None:
        self.out, self.as_json, self.started = out, as_json, started
        self.tty = out.isatty() and not as_json
        self._drawn = False

    def show(self, tally: Tally, now: float) -> None:
        if self.as_json:
            return
        stored = sum(tally.stored.values())
        rate = stored / max(now - self.started, 1e-3)
        eta = f", about {format_left(tally.bytes_left() / rate)} left" if rate > 0 else ""
        line = (
            f"waiting: {len(tally.left)} file(s) left ({tally.by_status()}), "
            f"{_size(tally.bytes_left())}; {len(tally.stored)} stored, {_size(rate)}/s{eta}"
        )
        if self.tty:
            print(f"\r\033[K{line}", end="", file=self.out, flush=True)
            self._drawn = True
        else:
            print(line, file=self.out, flush=True)

    def end(self, tally: Tally, code: ExitCode, now: float, socket: Optional[Path] = None) -> int:
        if self._drawn:
            print("\r\033[K", end="", file=self.out)
        took = now - self.started
        if self.as_json:
            document: dict[str, Any] = {
                "result": _RESULTS[code],
                "exit_code": int(code),
                "seconds": round(took, 3),
                "stored": len(tally.stored),
                "stored_bytes": sum(tally.stored.values()),
                "refused": [{"path": p, "reason": why} for p, why in tally.refused.items()],
                "left": [{"path": p, "state": st} for p, st in tally.left.items()],
            }
            print(json.dumps(document, indent=2), file=self.out)
            return code
        stored = f"{len(tally.stored)} file(s) stored ({_size(sum(tally.stored.values()))})"
        for relpath, why in list(tally.refused.items())[:LIST_LIMIT]:
            print(f"not stored {printable(relpath)}: {why}", file=self.out)
        _more(len(tally.refused), self.out)
        left = f"{len(tally.left)} file(s) left ({tally.by_status()})"
        if code == ExitCode.OK:
            size = _size(sum(tally.stored.values()))
            print(
                f"stored: all {len(tally.stored)} file(s) ({size}), in {took:.1f} s", file=self.out
            )
        elif code == ExitCode.FILES_LEFT:
            print(f"{stored}; {len(tally.refused)} will not be stored (above)", file=self.out)
        else:
            why = {
                ExitCode.TIMED_OUT: f"timed out after {took:.0f} s",
                ExitCode.EXPIRED: "the grant expired: no upload can start until a new one",
                ExitCode.NOT_RUNNING: f"the agent does not answer on {socket} (is "
                "postbox-agent.service running? `systemctl status postbox-agent`)",
            }[code]
            print(f"{why}: {stored}, {left}", file=self.out)
            for relpath, status in list(tally.left.items())[:LIST_LIMIT]:
                print(f"left {printable(relpath)} ({status})", file=self.out)
            _more(len(tally.left), self.out)
        return code


_RESULTS = {
    ExitCode.OK: "stored",
    ExitCode.FILES_LEFT: "refused",
    ExitCode.TIMED_OUT: "timed out",
    ExitCode.EXPIRED: "grant expired",
    ExitCode.NOT_RUNNING: "agent not running",
}


def _more(count: int, out: IO[str]) -> None:
    if count > LIST_LIMIT:
        print(f"... and {count - LIST_LIMIT} more (--json lists them all)", file=out)


def _size(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"
