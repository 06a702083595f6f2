"""Crash torture: the agent killed with SIGKILL again and again while a batch job writes.

A writer drops files of mixed sizes (bytes to tens of MiB) into nested folders, some written in
place, some under a temporary name and renamed. Meanwhile the agent is started, killed with
SIGKILL at a seeded random moment, and started again, `TORTURE_KILLS` times; then it runs until
everything has landed. A proxy between agent and store records every upload: which key, when it
began, what the store answered. After each kill the journal is read and compared with the bucket.

The promises checked: every file is in the bucket with its MD5; the journal never claims a key
the bucket lacks; a file is stored twice only if its upload was under way at a kill (begun in
that run and not yet in the journal). The counts are printed.

Knobs (environment): TORTURE_KILLS (default 30), TORTURE_FILES (default 300), TORTURE_SEED
(default 20261123). The same seed gives the same files and the same kill moments.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode
from demo.stores import Store
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, with_url
from tests.faultproxy import fault_proxy

KILLS = int(os.environ.get("TORTURE_KILLS", "30"))
FILES = int(os.environ.get("TORTURE_FILES", "300"))
SEED = int(os.environ.get("TORTURE_SEED", "20261123"))
MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(600 + 20 * KILLS)


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


@dataclass(frozen=True)
class Planned:
    relpath: str
    size: int
    renamed: bool  # written as .part, then renamed into place


def plan(rng: random.Random, count: int) -> list[Planned]:
    """Mostly small files, some of a few MiB, a few of tens of MiB; nested folders."""
    files = []
    for n in range(count):
        roll = rng.random()
        if roll < 0.02:
            size = rng.randrange(10 * MiB, 40 * MiB)
        elif roll < 0.10:
            size = rng.randrange(1 * MiB, 8 * MiB)
        elif roll < 0.30:
            size = rng.randrange(4096, 1 * MiB)
        else:
            size = rng.randrange(0, 4096)
        folder = "/".join(f"d{rng.randrange(4)}" for _ in range(rng.randrange(3)))
        relpath = f"{folder}/f{n:04d}.bin" if folder else f"f{n:04d}.bin"
        files.append(Planned(relpath, size, rng.random() < 0.3))
    return files


class Writer(threading.Thread):
    """The batch job: writes the planned files over `seconds`, records each file's MD5."""

    def __init__(self, watch: Path, files: list[Planned], seed: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.watch, self.files, self.seconds = watch, files, seconds
        self.rng = random.Random(seed)
        self.md5: dict[str, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            pause = self.seconds / max(1, len(self.files))
            for planned in self.files:
                data = self.rng.randbytes(planned.size)
                path = self.watch / planned.relpath
                path.parent.mkdir(parents=True, exist_ok=True)
                target = path.with_name(path.name + ".part") if planned.renamed else path
                target.write_bytes(data)
                if planned.renamed:
                    target.rename(path)
                self.md5[planned.relpath] = hashlib.md5(data).hexdigest()
                time.sleep(self.rng.uniform(0, 2 * pause))
        except BaseException as exc:  # reported by the test
            self.error = exc


def journal_keys(state: Path) -> set[str]:
    path = state / "journal.sqlite3"
    if not path.exists():
        return set()
    db = sqlite3.connect(str(path))
    try:
        return {row[0] for row in db.execute("SELECT key FROM sent")}
    except sqlite3.OperationalError:  # killed before the table was made
        return set()
    finally:
        db.close()


def bucket_etags(s3: Any, bucket: str) -> dict[str, str]:
    etags = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            etags[item["Key"]] = item["ETag"].strip('"')
    return etags


def test_sigkill_at_random_moments_loses_nothing_and_resends_only_what_was_in_flight(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    files = plan(rng, FILES)
    kill_after = [rng.uniform(0.3, 2.5) for _ in range(KILLS)]
    prefix = "torture/"
    with fault_proxy(store.endpoint) as proxy:
        proxy.keep_bodies = False
        a = agent(with_url(make_grant(prefix, "2h"), f"{proxy.url}/{bucket}/"), concurrency="4")
        state = Path(a.env["POSTBOX_STATE_DIR"])
        writer = Writer(a.watch, files, SEED, seconds=sum(kill_after) * 0.8)
        writer.start()
        in_flight: set[str] = set()  # begun in a run, not in the journal after its kill
        lies = []
        for seconds in kill_after:
            first = len(proxy.exchanges)
            a.start()
            time.sleep(seconds)
            a.kill()
            journal = journal_keys(state)
            begun = {e.key for e in proxy.exchanges[first:] if e.method == "POST"}
            in_flight |= begun - journal
            lies += sorted(journal - set(bucket_etags(s3, bucket)))
        writer.join(timeout=300)
        assert writer.error is None and not writer.is_alive()
        assert lies == [], "the journal claimed objects the bucket did not have"

        a.start().ready()
        expected = {prefix + relpath: md5 for relpath, md5 in writer.md5.items()}

        # The bucket alone is not enough to wait for: an upload that was stored before a kill
        # but not journaled is already there, and this run must still send and journal it.
        def settled() -> bool:
            return bucket_etags(s3, bucket) == expected and journal_keys(state) == set(expected)

        assert eventually(settled, timeout=300), a.text()
        assert a.stop() == ExitCode.OK
        assert journal_keys(state) == set(expected)

    stored = Counter(e.key for e in proxy.exchanges if e.method == "POST" and 200 <= e.status < 300)
    resent = {key for key, times in stored.items() if times > 1}
    print(
        f"torture (seed {SEED}): {len(files)} files, {KILLS} SIGKILLs, "
        f"{sum(stored.values())} uploads stored, {len(resent)} files stored twice or more, "
        f"{len(in_flight)} uploads in flight at a kill, {len(lies)} journal entries without object"
    )
    assert resent <= in_flight
