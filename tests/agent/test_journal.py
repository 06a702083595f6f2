from __future__ import annotations

from pathlib import Path

from agent.journal import Journal, Signature


def test_a_recorded_file_is_sent_until_its_signature_changes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    sig = Signature(10, 1000, 7)
    assert not journal.is_sent("a/b.txt", sig)
    journal.record("a/b.txt", sig, "p/a/b.txt", "md5", "etag")
    assert journal.is_sent("a/b.txt", sig)
    assert not journal.is_sent("a/b.txt", Signature(11, 1000, 7))
    journal.close()
    reopened = Journal(tmp_path / "state" / "journal.sqlite3")
    assert reopened.is_sent("a/b.txt", sig)
    assert reopened.count() == 1
