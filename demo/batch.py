"""A batch job's output at scale, for the scale test and the benchmarks: folders of small files,
and a journal that already records them as sent (all but the last `unsent`), written in one
transaction, as a long-running agent would have left it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from agent.journal import Journal


def lay_out(watch: Path, state: Path, folders: int, per_folder: int, unsent: int = 0) -> None:
    """`folders` folders of `per_folder` files each under `watch`; the journal in `state`."""
    state.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in range(folders):
        directory = watch / f"batch{folder:03d}"
        directory.mkdir(parents=True)
        for n in range(per_folder):
            path = directory / f"r{n:04d}.out"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"%d\n" % n)
            os.close(fd)
            if folder * per_folder + n < folders * per_folder - unsent:
                st = path.lstat()
                relpath = f"batch{folder:03d}/{path.name}"
                version = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                row = (relpath, *version, f"k/{relpath}", "", "", 0.0)
                rows.append(row)
    Journal(state / "journal.sqlite3").close()  # its schema, made by the agent's own code
    db = sqlite3.connect(str(state / "journal.sqlite3"))
    with db:
        db.executemany(
            "INSERT INTO sent (path, size, mtime_ns, inode, ctime_ns, key, md5, etag, sent_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    db.close()
