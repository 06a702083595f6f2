"""Secrets never reach a log line: signature, security token and policy are redacted."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent import cli
from agent.errors import ExitCode
from agent.logs import (
    RedactingFormatter,
    configure,
    one_line,
    printable,
    redact,
    stderr_is_journal,
)

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


def test_json_lines_for_log_shippers_are_redacted_objects() -> None:
    stream = io.StringIO()
    configure("INFO", stream, form="json")
    try:
        logging.getLogger("agent").warning("refused: policy=%s", "eyJleHBpcmF0aW9uIjoiMjAyNi0x")
        try:
            raise ValueError("x-amz-signature=0123456789abcdef0123456789abcdef")
        except ValueError:
            logging.getLogger("agent").exception("a bug")
    finally:
        logging.getLogger().handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["level"], first["logger"]) == ("WARNING", "agent")
    assert first["message"] == "refused: policy=[redacted]"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "x-amz-signature=[redacted]" in second["traceback"]
    assert "0123456789abcdef" not in stream.getvalue()


def test_stderr_is_the_journal_only_when_journal_stream_names_it() -> None:
    st = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": "nonsense"})
    assert not stderr_is_journal({})


def test_to_the_journal_each_line_has_its_priority_and_no_time_of_its_own(
    tmp_path: Path,
) -> None:
    """What journald reads from a service's stderr: `<N>` sets the entry's priority (SyslogLevel
    prefix), and journald stamps the time. The first-boot test reads them back through a real
    journal (`journalctl -p err`)."""
    log = tmp_path / "stderr"
    with log.open("wb") as out:
        st = os.fstat(out.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        env["POSTBOX_GRANT_FILE"] = str(tmp_path / "missing.json")
        (tmp_path / "agent.env").write_text("")
        env["POSTBOX_ENV_FILE"] = str(tmp_path / "agent.env")
        code = subprocess.run(
            [sys.executable, "-m", "agent", "check"], stderr=out, env=env, timeout=60
        ).returncode
    assert code == ExitCode.CONFIG
    line = log.read_text()
    assert re.fullmatch(r"<3>ERROR grant file \S+missing.json does not exist: .*\n", line), line


def test_printable_escapes_what_would_break_a_log_line() -> None:
    assert printable("a\nb") == "a\\nb"
    assert printable(os.fsdecode(b"x\xffy")) == "x\\xffy"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"  # a bidi override
    assert printable("a\u2028b") == "a\\u2028b"  # a line separator
