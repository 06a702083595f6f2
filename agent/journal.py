"""The durable record of what the store confirmed: one row per file, keyed by its relative path.

A row is written (and synced) only after the store answered 2xx, so the journal never claims a
file the bucket lacks. Writes from many workers are committed together (a group commit: one
transaction and one sync for every row waiting at that moment), and each writer returns only
once its own row is durable; reads go through a second connection, which SQLite's WAL mode lets
read while a commit syncs. A file is "done" when its path and version (size, mtime, inode, ctime:
agent.files.FileVersion) match a row: a rewritten file has a new version and is sent again.
SQLite, so a start-up scan over many files asks it per file instead of holding every row in
memory.

Rows written before the agent kept the ctime (release 0.1.0) have none: such a row matches a file
on the rest, and the scan that finds the file so records its ctime then (`adopt`), so an upgrade
sends nothing again and from then on a rewrite that puts the mtime back is seen.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.errors import JournalDamaged, JournalError, StateDirError
from agent.files import FileVersion

_BATCH = 500  # names per query: under SQLite's limit of host parameters (999 before 3.32)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    key TEXT NOT NULL,
    md5 TEXT NOT NULL,
    etag TEXT NOT NULL,
    sent_at REAL NOT NULL,
    ctime_ns INTEGER
);
CREATE TABLE IF NOT EXISTS parts (
    path TEXT NOT NULL,
    version TEXT NOT NULL,
    number INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    etag TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (path, version, number)
);
CREATE TABLE IF NOT EXISTS refused (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    grant_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    refused_at REAL NOT NULL,
    ctime_ns INTEGER
);
"""
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


def _lay_out(path: Path) -> None:
    """The state dir 0750, as the unit's StateDirectoryMode=0750 makes it (past the unit's
    UMask=0077), and the journal the agent's alone (0600) while it has it open: SQLite gives the
    -wal and -shm the file's mode, and anyone who may open the -shm may lock it, which pauses
    every write of the agent's. Once closed (`Journal.close`: the -wal folded in and gone) it is
    0640, so that `wait` and `status`, run by a job in the group postbox, read it then. Nothing
    in it is secret: the names, sizes and keys of files the agent could read, which the group
    could read too."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o750)  # noqa: S103  (the group postbox reads it: above)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            with contextlib.suppress(OSError):  # not ours: as it is
                os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _reader(path: Path) -> sqlite3.Connection:
    """A connection that writes, creates and locks nothing, for a reader who may not write the
    state dir. Root and the agent's user read the -wal too, while the agent writes; a job in the
    group reads the file once the agent closed it (0640, no -wal left), as immutable (SQLite
    would otherwise try to make a -shm). PermissionError when this user may not read it."""
    os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))  # PermissionError, FileNotFoundError
    uri = path.absolute().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        db.close()
        if os.path.lexists(f"{path}-wal"):
            raise
        db = sqlite3.connect(f"{uri}?immutable=1", uri=True)
    return db


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
        db = _reader(path)
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
        db = _reader(path)
        try:
            problem = _unsound(db)
            if problem:
                raise JournalDamaged(_damaged(path, problem))
            (sent,) = db.execute("SELECT COUNT(*) FROM sent").fetchone()
            ctime = "ctime_ns" if "ctime_ns" in _columns(db, "refused") else "NULL"
            rows = db.execute(
                f"SELECT path, size, mtime_ns, inode, {ctime}, reason, refused_at "  # noqa: S608
                "FROM refused ORDER BY refused_at DESC"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        if _corrupt(exc):
            raise JournalDamaged(_damaged(path, str(exc))) from None
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
            _lay_out(path)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            problem = _unsound(self._db)
            if not problem:
                _upgrade(self._db)
                # A write that changes nothing: a state dir with no room for one more page
                # (full, with a journal already there) fails here, not at the first record,
                # after the upload it was to record.
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                self._db.execute(f"PRAGMA user_version = {int(version)}")
            self._reader = sqlite3.connect(str(path), check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error) and _corrupt(exc):
                raise JournalDamaged(_damaged(path, str(exc))) from None
            raise StateDirError(
                f"journal {path} cannot be opened: {_why(path.parent, exc)}"
            ) from None
        if problem:
            self._reader.close()
            self._db.close()
            raise JournalDamaged(_damaged(path, problem))
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
        if not _corrupt(exc):
            return JournalError(f"journal {self._path} cannot {what} ({exc})")
        message = _damaged(self._path, str(exc))
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


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}


def _upgrade(db: sqlite3.Connection) -> None:
    """A journal from release 0.1.0 has no ctime column: add it (its rows keep NULL there)."""
    for table in ("sent", "refused"):
        if "ctime_ns" not in _columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN ctime_ns INTEGER")


def _unsound(db: sqlite3.Connection) -> str:
    """SQLite's first complaint about the file's structure ('' when sound): pages zeroed or cut
    off are found here, at start, rather than by the first query that lands on them."""
    rows = db.execute("PRAGMA quick_check(1)").fetchall()
    return "" if rows == [("ok",)] else str(rows[0][0] if rows else "no answer")


def _corrupt(exc: sqlite3.Error) -> bool:
    """SQLite says the file is damaged or not a database (not: locked, read-only, full)."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    text = str(exc)
    return (
        name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
        or "malformed" in text
        or ("not a database" in text)
    )


def _damaged(path: Path, why: str) -> str:
    why = " ".join(why.split())[:160]
    aside = path.parent / "damaged"
    return (
        f"journal {path} is damaged ({why}): move it and its -wal and -shm files aside "
        f"(mkdir {aside} && mv {path}* {aside}/) and start the agent again; the files it "
        "recorded that are still in the watch dir are then sent again (stored twice, none lost)"
    )


def _why(folder: Path, exc: Exception) -> str:
    """What keeps the state dir from holding the journal, and what to do, from the file system
    itself where it can tell (SQLite's own message is less precise)."""
    fix = "or set POSTBOX_STATE_DIR to a writable folder"
    try:
        fs = os.statvfs(folder)
    except OSError:
        fs = None
    errno_ = getattr(exc, "errno", None)
    if errno_ == errno.EROFS or (fs is not None and fs.f_flag & os.ST_RDONLY):
        return f"the state dir {folder} is on a read-only file system (mount it read-write {fix})"
    if errno_ == errno.ENOSPC or (fs is not None and (fs.f_bavail == 0 or fs.f_favail == 0)):
        return f"the state dir {folder} is full (free space on it {fix})"
    if errno_ in (errno.EACCES, errno.EPERM) or not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"the state dir {folder} is not writable by this user (uid {os.geteuid()}): "
            f"give it to the agent's user {fix}"
        )
    return f"{exc} (check the state dir {folder}, {fix})"
