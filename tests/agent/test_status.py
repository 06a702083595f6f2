"""`postbox-agent status`: read from the state dir while the agent runs, as an operator would."""

from __future__ import annotations

import json
import subprocess
from typing import Callable

from agent.errors import ExitCode
from demo.stores import Store
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, with_url
from tests.faultproxy import HOLD, fault_proxy


def status(agent: AgentProcess, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "status", *options], env=agent.env, capture_output=True, text=True, timeout=60
    )


def test_status_shows_uploads_under_way_refusals_with_reasons_and_survives_a_restart(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """One upload held by the store (a proxy that reads nothing), one file refused before
    sending (over the grant's size): both are in `status` while the agent runs; after it stops,
    status says so (exit 6) and still lists the refusal, kept in the journal."""
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/held.bin": [HOLD]}
        proxy.stall_seconds = 60
        grant = with_url(
            make_grant("runs/1/", "30m", "--max-size", "4MiB"), f"{proxy.url}/{bucket}/"
        )
        a = agent(grant)
        (a.watch / "held.bin").write_bytes(b"h" * 3 * 1024 * 1024)
        (a.watch / "too-big.bin").write_bytes(b"b" * 5 * 1024 * 1024)
        a.start().ready()
        assert eventually(lambda: len(proxy.attempts("runs/1/held.bin")) == 1), a.text()
        assert eventually(lambda: "refused too-big.bin" in a.text()), a.text()

        def sending() -> bool:
            run = json.loads(status(a, "--json").stdout)["run"] or {}
            return bool(run.get("sending")) and run["counts"]["refused"] == 1

        assert eventually(sending), a.text()
        shown = status(a)
        assert shown.returncode == ExitCode.OK, shown.stderr
        text = shown.stdout
        assert "running (pid " in text and "sending    1\n" in text
        assert "runs/1/held.bin: " in text and "of 3145728 bytes" in text
        assert "refused    1\n" in text and "too-big.bin: refused too-big.bin: " in text
        report = json.loads(status(a, "--json").stdout)
        (upload,) = report["run"]["sending"]
        assert upload["key"] == "runs/1/held.bin" and 0 <= upload["done"] <= upload["bytes"]
        proxy.released.set()
        assert eventually(lambda: "uploaded runs/1/held.bin" in a.text()), a.text()
        assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    after = status(a)
    assert after.returncode == ExitCode.NOT_RUNNING
    assert "NOT running" in after.stdout and "uploaded   1 in this run" in after.stdout
    assert "kept       1 refusal(s)" in after.stdout
    assert "too-big.bin: refused here, before sending: " in after.stdout
