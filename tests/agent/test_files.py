"""Only regular files under the watch dir are read; nothing else can pass for one."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from agent.errors import PreflightError
from agent.files import kind_of, open_beneath
from tests.conftest import require_root


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    (tmp_path / "watch" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s3cr3t")
    return tmp_path / "watch"


def test_a_regular_file_is_opened(watch: Path) -> None:
    (watch / "sub" / "a.txt").write_bytes(b"data")
    with open_beneath(watch, watch / "sub" / "a.txt") as stream:
        assert stream.read() == b"data"


@pytest.mark.parametrize(
    "target", ["/etc/passwd", "/proc/self/environ", "../outside/secret", "sub"]
)
def test_a_symlink_is_never_followed(watch: Path, target: str) -> None:
    (watch / "link").symlink_to(target)
    with pytest.raises(PreflightError, match="symlink"):
        open_beneath(watch, watch / "link")


def test_a_symlinked_folder_cannot_lead_outside(watch: Path) -> None:
    (watch / "escape").symlink_to(watch.parent / "outside", target_is_directory=True)
    with pytest.raises(PreflightError, match="folder 'escape' on the way is a symlink"):
        open_beneath(watch, watch / "escape" / "secret")


def test_a_fifo_is_refused_without_blocking(watch: Path) -> None:
    os.mkfifo(watch / "fifo")
    with pytest.raises(PreflightError, match="FIFO"):
        open_beneath(watch, watch / "fifo")


def test_a_socket_is_refused(watch: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(watch / "sock"))
        with pytest.raises(PreflightError, match="socket"):
            open_beneath(watch, watch / "sock")


def test_devices_are_named_as_such() -> None:
    assert kind_of(stat.S_IFCHR) == kind_of(stat.S_IFBLK) == "device"


def test_a_path_outside_the_root_is_refused(watch: Path) -> None:
    with pytest.raises(PreflightError, match="not under"):
        open_beneath(watch, watch.parent / "outside" / "secret")
    with pytest.raises(PreflightError, match="outside the watch dir"):
        open_beneath(watch, watch / ".." / "outside" / "secret")


def test_a_hard_link_to_another_users_file_is_refused(watch: Path) -> None:
    require_root("making a file owned by another user")
    secret = watch.parent / "outside" / "secret"
    os.chown(secret, 65534, 65534)
    os.link(secret, watch / "linked")
    with pytest.raises(PreflightError, match="hard link to another user's file"):
        open_beneath(watch, watch / "linked")
    own = watch / "own"
    own.write_bytes(b"mine")
    os.link(own, watch / "own-too")  # a second name for one's own file is fine
    with open_beneath(watch, watch / "own-too") as stream:
        assert stream.read() == b"mine"
