"""What `postbox-agent wait` asks the agent, and what it is told, over the socket
(agent/asking.py). Pure but for `by_journal`, which looks at the files.

One question per connection: a JSON object `{"paths": [relpath, ...]}`, then the end of the
writer's side; one answer: `{"agent": {...}, "files": {relpath: [status, reason]}}`. A status is
a ledger state's value (agent/states.py); `stored` (the journal has recorded the store's answer
for the version now there, or for the path, now gone: deleted or moved after upload); `changed`
(the journal has an older version: the new one is not seen yet); or `unknown` (neither the
ledger nor the journal has it: `wait` tells a file not yet seen from one gone by looking itself,
with the job's own permissions, so the agent never says whether anything else exists); or
`journal unreadable` (not in the ledger, and the journal cannot be read: not called stored).

A question comes from another user, so it is read (`question`) as a total function of its bytes:
one that is not `{"paths": [str, ...]}` (not JSON, not UTF-8, nested past Python's recursion
limit, holding a number) or passes the `Bounds` is refused (`BadQuestion`), and a path that
leaves the watch dir is dropped. `questions` splits a long list (a `wait` over a million files)
into questions within the bounds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import NoReturn

from agent.versions import FileVersion

STORED, CHANGED, UNKNOWN = "stored", "changed", "unknown"


@dataclass(frozen=True)
class Bounds:
    """What one client may cost the agent. A question of `question_paths` paths at most (and,
    however short they are, `question_bytes`) is parsed and answered in a few MiB; every path
    Linux can name (4096 bytes, 6 each JSON-escaped) fits in one question many times over."""

    clients: int = 64  # served at once; one more is closed at once (its `wait` asks again)
    question_bytes: int = 256 * 1024
    question_paths: int = 10_000
    question_seconds: float = 10.0  # to send the whole question, however it trickles
    answer_seconds: float = 30.0  # the dispatcher answers within a loop's turn: a stuck one
    reply_seconds: float = 10.0  # to take the whole answer


BOUNDS = Bounds()
_OVERHEAD = len(b'{"paths": []}')
UNCHECKED = "journal unreadable"  # neither held nor looked up: wait waits, and says so


class BadQuestion(ValueError):
    """What a client sent is not a question `wait` asks, or not in time: it is dropped."""


def by_journal(
    watch_dir: Path, relpaths: list[str], sent: dict[str, FileVersion]
) -> dict[str, tuple[str, str]]:
    """How `relpaths` stand by the journal (`sent`: the versions it recorded): `stored` (the
    version there now, or the path now gone), `changed` (another version is there), `unknown`
    (never recorded). The agent answers so for the files its ledger does not hold, and `wait`
    so once the agent has stopped."""
    files: dict[str, tuple[str, str]] = {}
    for relpath in relpaths:
        recorded = sent.get(relpath)
        if recorded is None:
            files[relpath] = (UNKNOWN, "")
            continue
        now = FileVersion.at(watch_dir / relpath)
        files[relpath] = (STORED, "") if now is None or now.matches(recorded) else (CHANGED, "")
    return files


def question(raw: bytes, most: int = BOUNDS.question_paths) -> list[str]:
    """The paths `raw` asks about, those beneath the watch dir; BadQuestion if it is not
    `{"paths": [relpath, ...]}` with `most` paths at most."""
    try:
        asked = json.loads(
            raw, parse_int=_no_number, parse_float=_no_number, parse_constant=_no_number
        )
    except RecursionError:
        raise BadQuestion("nested too deeply") from None
    except ValueError as exc:  # not JSON, not UTF-8, a number
        raise BadQuestion(str(exc)) from None
    paths = asked.get("paths") if isinstance(asked, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadQuestion('a question is {"paths": [relpath, ...]}')
    if len(paths) > most:
        raise BadQuestion(f"over {most} paths")
    return [p for p in paths if _inside(p)]


def _no_number(text: str) -> NoReturn:
    """A question holds no number: refused as read (a long one costs time to convert)."""
    raise ValueError(f"a number ({text[:20]}) where a path was expected")


def _inside(relpath: str) -> bool:
    """A relative path that stays beneath the watch dir (the question comes from another user)
    and can name a file."""
    if not relpath or relpath.startswith("/") or "\0" in relpath:
        return False
    try:
        os.fsencode(relpath)
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return False
    return ".." not in relpath.split("/")


def questions(paths: list[str], bounds: Bounds = BOUNDS) -> Iterator[bytes]:
    """`paths` as the fewest questions within `bounds` (one, if there are none)."""
    batch: list[bytes] = []
    size = _OVERHEAD
    for relpath in paths:
        item = encode_basestring_ascii(relpath).encode("ascii")  # as json.dumps, 3x as fast
        if batch and (
            size + len(item) + 2 > bounds.question_bytes or len(batch) == bounds.question_paths
        ):
            yield b'{"paths": [' + b", ".join(batch) + b"]}"
            batch, size = [], _OVERHEAD
        batch.append(item)
        size += len(item) + 2  # and ", "
    yield b'{"paths": [' + b", ".join(batch) + b"]}"
