"""Start-up at scale: 100,000 files in the watch dir, all but 100 already in the journal."""

from __future__ import annotations

import logging
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest

from agent.errors import ExitCode
from agent.settings import Settings
from agent.wiring import parts
from demo.batch import lay_out
from demo.stores import Store
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, with_url
from tests.faultproxy import fault_proxy

FOLDERS, PER_FOLDER, UNSENT = 100, 1000, 100
MiB = 1024 * 1024


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


def test_a_start_up_scan_of_100k_files_sends_only_the_unsent_and_holds_only_them(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
    tmp_path: Path,
) -> None:
    """Memory is measured with tracemalloc around the agent's own start-up scan: holding every
    path would take tens of MiB (about 500 bytes each); the scan walks one folder at a time and
    keeps only the files to send."""
    with fault_proxy(store.endpoint) as proxy:
        proxy.keep_bodies = False
        grant = with_url(make_grant("k/"), f"{proxy.url}/{bucket}/")
        a = agent(grant)
        state = Path(a.env["POSTBOX_STATE_DIR"])
        state.mkdir()
        began = time.monotonic()
        lay_out(a.watch, state, FOLDERS, PER_FOLDER, unsent=UNSENT)
        print(f"scale: laid out {FOLDERS * PER_FOLDER} files in {time.monotonic() - began:.1f}s")

        settings = Settings(watch_dir=a.watch, state_dir=state, grant_file=grant)
        in_process = parts(settings).agent()
        said: list[str] = []
        listener = logging.Handler(logging.INFO)
        listener.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("agent.scanner").addHandler(listener)
        logging.getLogger("agent.scanner").setLevel(logging.INFO)
        tracemalloc.start()
        try:
            in_process.parts.scanner.walk()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            in_process.drain()
            logging.getLogger("agent.scanner").removeHandler(listener)
        print(f"scale: the start-up scan's peak traced memory: {peak / MiB:.1f} MiB")
        assert (
            f"start-up scan: {UNSENT} file(s) to send, {FOLDERS * PER_FOLDER - UNSENT} "
            + ("already sent")
            in said
        )
        assert peak < 16 * MiB

        a.start().ready()
        assert eventually(lambda: proxy.posts == UNSENT, timeout=120), a.text()
        assert eventually(lambda: a.settled(sent=UNSENT)), a.counts()
        assert a.stop() == ExitCode.OK
    assert proxy.posts == UNSENT
    assert f"{UNSENT} file(s) to send, {FOLDERS * PER_FOLDER - UNSENT} already sent" in a.text()
    sent = {e.key for e in proxy.exchanges}
    assert sent == {
        f"k/batch{FOLDERS - 1:03d}/r{n:04d}.out" for n in range(PER_FOLDER - UNSENT, PER_FOLDER)
    }
