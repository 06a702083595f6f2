"""Journals as the agent leaves them, and the damage a crash, a bad disk or a stray write does to
them (tests/agent/test_journal.py, and the agent as a process in test_service.py)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from agent.journal import Journal


def journal_of(path: Path, rows: int) -> Path:
    """A journal as the agent leaves it after `rows` files (written in one transaction, as many
    group commits would leave them)."""
    Journal(path).close()
    db = sqlite3.connect(str(path))
    with db:
        db.executemany(
            "INSERT INTO sent VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ((f"r/{n:06d}.out", n, n, n, f"k/r/{n:06d}.out", "m" * 32, "e" * 32, 0.0)
             for n in range(rows)),
        )  # fmt: skip
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


def truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def zeroed(path: Path) -> None:
    """As `dd if=/dev/zero of=journal.sqlite3 bs=4096 seek=250 count=50 conv=notrunc`."""
    with path.open("r+b") as out:
        out.seek(250 * 4096)
        out.write(b"\0" * 50 * 4096)


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"not a journal at all\n" * 1000)
