"""The one retry policy, composed from tenacity's strategies: transient faults only, exponential
backoff with full jitter (a random wait between 0 and 1, 2, 4 ... 60 s: AWS's advice, so that a
fleet behind one outage does not come back in step), at least what the store asked for in a
Retry-After header, and no attempt that would start after the grant's deadline, after shutdown
began, or past an attempt limit. A value the tests read and drive with `sleep=list.append`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Optional

import tenacity

from agent.errors import TransientUploadError
from agent.shown import printable

logger = logging.getLogger(__name__)


MAX_BACKOFF_SECONDS = 60.0  # the widest window of the full jitter


class wait_full_jitter_or_retry_after(tenacity.wait.wait_base):
    """Full jitter (tenacity's wait_random_exponential: uniform between 0 and 2**(n-1) s, at
    most MAX_BACKOFF_SECONDS), or the store's Retry-After where that is longer."""

    def __init__(self) -> None:
        self.jitter = tenacity.wait_random_exponential(multiplier=1, max=MAX_BACKOFF_SECONDS)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = self.jitter(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(error, "retry_after", None)
        return max(wait, asked) if asked is not None else wait


class stop_at_deadline(tenacity.stop.stop_base):
    """Stop when the next attempt would start after the deadline (`seconds_left()` <= 0)."""

    def __init__(self, seconds_left: Callable[[], float]) -> None:
        self.seconds_left = seconds_left

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.seconds_left() - (retry_state.upcoming_sleep or 0.0) <= 0


def retry_policy(
    *,
    seconds_left: Callable[[], float],
    stopping: threading.Event,
    sleep: Callable[[float], object],
    max_attempts: int = 0,
    key: str = "",
    on_retry: Optional[Callable[[], None]] = None,
) -> tenacity.Retrying:
    """The one retry policy: transient faults only, exponential backoff with full jitter (or
    the store's Retry-After), and no attempt that would start after the grant's deadline (a
    Retry-After beyond it ends the retries), after shutdown began, or past `max_attempts` (0:
    no limit but the deadline)."""
    stop = tenacity.stop_any(stop_at_deadline(seconds_left), tenacity.stop_when_event_set(stopping))
    if max_attempts:
        stop = tenacity.stop_any(stop, tenacity.stop_after_attempt(max_attempts))

    def log(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        if on_retry is not None:
            on_retry()
        logger.warning(
            "retrying %s in %.1fs (attempt %d failed: %s)",
            printable(key),
            state.upcoming_sleep,
            state.attempt_number,
            state.outcome.exception(),
        )

    def pause(seconds: float) -> None:
        sleep(seconds)
        if stopping.is_set():  # tenacity would start the next attempt without asking `stop`
            raise TransientUploadError("the agent is stopping: not retried")

    return tenacity.Retrying(
        stop=stop,
        wait=wait_full_jitter_or_retry_after(),
        retry=tenacity.retry_if_exception_type(TransientUploadError),
        before_sleep=log,
        sleep=pause,
        reraise=True,
    )
