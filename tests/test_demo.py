"""`make demo` stays true: the demo runs end to end and says OK only when every file landed."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "issuer.demo"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: OK, every file landed once and complete" in result.stdout
    assert result.stdout.count(" yes\n") == 5
