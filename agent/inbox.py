"""The messages the agent's threads put in its inbox, which the dispatcher alone reads and applies
(agent/service.py). Typed values, one class a kind; the watcher's own is `watcher.Changed`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Union

from agent.asking import Asked
from agent.grant import AnyGrant
from agent.messages import Changed, Found, Notice, Signal, Walked, WalkWaits, Withdrawn
from agent.outcome import Job, Outcome


@dataclass(frozen=True)
class Done:
    """A worker finished one file's delivery."""

    job: Job
    future: Future[Outcome]


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
    Signal,
    Asked,
    Notice,
    Withdrawn,
]
Put = Callable[[Message], None]  # the inbox's `put`: SimpleQueue.put is safe in a signal handler
