"""Secrets never reach a log line: signature, security token and policy are redacted."""

from __future__ import annotations

import logging
import sys

import pytest

from agent.logs import RedactingFormatter, one_line, redact

SIGNATURE = "4f2d0b3e9c1a7d6e5b4a3928171605f4e3d2c1b0a9f8e7d6c5b4a39281716050"
POLICY = "eyJleHBpcmF0aW9uIjogIjIwMjYtMTEtMjNUMTg6MDA6MDBaIn0="
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ"


@pytest.mark.parametrize(
    "line",
    [
        f"https://b.s3.amazonaws.com/k?X-Amz-Signature={SIGNATURE}&X-Amz-Security-Token={TOKEN}",
        f'{{"policy": "{POLICY}", "x-amz-signature": "{SIGNATURE}"}}',
        f"fields x-amz-security-token={TOKEN} policy={POLICY}",
    ],
)
def test_secrets_are_redacted_wherever_they_appear(line: str) -> None:
    cleaned = redact(line)
    for secret in (SIGNATURE, POLICY, TOKEN):
        assert secret not in cleaned
    assert "[redacted]" in cleaned


def test_ordinary_words_are_left_alone() -> None:
    line = "refused a.txt: size 7 is outside 0..5 bytes; the policy: it says no"
    assert redact(line) == line


def test_tracebacks_are_redacted_too() -> None:
    try:
        raise ValueError(f"bad form policy={POLICY}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, sys.exc_info())
    text = RedactingFormatter().format(record)
    assert "ValueError" in text and POLICY not in text


def test_a_message_cannot_add_a_line_to_the_log() -> None:
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "refused %s", ("a\nFAKE ERROR b",), None)
    assert one_line(record)
    assert RedactingFormatter("%(message)s").format(record) == "refused a\\nFAKE ERROR b"
