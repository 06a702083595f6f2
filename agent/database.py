"""The journal's file (SQLite; what is kept in it, and when, is agent/journal.py's): its tables
and their upgrade from release 0.1.0, the modes it is laid out with, the connection a reader who
may not write opens, and the line that says why the file cannot be used: damaged (SQLite's
quick_check, or its error) or a state dir that cannot hold it (read-only, full, not writable).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

SCHEMA = """
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
-- A file stored is refused no longer: its kept refusal goes in the same write (a version
-- refused after another was stored is kept: its row is newer).
CREATE TRIGGER IF NOT EXISTS stored_is_not_refused AFTER INSERT ON sent
BEGIN
    DELETE FROM refused WHERE path = NEW.path;
END;
"""


def lay_out(path: Path) -> None:
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


def reader(path: Path) -> sqlite3.Connection:
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


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}


def upgrade(db: sqlite3.Connection) -> None:
    """A journal from release 0.1.0 has no ctime column: add it (its rows keep NULL there). One
    from before `stored_is_not_refused` may keep refusals of files stored since: they go."""
    for table in ("sent", "refused"):
        if "ctime_ns" not in columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN ctime_ns INTEGER")
    db.execute(
        "DELETE FROM refused WHERE refused_at <= "
        "(SELECT sent_at FROM sent WHERE sent.path = refused.path)"
    )


def unsound(db: sqlite3.Connection) -> str:
    """SQLite's first complaint about the file's structure ('' when sound): pages zeroed or cut
    off are found here, at start, rather than by the first query that lands on them."""
    rows = db.execute("PRAGMA quick_check(1)").fetchall()
    return "" if rows == [("ok",)] else str(rows[0][0] if rows else "no answer")


def corrupt(exc: sqlite3.Error) -> bool:
    """SQLite says the file is damaged or not a database (not: locked, read-only, full)."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    text = str(exc)
    return (
        name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
        or "malformed" in text
        or ("not a database" in text)
    )


def damaged(path: Path, why: str) -> str:
    why = " ".join(why.split())[:160]
    aside = path.parent / "damaged"
    return (
        f"journal {path} is damaged ({why}): move it and its -wal and -shm files aside "
        f"(mkdir {aside} && mv {path}* {aside}/) and start the agent again; the files it "
        "recorded that are still in the watch dir are then sent again (stored twice, none lost)"
    )


def unusable(folder: Path, exc: Exception) -> str:
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
