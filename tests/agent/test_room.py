"""Memory bounded however many files wait: the agent holds at most a room's worth of files on
their way (agent/scanner.py: Room). Walks wait for room; events about files it has no room for
are let go, and their folder is walked once there is. Each file is still stored once.

The agent runs in-process (tests/inprocess.py) with a room of 100 and walks that hold 50 files
at a time, so a few hundred files stand for the million a job may leave behind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agent import walk
from agent.errors import ExitCode
from agent.ledger import Ledger
from agent.notify import Notifier
from agent.rules import Owed
from demo.stores import Store
from demo.systemd import NotifyListener
from tests.agentprocess import eventually
from tests.conftest import GrantMaker, with_url
from tests.faultproxy import HOLD, fault_proxy
from tests.inprocess import running

ROOM, CHUNK = 100, 50


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


@pytest.fixture
def peak(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most files the ledger held at once (every entry goes in through `Ledger._set`)."""
    most = [0]
    original = Ledger._set

    def counted(self: Ledger, path: str, entry: Any) -> None:
        original(self, path, entry)
        most[0] = max(most[0], len(self))

    monkeypatch.setattr(Ledger, "_set", counted)
    monkeypatch.setattr(walk, "WALK_CHUNK", CHUNK)
    return most


def _files(watch: Path, **folders: int) -> set[str]:
    """`count` small files in each folder; their keys under k/."""
    keys = set()
    for folder, count in folders.items():
        (watch / folder).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            (watch / folder / f"{n:04d}.out").write_bytes(b"%d\n" % n)
            keys.add(f"k/{folder}/{n:04d}.out")
    return keys


def _posted(proxy: Any) -> list[str]:
    return [e.key for e in proxy.exchanges if e.method == "POST"]


def test_a_start_with_more_files_than_the_room_holds_a_room_and_sends_each_once(
    make_grant: GrantMaker, store: Store, bucket: str, tmp_path: Path, peak: list[int]
) -> None:
    """1,200 files in one folder and 100 in each of three more wait when the agent starts. It
    says it is ready once the walk waits for room, then walks on as files are sent; the ledger
    never holds more than the room (a million files waiting would need 600 MB held at once)."""
    watch = tmp_path / "watch"
    keys = _files(watch, big=1200, a=100, b=100, c=100)
    with fault_proxy(store.endpoint) as proxy:
        proxy.keep_bodies = False
        grant = with_url(make_grant("k/"), f"{proxy.url}/{bucket}/")
        with running(watch, tmp_path / "state", grant, room=ROOM) as agent:
            agent.ready()
            assert eventually(lambda: len(_posted(proxy)) >= len(keys), timeout=120), agent.text()
            assert eventually(lambda: "1500 file(s) to send, 0 already sent" in agent.text())
    assert sorted(_posted(proxy)) == sorted(keys)
    text = agent.text()
    waited = text.index("the rest of the watch dir is walked as they are sent (100 at a time)")
    assert waited < text.index("start-up scan: 1500 file(s) to send, 0 already sent")
    assert ROOM <= peak[0] <= ROOM + CHUNK


def test_the_agent_is_ready_while_its_start_up_walk_waits_for_room(
    make_grant: GrantMaker, store: Store, bucket: str, tmp_path: Path, peak: list[int]
) -> None:
    """systemd's start timeout must not wait for a million files to be sent: with every upload
    held, the start-up walk cannot end, and READY=1 comes all the same."""
    watch = tmp_path / "watch"
    _files(watch, big=300)
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        with fault_proxy(store.endpoint, default=HOLD) as proxy:
            proxy.stall_seconds = 120
            grant = with_url(make_grant("k/"), f"{proxy.url}/{bucket}/")
            notifier = Notifier(str(listener.path))
            with running(watch, tmp_path / "state", grant, notifier=notifier, room=ROOM) as agent:
                assert listener.wait_for("READY=1", 30), agent.text()
                assert "300 file(s) to send, 0 already sent" not in agent.text()
                proxy.released.set()
    finally:
        listener.close()
    assert peak[0] <= ROOM + CHUNK


def test_files_that_arrive_while_the_room_is_full_are_found_by_a_walk_and_sent_once(
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
    tmp_path: Path,
    peak: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every upload is held while 400 files are written, in the watch dir and a folder below:
    the ledger fills to the room, the events of the rest are let go, and once uploads free the
    room their folders are walked. Each file is stored once."""
    let_go: list[str] = []
    owe = Owed.owe
    monkeypatch.setattr(Owed, "owe", lambda self, path: (let_go.append(path), owe(self, path)))
    watch = tmp_path / "watch"
    watch.mkdir()
    with fault_proxy(store.endpoint, default=HOLD) as proxy:
        proxy.keep_bodies = False
        proxy.stall_seconds = 120
        grant = with_url(make_grant("k/"), f"{proxy.url}/{bucket}/")
        with running(watch, tmp_path / "state", grant, room=ROOM) as agent:
            agent.ready()
            keys = _files(watch, out=200, **{"deep/er": 200})
            assert eventually(lambda: "deep/er/0199.out" in let_go), agent.text()
            assert "100 files on their way, as many as the agent holds at once" in agent.text()
            proxy.released.set()
            assert eventually(lambda: len(_posted(proxy)) >= len(keys), timeout=120), agent.text()
            assert eventually(lambda: agent.agent.core.ledger.counts()["due"] == 0)
    assert sorted(_posted(proxy)) == sorted(keys)
    assert {path.rpartition("/")[0] for path in let_go} <= {"out", "deep/er"}
    assert peak[0] <= ROOM + CHUNK  # the room, and a walk's find it did not know of yet


def test_a_stop_while_the_walk_waits_for_room_still_sends_every_file(
    make_grant: GrantMaker, store: Store, bucket: str, tmp_path: Path, peak: list[int]
) -> None:
    """SIGTERM as the start-up walk first waits: the stop sends what is complete, and that is
    every file the walk had not reached yet too; the agent ends with nothing left (exit 0)."""
    watch = tmp_path / "watch"
    keys = _files(watch, big=500, small=100)
    with fault_proxy(store.endpoint) as proxy:
        proxy.keep_bodies = False
        grant = with_url(make_grant("k/"), f"{proxy.url}/{bucket}/")
        with running(watch, tmp_path / "state", grant, room=ROOM) as agent:
            assert eventually(lambda: "walked as they are sent" in agent.text()), agent.text()
            agent.agent.signal()
            assert agent.wait(120) == ExitCode.OK, agent.text()
    assert sorted(_posted(proxy)) == sorted(keys)
    assert "0 left" not in agent.text() and "left in" not in agent.text()
    assert peak[0] <= ROOM + CHUNK


def test_a_stop_without_time_to_walk_on_says_files_were_not_yet_walked(
    make_grant: GrantMaker, store: Store, bucket: str, tmp_path: Path, peak: list[int]
) -> None:
    """With no stop budget, a stop while the walk waits for room cannot count what it has not
    walked: the last line says files are left beyond those it names, and the exit status is 3."""
    watch = tmp_path / "watch"
    keys = _files(watch, big=600)
    with fault_proxy(store.endpoint, default=HOLD) as proxy:
        proxy.keep_bodies = False
        proxy.stall_seconds = 120
        grant = with_url(make_grant("k/"), f"{proxy.url}/{bucket}/")
        with running(watch, tmp_path / "state", grant, room=ROOM, stop_budget_seconds=0) as agent:
            assert eventually(lambda: "walked as they are sent" in agent.text()), agent.text()
            agent.agent.signal()
            proxy.released.set()
            assert agent.wait(120) == ExitCode.FILES_LEFT, agent.text()
    last = agent.text().splitlines()[-1]
    # Due or still settling, as far as their settle timers got before the signal: a busy
    # machine decides which, and either is left.
    assert re.search(r" \d+ left in .* \(\d+ (due|settling)", last), last
    assert last.endswith(f"; more in {watch} not yet walked (more than the agent holds at once)")
    assert len(_posted(proxy)) < len(keys)


def test_a_walk_holds_a_chunk_of_a_folder_at_a_time_and_passes_over_one_that_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of 120 files comes as 50, 50 and 20; a folder gone by the time it is walked
    (moved or removed since its event) is passed over without a word. One that cannot be listed
    is said, once (tests/agent/test_changes.py)."""
    monkeypatch.setattr(walk, "WALK_CHUNK", CHUNK)
    _files(tmp_path, big=120)
    said: list[str] = []
    heard = lambda folder, why: said.append(f"{folder}: {why}")  # noqa: E731
    chunks = list(walk.walk(tmp_path, "", lambda: False, heard))
    assert [(folder, len(files)) for folder, files in chunks] == [
        ("", 0),
        ("big", 50),
        ("big", 50),
        ("big", 20),
    ]
    assert sorted(path for _, files in chunks for path, _ in files) == [
        f"big/{n:04d}.out" for n in range(120)
    ]
    assert list(walk.walk(tmp_path, "gone", lambda: False, heard)) == []
    assert said == []
