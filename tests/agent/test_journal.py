from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode, JournalDamaged, JournalError
from agent.inbox import Found, Walked
from agent.journal import Journal, read_only
from agent.scanner import Scanner
from agent.versions import FileVersion
from agent.watcher import WatchDir
from demo.stores import Store
from tests.agent.test_parts import PARTS, sending_with_third_part_held
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import fault_proxy
from tests.journals import (
    journal_0_1_0,
    journal_of,
    not_sqlite,
    truncated,
    wal_overwritten,
    zeroed,
)


@pytest.fixture
def store(moto_store: Store) -> Store:
    """What the agent does with its journal does not depend on the store."""
    return moto_store


def test_a_recorded_file_is_sent_until_its_version_changes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    sig = FileVersion(10, 1000, 7)
    assert not journal.is_sent("a/b.txt", sig)
    journal.record("a/b.txt", sig, "p/a/b.txt", "md5", "etag")
    assert journal.is_sent("a/b.txt", sig)
    assert not journal.is_sent("a/b.txt", FileVersion(11, 1000, 7))
    journal.close()
    reopened = Journal(tmp_path / "state" / "journal.sqlite3")
    assert reopened.is_sent("a/b.txt", sig)
    assert reopened.count() == 1


def test_a_file_stored_under_a_new_grant_is_no_longer_listed_as_refused(tmp_path: Path) -> None:
    """`status` read the journal's refusals after the file was stored under the next grant
    ("kept 1 refusal(s), until a new grant" for a file `wait` called stored; a user trial). The
    store's answer clears its refusal; a version refused after another was stored is kept."""
    path = tmp_path / "state" / "journal.sqlite3"
    journal = Journal(path)
    v1, v2 = FileVersion(10, 1000, 7), FileVersion(11, 2000, 7)
    journal.refuse("a.txt", v1, "grant-1", "store answered 403")
    journal.record("a.txt", v1, "p/a.txt", "md5", "etag")  # under grant-2
    assert journal.refusals(["a.txt"]) == {}
    journal.refuse("a.txt", v2, "grant-2", "too large")
    assert journal.refusal("a.txt", v2, "grant-2") == "too large"
    journal.close()
    _, kept = read_only(path)
    assert [r.relpath for r in kept] == ["a.txt"]


def test_a_journal_that_kept_refusals_of_files_stored_since_forgets_them_at_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "journal.sqlite3"
    journal = Journal(path)
    journal.refuse("old.txt", FileVersion(1, 1, 1), "grant-1", "403")
    journal.refuse("still.txt", FileVersion(1, 1, 2), "grant-1", "403")
    journal.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # as a journal of 0.2 left it
        db.execute("DROP TRIGGER stored_is_not_refused")
        db.execute(
            "INSERT INTO sent VALUES ('old.txt', 1, 1, 1, 'k', 'm', 'e', ?, NULL)", (time.time(),)
        )
    Journal(path).close()
    _, kept = read_only(path)
    assert [r.relpath for r in kept] == ["still.txt"]


def test_records_from_many_workers_at_once_are_all_kept_and_readable(tmp_path: Path) -> None:
    """Workers record together (a group commit); each returns only once its row is there."""
    journal = Journal(tmp_path / "journal.sqlite3")
    seen: list[bool] = []

    def work(worker: int) -> None:
        for n in range(10):
            relpath = f"w{worker}/f{n}"
            journal.record(relpath, FileVersion(n, n, n), f"k/{relpath}", "m", "e")
            seen.append(journal.is_sent(relpath, FileVersion(n, n, n)))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 160 and all(seen)
    assert journal.count() == 160
    journal.close()


def test_a_commit_that_fails_fails_every_record_in_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal._db.execute("DROP TABLE sent")  # what a damaged journal would do to every write
    with pytest.raises(JournalError, match="cannot record k/a"):
        journal.record("a", FileVersion(1, 1, 1), "k/a", "m", "e")
    assert journal.damaged is None  # a failed write is not a damaged file: it is tried again
    journal.close()


@pytest.mark.parametrize("use", ["read", "write"])
def test_a_journal_damaged_while_open_says_so_at_the_first_read_or_write_it_spoils(
    tmp_path: Path, use: str
) -> None:
    """Pages zeroed after the journal was opened (and found sound): the first read, or write,
    that lands on them raises JournalDamaged with the way out, and the journal keeps that line
    (`damaged`), which the daemon stops on, however many threads meet the damage."""
    path = journal_of(tmp_path / "state" / "journal.sqlite3", 100_000)
    journal = Journal(path)
    zeroed(path)
    paths = [f"r/{n:06d}.out" for n in range(100_000)]
    rows = [(p, FileVersion(n, n, n, 1)) for n, p in enumerate(paths)]
    spoil: Callable[[], object] = {  # every row: the pages zeroed among them
        "read": lambda: journal.sent_versions(paths),
        "write": lambda: journal.adopt(rows),  # the rows have no ctime yet: each is updated
    }[use]
    with pytest.raises(JournalDamaged) as caught:
        spoil()
    assert caught.value.message.startswith(f"journal {path} is damaged (")
    assert journal.damaged == caught.value.message
    with pytest.raises(JournalDamaged):
        journal.sent_versions(paths)
    assert journal.damaged == caught.value.message  # the first line is kept
    journal.close()


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002])
def test_the_journal_is_the_agents_alone_while_open_and_the_groups_to_read_once_closed(
    tmp_path: Path, umask: int
) -> None:
    """As the unit's StateDirectoryMode=0750 makes the folder, whatever the umask of whoever
    runs the agent (the unit's is 077). While the agent has it open, the journal, its -wal and
    its -shm are 0600: anyone who may open the -shm may lock it, and pause every write. Closed,
    it is 0640: a job in the group postbox reads it (`wait` once the agent stopped, `status`).
    One an earlier release left 0600 is the group's once closed too."""
    old = os.umask(umask)
    try:
        journal = Journal(tmp_path / "state" / "journal.sqlite3")
        journal.record("a.txt", FileVersion(1, 1, 1), "k/a.txt", "m", "e")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()}
    journal.close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o750
    assert modes == {
        "journal.sqlite3": 0o600,
        "journal.sqlite3-wal": 0o600,  # SQLite gives them the database's mode
        "journal.sqlite3-shm": 0o600,
    }
    closed = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()}
    assert closed == {"journal.sqlite3": 0o640}
    assert read_only(tmp_path / "state" / "journal.sqlite3")[0] == 1


@pytest.mark.parametrize("damage", [truncated, zeroed, not_sqlite])
def test_a_damaged_journal_is_found_at_open_and_says_the_way_out(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """20,000 rows, then damaged as a crash, a bad disk or a stray write would. SQLite opens
    some of these without a word and fails only at the first query that lands on a bad page:
    the agent checks the file's structure at start (quick_check) and stops with exit 65."""
    path = journal_of(tmp_path / "state" / "journal.sqlite3", 20_000)
    assert path.stat().st_size > 300 * 4096  # the zeroed pages are inside the file
    damage(path)
    with pytest.raises(JournalDamaged) as caught:
        Journal(path)
    assert caught.value.exit_code == ExitCode.JOURNAL_DAMAGED == 65
    message = caught.value.message
    assert message.startswith(f"journal {path} is damaged (") and "\n" not in message
    assert f"mv {path}* {path.parent / 'damaged'}/" in message
    with pytest.raises(JournalDamaged):
        read_only(path)  # status and check read it so too


def test_the_way_out_works_and_a_sound_journal_is_not_called_damaged(tmp_path: Path) -> None:
    path = journal_of(tmp_path / "state" / "journal.sqlite3", 20_000)
    assert read_only(path) == (20_000, [])
    zeroed(path)
    with pytest.raises(JournalDamaged) as caught:
        Journal(path)
    aside = path.parent / "damaged"
    way_out = "mkdir " + caught.value.message.split("(mkdir ", 1)[1].split(") and start", 1)[0]
    subprocess.run(["sh", "-c", way_out], check=True)  # the command the line gives, as given
    assert not path.exists() and (aside / path.name).exists()
    fresh = Journal(path)  # what the agent does at its next start
    assert fresh.count() == 0
    fresh.close()


def test_a_journal_from_release_0_1_0_is_upgraded_and_its_rows_adopt_the_ctime(
    tmp_path: Path,
) -> None:
    """Its rows have no ctime: each matches its file on size, mtime and inode (nothing is sent
    again), until `adopt` records the ctime; from then on a rewrite that put the mtime back
    is a new version."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "a.bin").write_bytes(b"C" * 4096)
    path = journal_0_1_0(tmp_path / "state" / "journal.sqlite3", watch, "p/")
    journal = Journal(path)
    now = FileVersion.at(watch / "a.bin")
    assert now is not None and now.ctime_ns is not None
    assert journal.is_sent("a.bin", now)
    (recorded,) = journal.sent_versions(["a.bin"]).values()
    assert recorded.ctime_ns is None and now.matches(recorded)
    journal.adopt([("a.bin", now)])
    assert journal.sent_versions(["a.bin"])["a.bin"] == now
    rewritten = FileVersion(now.size, now.mtime_ns, now.inode, now.ctime_ns + 1)
    assert not journal.is_sent("a.bin", rewritten)
    journal.close()
    assert read_only(path) == (1, [])


def test_a_rewrite_that_puts_the_mtime_back_is_a_new_version(tmp_path: Path) -> None:
    """`cp -p`, `touch -r`, `rsync -t --inplace` and `tar x` put the mtime back; the ctime
    they cannot."""
    path = tmp_path / "same.bin"
    path.write_bytes(b"C" * 4096)
    before = FileVersion.at(path)
    st = path.stat()
    time.sleep(0.02)  # past the kernel's timestamp tick (a few ms): what a writer cannot undo
    path.write_bytes(b"D" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = FileVersion.at(path)
    assert before is not None and after is not None
    assert (after.size, after.mtime_ns, after.inode) == (before.size, before.mtime_ns, before.inode)
    assert after != before and not after.matches(before)


class UnreadableJournal(Journal):
    """A journal whose every lookup fails as a disk's I/O error makes it: not damage (which
    the daemon stops on), a fault that may pass."""

    def sent_versions(self, relpaths: Sequence[str]) -> dict[str, FileVersion]:
        raise JournalError(f"journal {self._path} cannot be read (disk I/O error)")

    def refusals(self, relpaths: Sequence[str]) -> dict[str, tuple[FileVersion, str, str]]:
        raise JournalError(f"journal {self._path} cannot be read (disk I/O error)")


def test_a_walk_that_cannot_read_the_journal_passes_every_file_on_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The walk cannot tell which files were sent: it skips none (each is looked up again
    before it is sent), ends as a walk does, and says why once, not once a chunk; its thread
    does not end the daemon (before, it did: exit 1, "a bug")."""
    watch = tmp_path / "watch"
    for n in range(2500):  # two folders of two chunks each (a walk lists 1,000 at a time)
        (watch / f"d{n % 2}").mkdir(parents=True, exist_ok=True)
        (watch / f"d{n % 2}" / f"f{n:04d}").write_bytes(b"x")
    path = tmp_path / "state" / "journal.sqlite3"
    journal = UnreadableJournal(path)
    messages: list[object] = []
    scanner = Scanner(WatchDir(watch, messages.append), journal, messages.append, threading.Event())
    scanner.walk("")
    found = [relpath for m in messages if isinstance(m, Found) for relpath, _ in m.files]
    assert len(found) == len(set(found)) == 2500
    assert isinstance(messages[-1], Walked)
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert said == [
        f"journal {path} cannot be read (disk I/O error): the files this walk finds "
        "are looked up in it again before each is sent"
    ]
    journal.close()


def test_a_journal_damaged_while_a_file_goes_in_parts_stops_the_agent_and_wait_says_so(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """Random bytes over the WAL while a file's third part is held. `wait` then asks: the
    journal cannot say what was stored, so no file is called stored, and the socket answers on
    (no thread dies). The agent says once, in one line, which journal and the way out, ends
    what was under way and stops with exit 65 (the unit does not restart it), its stop line
    last; `wait` names the files left as `journal unreadable` and, the agent gone, exits 6."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"), **PARTS)
        (a.watch / "small.txt").write_bytes(b"sent before")
        sending_with_third_part_held(a, proxy)
        # small.txt and big.bin's parts go out side by side: the third part can reach the
        # proxy before small.txt's answer came back (CI saw it once in ~40 runs).
        assert eventually(lambda: a.uploaded("runs/1/small.txt") == 1, 60), a.text()
        journal = Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3"
        wal_overwritten(journal)
        proxy.by_key = {}
        proxy.released.set()
        done = subprocess.run(
            [*AGENT, "wait", "--json", "--agent-grace", "2s"],
            env=a.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert a.wait(60) == ExitCode.JOURNAL_DAMAGED, a.text()
    assert done.returncode == ExitCode.NOT_RUNNING, done
    result = json.loads(done.stdout)
    assert result["stored"] == 0
    assert {"path": "small.txt", "state": "journal unreadable"} in result["left"], result
    lines = a.text().splitlines()
    errors = [line for line in lines if " ERROR " in line or "CRITICAL" in line]
    assert len(errors) == 1 and f"journal {journal} is damaged" in errors[0], a.text()
    assert f"mv {journal}* " in errors[0] and "start the agent again" in errors[0]
    assert " INFO stopped: " in lines[-1], a.text()


def test_a_sigterm_that_finds_the_journal_damaged_stops_with_65_and_the_stop_line_last(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """The WAL is overwritten while the agent idles; the stop's walk of the watch dir is the
    first to read the journal. The agent says once what is damaged and the way out, then its
    stop line, last; exit 65, never 1 (a bug's code, which the unit restarts on)."""
    a = agent(make_grant("runs/1/")).start().ready()
    for name in ("one.txt", "two.txt"):
        (a.watch / name).write_bytes(name.encode())
    assert eventually(lambda: a.settled(sent=2)), a.text()
    journal = Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3"
    wal_overwritten(journal)
    assert a.stop() == ExitCode.JOURNAL_DAMAGED, a.text()
    lines = a.text().splitlines()
    errors = [line for line in lines if " ERROR " in line or "CRITICAL" in line]
    assert len(errors) == 1 and f"journal {journal} is damaged" in errors[0], a.text()
    assert lines.index(errors[0]) < len(lines) - 1
    assert " INFO stopped: 2 file(s) uploaded in this run" in lines[-1], a.text()
    assert sorted(objects(s3, bucket)) == ["runs/1/one.txt", "runs/1/two.txt"]


def test_a_file_that_comes_after_the_journal_is_damaged_is_not_sent_and_is_left(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """The WAL is overwritten while the agent idles; the next file's delivery is the first to
    read the journal, which cannot say whether that file was sent: it is not sent, the agent
    says once what is damaged and stops (65), and its stop line names the file left."""
    a = agent(make_grant("runs/1/")).start().ready()
    (a.watch / "before.txt").write_bytes(b"1")
    assert eventually(lambda: a.settled(sent=1)), a.text()
    wal_overwritten(Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3")
    (a.watch / "after.txt").write_bytes(b"2")
    assert a.wait(60) == ExitCode.JOURNAL_DAMAGED, a.text()
    lines = a.text().splitlines()
    errors = [line for line in lines if " ERROR " in line or "CRITICAL" in line]
    assert len(errors) == 1 and "is damaged" in errors[0], a.text()
    assert lines[-1].endswith("(1 due): after.txt"), a.text()
    assert sorted(objects(s3, bucket)) == ["runs/1/before.txt"]


def test_the_journal_writes_through_to_the_disk_before_a_record_counts(tmp_path: Path) -> None:
    """README, Guarantees: a file is deleted or moved only once its record is durable. SQLite
    keeps that only with synchronous=FULL under WAL (NORMAL may lose the last commits at a
    power cut): the connection the agent records on says FULL (2), and WAL."""
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        assert journal._db.execute("PRAGMA synchronous").fetchone() == (2,)
        assert journal._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        journal.close()
