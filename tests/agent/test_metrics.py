"""POSTBOX_METRICS_FILE: Prometheus' text format for node_exporter's textfile collector, read
back with prometheus-client's own parser."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.errors import ExitCode
from agent.grant import load_grant
from agent.notify import Notifier
from demo.stores import Store
from demo.systemd import NotifyListener
from tests.agentprocess import eventually
from tests.conftest import GrantMaker, with_url
from tests.faultproxy import FORWARD, fault_proxy
from tests.inprocess import running


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def test_the_metrics_file_counts_what_a_user_would_ask_about(
    make_grant: GrantMaker, store: Store, bucket: str, tmp_path: Path
) -> None:
    """One file stored after one transient fault (a retry), one refused for its size; written
    at stop (and every 10 s while running), atomically: no temporary file is left beside it."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "fine.txt").write_bytes(b"12345")
    (watch / "too-big.bin").write_bytes(b"x" * 2048)
    metrics = tmp_path / "textfile" / "postbox.prom"
    metrics.parent.mkdir()
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/fine.txt": [(503, "SlowDown", "Reduce your request rate"), FORWARD]}
        grant = with_url(
            make_grant("runs/1/", "30m", "--max-size", "1KiB"), f"{proxy.url}/{bucket}/"
        )
        with running(watch, tmp_path / "state", grant, metrics_file=metrics) as agent:
            agent.ready()
            assert eventually(lambda: "uploaded runs/1/fine.txt" in agent.text()), agent.text()
            assert eventually(lambda: "refused too-big.bin" in agent.text()), agent.text()
    values = parse(metrics)
    assert values[("postbox_uploaded_files_total", ())] == 1
    assert values[("postbox_uploaded_bytes_total", ())] == 5
    assert values[("postbox_not_uploaded_files_total", (("result", "refused"),))] == 1
    assert values[("postbox_not_uploaded_files_total", (("result", "failed"),))] == 0
    assert values[("postbox_retries_total", ())] == 1
    assert values[("postbox_pending_files", ())] == 0
    assert values[("postbox_waiting_for_grant_files", ())] == 1
    assert values[("postbox_inflight_bytes", ())] == 0
    assert 1700 < values[("postbox_grant_seconds_left", ())] <= 1800
    assert values[("postbox_last_success_timestamp_seconds", ())] > 1.7e9
    assert values[("postbox_bandwidth_limit_bytes_per_second", ())] == 0  # no limit
    assert sorted(os.listdir(metrics.parent)) == ["postbox.prom"]
    assert metrics.stat().st_mode & 0o777 == 0o644


def test_a_metrics_folder_it_cannot_write_is_said_once_and_uploads_go_on(
    make_grant: GrantMaker, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The metrics file is written with each STATUS= line: three of them (read off the agent's
    notify socket) are three writes that failed, and the stop makes a fourth."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "a.txt").write_bytes(b"a")
    metrics = tmp_path / "missing-folder" / "postbox.prom"
    listener = NotifyListener(tmp_path / "notify.sock")
    statuses = lambda: sum(m.startswith("STATUS=") for m in listener.messages)  # noqa: E731
    try:
        with running(
            watch,
            tmp_path / "state",
            make_grant("runs/1/"),
            notifier=Notifier(str(listener.path)),
            report_every=0.2,
            metrics_file=metrics,
        ) as agent:
            agent.ready()
            assert eventually(lambda: "uploaded runs/1/a.txt" in agent.text()), agent.text()
            assert eventually(lambda: statuses() >= 3)
    finally:
        listener.close()
    assert agent.text().count("cannot write metrics to") == 1
    assert "fix the folder or POSTBOX_METRICS_FILE" in agent.text()


def test_values_are_exact_and_the_state_and_files_waiting_for_a_grant_are_said(
    make_grant: GrantMaker, tmp_path: Path
) -> None:
    """Issue 35: a 2,001,007-byte file read back as 2.00101e+06 (six digits); after the grant
    expired the file waiting showed as pending, `postbox_waiting_for_grant_files` 0, and
    nothing said the agent had stopped. On a clock the test moves: running and sending, then
    within the expiry margin (no upload may start: waiting for a grant), then stopped by the
    expiry with the file left."""
    watch, metrics = tmp_path / "watch", tmp_path / "postbox.prom"
    watch.mkdir()
    (watch / "late.csv").write_bytes(b"found by the start's walk: settles for an hour")
    grant = make_grant("runs/1/", "10m")
    expires = load_grant(grant).expiration.timestamp()  # the policy's own, to the second
    with running(watch, tmp_path / "state", grant, metrics_file=metrics, report_every=0.2,
                 settle_seconds=3600, expiry_margin_seconds=30) as agent:  # fmt: skip
        agent.ready()
        (watch / "exact.bin").write_bytes(os.urandom(2_001_007))  # closed: sent at once
        assert eventually(lambda: "uploaded runs/1/exact.bin" in agent.text()), agent.text()

        def says(name: str, labels: tuple[tuple[str, str], ...], value: float) -> bool:
            return metrics.exists() and parse(metrics).get((name, labels)) == value

        assert eventually(lambda: says("postbox_uploaded_bytes_total", (), 2_001_007))
        assert says("postbox_state", (("state", "running"),), 1)
        assert says("postbox_grant_expiry_timestamp_seconds", (), int(expires))
        assert eventually(lambda: says("postbox_pending_files", (), 1)), metrics.read_text()
        agent.clock.advance(agent.agent.parts.grants.seconds_left() - 10)  # margin: 30 s
        assert eventually(lambda: says("postbox_state", (("state", "waiting_for_grant"),), 1))
        assert says("postbox_waiting_for_grant_files", (), 1)
        assert says("postbox_pending_files", (), 0)
        agent.clock.advance(20)
        assert agent.wait() == ExitCode.EXPIRED
    values = parse(metrics)
    assert values[("postbox_state", (("state", "stopped"),))] == 1
    assert values[("postbox_state", (("state", "running"),))] == 0
    assert values[("postbox_left_files", ())] == 1
    assert values[("postbox_waiting_for_grant_files", ())] == 1
    assert values[("postbox_uploaded_bytes_total", ())] == 2_001_007
    assert ("postbox_not_uploaded_files_total", (("result", "too_long"),)) in values
    assert 'result="too long"' not in metrics.read_text()
