"""The walk: every regular file under the watch dir (or a folder in it), one folder at a time
and a chunk of its files at a time, so that a folder of any size is held in pieces. The scanner
walks to find what no event announced (agent/scanner.py); `wait` walks its PATHs with the job's
own permissions (agent/listing.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

from agent.keys import TEMPORARY_SUFFIXES

WALK_CHUNK = 1000  # files a walk yields at a time, so a folder of any size is held in pieces


def walk(
    root: Path,
    start: str,
    stopping: Callable[[], bool],
    unlistable: Callable[[str, str], None],
    passed_over: Callable[[str], None] = lambda relpath: None,
) -> Iterator[tuple[str, list[tuple[str, os.stat_result]]]]:
    """Every regular file under `root`/`start` (symlinks not followed), one folder at a time:
    yields each folder's relative path and its files' relative paths with their lstat, at most
    WALK_CHUNK files at a time (a folder's chunks come one after another, the last possibly empty).

    Temporary names (`.*`, `*.tmp`, `*.part`) are pruned, folders and files alike, by their own
    name (the folder they are in was checked on the way down). Memory holds one chunk of names
    at a time (a listing is read as the walk goes), and the walk ends early once `stopping()`
    says so. A folder that cannot be listed goes to `unlistable(folder, why)`; a temporary name
    pruned, or an entry that is neither a folder nor a regular file, to `passed_over(relpath)`.
    """
    stack = [start]
    base = os.fspath(root)
    while stack and not stopping():
        folder = stack.pop()
        directory = os.path.join(base, folder) if folder else base
        listing = _opened(directory, unlistable)
        if listing is None:
            continue
        files: list[tuple[str, os.stat_result]] = []
        with listing:
            for entry in _listed(listing, directory, unlistable):
                name = entry.name
                relpath = f"{folder}/{name}" if folder else name
                if name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES):
                    passed_over(relpath)
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(relpath)
                    elif entry.is_file(follow_symlinks=False):
                        files.append((relpath, entry.stat(follow_symlinks=False)))
                    else:  # a symlink, a FIFO, a socket: never sent
                        passed_over(relpath)
                except OSError:
                    continue
                if len(files) == WALK_CHUNK:  # a folder of a million: a thousand at a time
                    yield folder, files
                    files = []
                    if stopping():
                        return
        yield folder, files


def _opened(
    directory: str, unlistable: Callable[[str, str], None]
) -> Optional[os._ScandirIterator[str]]:  # os.scandir's own type, in typeshed only
    """A folder's listing, to read as the walk goes; None if it cannot be listed (the caller
    says so: the scanner once a folder) or is gone since it was seen (nothing to say)."""
    try:
        return os.scandir(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        unlistable(directory, exc.strerror or str(exc))
        return None


def _listed(
    listing: Iterator[os.DirEntry[str]], directory: str, unlistable: Callable[[str, str], None]
) -> Iterator[os.DirEntry[str]]:
    """A folder's entries as they are read; one that fails half-way is said so, and ends."""
    try:
        yield from listing
    except OSError as exc:
        unlistable(directory, exc.strerror or str(exc))
