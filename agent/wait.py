"""`postbox-agent wait [PATH...]`: return once every file in the watch dir (or under the PATHs)
when it is called is stored, or can never be under the grant in force.

It lists the files itself, with the job's own permissions (agent/listing.py), then asks the
running agent how they stand over its socket (agent/asking.py), about every half second, until
none is left: a file being written counts, and is waited for. When the agent does not answer, it
reads the agent's journal and status.json itself (agent/access.py): what the journal recorded is
stored, and an agent that stopped at its grant's expiry ends the wait. It reads no grant and
writes nothing, so a batch job in the group `postbox` runs it without sudo. A file counts as
stored only once the agent's journal has recorded the store's answer.

The files POSTBOX_INCLUDE and POSTBOX_EXCLUDE exclude are never sent: under a folder they are
named and not waited for; named as a PATH (or said so by the agent), one is not to be stored.

Exit codes (agent/errors.py): 0 every file stored; 3 some refused, gone unsent or excluded though
named (each named, with why); 124 timed out (what is left is said); 79 the grant expired with
files left; 6 the agent does not answer (not running, or down longer than `--agent-grace`); 77
this user may not look.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from agent.access import read_run, refusal, stopped_expired
from agent.asking import ask
from agent.clock import format_left
from agent.errors import ExitCode, JournalError
from agent.journal import read_sent
from agent.keys import is_utf8
from agent.listing import LIST_LIMIT, listed
from agent.question import CHANGED, STORED, UNKNOWN, by_journal
from agent.rules import EXCLUDED
from agent.settings import Settings
from agent.shown import printable
from agent.states import WAITING

POLL_SECONDS = 0.5
ASK_SECONDS = 60.0  # one answer (of 10,000 files at most: question.Bounds) takes this at most
ASK_LEAST = 1.0  # and this long at least, whatever is left of --agent-grace or --timeout
LOOK_SECONDS = 5.0  # while the agent does not answer: how often its journal is read instead
_GONE = "not in the watch dir (moved, deleted, or never there), never sent"
RATE_SECONDS = 30.0  # the rate shown is of what was stored in this last stretch of the wait
_NOT_STORED = {state.value for state in WAITING}  # refused, failed, too long, unreadable


@dataclass
class Tally:
    """What one `wait` has seen: the files it waits for and how each stands."""

    sizes: dict[str, int]  # every file it waits for: its size when listed
    left: dict[str, str] = field(init=False)  # not settled yet: its last status
    stored: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # why, or "gone"
    excluded: dict[str, str] = field(default_factory=dict)  # under its folders, not waited for

    def __post_init__(self) -> None:
        self.left = {relpath: "unseen" for relpath in self.sizes}

    def apply(self, files: dict[str, Any], root: Path) -> None:
        """An answer: each relpath's (status, why), as the agent (or its journal) gives it."""
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
            elif status in _NOT_STORED or status in ("gone", EXCLUDED):  # excluded: the
                # agent's filters, where this wait's own settings differ from its
                self.refuse(
                    relpath,
                    why or "not in the watch dir (moved, deleted, or never there), never sent",
                )
            else:
                self.left[relpath] = status

    def refuse(self, relpath: str, why: str) -> None:
        del self.left[relpath]
        self.refused[relpath] = why

    def stored_bytes(self) -> int:
        return sum(self.stored.values())

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
    wall: Callable[[], float] = time.time,
) -> int:
    """See the module's docstring; `every`: seconds between progress lines when `out` is not a
    terminal; `grace`: how long the agent may not answer (a restart) before it counts as not
    running. NoPermission (exit 77) when this user cannot list what it would wait for, or may
    not ask the agent: it never says "stored" of files it could not see."""
    kept = settings.after_upload == "keep"  # else a folder's sent files may be gone from it
    listing = listed(settings.watch_dir, paths, settings.filters or None, whole=kept)
    tally = Tally(listing.sizes, excluded=listing.excluded)
    for relpath, why in listing.never.items():
        tally.refuse(relpath, why)
    listing.say_passed_over()
    listing.say_excluded()
    socket = settings.socket_path
    started = monotonic()
    reached = started  # when the agent last answered (or when we began)
    expires_at = None  # when the grant in force expires, by the last answer (monotonic)
    said_at = started
    looked_at = -math.inf  # when the journal was last read in the agent's stead
    progress = Lines(out, as_json, started)
    while True:
        within = _ask_within(grace, reached, started, timeout, monotonic())
        answer = _answer(socket, list(tally.left), within)
        now = monotonic()
        agent: Optional[dict[str, Any]] = None
        if answer is not None:
            reached = now
            agent = answer.get("agent", {})
            expires_at = now + float(agent.get("grant_left", 0))
            tally.apply(answer.get("files", {}), settings.watch_dir)
        elif now - looked_at >= LOOK_SECONDS:  # stopped, or restarting: its journal says
            looked_at = now
            if _afterword(settings, tally, wall()):  # it stopped at the expiry
                expires_at = now
        progress.pace.sample(tally.stored_bytes(), now)
        timed_out = timeout is not None and now - started >= timeout
        silent = now - reached >= grace
        code = _ended(tally, agent, now, expires_at, silent_too_long=silent, timed_out=timed_out)
        if code is not None:
            return progress.end(tally, code, now, socket=_named_socket(settings, socket))
        if progress.tty or now - said_at >= every:
            progress.show(tally, now)
            said_at = now
        pause = POLL_SECONDS if timeout is None else min(POLL_SECONDS, started + timeout - now)
        sleep(max(0.0, pause))


def _ended(
    tally: Tally,
    agent: Optional[dict[str, Any]],
    now: float,
    expires_at: Optional[float],
    *,
    silent_too_long: bool,
    timed_out: bool,
) -> Optional[ExitCode]:
    """How the wait ends now, if it does: `agent` is the agent's word this turn (None: it did
    not answer), `expires_at` when its grant expires (monotonic, by its last word)."""
    if not tally.left:
        return ExitCode.FILES_LEFT if tally.refused else ExitCode.OK
    if agent is not None and agent.get("expired"):
        return ExitCode.EXPIRED
    if agent is None and expires_at is not None and now >= expires_at:
        return ExitCode.EXPIRED  # it stopped at the expiry
    if agent is None and silent_too_long:
        return ExitCode.NOT_RUNNING
    if timed_out:
        return ExitCode.TIMED_OUT
    return None


def _named_socket(settings: Settings, socket: Path) -> str:
    """The socket to name when no agent answers: POSTBOX_WAIT_SOCKET, and the state dir's where
    that one's folder is gone (the unit's RuntimeDirectory goes with the agent's stop)."""
    if socket == settings.wait_socket:
        return str(socket)
    return f"{settings.wait_socket} (nor on {socket}, where an agent outside systemd listens)"


def _answer(socket: Path, paths: list[str], within: float) -> Optional[dict[str, Any]]:
    """The agent's answer, taking no longer than `within`; None when no agent answers (not
    running, restarting, or taking the question and never answering). NoPermission when this
    user may not ask: not in the group that owns the socket."""
    try:
        return ask(socket, paths, within)
    except PermissionError as exc:
        raise refusal(socket, exc, what="the agent's socket") from None
    except (OSError, ValueError):
        return None


def _afterword(settings: Settings, tally: Tally, now: float) -> bool:
    """With no agent to answer: what its journal recorded is stored all the same (applied to
    `tally`); True if the agent stopped because its grant expired (status.json says so), so no
    restart will come for what is left. Nothing it cannot read counts."""
    try:
        run = read_run(settings.status_path)
        if tally.left and settings.journal_path.exists():
            left = [relpath for relpath in tally.left if is_utf8(relpath)]  # none else is kept
            sent = read_sent(settings.journal_path, left)
            judged = by_journal(settings.watch_dir, left, sent)
            stored = {relpath: said for relpath, said in judged.items() if said[0] == STORED}
            tally.apply(stored, settings.watch_dir)  # the rest stand as the agent last said
    except (PermissionError, JournalError):
        return False
    return stopped_expired(run, now)


def _ask_within(
    grace: float, reached: float, started: float, timeout: Optional[float], now: float
) -> float:
    """How long one answer may take: no longer than the agent may stay silent (a socket that
    takes the question and never answers is not running), nor past `--timeout`."""
    within = min(ASK_SECONDS, reached + grace - now)
    if timeout is not None:
        within = min(within, started + timeout - now)
    return max(ASK_LEAST, within)


class Pace:
    """How fast files are being stored during this wait: bytes stored over the last
    RATE_SECONDS, from the first answer on (what was stored before `wait` began is not pace)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, stored: int, now: float) -> None:
        self._samples.append((now, stored))
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_SECONDS:
            self._samples.popleft()

    def rate(self) -> float:
        """Bytes a second; 0 when nothing was stored in the stretch (or nothing to measure)."""
        if len(self._samples) < 2:
            return 0.0
        (first, before), (last, after) = self._samples[0], self._samples[-1]
        return (after - before) / (last - first) if last > first else 0.0


class Lines:
    """What `wait` shows: a line redrawn on a terminal, a line every `every` s otherwise, and one
    result at the end (JSON with `--json`)."""

    def __init__(self, out: IO[str], as_json: bool, started: float) -> None:
        self.out, self.as_json, self.started = out, as_json, started
        self.tty = out.isatty() and not as_json
        self.pace = Pace()
        self._drawn = False

    def show(self, tally: Tally, now: float) -> None:
        if self.as_json:
            return
        rate = self.pace.rate()
        pace = (
            f", {_size(rate)}/s, about {format_left(tally.bytes_left() / rate)} left"
            if rate > 0
            else f", none in the last {RATE_SECONDS:.0f} s"
            if now - self.started >= RATE_SECONDS
            else ""
        )
        line = (
            f"waiting: {len(tally.left)} file(s) left ({tally.by_status()}), "
            f"{_size(tally.bytes_left())}; {len(tally.stored)} stored{pace}"
        )
        if self.tty:
            print(f"\r\033[K{line}", end="", file=self.out, flush=True)
            self._drawn = True
        else:
            print(line, file=self.out, flush=True)

    def end(self, tally: Tally, code: ExitCode, now: float, socket: str = "") -> int:
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
                "refused": [{**_named(p), "reason": why} for p, why in tally.refused.items()],
                "left": [{**_named(p), "state": st} for p, st in tally.left.items()],
                "excluded": [{**_named(p), "reason": why} for p, why in tally.excluded.items()],
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


def _named(relpath: str) -> dict[str, str]:
    """A path for JSON: as it is where it is UTF-8; else escaped as the log shows it (JSON holds
    no undecodable bytes), with its bytes in hex beside it."""
    if is_utf8(relpath):
        return {"path": relpath}
    return {"path": printable(relpath), "path_hex": os.fsencode(relpath).hex()}


def _more(count: int, out: IO[str]) -> None:
    if count > LIST_LIMIT:
        print(f"... and {count - LIST_LIMIT} more (--json lists them all)", file=out)


def _size(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"
