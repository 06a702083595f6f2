"""The installer the user-data runs at first boot, checked by shellcheck.

tests/cloud_init/test_first_boot.py runs it for real, under cloud-init and systemd.
"""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT, require_tool

INSTALLER = ROOT / "cloud-init" / "install-agent.sh"


def test_installer_passes_shellcheck() -> None:
    tool = require_tool("shellcheck")
    result = subprocess.run([tool, str(INSTALLER)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "")
