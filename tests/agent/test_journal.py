from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from agent.errors import ExitCode, JournalDamaged, JournalError
from agent.files import FileVersion
from agent.journal import Journal, read_only
from tests.journals import journal_0_1_0, journal_of, not_sqlite, truncated, zeroed


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
    journal.close()


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002])
def test_a_state_dir_and_journal_are_readable_by_the_group_and_no_one_else(
    tmp_path: Path, umask: int
) -> None:
    """As the unit's StateDirectoryMode=0750 makes the folder, whatever the umask of whoever
    runs the agent (the unit's is 077): a job in the group postbox reads them (`wait` once the
    agent stopped, `status`), others not at all, and no one but the agent writes them. A
    journal an earlier release made 0600 is opened up to the group at the next start."""
    old = os.umask(umask)
    try:
        journal = Journal(tmp_path / "state" / "journal.sqlite3")
        journal.record("a.txt", FileVersion(1, 1, 1), "k/a.txt", "m", "e")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()}
    journal.close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o750
    assert modes["journal.sqlite3"] == 0o640
    assert modes["journal.sqlite3-wal"] == 0o640  # SQLite gives them the database's mode
    assert modes["journal.sqlite3-shm"] == 0o640
    (tmp_path / "state" / "journal.sqlite3").chmod(0o600)
    Journal(tmp_path / "state" / "journal.sqlite3").close()
    assert stat.S_IMODE((tmp_path / "state" / "journal.sqlite3").stat().st_mode) == 0o640


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
