"""When a file is complete: close-write, rename, or unchanged for the settle interval."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from agent.journal import Signature
from agent.watcher import CLOSED, CREATED, DELETED, WRITTEN, Settler

A = Path("/w/a")


class Disk:
    def __init__(self) -> None:
        self.files: dict[Path, Signature] = {}

    def write(self, path: Path, size: int) -> None:
        self.files[path] = Signature(size, size * 1000, 1)

    def __call__(self, path: Path) -> Optional[Signature]:
        return self.files.get(path)


def test_closed_file_is_due_at_once() -> None:
    settler, disk = Settler(5), Disk()
    disk.write(A, 10)
    settler.apply(WRITTEN, A, 0)
    assert settler.due(1, disk) == []
    settler.apply(CLOSED, A, 1)
    assert settler.due(1, disk) == [A]
    assert settler.due(2, disk) == []  # handed out once


def test_file_open_for_writing_is_never_due_however_long_it_waits() -> None:
    settler, disk = Settler(1), Disk()
    disk.write(A, 10)
    settler.apply(WRITTEN, A, 0)
    assert settler.due(3600, disk) == []


def test_found_file_is_due_once_unchanged_for_the_settle_interval() -> None:
    settler, disk = Settler(5), Disk()
    disk.write(A, 10)
    settler.apply(CREATED, A, 0)
    assert settler.due(0, disk) == []
    disk.write(A, 20)  # still growing
    assert settler.due(4, disk) == []
    assert settler.due(8, disk) == []  # 4 s unchanged
    assert settler.due(9, disk) == [A]  # 5 s unchanged


def test_deleted_or_vanished_files_are_dropped() -> None:
    settler, disk = Settler(1), Disk()
    disk.write(A, 1)
    settler.apply(CREATED, A, 0)
    settler.apply(DELETED, A, 0)
    assert len(settler) == 0
    settler.found(A, 0)
    del disk.files[A]
    assert settler.due(5, disk) == []
    assert len(settler) == 0
