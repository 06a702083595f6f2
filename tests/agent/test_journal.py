from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from agent.errors import JournalError
from agent.files import FileVersion
from agent.journal import Journal


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


def test_a_state_dir_and_journal_the_agent_creates_are_private(tmp_path: Path) -> None:
    """As the unit's StateDirectoryMode=0700 and UMask=0077 would make them, whatever the umask
    of whoever runs the agent: the journal names every file sent."""
    old = os.umask(0o022)
    try:
        journal = Journal(tmp_path / "state" / "journal.sqlite3")
        journal.record("a.txt", FileVersion(1, 1, 1), "k/a.txt", "m", "e")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()}
    journal.close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert modes["journal.sqlite3"] == 0o600
    assert modes["journal.sqlite3-wal"] == 0o600  # SQLite gives them the database's mode
    assert modes["journal.sqlite3-shm"] == 0o600
