"""examples/: what the README tells operators to copy must work as it is."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from issuer.cli import _parser
from tests.conftest import require_tool

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_renewal_timer_and_service_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    issuer = shutil.which("postbox-issuer", path=str(Path(sys.executable).parent))
    assert issuer is not None
    for name in ("postbox-renew.service", "postbox-renew.timer"):
        text = (EXAMPLES / name).read_text().replace("/usr/local/bin/postbox-issuer", issuer)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [tool, "verify", str(tmp_path / "postbox-renew.timer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_renewal_service_runs_a_command_the_issuer_accepts() -> None:
    service = (EXAMPLES / "postbox-renew.service").read_text().replace("\\\n", " ")
    line = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    argv = line.split("=", 1)[1].split()[1:]
    args = _parser().parse_args(argv)
    assert args.command.__name__ == "renew_command" and args.publish.startswith("s3://")


def test_the_iam_policy_names_what_renew_does() -> None:
    policy = json.loads((EXAMPLES / "renew-policy.json").read_text())
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {"s3:PutObject", "s3:GetObject"} <= actions
