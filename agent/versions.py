"""What identifies one version of a file without reading it: a value, pure (the daemon's core,
agent/core.py, and the ledger hold these; agent/files.py does the I/O of files)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import os
    from pathlib import Path


@dataclass(frozen=True)
class FileVersion:
    """What identifies one version of a file without reading it: size, mtime, inode and ctime.

    The ctime is what a writer cannot keep: `touch -r`, `cp -p`, `rsync -t` and `tar x` put an
    mtime back, but every write, utime, chmod, chown, link and rename sets the ctime to the
    kernel's clock (to its tick: a few ms on Linux, coarser on some file systems). A version read
    from a journal row written before the agent kept it has `ctime_ns` None."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: Optional[int] = None

    @classmethod
    def of(cls, st: os.stat_result) -> FileVersion:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def matches(self, recorded: Optional[FileVersion]) -> bool:
        """This version is the one `recorded` (a journal's) names; a record without a ctime
        (an older release's) is matched on the rest."""
        if recorded is None:
            return False
        if recorded.ctime_ns is None:
            return (self.size, self.mtime_ns, self.inode) == (
                recorded.size,
                recorded.mtime_ns,
                recorded.inode,
            )
        return self == recorded

    @classmethod
    def at(cls, path: Path, *, follow: bool = False) -> Optional[FileVersion]:
        """The version of what is at `path` now (a symlink's own unless `follow`); None if
        nothing is there."""
        try:
            return cls.of(path.stat() if follow else path.lstat())
        except OSError:
            return None
