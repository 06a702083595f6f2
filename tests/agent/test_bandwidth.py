"""POSTBOX_BANDWIDTH_LIMIT (agent/bandwidth.py): the bucket's arithmetic on a clock the test
moves, one limit shared by bodies on several threads, a stop that wakes a read waiting for its
share, and an agent with a limit that still stores the right bytes, whole and in parts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.bandwidth import Bucket, Limiter, RateError, format_rate, parse_rate
from agent.body import CHUNK_SIZE, HashingBody
from agent.errors import ExitCode
from tests.agent.test_metrics import parse
from tests.agent.test_parts import PARTS, manifests
from tests.agent.test_status import status
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, objects

MiB = 1024**2


class FakeTime:
    """A monotonic clock that moves only by the waits the limiter asks for; each thread has its
    own, as each thread of the agent lives through its own waits (a thread that is woken at
    its slot's end has its clock there, whatever the others wait for)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return float(getattr(self._local, "now", 0.0))

    def wait(self, seconds: float) -> bool:
        with self._lock:
            self.waits.append(seconds)
        self._local.now = self.now() + seconds
        return False


def read_all(body: HashingBody, block: int = CHUNK_SIZE) -> bytes:
    got = []
    while data := body.read(block):
        got.append(data)
    return b"".join(got)


# The bucket's arithmetic: time is the `now` it is given.


def test_a_fresh_bucket_lets_one_burst_go_at_once_then_each_grant_waits_its_bytes_time() -> None:
    bucket = Bucket(rate=1000.0, burst=100)
    assert bucket.take(100, now=0.0) == (100, 0.0)
    assert bucket.take(100, now=0.0) == (100, pytest.approx(0.1))
    assert bucket.take(50, now=0.0) == (50, pytest.approx(0.15))
    # Taken at its slot's end, the next waits only its own bytes' time.
    assert bucket.take(100, now=0.15) == (100, pytest.approx(0.1))


def test_a_read_larger_than_the_burst_gets_one_burst() -> None:
    bucket = Bucket(rate=1000.0, burst=100)
    assert bucket.take(CHUNK_SIZE, now=5.0) == (100, 0.0)
    assert bucket.take(CHUNK_SIZE, now=5.0) == (100, pytest.approx(0.1))


def test_a_pause_saves_up_one_burst_and_no_more() -> None:
    bucket = Bucket(rate=1000.0, burst=100)
    assert bucket.take(100, now=0.0)[1] == 0.0
    # An hour idle: one burst goes at once, the next waits as after any other burst.
    assert bucket.take(100, now=3600.0) == (100, 0.0)
    assert bucket.take(100, now=3600.0) == (100, pytest.approx(0.1))


def test_the_burst_is_a_tenth_of_a_second_of_the_rate() -> None:
    assert Bucket.for_rate(20 * MiB).burst == 2 * MiB
    assert Bucket.for_rate(1024).burst == 102


@pytest.mark.parametrize("rate", [1024, 500 * 1024, 20 * MiB])
def test_a_body_read_through_the_limiter_goes_at_the_rate(rate: int) -> None:
    """Read as the socket reads it (1 MiB asked at a time): the bytes are the file's, and the
    time the reads took on the limiter's clock is the rate's, less the one burst."""
    size = 4 * MiB if rate >= MiB else 64 * 1024
    content = os.urandom(size)
    time = FakeTime()
    limiter = Limiter(rate, threading.Event(), monotonic=time.now, wait=time.wait)
    body = HashingBody(io.BytesIO(content), size, limiter=limiter)
    assert read_all(body) == content
    burst = Bucket.for_rate(rate).burst
    assert time.now() == pytest.approx((size - burst) / rate)
    assert max(time.waits) <= burst / rate + 1e-9  # no read waits longer than its share


def test_a_large_body_read_ahead_on_its_thread_is_limited_as_the_socket_takes_it() -> None:
    size, rate = 12 * MiB, 8 * MiB  # from 8 MiB on a body is read ahead (ReadAhead)
    content = os.urandom(size)
    time = FakeTime()
    limiter = Limiter(rate, threading.Event(), monotonic=time.now, wait=time.wait)
    body = HashingBody(io.BytesIO(content), size, limiter=limiter)
    try:
        assert read_all(body) == content
    finally:
        body.close()
    assert body.md5.hexdigest() == hashlib.md5(content).hexdigest()
    assert time.now() == pytest.approx((size - Bucket.for_rate(rate).burst) / rate)


def test_two_bodies_on_two_threads_share_the_one_limit() -> None:
    """Each thread's clock moves only by its own waits: with one limit shared, both end when
    the two bodies' bytes together have had the rate's time (each got about half); with a limit
    each, they would end in half that time."""
    rate, size = MiB, 3 * MiB
    contents = [os.urandom(size), os.urandom(size)]
    time = FakeTime()
    limiter = Limiter(rate, threading.Event(), monotonic=time.now, wait=time.wait)
    read: dict[int, bytes] = {}
    ended: dict[int, float] = {}
    start = threading.Barrier(2)

    def send(n: int) -> None:
        body = HashingBody(io.BytesIO(contents[n]), size, limiter=limiter)
        start.wait()
        read[n] = read_all(body, 64 * 1024)
        ended[n] = time.now()

    threads = [threading.Thread(target=send, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert read == {0: contents[0], 1: contents[1]}
    together = (2 * size - Bucket.for_rate(rate).burst) / rate
    assert max(ended.values()) == pytest.approx(together)


def test_a_stop_wakes_a_read_waiting_for_its_share_and_the_rest_goes_unlimited() -> None:
    """On a clock that stands still, each read of a 1 MiB body at 1KiB/s waits longer than the
    last; the first wait past 900 s is a real `stopping.wait`, which the stop ends: the read
    returns, and the rest of the body goes without waiting."""
    stopping, waiting = threading.Event(), threading.Event()
    asked: list[float] = []

    def wait(seconds: float) -> bool:
        asked.append(seconds)
        if seconds < 900:
            return False
        waiting.set()
        return stopping.wait(seconds)

    limiter = Limiter(1024, stopping, monotonic=lambda: 0.0, wait=wait)
    content = os.urandom(MiB)
    body = HashingBody(io.BytesIO(content), len(content), limiter=limiter)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(body)))
    reader.start()
    assert waiting.wait(60)
    stopping.set()
    reader.join(60)
    assert not reader.is_alive()
    assert got == [content]
    assert max(asked) < 901  # the one real wait, ended by the stop; none after it
    assert limiter.take(CHUNK_SIZE) == CHUNK_SIZE


# The setting.


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("20MiB/s", 20 * MiB),
        ("500KiB/s", 500 * 1024),
        ("1.5GiB/s", 1536 * MiB),
        ("10MB/s", 10_000_000),
        ("64kB/s", 64_000),
        ("64KB/s", 64_000),
        (" 2 mIb/s ".replace("b", "B"), 2 * MiB),  # the prefix and the i in any case
        ("1KiB/s", 1024),
        ("", None),
        ("  ", None),
    ],
)
def test_a_rate_is_read_in_binary_or_decimal_units(text: str, rate: int | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "'0' is not a rate: write bytes a second like 20MiB/s"),
        ("fast", "'fast' is not a rate: write bytes a second like 20MiB/s"),
        ("-5MiB/s", "'-5MiB/s' is not a rate: give a positive rate like 20MiB/s"),
        ("20MiB", "'20MiB' is a size, not a rate: add /s, like 20MiB/s"),
        ("20", "'20' is not a rate"),  # rclone reads a bare 20 as KiB/s: no guess here
        ("20Mb/s", "'20Mb/s' is in bits: give bytes a second"),
        (
            "50Mb/s",
            "'50Mb/s' is in bits: give bytes a second like 20MiB/s, 500KiB/s, 1.5GiB/s "
            "or 10MB/s (MB: 10^6 bytes, MiB: 2^20); it is 6.25MB/s",
        ),
        (
            "8kbit/s",
            "'8kbit/s' is in bits: give bytes a second like 20MiB/s, 500KiB/s, 1.5GiB/s "
            "or 10MB/s (MB: 10^6 bytes, MiB: 2^20); it is 1kB/s",
        ),
        ("100Mbps", "'100Mbps' is in bits"),
        ("100 Mbit/s", "'100 Mbit/s' is in bits"),
        ("0MiB/s", "'0MiB/s' is below the smallest limit, 1KiB/s"),
        ("1000B/s", "'1000B/s' is below the smallest limit, 1KiB/s"),
        ("20MB/min", "'20MB/min' is not a rate"),
    ],
)
def test_what_is_not_a_rate_is_refused_with_how_to_write_one(text: str, says: str) -> None:
    with pytest.raises(RateError) as caught:
        parse_rate(text)
    assert str(caught.value).startswith(says), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(20 * MiB, "20MiB/s"), (1536 * MiB, "1536MiB/s"), (10_000_000, "10MB/s"),
     (64_000, "64kB/s"), (2 * 1024**3, "2GiB/s"), (1025, "1025B/s")],
)  # fmt: skip
def test_a_rate_is_shown_in_the_largest_unit_that_divides_it(rate: int, shown: str) -> None:
    assert format_rate(rate) == shown
    assert parse_rate(shown) == rate


# An agent with a limit.


@pytest.mark.parametrize("store", ["moto"], indirect=True)
def test_an_agent_with_a_limit_stores_the_right_bytes_whole_and_in_parts_and_says_its_limit(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A 3 MiB file sent whole and a 12 MiB one in 5 MiB parts, under a 64MiB/s limit: the
    store holds the files' bytes; status and the metrics show the limit (no timing here)."""
    metrics = tmp_path / "postbox.prom"
    a = agent(make_grant("runs/1/"), bandwidth_limit="64MiB/s", metrics_file=str(metrics), **PARTS)
    whole, split = os.urandom(3 * MiB), os.urandom(12 * MiB)
    (a.watch / "whole.bin").write_bytes(whole)
    (a.watch / "split.bin").write_bytes(split)
    a.start().ready()
    assert eventually(lambda: a.settled(sent=2), 120), a.text()
    stored = objects(s3, bucket)
    assert stored["runs/1/whole.bin"] == whole
    ((_key, manifest),) = manifests(s3, bucket).items()
    assert b"".join(stored[p["key"]] for p in manifest["parts"]) == split
    state = Path(a.env["POSTBOX_STATE_DIR"])
    assert json.loads((state / "status.json").read_text())["bandwidth_limit"] == 64 * MiB
    assert "bandwidth  64MiB/s, shared by every upload\n" in status(a).stdout
    assert "; sending every file, at most 64MiB/s in all\n" in a.text()  # the start's line
    assert a.stop() == ExitCode.OK
    assert parse(metrics)[("postbox_bandwidth_limit_bytes_per_second", ())] == 64 * MiB
