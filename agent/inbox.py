"""The messages the agent's threads put in its inbox, which the dispatcher alone reads and applies
(agent/service.py). Typed values, one class a kind; the watcher's own is `watcher.Changed`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional, Union

from agent.asking import Asked
from agent.grant import AnyGrant
from agent.notice import Notice, Withdrawn
from agent.outcome import Job, Outcome
from agent.versions import FileVersion
from agent.watcher import Changed


@dataclass(frozen=True)
class Done:
    """A worker finished one file's delivery."""

    job: Job
    future: Future[Outcome]


@dataclass(frozen=True)
class Found:
    """A walk found files the journal lacks (or holds in another version); and files refused
    before under the grant `grant` (its identity), as the journal keeps them: (path, version,
    why). Those wait for a new grant without being tried, and are not logged one by one."""

    files: list[tuple[str, FileVersion]]
    refused: list[tuple[str, FileVersion, str]] = field(default_factory=list)
    grant: str = ""


@dataclass(frozen=True)
class Walked:
    """A walk of `folder` ended (None: of the whole watch dir)."""

    folder: Optional[str]


@dataclass(frozen=True)
class WalkWaits:
    """A walk waits for the files it found to be sent (agent/scanner.py: Room)."""


@dataclass(frozen=True)
class Poll:
    """inotify could not watch every folder: poll instead."""

    why: str


@dataclass(frozen=True)
class Rewatch:
    """inotify does not watch every folder a walk listed: watch again what can be read now."""

    why: str


@dataclass(frozen=True)
class Crashed:
    """A thread of the agent ended by a bug: the daemon ends through main's logging."""

    what: str
    error: BaseException


@dataclass(frozen=True)
class Renewed:
    """A renewal (fetch, judge, write) ended, well or not."""

    future: Future[AnyGrant]


@dataclass(frozen=True)
class Wake:
    """A signal came: look at once (the handler only sets a flag and puts this)."""


Message = Union[
    Changed,
    Done,
    Found,
    Walked,
    WalkWaits,
    Poll,
    Rewatch,
    Crashed,
    Renewed,
    Wake,
    Asked,
    Notice,
    Withdrawn,
]
Put = Callable[[Message], None]  # the inbox's `put`: SimpleQueue.put is safe in a signal handler
