"""POSTBOX_INCLUDE and POSTBOX_EXCLUDE (agent/filters.py): which path is sent, by a table; what
the settings refuse, in one line naming the setting (exit 78). Pure: no file is looked at. The
core's use of them is tests/agent/test_core.py; the agent end to end, tests/agent/test_service.py
and test_wait.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError, ExitCode
from agent.filters import Filters, patterns
from agent.settings import load_settings


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


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("POSTBOX_EXCLUDE=logs/,,*.log", "setting POSTBOX_EXCLUDE: an empty pattern in "
         "'logs/,,*.log': give patterns separated by single commas"),
        ("POSTBOX_INCLUDE=*.csv,", "setting POSTBOX_INCLUDE: an empty pattern in '*.csv,'"),
        ("POSTBOX_EXCLUDE=!", "setting POSTBOX_EXCLUDE: an empty pattern in '!'"),
        ("POSTBOX_EXCLUDE=#logs", "setting POSTBOX_EXCLUDE: pattern '#logs' can match no path "
         "under the watch dir (a comment, an unclosed [, or a ., .. or empty segment)"),
        ("POSTBOX_EXCLUDE=[ab", "setting POSTBOX_EXCLUDE: pattern '[ab' can match no path"),
        ("POSTBOX_EXCLUDE=../out/*", "setting POSTBOX_EXCLUDE: pattern '../out/*' can match no"),
        ("POSTBOX_EXCLUDE=run//a", "setting POSTBOX_EXCLUDE: pattern 'run//a' can match no"),
        ("POSTBOX_EXCLUDE=a\\", "setting POSTBOX_EXCLUDE: pattern 'a\\\\' is not a gitignore "
         "pattern"),
        ("POSTBOX_EXCLUDE=/data/out/logs/", "setting POSTBOX_EXCLUDE: pattern '/data/out/logs/' "
         "is an absolute path: patterns are relative to the watch dir /data/out (write "
         "'/logs/': a leading / anchors at the watch dir)"),
        ("POSTBOX_INCLUDE=*.part", "setting POSTBOX_INCLUDE: pattern '*.part' matches only "
         "names the agent never sends (.*, *.tmp, *.part): include the names the files have "
         "once renamed"),
        ("POSTBOX_INCLUDE=results/.cache/**", "setting POSTBOX_INCLUDE: pattern "
         "'results/.cache/**' matches only names the agent never sends"),
        ("POSTBOX_INCLUDE=!*.csv, !*.log", "setting POSTBOX_INCLUDE: '!*.csv, !*.log' only "
         "takes back (!) what no pattern matched first: no file would be sent; name the files"),
    ],
)  # fmt: skip
def test_a_pattern_that_cannot_be_meant_is_refused_in_one_line_naming_the_setting(
    tmp_path: Path, line: str, message: str
) -> None:
    env = tmp_path / "agent.env"
    env.write_text(f"POSTBOX_WATCH_DIR=/data/out\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.message.startswith(message)
    assert caught.value.message.endswith(f"(fix the environment or {env})")
    assert "\n" not in caught.value.message and caught.value.exit_code == ExitCode.CONFIG


def test_what_the_settings_take_is_what_the_filters_judge_by(tmp_path: Path) -> None:
    env = tmp_path / "agent.env"
    env.write_text("POSTBOX_INCLUDE=\nPOSTBOX_EXCLUDE=logs/, *.tmp ,!keep.tmp\n")
    settings = load_settings(env)
    assert not Filters(settings.include)  # empty: every file is sent
    assert settings.filters.excluded("run/logs/a") == "excluded by POSTBOX_EXCLUDE (logs/)"
    assert settings.filters.excluded("a.csv") == ""
