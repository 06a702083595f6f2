"""Preemption notices (agent/notice.py): the watch reads each cloud's notice from a stand-in
metadata service on 127.0.0.1 (tests/metadata.py), and the agent, on a notice, sends what is
complete at once, smallest first, and starts nothing past the deadline."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, cast

import pytest

from agent.errors import ExitCode
from agent.heard import Board, Heard, azure_events, ec2_action, gce_preempted
from agent.messages import Notice, Withdrawn
from agent.notice import (
    ACTION,
    EVENTS,
    EVERY_SECONDS,
    MAX_ANSWER_BYTES,
    PREEMPTED,
    REBALANCE,
    PreemptionWatch,
    cloud_of,
)
from demo.stores import Store
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import fault_proxy
from tests.metadata import Metadata, metadata_server


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Store:
    """moto: what a notice changes is the order and timing of sends, not how a store takes
    them; the deadline's test runs on RGW too (parametrized)."""
    return cast(Store, request.getfixturevalue(getattr(request, "param", "moto_store")))


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def watch(cloud: str, url: str) -> PreemptionWatch:
    return PreemptionWatch(cloud, url, lambda notice: None, threading.Event())


def run(
    cloud: str, url: str, *steps: Callable[[], object], clock: Callable[[], float] = time.time
) -> list[Heard]:
    """The watch's loop on this thread, one round more than `steps`: between rounds, in place of
    its wait, the next step changes what the service says; then the stop. Returns what it put."""
    heard: list[Heard] = []
    stopping = threading.Event()
    left = list(steps)

    def wait(seconds: float) -> None:
        assert seconds == EVERY_SECONDS[cloud]
        if left:
            left.pop(0)()
        else:
            stopping.set()

    PreemptionWatch(cloud, url, heard.append, stopping, clock=clock, wait=wait).run()
    return heard


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


AT = 1795543320.0  # 2026-11-24T18:02:00Z
TERMINATE = Notice("EC2", "spot interruption (terminate)", AT)


@pytest.mark.parametrize(
    ("read", "body", "expected"),
    [
        (ec2_action, b'{"action": "terminate", "time": "2026-11-24T18:02:00Z"}', TERMINATE),
        (ec2_action, b'{"time": "2026-11-24T18:02:00Z"}', TERMINATE),  # no action: terminate
        # a time that is not one: the notice stands, with no deadline
        (
            ec2_action,
            b'{"action": "stop", "time": [1]}',
            Notice("EC2", "spot interruption (stop)", None),
        ),
        (
            ec2_action,
            b'{"action": "stop", "time": "soon"}',
            Notice("EC2", "spot interruption (stop)", None),
        ),
        (gce_preempted, b"TRUE\n", True),
        (gce_preempted, b"FALSE", False),
        (azure_events, b'{"Events": []}', []),
        (
            azure_events,
            b'{"Events": [{"EventType": 5}, {"EventType": "Freeze"}, {"EventType": "Preempt", '
            b'"NotBefore": []}]}',
            [Notice("Azure", "Preempt event", None)],
        ),
    ],
)
def test_each_clouds_answer_is_read_as_its_documentation_gives_it(
    read: Callable[[bytes], object], body: bytes, expected: object
) -> None:
    assert read(body) == expected


@pytest.mark.parametrize(
    ("read", "body", "why"),
    [
        (ec2_action, b"[]", "is not a JSON object but a list"),
        (ec2_action, b'"terminate"', "is not a JSON object but 'terminate'"),
        (ec2_action, b"3", "is not a JSON object but a number"),
        (ec2_action, b"null", "is not a JSON object but null"),
        (ec2_action, b"", "is not JSON"),
        (ec2_action, b"\xff\xfe\xfa", "is not JSON"),
        (ec2_action, b"[" * 100_000, "is not JSON"),  # nested past Python's stack
        (ec2_action, b"9" * 5000, "is not JSON"),  # past Python's digits for an int
        (ec2_action, b'{"action": ["terminate"]}', "names the action a list, not a word"),
        (ec2_action, b'{"action": "x\\u202e\\n"}', r"names the action 'x\\u202e\\n', not a word"),
        (ec2_action, b'{"action": "' + b"y" * 1000 + b'"}', "names the action 'yyyyy"),
        (gce_preempted, b"MAYBE", "is 'MAYBE', not TRUE or FALSE"),
        (gce_preempted, b"", "is '', not TRUE or FALSE"),
        (gce_preempted, b"\xff" * 1000, r"is '\\xff\\xff"),
        (azure_events, b"[]", "is not a JSON object but a list"),
        (azure_events, b"{}", "holds Events that are null, not a list"),
        (azure_events, b'{"Events": {"EventType": "Preempt"}}', "Events that are an object"),
        (azure_events, b'{"Events": [[]]}', "holds an event that is not a JSON object"),
    ],
)
def test_an_answer_that_cannot_be_read_is_refused_saying_what_is_wrong(
    read: Callable[[bytes], object], body: bytes, why: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as caught:
        read(body)
    assert len(str(caught.value)) < 120  # a line, not the answer


def test_the_board_puts_each_notice_once_and_withdraws_one_no_longer_given() -> None:
    board = Board()
    stop = Notice("EC2", "spot interruption (stop)", AT)
    rebalance = Notice("EC2", "rebalance recommendation", None, final=False)
    assert board.heard(ACTION, []) == []
    assert board.heard(ACTION, [TERMINATE]) == [TERMINATE]
    assert board.heard(ACTION, [TERMINATE]) == []  # said
    assert board.heard(REBALANCE, [rebalance]) == [rebalance]
    assert board.heard(REBALANCE, []) == []  # a recommendation: said once a run
    assert board.heard(REBALANCE, [rebalance]) == []
    assert board.heard(ACTION, [stop]) == [stop, Withdrawn(TERMINATE)]  # the new one first
    assert board.heard(ACTION, []) == [Withdrawn(stop)]
    assert board.heard(ACTION, [stop]) == [stop]  # given again: put again


NOTICES: dict[str, tuple[Callable[[Metadata], None], Callable[[Metadata], None], Notice]] = {
    "ec2": (
        lambda m: setattr(m, "spot_action", {"action": "terminate", "time": _iso(AT)}),
        lambda m: setattr(m, "spot_action", None),
        TERMINATE,
    ),
    "gce": (Metadata.preempt, lambda m: m.preempt(False), Notice("GCE", "preemption", 1030.0)),
    "azure": (
        lambda m: m.events.append({"EventType": "Preempt", "NotBefore": ""}),
        lambda m: m.events.clear(),
        Notice("Azure", "Preempt event", None),
    ),
}


@pytest.mark.parametrize(
    ("cloud", "path", "answer", "why"),
    [
        ("ec2", ACTION, (200, b"[]"), "the answer is not a JSON object but a list"),
        ("ec2", ACTION, (200, b"{" * (MAX_ANSWER_BYTES + 1)), "the answer is over 65536 bytes"),
        ("ec2", ACTION, (500, b""), "it answered 500"),
        ("ec2", ACTION, (301, b""), "it answered 301"),  # never followed
        ("ec2", ACTION, (401, b""), "it answered 401"),  # the token refused: a new one asked for
        ("ec2", REBALANCE, (403, b"no"), "it answered 403"),
        ("gce", PREEMPTED, (200, b"MAYBE"), "the answer is 'MAYBE', not TRUE or FALSE"),
        ("gce", PREEMPTED, (503, b""), "it answered 503"),
        (
            "azure",
            EVENTS,
            (200, b'{"Events": 1}'),
            "the answer holds Events that are a number, not a list",
        ),
        ("azure", EVENTS, (404, b""), "it answered 404"),  # not Azure's "no event"
    ],
)
def test_an_unreadable_answer_is_said_once_withdraws_nothing_and_the_watch_goes_on(
    cloud: str,
    path: str,
    answer: tuple[int, bytes],
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The notice is given; then, two rounds, an answer that cannot be read: one WARNING naming
    the endpoint and what is wrong, and the notice stands; then the service answers again,
    without the notice: it is withdrawn."""
    give, take, notice = NOTICES[cloud]
    with metadata_server() as service, caplog.at_level(logging.WARNING, "agent.notice"):
        give(service)

        def unreadable() -> None:
            service.answers[path] = answer

        def withdrawn() -> None:
            del service.answers[path]
            take(service)

        heard = run(cloud, service.url, unreadable, lambda: None, withdrawn, clock=lambda: 1000)
    assert heard == [notice, Withdrawn(notice)]
    every = EVERY_SECONDS[cloud]
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read {cloud}'s preemption notice at {service.url}{path} ({why}): asking again "
        f"every {every:g} s"
    ]


def test_a_notice_after_an_unreadable_answer_is_put() -> None:
    """The tester's case: `[]` for the instance-action, then a real terminate notice."""
    with metadata_server() as imds:
        imds.answers[ACTION] = (200, b"[]")

        def notice() -> None:
            del imds.answers[ACTION]
            imds.spot_action = {"action": "terminate", "time": _iso(AT)}

        assert run("ec2", imds.url, lambda: None, notice) == [TERMINATE]


def test_a_bug_in_the_watch_is_logged_once_with_its_traceback_and_the_watch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clock that fails (standing for any bug on the watch's thread) two rounds in a row: one
    ERROR, with the traceback; the third round puts the notice."""
    failures = [RuntimeError("a bug"), RuntimeError("a bug")]

    def clock() -> float:
        if failures:
            raise failures.pop()
        return 1000.0

    with metadata_server() as imds, caplog.at_level(logging.WARNING, "agent.notice"):
        imds.spot_action = {"action": "terminate", "time": _iso(AT)}
        assert run("ec2", imds.url, lambda: None, lambda: None, clock=clock) == [TERMINATE]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == (
        "the preemption watch failed unexpectedly (a bug, please report it): it asks again "
        "every 5 s"
    )


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


def test_an_unreadable_notice_is_said_once_and_a_real_one_after_it_is_acted_on(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """`[]` where EC2 gives the instance-action document: one WARNING naming the endpoint and
    what is wrong, however often it is asked; the watch goes on, and the terminate notice served
    after it is acted on (the files settling for an hour are sent at once)."""
    with metadata_server() as imds:
        imds.answers[ACTION] = (200, b"[]")
        a = agent(
            make_grant("runs/1/"),
            preemption_watch="ec2",
            metadata_url=imds.url,
            settle_seconds="3600",
        )
        (a.watch / "result.bin").write_bytes(b"settling for an hour")
        a.start().ready()
        asked = lambda: sum(r == f"GET {ACTION}" for r in imds.requests)  # noqa: E731
        assert eventually(lambda: asked() >= 3, 60), a.text()  # 5 s apart
        del imds.answers[ACTION]
        imds.spot_action = {"action": "terminate", "time": _iso(time.time() + 120)}
        assert eventually(lambda: a.uploaded("runs/1/result.bin") == 1), a.text()
        assert a.stop() == ExitCode.OK
    log = a.text()
    warned = [line for line in log.splitlines() if "WARNING" in line and ACTION in line]
    assert len(warned) == 1 and "not a JSON object" in warned[0], log
    assert "preemption notice: EC2 spot interruption (terminate)" in log
    assert "unexpected error" not in log


def test_a_withdrawn_notice_ends_the_hurry_and_uploads_go_on_as_before(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A terminate notice whose deadline passes: no upload starts. Then EC2 calls it off (the
    instance-action item is 404 again): one line says so, and the file dropped past the deadline
    and one dropped after are uploaded, each after its settle wait; status shows no notice."""
    with metadata_server() as imds:
        a = agent(
            make_grant("runs/1/"),
            preemption_watch="ec2",
            metadata_url=imds.url,
            settle_seconds="1",
        )
        a.start().ready()
        imds.spot_action = {"action": "terminate", "time": _iso(time.time() + 1)}
        assert eventually(lambda: "preemption deadline passed" in a.text(), 60), a.text()
        (a.watch / "past.bin").write_bytes(b"dropped past the deadline")
        assert a.turns(12) and a.uploaded("runs/1/past.bin") == 0, a.text()
        imds.spot_action = None
        assert eventually(lambda: "preemption notice withdrawn" in a.text(), 60), a.text()
        (a.watch / "after.bin").write_bytes(b"dropped after the notice was withdrawn")
        assert eventually(lambda: a.uploaded("runs/1/after.bin") == 1), a.text()
        assert a.uploaded("runs/1/past.bin") == 1
        status = Path(a.env["POSTBOX_STATE_DIR"]) / "status.json"
        assert eventually(lambda: json.loads(status.read_text())["notice"] is None)
        assert a.stop() == ExitCode.OK
    (line,) = [x for x in a.text().splitlines() if "preemption notice withdrawn" in x]
    assert line.endswith(
        "preemption notice withdrawn: EC2 spot interruption (terminate) is no longer given: "
        "uploads go on as before, each file after its 1s settle wait"
    ), line
    assert objects(s3, bucket) == {
        "runs/1/past.bin": b"dropped past the deadline",
        "runs/1/after.bin": b"dropped after the notice was withdrawn",
    }
