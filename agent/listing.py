"""What `postbox-agent wait` waits for: the files under its PATHs (the whole watch dir if none),
listed as the agent's own walk lists them, with the job's own permissions.

A PATH the agent will never send (a temporary name, a symlink or what is under one, anything but
a regular file, a file or folder POSTBOX_INCLUDE or POSTBOX_EXCLUDE exclude) is said at once; a
folder's temporary names, and the files the filters exclude, are named on stderr; a folder that
cannot be listed ends `wait` with `NoPermission` (exit 77): it never waits for, nor calls stored,
what it could not see. PATHs are taken as the shell shows them (`sub/../sub/a.txt`).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from agent.access import refusal
from agent.filters import Filters
from agent.keys import is_temporary
from agent.shown import printable
from agent.walk import walk

LIST_LIMIT = 20  # files named in a line; the rest are counted (`--json` names them all)
TEMPORARY = "a temporary name (.*, *.tmp, *.part), never sent: rename it once it is complete"
SYMLINK = "a symlink, or under one: the agent sends no symlink, nor what is under one"
NOT_A_FILE = "not a regular file: the agent sends regular files only"
FILTERED = "never sent: leave it out of wait's PATHs, or change the setting"


@dataclass
class Listing:
    """What `wait` found to wait for: each file with its size, the PATHs it named that will never
    be sent (and why), and the temporary names its walk passed over."""

    sizes: dict[str, int] = field(default_factory=dict)
    never: dict[str, str] = field(default_factory=dict)
    passed_over: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # under a folder: why, not waited for

    def found(self, files: list[tuple[str, os.stat_result]], filters: Optional[Filters]) -> None:
        """A walk's files: waited for, but those the filters exclude (named, not waited for)."""
        for relpath, st in files:
            why = filters.excluded(relpath) if filters is not None else ""
            if why:
                self.excluded[relpath] = why
            else:
                self.sizes[relpath] = st.st_size

    def pass_over(self, root: Path, relpath: str) -> None:
        """A name the walk passed over: a temporary one is said on stderr; anything else (a
        symlink, a FIFO) the agent refuses, so it is refused here too, at once."""
        if is_temporary(relpath):
            self.passed_over.append(relpath)
            return
        try:
            st = (root / relpath).lstat()
        except OSError:
            return  # gone
        self.sizes[relpath] = 0
        self.never[relpath] = _never(root, relpath, st) or NOT_A_FILE

    def say_passed_over(self, err: IO[str] = sys.stderr) -> None:
        """One line naming the temporary names under the folders waited for: never sent, so a
        job that forgot a rename learns it here, not from the bucket."""
        names = self.passed_over
        if not names:
            return
        shown = ", ".join(printable(n) for n in names[:LIST_LIMIT])
        more = f" and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else ""
        print(f"not waited for, {TEMPORARY.replace(', never', '; never')}: {shown}{more}", file=err)

    def say_excluded(self, err: IO[str] = sys.stderr) -> None:
        """One line naming the files under the folders waited for that POSTBOX_INCLUDE or
        POSTBOX_EXCLUDE exclude: never sent, so not waited for."""
        names = list(self.excluded)
        if not names:
            return
        shown = ", ".join(printable(n) for n in names[:LIST_LIMIT])
        more = f" and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else ""
        print(
            "not waited for, excluded by POSTBOX_INCLUDE or POSTBOX_EXCLUDE (never sent): "
            f"{shown}{more}",
            file=err,
        )


def listed(
    watch_dir: Path, paths: list[Path], filters: Optional[Filters] = None, *, whole: bool = True
) -> Listing:
    """The files `wait` waits for, relative to the watch dir, with their sizes: every file under
    each of `paths` (the whole watch dir if none), as the agent's walk sees them. A PATH that
    is not there is asked about all the same: it may have been sent and then removed; a PATH
    the agent never sends (a temporary name, a symlink, one `filters` exclude, a folder whose
    files they all exclude) is said so at once. `whole`: the folders hold their sent files
    too (POSTBOX_AFTER_UPLOAD=keep), so a folder of excluded files only is one of nothing to
    store. NoPermission when a folder cannot be listed: its files cannot be waited for."""
    root = Path(os.path.normpath(watch_dir.absolute()))
    listing = Listing()
    starts = []
    for path in paths or [root]:
        relpath = _inside(root, path)
        try:
            st = (root / relpath).lstat() if relpath else root.stat()
        except FileNotFoundError:
            st = None
        except PermissionError as exc:
            raise refusal(root / relpath, exc) from None
        why = _filtered(filters, relpath, st) or ("" if st is None else _never(root, relpath, st))
        if why or st is None:
            listing.sizes[relpath] = 0 if st is None else st.st_size
            if why:
                listing.never[relpath] = why
        elif stat.S_ISDIR(st.st_mode):
            starts.append(relpath)
        else:
            listing.sizes[relpath] = st.st_size
    for start in starts:
        _walk_folder(listing, root, start, filters, whole)
    return listing


def _walk_folder(
    listing: Listing, root: Path, start: str, filters: Optional[Filters], whole: bool
) -> None:
    """The files under the folder `start` into `listing`; the folder itself as never sent when
    it holds files and the filters exclude every one (`whole`: it holds its sent files too)."""
    before = (len(listing.sizes), len(listing.excluded))
    unlisted: list[tuple[str, str]] = []
    walked = walk(
        root,
        start,
        lambda: bool(unlisted),
        lambda folder, why: unlisted.append((folder, why)),
        lambda relpath: listing.pass_over(root, relpath),
    )
    for _, files in walked:
        listing.found(files, filters)
    if unlisted:
        folder, why = unlisted[0]
        what = "the watch dir" if Path(folder) == root else "the folder"
        raise refusal(Path(folder), OSError(0, why), what=what) from None
    none_sent = len(listing.sizes) == before[0] and len(listing.excluded) > before[1]
    if whole and start and none_sent:
        listing.sizes[start] = 0
        listing.never[start] = f"every file in it is excluded, {FILTERED}"


def _inside(root: Path, path: Path) -> str:
    """`path` relative to the watch dir, `..` and `.` resolved as the shell would show them;
    WaitUsage if it is not in it. A watch dir reached through a symlink may be named either way."""
    absolute = Path(os.path.normpath(Path(path).absolute()))
    for base, named in ((root, absolute), (Path(os.path.realpath(root)), absolute)):
        try:
            relpath = named.relative_to(base).as_posix()
        except ValueError:
            continue
        return "" if relpath == "." else relpath
    real = Path(os.path.realpath(absolute.parent)) / absolute.name
    try:
        return real.relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        raise WaitUsage(
            f"{printable(str(path))} is not under the watch dir {root}: name a file or folder in it"
        ) from None


def _filtered(filters: Optional[Filters], relpath: str, st: Optional[os.stat_result]) -> str:
    """Why the filters keep back what a PATH names ("" if they do not): a file (or a name not
    there), or a folder all of whose files they exclude."""
    if filters is None or not relpath:
        return ""
    if st is not None and stat.S_ISDIR(st.st_mode):
        why = filters.folder_excluded(relpath)
    else:
        why = filters.excluded(relpath)
    return f"{why}, {FILTERED}" if why else ""


def _never(root: Path, relpath: str, st: os.stat_result) -> str:
    """Why the agent will never send what is at `relpath` ("" if it may)."""
    if relpath and is_temporary(relpath):
        return TEMPORARY
    parts = relpath.split("/") if relpath else []
    for n in range(1, len(parts)):  # a folder on the way down that is a symlink
        if os.path.islink(root.joinpath(*parts[:n])):
            return SYMLINK
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return NOT_A_FILE
    return ""


class WaitUsage(ValueError):
    """A PATH outside the watch dir: a bad command line (exit 2)."""
