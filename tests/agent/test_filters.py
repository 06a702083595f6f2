"""POSTBOX_INCLUDE and POSTBOX_EXCLUDE (agent/filters.py): which path is sent, by a table. Pure:
no file is looked at."""

from __future__ import annotations

import pytest

from agent.filters import Filters, patterns


@pytest.mark.parametrize(
    ("include", "exclude", "relpath", "why"),
    [
        ("", "", "any/thing.bin", ""),  # no filter: every file
        ("", "logs/", "logs/a.txt", "excluded by POSTBOX_EXCLUDE (logs/)"),
        ("", "logs/", "run/logs/deep/a.txt", "excluded by POSTBOX_EXCLUDE (logs/)"),  # any level
        ("", "logs/", "logs", ""),  # a trailing / is a folder: a file named logs is sent
        ("", "/logs/", "run/logs/a.txt", ""),  # a leading / anchors at the watch dir
        ("", "*.log", "a/b/c.log", "excluded by POSTBOX_EXCLUDE (*.log)"),
        ("", "run/*.log", "run/deep/c.log", ""),  # * stops at a /
        ("", "run/**/*.log", "run/deep/c.log", "excluded by POSTBOX_EXCLUDE (run/**/*.log)"),
        ("", "?.bin", "ab.bin", ""),
        ("", "[ab].bin", "b.bin", "excluded by POSTBOX_EXCLUDE ([ab].bin)"),
        ("", r"a\,b", "a,b", r"excluded by POSTBOX_EXCLUDE (a\,b)"),  # a comma in a pattern
        ("", "logs/, !logs/keep.txt", "logs/keep.txt", ""),  # taken back: the last match wins
        ("", "logs/, !logs/keep.txt", "logs/other.txt", "excluded by POSTBOX_EXCLUDE (logs/)"),
        ("*.csv", "", "deep/a.csv", ""),
        ("*.csv", "", "a.json", "not matched by POSTBOX_INCLUDE (*.csv)"),
        ("*.csv, out/**", "", "out/x/y.bin", ""),
        ("*.csv", "tmp/", "tmp/a.csv", "excluded by POSTBOX_EXCLUDE (tmp/)"),  # EXCLUDE wins
    ],
)
def test_a_file_is_sent_when_include_names_it_and_exclude_does_not(
    include: str, exclude: str, relpath: str, why: str
) -> None:
    assert Filters(include, exclude).excluded(relpath) == why


@pytest.mark.parametrize(
    ("exclude", "folder", "whole"),
    [
        ("logs/", "logs", True),
        ("logs/", "run/logs", True),
        ("*.d", "conf.d", True),  # a pattern without / matches folders too, and all beneath
        ("logs/**", "logs", True),
        ("logs/*", "logs", False),  # its files, not necessarily all beneath: each is judged
        ("logs/, !logs/keep.txt", "logs", False),  # a ! pattern may take one back
        ("", "logs", False),
    ],
)
def test_a_folder_is_wholly_excluded_only_when_no_file_beneath_could_be_sent(
    exclude: str, folder: str, whole: bool
) -> None:
    filters = Filters("", exclude)
    assert bool(filters.folder_excluded(folder)) is whole
    if whole:  # what it says of the folder holds of every file beneath
        assert filters.excluded(f"{folder}/a/b.txt")


def test_patterns_are_split_at_commas_not_escaped_with_spaces_around_dropped() -> None:
    assert patterns("") == patterns("  ") == []
    assert patterns("logs/ , *.tmp,a\\,b") == ["logs/", "*.tmp", "a\\,b"]
