from __future__ import annotations

import pytest

from issuer.errors import InputError
from issuer.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *[("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800), (" 1h ", 3600)],
        *[("1h30m", 5400), ("1w", 604800), ("1d12h", 129600), ("2m30s", 150)],
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6", "0h", "1y", "-1h", "1.5h", "h", "1h1h", "1h 30m", "1M", ""])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InputError, match=r"--expires .* write it like 90s, 30m, 1h30m, 2d or 1w"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("512", 512), ("10KiB", 10240), ("10MiB", 10485760), ("5GiB", 5368709120)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, "--max-size") == size


def test_sizes_over_s3s_post_limit_are_refused() -> None:
    with pytest.raises(InputError, match="over 5GiB"):
        parse_size("6GiB", "--max-size")


@pytest.mark.parametrize("text", ["5GB", "1.5MiB", "lots"])
def test_bad_sizes_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InputError, match="write it like 512, 10MiB or 5GiB"):
        parse_size(text, "--max-size")


def test_format_duration_uses_the_largest_exact_unit() -> None:
    assert [format_duration(s) for s in (90, 1800, 7200, 86400, 3601)] == [
        "90s", "30m", "2h", "1d", "3601s"
    ]  # fmt: skip
