from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from agent.errors import ConfigError, ExitCode
from agent.settings import load_settings


def test_env_file_is_read_and_environment_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "agent.env"
    env.write_text("# comment\nPOSTBOX_CONCURRENCY=4\nPOSTBOX_AFTER_UPLOAD=move\nOTHER=x\n")
    monkeypatch.setenv("POSTBOX_CONCURRENCY", "7")
    settings = load_settings(env)
    assert (settings.concurrency, settings.after_upload) == (7, "move")


def test_env_file_can_be_named_by_postbox_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "agent.env"
    env.write_text("POSTBOX_WATCH_DIR=/data/out\n")
    monkeypatch.setenv("POSTBOX_ENV_FILE", str(env))
    assert load_settings().watch_dir == Path("/data/out")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("POSTBOX_CONCURENCY=3", "setting POSTBOX_CONCURENCY is not a setting of postbox-agent"),
        ("POSTBOX_CONCURRENCY=0", "setting POSTBOX_CONCURRENCY: Input should be greater than"),
        ("POSTBOX_AFTER_UPLOAD=shred", "setting POSTBOX_AFTER_UPLOAD: Input should be 'keep'"),
        ("POSTBOX_BANDWIDTH_LIMIT=0", "setting POSTBOX_BANDWIDTH_LIMIT: '0' is not a rate: write"),
        ("POSTBOX_BANDWIDTH_LIMIT=fast", "setting POSTBOX_BANDWIDTH_LIMIT: 'fast' is not a rate"),
        ("POSTBOX_BANDWIDTH_LIMIT=-1MiB/s", "setting POSTBOX_BANDWIDTH_LIMIT: '-1MiB/s' is not"),
        ("POSTBOX_BANDWIDTH_LIMIT=20MiB", "setting POSTBOX_BANDWIDTH_LIMIT: '20MiB' is a size"),
        ("POSTBOX_SPLIT_BYTES=6 apples", "setting POSTBOX_SPLIT_BYTES: '6 apples' is not a size"),
        ("POSTBOX_PART_BYTES=1MiB", "setting POSTBOX_PART_BYTES: '1MiB' is not a size S3 takes"),
        ("POSTBOX_PART_BYTES=6GiB", "setting POSTBOX_PART_BYTES: '6GiB' is not a size S3 takes"),
        ("POSTBOX_SPLIT_BYTES=-5MiB", "setting POSTBOX_SPLIT_BYTES: '-5MiB' is not a size"),
        ("POSTBOX_PART_BYTES=1.5MiB/s", "setting POSTBOX_PART_BYTES: '1.5MiB/s' is a rate"),
    ],
)
def test_bad_settings_are_one_line_naming_the_setting(
    tmp_path: Path, line: str, message: str
) -> None:
    env = tmp_path / "agent.env"
    env.write_text(line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.message.startswith(message), caught.value.message
    assert str(env) in caught.value.message and "\n" not in caught.value.message
    assert caught.value.exit_code == ExitCode.CONFIG


def test_a_named_env_file_must_exist_and_dev_null_names_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"missing\.env does not exist: give an existing file"):
        load_settings(tmp_path / "missing.env")
    with pytest.raises(ConfigError, match="is not a regular file: give an existing file, or"):
        load_settings(tmp_path)
    monkeypatch.setenv("POSTBOX_CONCURRENCY", "3")
    assert load_settings(Path("/dev/null")).concurrency == 3  # the environment alone


@pytest.mark.parametrize(
    ("given", "size"),
    [("6MiB", 6 * 2**20), ("6 MiB", 6 * 2**20), ("6MB", 6_000_000), ("1GiB", 2**30),
     ("7340032", 7 * 2**20), ("0", 0), ("", 0)],
)  # fmt: skip
def test_sizes_take_the_units_every_other_size_takes(tmp_path: Path, given: str, size: int) -> None:
    env = tmp_path / "agent.env"
    env.write_text(f"POSTBOX_SPLIT_BYTES={given}\nPOSTBOX_PART_BYTES=8MiB\n")
    settings = load_settings(env)
    assert (settings.split_bytes, settings.part_bytes) == (size, 8 * 2**20)


def test_words_are_read_whatever_their_case_where_only_one_reading_exists(tmp_path: Path) -> None:
    env = tmp_path / "agent.env"
    env.write_text(
        "POSTBOX_LOG_LEVEL=debug\nPOSTBOX_AFTER_UPLOAD=Delete\nPOSTBOX_LOG_FORMAT=JSON\n"
    )
    settings = load_settings(env)
    assert (settings.log_level, settings.after_upload, settings.log_format) == (
        "DEBUG",
        "delete",
        "json",
    )
    env.write_text("POSTBOX_LOG_LEVEL=verbose\n")
    with pytest.raises(ConfigError, match="setting POSTBOX_LOG_LEVEL: Input should be 'DEBUG'"):
        load_settings(env)


@pytest.mark.parametrize(
    ("line", "rate"),
    [("", None), ("POSTBOX_BANDWIDTH_LIMIT=", None), ("POSTBOX_BANDWIDTH_LIMIT=20MiB/s", 20 << 20),
     ("POSTBOX_BANDWIDTH_LIMIT=10MB/s", 10_000_000)],
)  # fmt: skip
def test_the_bandwidth_limit_is_a_rate_and_none_unless_given(
    tmp_path: Path, line: str, rate: Optional[int]
) -> None:
    env = tmp_path / "agent.env"
    env.write_text(line + "\n")
    assert load_settings(env).bandwidth_limit == rate
