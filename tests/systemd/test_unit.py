"""The unit file, checked by systemd's own tools, and tied to the agent's exit codes."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ExitCode
from issuer.userdata import LEASE_DROP_IN
from tests.conftest import require_tool

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "postbox-agent.service"
VM_AGENT = "/opt/postbox/bin/postbox-agent"


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at this machine's agent.

    verify checks that the command exists; /opt/postbox is the VM's venv, so the copy names
    the `postbox-agent` installed here instead. Nothing else is changed.
    """
    tool = require_tool("systemd-analyze")
    agent = shutil.which("postbox-agent", path=str(Path(sys.executable).parent))
    assert agent is not None
    copy = tmp_path / "postbox-agent.service"
    copy.write_text(unit_text.replace(VM_AGENT, agent))
    return subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)


def test_unit_passes_systemd_analyze_verify_without_a_word(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_does_speak_up_about_a_broken_unit(tmp_path: Path) -> None:
    """verify exits 0 on an unknown key; its output is what tells, so that is what is checked."""
    result = verify(UNIT.read_text().replace("Restart=", "Restrat="), tmp_path)
    assert "Unknown key" in result.stdout + result.stderr


def test_unit_is_notify_type_and_does_not_restart_on_what_a_restart_cannot_fix() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"] == f"{VM_AGENT} run"
    prevented = {int(code) for code in service["RestartPreventExitStatus"].split()}
    assert prevented == {
        ExitCode.CONFIG,
        ExitCode.EXPIRED,
        ExitCode.STATE_DIR,
        ExitCode.JOURNAL_DAMAGED,
    }


@pytest.mark.parametrize("after_upload", ["keep", "delete"])
def test_security_exposure_is_at_most_2(tmp_path: Path, after_upload: str) -> None:
    """systemd's own score of the sandbox; tests/cloud_init/test_first_boot.py runs it for real.
    With after-upload delete or move, the user-data's drop-in adds CAP_LEASE (merged here as
    systemd merges it: the unit's empty sets, then the drop-in's)."""
    tool = require_tool("systemd-analyze")
    unit = tmp_path / "postbox-agent.service"
    text = UNIT.read_text()
    if after_upload != "keep":
        text += "\n" + LEASE_DROP_IN
        result = verify(text, tmp_path)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")
    unit.write_text(text)
    result = subprocess.run(
        [tool, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security ({after_upload}): exposure {match.group(1)}")
    assert float(match.group(1)) <= 2.0
