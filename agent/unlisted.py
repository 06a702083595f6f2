"""The folders under the watch dir the agent cannot list (a job's umask 077 makes one the agent
may not read): each said once, with the fix, and kept for `status` and `wait` until a walk lists
it (agent/scanner.py adds and drops them)."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import threading

from agent.shown import printable

_DENIED = {os.strerror(errno.EACCES), os.strerror(errno.EPERM)}  # what walk says of a mode


class Unreadable:
    """The folders under the watch dir the agent cannot list, each with why and the fix: added
    and dropped by the walks (on the scanner's thread), read by the dispatcher (status, `wait`,
    a folder's chmod). Their files are not sent: the agent cannot see them."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}  # relpath: why, with the fix
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._folders)

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._folders

    def add(self, relpath: str, why: str) -> bool:
        """True if it was not known yet (then say so)."""
        with self._lock:
            new = relpath not in self._folders
            self._folders[relpath] = why
        return new

    def listed(self, relpath: str) -> bool:
        """A walk listed it: True if it could not be listed before."""
        if not self._folders:  # the usual case, read without the lock: a walk lists every folder
            return False
        with self._lock:
            return self._folders.pop(relpath, None) is not None

    def walked(self, start: str, met: set[str]) -> None:
        """A walk of `start` ("": all) ended: the folders under it that it did not meet unlisted
        are gone (or listed: `listed` saw to those)."""
        with self._lock:
            for relpath in list(self._folders):
                if relpath not in met and (not start or _under(relpath, start)):
                    del self._folders[relpath]

    def folders(self) -> dict[str, str]:
        with self._lock:
            return dict(self._folders)

    def states_of(self, paths: list[str]) -> dict[str, tuple[str, str]]:
        """Of `paths`, those under a folder the agent cannot list, as `wait` is told: state
        "unreadable", and why."""
        if not self._folders:
            return {}
        folders = self.folders()
        found = {}
        for path in paths:
            folder = path
            while folder:
                folder = folder.rpartition("/")[0]
                if folder in folders:
                    found[path] = (
                        "unreadable",
                        f"in {printable(folder)}, which the agent cannot list ({folders[folder]})",
                    )
                    break
        return found


def _under(relpath: str, folder: str) -> bool:
    return relpath == folder or relpath.startswith(f"{folder}/")


def fix_for(directory: str, why: str) -> str:
    """What makes a folder readable to the agent, when its mode is what stops it ("" when it is
    not): group read and search, in a group the agent is in (the watch dir's setgid bit gives
    its group to what is made in it; a folder moved in keeps its own)."""
    if why not in _DENIED:
        return ""
    gid = os.getegid()
    try:
        in_group = os.lstat(directory).st_gid in {gid, *os.getgroups()}
    except OSError:
        in_group = True
    where = printable(directory)
    if in_group:
        return f"chmod -R g+rX {where}, or write with umask 007"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"chgrp -R {group} {where} and chmod -R g+rX {where}"


def user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
