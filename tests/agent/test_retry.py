"""The retry policy's waits, read as tenacity's own tests read its strategies: the strategy is
called with retry states the test makes, and time never passes."""

from __future__ import annotations

import statistics
from typing import Optional

import pytest
import tenacity

from agent.errors import TransientUploadError
from agent.retry import MAX_BACKOFF_SECONDS, wait_full_jitter_or_retry_after


def state(attempt: int, error: Optional[BaseException] = None) -> tenacity.RetryCallState:
    retry_state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    retry_state.attempt_number = attempt
    if error is not None:
        retry_state.set_exception((type(error), error, None))
    return retry_state


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 6, 7, 12])
def test_full_jitter_spreads_each_wait_over_its_whole_window(attempt: int) -> None:
    """A thousand instances behind one outage: their waits after the same attempt are spread
    evenly from 0 to the window (1, 2, 4 ... at most 60 s), not bunched at its end."""
    window = min(2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
    wait = wait_full_jitter_or_retry_after()
    waits = [wait(state(attempt, TransientUploadError("503"))) for _ in range(1000)]
    assert all(0 <= w <= window for w in waits)
    assert 0.4 * window < statistics.mean(waits) < 0.6 * window  # uniform: the mean is half
    assert min(waits) < 0.1 * window and max(waits) > 0.9 * window


def test_a_retry_after_is_the_least_wait_and_jitter_may_only_lengthen_it() -> None:
    wait = wait_full_jitter_or_retry_after()
    asked = TransientUploadError("503 SlowDown", retry_after=5.0)
    assert all(wait(state(1, asked)) == 5.0 for _ in range(100))  # the window (1 s) is shorter
    waits = [wait(state(8, asked)) for _ in range(1000)]  # a 60 s window
    assert all(5.0 <= w <= MAX_BACKOFF_SECONDS for w in waits) and max(waits) > 50
