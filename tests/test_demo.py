"""`make demo` stays true: the demo runs end to end and says OK only when every file landed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_rgw


@pytest.mark.parametrize("s3", ["moto", "rgw"])
def test_demo_runs_end_to_end(s3: str) -> None:
    if s3 == "rgw":
        require_rgw()
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--s3", s3],
        cwd=Path(__file__).resolve().parents[1],  # demo/ is beside the packages, not installed
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: OK, every file landed once and complete" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr  # metrics too: their folder is made
    assert result.stdout.count(" yes\n") == 5
    work = re.search(r"demo: working in (\S+)", result.stdout)
    assert work is not None
    fields = json.loads((Path(work.group(1)) / "grant.json").read_text())["fields"]
    for secret in ("x-amz-signature", "policy"):  # the agent's log is in the demo's output
        assert fields[secret] not in result.stdout + result.stderr
