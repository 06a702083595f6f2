"""The uploads under way: `concurrency` worker threads, each delivering one file at a time
(agent/delivery.py) under the grant in force; each outcome goes back on the dispatcher's inbox
as `Done`. The dispatcher alone submits; `len` counts the uploads not yet ended."""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Optional

from agent.actions import Send
from agent.delivery import Delivery, refused_name
from agent.errors import RejectedUploadError
from agent.grant import AnyGrant
from agent.inbox import Done, Put
from agent.outcome import Job, Outcome
from agent.shown import printable

logger = logging.getLogger(__name__)


class Workers:
    def __init__(self, concurrency: int, key_prefix: str, delivery: Delivery, put: Put) -> None:
        self._pool = ThreadPoolExecutor(concurrency, "upload")
        self._running: set[Future[Outcome]] = set()  # submitted and not yet ended
        self.key_prefix, self.delivery, self._put = key_prefix, delivery, put

    def __len__(self) -> int:
        return len(self._running)

    def send(self, a: Send, grant: AnyGrant, root: Path) -> Optional[Outcome]:
        """Deliver `a`'s file under `grant` on a free worker; or, if the grant refuses its name,
        that outcome at once."""
        path = root / a.relpath
        try:
            key = grant.key_for(PurePosixPath(a.relpath), self.key_prefix)
        except RejectedUploadError as exc:
            return refused_name(path, a.relpath, grant, exc)
        job = Job(path, a.relpath, key, grant, a.rate, busy=a.busy, close_seen=a.close_seen,
                  moved_in=a.moved_in)  # fmt: skip
        future = self._pool.submit(self.delivery.deliver, job)
        self._running.add(future)
        future.add_done_callback(functools.partial(self._done, job))
        return None

    def _done(self, job: Job, future: Future[Outcome]) -> None:
        """Runs on the worker as its future completes: the outcome goes to the dispatcher."""
        self._running.discard(future)  # first: the drain waits on the inbox while any runs
        self._put(Done(job, future))

    @staticmethod
    def outcome(message: Done) -> Outcome:
        """What a delivery ended with; a bug in one is raised, not swallowed (main logs it)."""
        error = message.future.exception()
        if error is not None:
            logger.error("upload of %s failed unexpectedly", printable(message.job.key))
            raise error
        return message.future.result()

    def shutdown(self, *, wait: bool) -> None:
        self._pool.shutdown(wait=wait)
