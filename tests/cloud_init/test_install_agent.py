"""The installer the user-data runs at first boot: checked by shellcheck, and run for real.

The real run installs the wheel built from this checkout into a temporary prefix (pip fetches
the agent's dependencies from the package index), with `systemctl` replaced by a recorder: no
service manager runs in a test. On a VM the prefix is /opt/postbox, which the unit names.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT, require_tool

INSTALLER = ROOT / "cloud-init" / "install-agent.sh"


def test_installer_passes_shellcheck() -> None:
    tool = require_tool("shellcheck")
    result = subprocess.run([tool, str(INSTALLER)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "")


def test_installer_installs_the_agent_makes_its_dirs_and_enables_the_service(
    tmp_path: Path, wheel: Path
) -> None:
    shims = tmp_path / "bin"
    shims.mkdir()
    calls = tmp_path / "systemctl.calls"
    systemctl = shims / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    systemctl.chmod(0o755)
    prefix, watch, state = tmp_path / "opt", tmp_path / "spool", tmp_path / "state"
    result = subprocess.run(
        ["sh", str(INSTALLER), str(wheel), str(watch), str(state)],
        env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "POSTBOX_PREFIX": str(prefix)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "postbox-agent 0.1.0" in result.stdout
    assert calls.read_text().splitlines() == [
        "daemon-reload",
        "enable --now --no-block postbox-agent.service",
    ]
    assert watch.stat().st_mode & 0o777 == 0o755
    assert state.stat().st_mode & 0o777 == 0o700
    # The agent runs from its venv without boto3, which the VM never installs.
    assert not list((prefix / "lib").glob("python3*/site-packages/boto3"))
    check = subprocess.run(
        [str(prefix / "bin/postbox-agent"), "check"],
        env={**os.environ, "POSTBOX_GRANT_FILE": str(tmp_path / "none.json")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 78
    assert "grant file" in check.stderr and "does not exist" in check.stderr
