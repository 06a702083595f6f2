"""Files as the agent meets them: a file under the watch dir opened for reading only if it is
what it seems (`open_beneath`), whether a writer still holds one (`open_for_writing`), and a
file replaced whole (`replace_file`). What identifies one version of a file is a value of its
own (agent/versions.py), imported here too.

Whoever can write the watch dir decides which names are there, so every name is distrusted:

- each folder on the way down is opened relative to the one above it with O_NOFOLLOW, so a
  symlinked folder (`watch/sub -> /etc`) cannot lead outside the watch dir;
- the last name is looked at without following it (lstat) and must be a regular file: symlinks,
  FIFOs, sockets and devices are refused before any open, so none can block the agent or be read;
- it is then opened with O_NOFOLLOW and checked by fstat on the descriptor, which must be the very
  file looked at (same device and inode): a name swapped in between cannot win the race;
- a hard link (more than one name) to a file owned by another user is refused: a local user could
  otherwise link a file they may not read into the watch dir for the agent to upload.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Optional

from agent.errors import (
    FileChangedError,
    FileGoneError,
    PreflightError,
    TransientUploadError,
    UnreadableError,
    UploadError,
)
from agent.versions import FileVersion

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def whole_sha256(
    root: Path, path: Path, version: FileVersion, stop: Callable[[], bool] = lambda: False
) -> Optional[str]:
    """The SHA-256 of `version` of the file, read beneath `root`; FileChangedError if the file
    is not that version any more, before or after the read; None if `stop()` said so first."""
    with open_beneath(root, path) as stream:
        if FileVersion.of(os.fstat(stream.fileno())) != version:
            raise FileChangedError("the file changed between its parts")
        digest = hashlib.sha256()
        while block := stream.read(1 << 20):
            if stop():
                return None
            digest.update(block)
        if FileVersion.of(os.fstat(stream.fileno())) != version:
            raise FileChangedError("the file changed while it was read")
    return digest.hexdigest()


def folder_identity(path: Path) -> Optional[tuple[int, int]]:
    """What tells a folder replaced from the same one (device, inode); None if no folder is there
    (a symlink to one is not)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def anchor(path: Path, watch_dir: Optional[Path]) -> Path:
    """The folder `path` is opened beneath: the watch dir when it is inside it (no symlinked
    folder on the way is followed), else its own folder (`postbox-agent upload` of a file
    elsewhere)."""
    if watch_dir is not None and path.is_relative_to(watch_dir):
        return watch_dir
    return path.parent


def open_beneath(root: Path, path: Path) -> IO[bytes]:
    """Open `path`, which must lie under `root`, refusing anything but a regular file.

    PreflightError: refused for good (the name is not a regular file, or leads elsewhere);
    TransientUploadError: could not be read now (permissions, I/O), worth another try.
    """
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise PreflightError(f"the file is not under {root}") from None
    if not parts or ".." in parts:
        raise PreflightError("the name leads outside the watch dir")
    with _directory(root, parts[:-1]) as parent:
        return _open_file(parent, parts[-1])


@contextlib.contextmanager
def _directory(root: Path, parts: tuple[str, ...]) -> Iterator[int]:
    try:
        fd = os.open(root, _DIRECTORY)  # the watch dir itself is no symlink either
    except OSError as exc:
        raise _translate(exc) from None
    try:
        for part in parts:
            try:
                child = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PreflightError(f"the folder {part!r} on the way is a symlink") from None
                raise _translate(exc) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_for_writing(root: Path, path: Path) -> Optional[bool]:
    """Whether some process, any process, holds `path` open for writing now; None when the
    kernel will not say.

    The proof is a read lease (fcntl F_SETLEASE, F_RDLCK), which Linux grants only while no
    file descriptor anywhere has the file open for writing; it is taken and given back at once.
    The kernel grants it on a file the agent's user owns, or on any file with CAP_LEASE (the
    unit gives the agent that one capability); else (EACCES), or on a file system without
    leases (EINVAL: NFS, FUSE), there is no proof: None. A missing file is None too.
    Whoever calls this from a process's main thread should have called `ignore_lease_breaks`.
    """
    try:
        parts = path.relative_to(root).parts
        with _directory(root, parts[:-1]) as parent:
            fd = os.open(parts[-1], _FILE, dir_fd=parent)
    except (OSError, ValueError, IndexError, UploadError):  # gone, unreadable, not a file
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def ignore_lease_breaks() -> None:
    """A writer that opens the file in the instant a lease is held makes the kernel send the
    holder SIGIO, whose default is to end the process: ignore it (main thread only)."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)


def _open_file(parent: int, name: str) -> IO[bytes]:
    try:
        seen = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise _translate(exc) from None
    kind = kind_of(seen.st_mode)
    if kind != "regular file":
        raise PreflightError(f"the name is a {kind}, which is never read")
    if seen.st_nlink > 1 and seen.st_uid != os.geteuid():
        raise PreflightError(
            f"the file has {seen.st_nlink} names and belongs to user {seen.st_uid}: "
            "a hard link to another user's file is never read"
        )
    try:
        fd = os.open(name, _FILE, dir_fd=parent)
    except OSError as exc:
        raise _translate(exc) from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
        seen.st_dev,
        seen.st_ino,
    ):
        os.close(fd)
        raise TransientUploadError("the name was replaced while it was opened")
    return os.fdopen(fd, "rb")


def kind_of(mode: int) -> str:
    """What a file of this mode is, in the words the log uses."""
    for test, kind in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "device"),
        (stat.S_ISBLK, "device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return kind
    return "special file"


def _translate(exc: OSError) -> Exception:
    if exc.errno == errno.ENOENT:
        return FileGoneError("the file is gone")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UnreadableError(f"the file cannot be read ({exc.strerror})")
    if exc.errno == errno.ELOOP:
        return PreflightError("the name is a symlink, which is never followed")
    return TransientUploadError(f"the file cannot be opened ({exc.strerror})")


def replace_file(path: Path, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Put `data` at `path` at once: written beside it (a hidden temporary name, never left
    behind), given `mode`, renamed over it, so no reader sees half a file. `durable` syncs the
    file before the rename and the folder after, so a crash leaves the old file or the new one."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # whatever the umask
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
