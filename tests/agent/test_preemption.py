"""Preemption notices (agent/notice.py): the watch reads each cloud's notice from a stand-in
metadata service on 127.0.0.1 (tests/metadata.py), and the agent, on a notice, sends what is
complete at once, smallest first, and starts nothing past the deadline."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, cast

import pytest

from agent.errors import ExitCode
from agent.notice import Notice, PreemptionWatch, cloud_of
from demo.stores import Store
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import fault_proxy
from tests.metadata import metadata_server


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Store:
    """moto: what a notice changes is the order and timing of sends, not how a store takes
    them; the deadline's test runs on RGW too (parametrized)."""
    return cast(Store, request.getfixturevalue(getattr(request, "param", "moto_store")))


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def watch(cloud: str, url: str) -> PreemptionWatch:
    return PreemptionWatch(cloud, url, lambda notice: None, threading.Event())


def test_ec2_spot_interruption_and_rebalance_through_imdsv2() -> None:
    """No notice: nothing. The stand-in answers 401 to a question without IMDSv2's token, so a
    notice read at all was read with one; the token is asked for once, not per question."""
    with metadata_server() as imds:
        ec2 = watch("ec2", imds.url)
        assert ec2.ask() == []
        at = int(time.time()) + 120
        imds.spot_action = {"action": "terminate", "time": _iso(at)}
        imds.rebalance = {"noticeTime": _iso(at - 600)}
        assert ec2.ask() == [
            Notice("EC2", "spot interruption (terminate)", float(at)),
            Notice("EC2", "rebalance recommendation", None, final=False),
        ]
        assert [r for r in imds.requests if r.startswith("PUT")] == ["PUT /latest/api/token"]


def test_gce_preemption_is_heard_as_it_changes_with_wait_for_change() -> None:
    """The first question is answered at once (FALSE): it asks for the value now, without
    `wait_for_change`, which GCE would hold until a change (a machine preempted already would
    hear it only at the hold's end). The next waits on the server until the value changes, so
    the notice arrives as the preemption does, not a poll period later."""
    with metadata_server() as gce:
        watcher = watch("gce", gce.url)
        assert watcher.ask() == []
        assert "wait_for_change" not in gce.requests[0]
        heard: list[list[Notice]] = []
        asking = threading.Thread(target=lambda: heard.append(watcher.ask()))
        asking.start()
        assert eventually(lambda: any("wait_for_change=true" in r for r in gce.requests))
        assert asking.is_alive()  # held by the server until the value changes
        before = time.time()
        gce.preempt()
        asking.join(30)
        (notice,) = heard[0]
        assert (notice.cloud, notice.what, notice.final) == ("GCE", "preemption", True)
        assert notice.deadline is not None and notice.deadline >= before + 29


def test_azure_preempt_and_terminate_events_with_their_not_before() -> None:
    with metadata_server() as azure:
        watcher = watch("azure", azure.url)
        azure.events = [{"EventId": "1", "EventType": "Freeze", "NotBefore": ""}]
        assert watcher.ask() == []  # a freeze is a pause, not the end
        azure.events.append(
            {"EventId": "2", "EventType": "Preempt", "NotBefore": "Mon, 19 Sep 2026 18:29:47 GMT"}
        )
        (notice,) = watcher.ask()
        expected = dt.datetime(2026, 9, 19, 18, 29, 47, tzinfo=dt.timezone.utc).timestamp()
        assert notice == Notice("Azure", "Preempt event", expected)


def test_auto_takes_the_cloud_from_cloud_inits_instance_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "instance-data.json"
    for name, cloud in (("aws", "ec2"), ("gce", "gce"), ("azure", "azure")):
        data.write_text(json.dumps({"v1": {"cloud_name": name}}))
        assert cloud_of("auto", data) == cloud
    assert cloud_of("off", data) is None and cloud_of("gce", data) == "gce"
    data.write_text(json.dumps({"v1": {"cloud_name": "nocloud"}}))
    with caplog.at_level(logging.WARNING):
        assert cloud_of("auto", data) is None
    assert "names no cloud with a preemption notice (nocloud): no watch" in caplog.text


def test_a_spot_notice_sends_settling_files_at_once_smallest_first(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """Files found by the start-up scan settle for POSTBOX_SETTLE_SECONDS (an hour here): none
    is sent until the notice, then all at once, smallest first (one worker, so the order
    shows); status shows the notice."""
    with metadata_server() as imds:
        a = agent(
            make_grant("runs/1/"),
            preemption_watch="ec2",
            metadata_url=imds.url,
            settle_seconds="3600",
            concurrency="1",
        )
        sizes = {"c.bin": 3000, "a.bin": 1000, "d.bin": 4000, "b.bin": 2000}
        for name, size in sizes.items():
            (a.watch / name).write_bytes(os.urandom(size))
        a.start().ready()
        assert "watching for a preemption notice from ec2" in a.text()
        assert eventually(lambda: a.counts().get("settling") == 4), a.counts()
        assert a.turns(12) and objects(s3, bucket) == {}  # settling, for an hour
        imds.spot_action = {"action": "terminate", "time": _iso(time.time() + 120)}
        assert eventually(lambda: len(objects(s3, bucket)) == 4), a.text()
        log = a.text()
        assert "preemption notice: EC2 spot interruption (terminate), the machine goes at" in log
        assert "sending the 4 complete file(s) now, smallest first" in log
        order = sorted(sizes, key=lambda name: log.index(f"uploaded runs/1/{name}"))
        assert order == ["a.bin", "b.bin", "c.bin", "d.bin"]
        status = Path(a.env["POSTBOX_STATE_DIR"]) / "status.json"
        assert eventually(lambda: json.loads(status.read_text())["notice"] is not None)
        notice = json.loads(status.read_text())["notice"]
        assert notice["what"] == "spot interruption (terminate)" and notice["final"]
        shown = subprocess.run(
            [*AGENT, "status"], env=a.env, capture_output=True, text=True, timeout=60
        ).stdout
        assert "notice     EC2 spot interruption (terminate), the machine goes at" in shown
        assert a.stop() == ExitCode.OK


@pytest.mark.parametrize("store", ["moto_store", "rgw_store"], indirect=True)
def test_past_the_deadline_no_upload_starts_and_the_files_left_are_named(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    """More files than the time allows (each upload held 1 s by the proxy, one at a time, a
    deadline 3 s after the notice): past it no upload starts, one line names what is left, and
    every object in the bucket is a whole file; the stop after it drains nothing (no time is
    left) and its last line names them again."""
    with metadata_server() as imds, fault_proxy(store.endpoint) as proxy:
        proxy.hold_all = True
        proxy.stall_seconds = 1
        a = agent(
            with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"),
            preemption_watch="ec2",
            metadata_url=imds.url,
            settle_seconds="3600",
            concurrency="1",
        )
        files = {f"r{n:02d}.out": os.urandom(100 + n) for n in range(20)}
        for name, content in files.items():
            (a.watch / name).write_bytes(content)
        a.start().ready()
        imds.spot_action = {"action": "terminate", "time": _iso(time.time() + 3)}
        assert eventually(lambda: "preemption deadline passed" in a.text(), 60), a.text()
        line = next(x for x in a.text().splitlines() if "preemption deadline passed" in x)
        assert a.stop() == ExitCode.FILES_LEFT
    stored = objects(s3, bucket)
    assert all(files[key.removeprefix("runs/1/")] == body for key, body in stored.items())
    left = [name for name in files if f"runs/1/{name}" not in stored]
    assert len(left) >= 10, stored.keys()  # 1 s an upload, 3 s for 20
    assert all(name in line for name in left), line
    last = a.text().strip().splitlines()[-1]
    assert "left in" in last and all(name in last for name in left), last
