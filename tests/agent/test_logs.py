"""Secrets never reach a log line: signature, security token and policy are redacted."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest

from agent import cli
from agent.errors import ExitCode
from agent.logs import RedactingFormatter, configure, one_line, redact

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


def test_a_traceback_is_one_escaped_line() -> None:
    try:
        raise ValueError("a name\nFAKE ERROR line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, sys.exc_info())
    text = RedactingFormatter("%(message)s").format(record)
    assert "\n" not in text
    assert "a name\\nFAKE ERROR line" in text


def test_an_error_out_of_a_command_goes_through_the_log_redacted(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Whatever a bug raises out of `main` is one redacted line on stderr and exit 1, not
    Python's own traceback past the filter and the redaction."""

    def broken(settings: object, args: object) -> int:
        raise RuntimeError(f"bug with policy={POLICY}\nFAKE ERROR line")

    (tmp_path / "agent.env").touch()
    monkeypatch.setenv("POSTBOX_ENV_FILE", str(tmp_path / "agent.env"))
    monkeypatch.setattr(cli, "check_command", broken)
    try:
        code = cli.main(["check"])
    finally:
        logging.getLogger().handlers.clear()
    err = capfd.readouterr().err
    assert code == ExitCode.FAILURE
    assert err.count("\n") == 1, err
    assert "CRITICAL unexpected error, a bug (please report it)" in err
    assert "RuntimeError" in err and POLICY not in err


def test_an_error_that_ends_a_thread_goes_through_the_log(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure("INFO")
    try:
        thread = threading.Thread(target=lambda: 1 / 0, name="emitter")
        thread.start()
        thread.join()
    finally:
        logging.getLogger().handlers.clear()
        threading.excepthook = threading.__excepthook__
        sys.excepthook = sys.__excepthook__
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "unexpected error in emitter" in err and "ZeroDivisionError" in err
