"""A misbehaving store: every kind of fault is retried, with exponential backoff and jitter.

Between the agent (a real process) and moto sits `tests.faultproxy`: per file, a seeded script of
faults (500 InternalError, 503 SlowDown, a connection reset mid-body, a close before answering, a
stall past the agent's read timeout, an answer cut short), then the store's own answer.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode
from demo.stores import Store
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import CLOSE, FORWARD, RESET, STALL, TRUNCATE, Answer, fault_proxy

SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
INTERNAL = (500, "InternalError", "We encountered an internal error. Please try again.")
FAULTS: list[Answer] = [SLOW_DOWN, INTERNAL, RESET, CLOSE, STALL, TRUNCATE]
READ_TIMEOUT = 1.5  # the agent's, so a stall (the proxy's 3 s) outlasts it
MiB = 1024 * 1024


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


def test_every_kind_of_fault_is_retried_with_backoff_until_every_file_lands(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    rng = random.Random(7)
    scripts: dict[str, list[Answer]] = {}
    expected: dict[str, bytes] = {}
    for n in range(16):
        key = f"faults/f{n:02d}.bin"
        faults = [FAULTS[(n + i) % len(FAULTS)] for i in range(1 + n % 3)]
        scripts[key] = [*faults, FORWARD]
        expected[key] = rng.randbytes(rng.choice([0, 100, 200_000, 3 * MiB]))
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {key: list(script) for key, script in scripts.items()}
        proxy.stall_seconds = 2 * READ_TIMEOUT
        proxy.keep_bodies = False
        grant = with_url(make_grant("faults/", "10m"), f"{proxy.url}/{bucket}/")
        a = agent(grant, concurrency="4", read_timeout=str(READ_TIMEOUT))
        for key, data in expected.items():
            (a.watch / key.split("/", 1)[1]).write_bytes(data)
        a.start().ready()
        # A truncated answer leaves the object stored: wait for the agent to know it too.
        assert eventually(lambda: all(a.uploaded(key) for key in expected), timeout=120), a.text()
        assert a.stop() == ExitCode.OK
    assert objects(s3, bucket) == expected

    shares = []  # each wait as a share of its window, 2**i: full jitter spreads them over 0..1
    for key, script in scripts.items():
        attempts = proxy.attempts(key)
        assert [e.answer for e in attempts] == [
            f if isinstance(f, str) else str(f[0]) for f in script
        ], key
        for i, (before, after) in enumerate(zip(attempts, attempts[1:])):
            gap = after.began - before.began
            if before.answer == STALL:
                gap -= READ_TIMEOUT  # the attempt itself lasted until the read timeout
            times = [(e.answer, round(e.began - attempts[0].began, 2)) for e in attempts]
            assert -0.05 <= gap <= 2**i + 1.0, (key, i, gap, times)  # full jitter: 0..2**i
            shares.append(gap / 2**i)
    print(f"faults: {len(shares)} retries; wait / window: {min(shares):.2f}-{max(shares):.2f}")
    assert max(shares) - min(shares) > 0.1, "every wait was the same: no jitter"


def test_memory_stays_bounded_while_a_large_file_is_reset_mid_body_and_resent(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    """A 96 MiB file, reset twice mid-body: the agent's peak RSS grows by far less than the file.

    The agent streams the file in 1 MiB chunks; a version that read it whole would grow by at
    least 96 MiB. This is a bound on behaviour, not a speed goal (see benchmarks/ for those).
    """
    size = 96 * MiB
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"big/large.bin": [RESET, RESET, FORWARD]}
        proxy.keep_bodies = False
        a = agent(with_url(make_grant("big/", "10m"), f"{proxy.url}/{bucket}/"))
        a.start().ready()
        assert a.process is not None
        baseline = _peak_rss(a.process.pid)
        with (a.watch / "large.bin").open("wb") as out:
            for _ in range(size // MiB):
                out.write(os.urandom(MiB))
        assert eventually(lambda: a.uploaded("big/large.bin") == 1, timeout=120), a.text()
        grown = _peak_rss(a.process.pid) - baseline
        assert a.stop() == ExitCode.OK
    assert [e.answer for e in proxy.attempts("big/large.bin")] == [RESET, RESET, FORWARD]
    head = s3.head_object(Bucket=bucket, Key="big/large.bin")
    assert head["ContentLength"] == size
    print(f"memory: peak RSS grew {grown / MiB:.1f} MiB while sending a {size // MiB} MiB file")
    assert grown < size / 4


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")
