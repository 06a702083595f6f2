"""Journals as the agent leaves them, and the damage a crash, a bad disk or a stray write does to
them (tests/agent/test_journal.py, and the agent as a process in test_service.py)."""

from __future__ import annotations

import os
import random
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
            "INSERT INTO sent (path, size, mtime_ns, inode, key, md5, etag, sent_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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


def wal_overwritten(path: Path) -> None:
    """Random bytes over the journal's write-ahead log while the agent has it open, as a stray
    write would leave it: every read after fails (SQLite: "file is not a database")."""
    wal = path.with_name(path.name + "-wal")
    size = wal.stat().st_size
    assert size > 0, "the agent has written nothing to its WAL yet"
    with wal.open("r+b") as out:
        out.write(random.Random(size).randbytes(size))


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"not a journal at all\n" * 1000)


# The journal's schema as release 0.1.0 writes it (agent/journal.py at 94ac404): no ctime.
SCHEMA_0_1_0 = """
CREATE TABLE IF NOT EXISTS sent (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    key TEXT NOT NULL,
    md5 TEXT NOT NULL,
    etag TEXT NOT NULL,
    sent_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    grant_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    refused_at REAL NOT NULL
);
"""


def journal_0_1_0(path: Path, watch: Path, prefix: str) -> Path:
    """A journal as release 0.1.0 leaves it after sending every file under `watch` as
    `prefix` + its relative path: its schema, its WAL mode, its rows (INSERT OR REPLACE INTO
    sent VALUES of eight)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_0_1_0)
    for file in sorted(p for p in watch.rglob("*") if p.is_file()):
        st, relpath = file.lstat(), file.relative_to(watch).as_posix()
        db.execute(
            "INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (relpath, st.st_size, st.st_mtime_ns, st.st_ino, prefix + relpath, "m", "e", 1.0),
        )
    db.close()
    return path
