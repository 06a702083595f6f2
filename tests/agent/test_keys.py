"""Path to key mapping and temporary names, as tables."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pytest

from agent.errors import PreflightError
from agent.keys import is_temporary, object_key


@pytest.mark.parametrize(
    ("relpath", "key"),
    [
        ("a.txt", "p/a.txt"),
        ("results/2026/part 1.csv", "p/results/2026/part 1.csv"),
        ("données/été+%.bin", "p/données/été+%.bin"),
    ],
)
def test_key_is_prefix_plus_relative_path(relpath: str, key: str) -> None:
    assert object_key("p/", PurePosixPath(relpath)) == key


@pytest.mark.parametrize(
    ("relpath", "reason"),
    [
        ("a\nb", "control characters"),
        ("a\x1bb", "control characters"),
        (os.fsdecode(b"bad\xff.bin"), "not valid UTF-8"),
        ("${filename}.txt", "S3 would replace"),
        ("../escape", "not inside the watch dir"),
        ("k" * 1023, "over S3's 1024"),
    ],
)
def test_paths_without_a_faithful_key_are_refused(relpath: str, reason: str) -> None:
    with pytest.raises(PreflightError, match=reason):
        object_key("p/", PurePosixPath(relpath))


def test_a_key_of_exactly_1024_bytes_is_allowed() -> None:
    assert len(object_key("p/", PurePosixPath("k" * 1022)).encode()) == 1024


@pytest.mark.parametrize(
    ("relpath", "temporary"),
    [
        ("a.csv", False),
        (".a.csv", True),
        ("a.csv.tmp", True),
        ("a.csv.part", True),
        (".staging/a.csv", True),
        ("dir/a.partial", False),
        ("dir.d/a", False),
    ],
)
def test_temporary_names_are_told_apart(relpath: str, temporary: bool) -> None:
    assert is_temporary(PurePosixPath(relpath)) is temporary
