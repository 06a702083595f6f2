"""The store's clock, not the VM's: expiry is judged by the time the store's answers carry."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.clock import StoreClock
from tests.agentprocess import eventually
from tests.conftest import GrantMaker, objects
from tests.inprocess import FakeClock, running

T0 = dt.datetime(2026, 11, 24, 6, 0, tzinfo=dt.timezone.utc)


def http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when, usegmt=True)


def test_the_offset_is_learnt_from_a_date_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    local = FakeClock(T0)
    clock = StoreClock(local)
    assert clock() == T0  # nothing learnt yet: this machine's time
    with caplog.at_level(logging.INFO, "agent.clock"):
        clock.observe(http_date(T0 + dt.timedelta(hours=1)), T0, T0 + dt.timedelta(seconds=0.2))
        clock.observe(http_date(T0 + dt.timedelta(hours=1, seconds=1)), T0, T0)  # noise
        clock.observe("not a date", T0, T0)
        clock.observe(None, T0, T0)
    assert abs((clock() - T0).total_seconds() - 3600) < 2
    assert [r.getMessage() for r in caplog.records] == [
        "this machine's clock is about 1h00m behind the store's: expiry is judged by the store's"
    ]


@pytest.mark.parametrize("hours", [1, -1], ids=["ahead", "behind"])
def test_an_agent_with_a_clock_off_by_an_hour_judges_expiry_by_the_stores(
    hours: int, make_grant: GrantMaker, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """A 30-minute grant: an hour ahead, this machine would think it expired before it starts
    (exit 79); an hour behind, that it has an hour and a half left. By the store's Date, it has
    30 minutes either way."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "result.csv").write_bytes(b"a,b\n")
    local = FakeClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours))
    with running(
        watch, tmp_path / "state", make_grant("runs/1/", "30m"), local, store_clock=True
    ) as agent:
        agent.ready()
        assert eventually(lambda: objects(s3, bucket) == {"runs/1/result.csv": b"a,b\n"})
    text = agent.text()
    assert "grant expires in 29m" in text or "grant expires in 30m" in text, text
    side = "ahead of" if hours > 0 else "behind"
    assert text.count("this machine's clock is about 1h00m") == 1, text
    assert f"{side} the store's: expiry is judged by the store's" in text
