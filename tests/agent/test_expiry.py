"""The grant's expiry, on a clock the test moves: the agent in-process (tests/inprocess.py), on
real inotify, journal and HTTP. No test here waits for the wall clock to reach an expiry, so a
busy machine cannot make one start too late."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest

from agent.errors import ExitCode
from demo.stores import Store
from issuer.aws import s3_client as issuer_s3_client
from issuer.urls import presigned_url
from tests.agentprocess import eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import HOLD, fault_proxy
from tests.inprocess import running


@pytest.mark.parametrize("kind", ["post", "put"])
def test_expiry_stops_the_agent_with_its_exit_code_and_leaves_the_files(
    kind: str, make_grant: GrantMaker, put_grant: Callable[..., Path], tmp_path: Path
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "waiting.csv").write_bytes(b"never in time")
    grant = make_grant("runs/1/", "10m") if kind == "post" else put_grant("late.csv", "10m")
    with running(watch, tmp_path / "state", grant, settle_seconds=3600) as agent:
        agent.ready()
        # A second before the expiry, by the grant's own time: the grant was signed by the wall
        # clock before the agent's clock began, a second or two earlier on a busy machine.
        agent.clock.advance(agent.agent.parts.grants.seconds_left() - 1)
        assert not eventually(lambda: not agent.thread.is_alive(), timeout=1.5), agent.text()
        agent.clock.advance(2)
        assert agent.wait() == ExitCode.EXPIRED
    assert "grant expired: 1 file(s) not uploaded" in agent.text()
    assert (watch / "waiting.csv").read_bytes() == b"never in time"


def test_at_expiry_an_upload_under_way_finishes_and_the_log_says_what_was_stored(
    make_grant: GrantMaker, store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The store holds the upload (a proxy that reads nothing) while the grant expires: the
    agent starts nothing new, lets it finish, and counts as not uploaded only what was not."""
    watch = tmp_path / "watch"
    watch.mkdir()
    body = os.urandom(1024 * 1024)
    (watch / "big.bin").write_bytes(body)
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/big.bin": [HOLD]}
        proxy.stall_seconds = 60
        grant = with_url(make_grant("runs/1/", "10m"), f"{proxy.url}/{bucket}/")
        with running(watch, tmp_path / "state", grant, concurrency=1) as agent:
            agent.ready()
            assert eventually(lambda: len(proxy.attempts("runs/1/big.bin")) == 1)
            (watch / "next.txt").write_bytes(b"waits for the one worker")
            assert eventually(lambda: len(agent.agent.core.ledger) == 2), agent.text()
            agent.clock.advance(601)
            assert eventually(lambda: "grant expired at" in agent.text()), agent.text()
            proxy.released.set()
            assert agent.wait() == ExitCode.EXPIRED
    text = agent.text()
    assert "no upload starts now; 1 under way go on" in text
    assert "uploaded runs/1/big.bin" in text
    assert "grant expired: 1 file(s) not uploaded" in text  # next.txt, and only it
    assert objects(s3, bucket) == {"runs/1/big.bin": body}
    assert (watch / "next.txt").exists()


def test_a_grant_that_runs_its_course_with_every_file_sent_is_a_clean_exit(
    make_grant: GrantMaker, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """Exit 0, so systemd does not mark the unit failed for a grant that simply ended; with
    files left it is still 79 and their count (the test above)."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "done.txt").write_bytes(b"sent in time")
    with running(watch, tmp_path / "state", make_grant("runs/1/", "10m")) as agent:
        agent.ready()
        assert eventually(lambda: "uploaded runs/1/done.txt" in agent.text()), agent.text()
        agent.clock.advance(601)
        assert agent.wait() == ExitCode.OK
    assert "grant expired with every file uploaded: stopping (exit 0)" in agent.text()
    assert objects(s3, bucket) == {"runs/1/done.txt": b"sent in time"}


def test_a_grant_whose_renewal_url_died_too_says_to_render_the_user_data_again(
    make_grant: GrantMaker, store: Store, bucket: str, tmp_path: Path
) -> None:
    """Issue 35: an instance whose grant and renewal URL have both expired (booted from user-data
    older than the renewal URL's life) was told to "issue a new grant", where the fix is new
    user-data: the renewal URL is signed into it."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "waiting.csv").write_bytes(b"never in time")
    grant = make_grant("runs/1/", "10m")
    document = json.loads(grant.read_text())
    signer = issuer_s3_client(boto3.Session(), store.region, store.endpoint, bucket)  # SigV4
    document["renew"] = presigned_url(signer, "get", bucket, "grants/next.json", 300)
    grant.write_text(json.dumps(document))
    with running(watch, tmp_path / "state", grant, settle_seconds=3600) as agent:
        agent.ready()
        agent.clock.advance(agent.agent.parts.grants.seconds_left() + 1)
        assert agent.wait() == ExitCode.EXPIRED, agent.text()
    assert (
        f"grant expired: 1 file(s) not uploaded, left in {watch}; its renewal URL expired too, "
        "at " in agent.text()
    ), agent.text()
    assert (
        f"UTC: render the user-data again (postbox-issuer user-data), or put a new grant at "
        f"{grant}" in agent.text()
    )
