"""The durable record of what the store confirmed: one row per file, keyed by its relative path.

A row is written (and synced) only after the store answered 2xx, so the journal never claims a
file the bucket lacks. Writes from many workers are committed together (a group commit: one
transaction and one sync for every row waiting at that moment), and each writer returns only
once its own row is durable; reads go through a second connection, which SQLite's WAL mode lets
read while a commit syncs. A file is "done" when its path and version (size, mtime, inode, ctime:
agent.versions.FileVersion) match a row: a rewritten file has a new version and is sent again.
SQLite, so a start-up scan over many files asks it per file instead of holding every row in
memory.

Rows written before the agent kept the ctime (release 0.1.0) have none: such a row matches a file
on the rest, and the scan that finds the file so records its ctime then (`adopt`), so an upgrade
sends nothing again and from then on a rewrite that puts the mtime back is seen.

The file itself (its tables, its modes, a reader's connection, what a damaged one says) is
agent/database.py's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.database import (
    SCHEMA,
    columns,
    corrupt,
    damaged,
    lay_out,
    reader,
    unsound,
    unusable,
    upgrade,
)
from agent.errors import JournalDamaged, JournalError, StateDirError
from agent.versions import FileVersion

_BATCH = 500  # names per query: under SQLite's limit of host parameters (999 before 3.32)
_VERSION = "size, mtime_ns, inode, ctime_ns"  # a row's FileVersion, in its field order


@dataclass
class _Write:
    statement: str
    args: Sequence[Sequence[object]]  # one row of arguments each time it runs
    done: bool = False
    error: Optional[sqlite3.Error] = None


@dataclass(frozen=True)
class Refusal:
    """A file the store (or the agent, before sending) refused for good under one grant."""

    relpath: str
    version: FileVersion  # the version refused
    reason: str
    at: float  # when, as a Unix time


def _sent_versions(
    query: Callable[[str, Sequence[str]], Iterable[Sequence[Any]]], relpaths: Sequence[str]
) -> dict[str, FileVersion]:
    """The recorded version of each of `relpaths` that has one, asked through `query`."""
    found: dict[str, FileVersion] = {}
    for start in range(0, len(relpaths), _BATCH):
        batch = relpaths[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        statement = f"SELECT path, {_VERSION} FROM sent WHERE path IN ({marks})"  # noqa: S608  (only placeholders)
        for path, *version in query(statement, batch):
            found[path] = FileVersion(*version)
    return found


def read_sent(path: Path, relpaths: Sequence[str]) -> dict[str, FileVersion]:
    """`Journal.sent_versions`, read as `read_only` reads (`wait` once the agent has stopped)."""
    try:
        db = reader(path)
        try:
            return _sent_versions(db.execute, relpaths)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path} cannot be read ({exc})") from None


def read_only(path: Path) -> tuple[int, list[Refusal]]:
    """Files ever sent, and every refusal kept (newest first), read without writing or creating
    anything, while the daemon may be writing (`postbox-agent status`). JournalError when the
    journal cannot be read, PermissionError when this user may not read it."""
    try:
        db = reader(path)
        try:
            problem = unsound(db)
            if problem:
                raise JournalDamaged(damaged(path, problem))
            (sent,) = db.execute("SELECT COUNT(*) FROM sent").fetchone()
            ctime = "ctime_ns" if "ctime_ns" in columns(db, "refused") else "NULL"
            rows = db.execute(
                f"SELECT path, size, mtime_ns, inode, {ctime}, reason, refused_at "  # noqa: S608
                "FROM refused ORDER BY refused_at DESC"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        if corrupt(exc):
            raise JournalDamaged(damaged(path, str(exc))) from None
        raise JournalError(f"journal {path} cannot be read ({exc})") from None
    refusals = [
        Refusal(relpath, FileVersion(size, mtime_ns, inode, ctime_ns), reason, at)
        for relpath, size, mtime_ns, inode, ctime_ns, reason, at in rows
    ]
    return int(sent), refusals


class Journal:
    """StateDirError when the journal cannot be opened or written at open (read-only, full),
    JournalDamaged when it is not a sound database (checked at open: SQLite's quick_check; and
    by every read and write after, which then keep the line in `damaged`); JournalError when a
    read or a write fails later for another reason (the caller pauses and tries again)."""

    def __init__(self, path: Path) -> None:
        try:
            lay_out(path)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            problem = unsound(self._db)
            if not problem:
                upgrade(self._db)
                # A write that changes nothing: a state dir with no room for one more page
                # (full, with a journal already there) fails here, not at the first record,
                # after the upload it was to record.
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                self._db.execute(f"PRAGMA user_version = {int(version)}")
            self._reader = sqlite3.connect(str(path), check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error) and corrupt(exc):
                raise JournalDamaged(damaged(path, str(exc))) from None
            raise StateDirError(
                f"journal {path} cannot be opened: {unusable(path.parent, exc)}"
            ) from None
        if problem:
            self._reader.close()
            self._db.close()
            raise JournalDamaged(damaged(path, problem))
        self._path = path
        # The line that says so, once a read or a write found the file damaged while the agent
        # runs: the daemon stops on it (exit 65), as at start.
        self.damaged: Optional[str] = None
        self._lock = threading.Lock()  # the reading connection
        self._writes = threading.Condition()  # guards _pending and _committing
        self._pending: list[_Write] = []
        self._committing = False

    def is_sent(self, relpath: str, sig: FileVersion) -> bool:
        return sig.matches(self.sent_versions([relpath]).get(relpath))

    def sent_versions(self, relpaths: Sequence[str]) -> dict[str, FileVersion]:
        """The recorded version of each of `relpaths` that has one: one query per batch, so
        a scan of 100,000 files does not ask 100,000 times."""
        return _sent_versions(self._all, relpaths)

    def refusals(self, relpaths: Sequence[str]) -> dict[str, tuple[FileVersion, str, str]]:
        """The kept refusal of each of `relpaths` that has one: (the version refused, the grant
        it was refused under, why), one query per batch (a start-up scan asks per folder)."""
        found: dict[str, tuple[FileVersion, str, str]] = {}
        for start in range(0, len(relpaths), _BATCH):
            batch = relpaths[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            columns = f"path, {_VERSION}, grant_id, reason"
            query = f"SELECT {columns} FROM refused WHERE path IN ({marks})"  # noqa: S608
            for path, size, mtime_ns, inode, ctime_ns, grant_id, reason in self._all(query, batch):
                found[path] = (FileVersion(size, mtime_ns, inode, ctime_ns), grant_id, reason)
        return found

    def record(self, relpath: str, sig: FileVersion, key: str, md5: str, etag: str) -> None:
        self._write(
            f"INSERT OR REPLACE INTO sent (path, {_VERSION}, key, md5, etag, sent_at) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(relpath, *_values(sig), key, md5, etag, time.time())],
            f"record {key}",
        )

    def record_part(self, relpath: str, version: str, number: int, md5: str, etag: str) -> None:
        """One part of a file sent in parts (agent/parts.py) is stored: a restart sends the
        others only, for the same version."""
        self._write(
            "INSERT OR REPLACE INTO parts (path, version, number, md5, etag, sent_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(relpath, version, number, md5, etag, time.time())],
            f"record part {number} of {relpath}",
        )

    def parts_of(self, relpath: str, version: str) -> dict[int, str]:
        """The parts of this version of the file stored so far: number -> MD5."""
        rows = self._all(
            "SELECT number, md5 FROM parts WHERE path = ? AND version = ?", (relpath, version)
        )
        return {int(number): str(md5) for number, md5 in rows}

    def record_parts_done(
        self, relpath: str, sig: FileVersion, key: str, md5: str, etag: str
    ) -> None:
        """The manifest is stored: the file is sent, as `record` says it, and then its parts'
        rows go (every version's; rows a crash left between the two are only forgotten later)."""
        self.record(relpath, sig, key, md5, etag)
        self._write("DELETE FROM parts WHERE path = ?", [(relpath,)], f"forget {relpath}'s parts")

    def adopt(self, versions: Sequence[tuple[str, FileVersion]]) -> None:
        """Record the ctime of files a row without one matched (a journal from before it was
        kept), in one commit."""
        self._write(
            "UPDATE sent SET ctime_ns = ? WHERE path = ? AND ctime_ns IS NULL",
            [(sig.ctime_ns, relpath) for relpath, sig in versions],
            f"record the ctime of {len(versions)} file(s)",
        )

    def refuse(self, relpath: str, sig: FileVersion, grant_id: str, reason: str) -> None:
        """The store refused this version of the file for good under this grant."""
        self._write(
            f"INSERT OR REPLACE INTO refused (path, {_VERSION}, grant_id, reason, refused_at) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(relpath, *_values(sig), grant_id, reason, time.time())],
            "record a refusal",
        )

    def refusal(self, relpath: str, sig: FileVersion, grant_id: str) -> Optional[str]:
        """Why the store refused this version under this grant, if it did."""
        return still_refused(self.refusals([relpath]).get(relpath), sig, grant_id)

    def owner_of(self, key: str) -> Optional[str]:
        """The relative path of the file sent as `key`, if any."""
        row = self._one("SELECT path FROM sent WHERE key = ? LIMIT 1", (key,))
        return None if row is None else str(row[0])

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM sent", ())
        return 0 if row is None else int(row[0])

    def _write(self, statement: str, args: Sequence[Sequence[object]], what: str) -> None:
        """Run `statement` once for each row of `args` in the next group commit; return once it
        is durable."""
        write = _Write(statement, args)
        with self._writes:
            self._pending.append(write)
            while not write.done:
                if self._committing:  # another writer commits; ours may be in the next batch
                    self._writes.wait()
                    continue
                batch, self._pending, self._committing = self._pending, [], True
                self._writes.release()
                try:
                    error = self._commit(batch)
                finally:
                    self._writes.acquire()
                    self._committing = False
                for done in batch:
                    done.done, done.error = True, error
                self._writes.notify_all()
        if write.error is not None:
            raise self._failed(write.error, what)

    def _commit(self, batch: list[_Write]) -> Optional[sqlite3.Error]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for write in batch:
                self._db.executemany(write.statement, write.args)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            return exc
        return None

    def _one(self, query: str, args: Sequence[object]) -> Optional[tuple[Any, ...]]:
        rows = self._all(query, args)
        return rows[0] if rows else None

    def _all(self, query: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._reader.execute(query, args).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc, "be read") from None

    def _failed(self, exc: sqlite3.Error, what: str) -> JournalError:
        """What a read or a write that failed says: JournalDamaged (kept in `damaged`) when
        SQLite finds the file damaged, else JournalError (full, locked: it may pass)."""
        if not corrupt(exc):
            return JournalError(f"journal {self._path} cannot {what} ({exc})")
        message = damaged(self._path, str(exc))
        if self.damaged is None:
            self.damaged = message
        return JournalDamaged(message)

    def close(self) -> None:
        """Closed, the -wal folded into the file and gone: the group may read it now."""
        with self._lock, self._writes:
            self._reader.close()
            self._db.close()
        if not os.path.lexists(f"{self._path}-wal"):  # another process has it open: not yet
            with contextlib.suppress(OSError):
                os.chmod(self._path, 0o640)


def still_refused(
    kept: Optional[tuple[FileVersion, str, str]], sig: FileVersion, grant_id: str
) -> Optional[str]:
    """The reason of a kept refusal (`Journal.refusals`) that holds for this version of the file
    under this grant; None if there is none, or it concerns another version or grant."""
    if kept is None or kept[1] != grant_id or not sig.matches(kept[0]):
        return None
    return kept[2]


def _values(sig: FileVersion) -> tuple[object, ...]:
    return (sig.size, sig.mtime_ns, sig.inode, sig.ctime_ns)
