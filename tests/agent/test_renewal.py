"""Grants that renew themselves: `postbox-issuer renew` publishes, agents fetch; no credential on
the VM. Real wall-clock lifetimes, short, on both servers; every wait is for an event the agent
logs, so a slow machine only makes a grant more expired, never a test wrong."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

from agent import renewal
from agent.deadline import Deadline
from agent.errors import ExitCode, RenewalError
from agent.grant import AnyGrant, load_grant
from agent.inbox import Message, Renewed
from agent.keeper import GrantKeeper
from agent.renewal import moment
from agent.settings import Settings
from agent.signed import presigned_expiry
from demo.stores import Store, s3_client
from issuer.cli import main as issuer_main
from tests.agent.test_metrics import parse
from tests.agent.test_renewal_rules import FLEET, SIGNED, grant_doc
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import objects
from tests.faultproxy import TRUNCATE, fault_proxy

PUBLISHED = "grants/fleet.json"


@pytest.fixture
def renew(store: Store, bucket: str, tmp_path: Path) -> Callable[..., Path]:
    """Run `postbox-issuer renew` as the operator's timer would; returns the grant it left."""

    def run(expires: str, *options: str) -> Path:
        path = tmp_path / f"renewed-{time.monotonic_ns()}.json"
        argv = ["renew", "--bucket", bucket, "--prefix", "fleet/", "--expires", expires]
        argv += ["--publish", f"s3://{bucket}/{PUBLISHED}", "--endpoint-url", store.endpoint]
        assert issuer_main([*argv, "--region", store.region, *options, "-o", str(path)]) == 0
        return path

    return run


def test_renew_publishes_once_and_is_idempotent_while_fresh(
    renew: Callable[..., Path], s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads(renew("1h").read_text())
    again = json.loads(renew("1h").read_text())
    out = capsys.readouterr().out
    assert "published:" in out and "still fresh:" in out
    assert first == again  # the fresh one stays published, untouched
    stored = json.loads(s3.get_object(Bucket=bucket, Key=PUBLISHED)["Body"].read())
    assert stored == first and "renew" in first


def test_renew_refuses_to_publish_where_the_fleet_may_write(
    store: Store, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["renew", "--bucket", bucket, "--prefix", "fleet/", "--expires", "1h"]
    argv += ["--publish", f"s3://{bucket}/fleet/next.json", "--endpoint-url", store.endpoint]
    assert issuer_main(argv) == 2
    assert "is under the grant's prefix 'fleet/', where every instance may write" in (
        capsys.readouterr().err
    )


def test_the_next_grant_may_be_published_in_a_bucket_of_its_own(
    store: Store, bucket: str, s3: Any, tmp_path: Path
) -> None:
    """The renewal URL is signed for the bucket it names, the grant for the fleet's bucket."""
    grants = f"{bucket}-grants"
    s3.create_bucket(Bucket=grants)
    out = tmp_path / "renewed.json"
    argv = ["renew", "--bucket", bucket, "--prefix", "fleet/", "--expires", "1h"]
    argv += ["--publish", f"s3://{grants}/fleet.json", "--endpoint-url", store.endpoint]
    assert issuer_main([*argv, "--region", store.region, "-o", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["bucket"] == bucket and f"/{grants}/fleet.json?" in document["renew"]
    fetched = requests.get(document["renew"], timeout=30)
    assert fetched.status_code == 200 and fetched.json() == document


def start(tmp_path: Path, grant: Path, **settings: str) -> AgentProcess:
    home = tmp_path / "vm"
    home.mkdir(exist_ok=True)
    placed = home / "grant.json"
    placed.write_bytes(grant.read_bytes())
    placed.chmod(0o600)
    return AgentProcess(home, placed, renew_every_seconds="1", **settings)


def test_a_grant_that_expires_mid_run_is_renewed_and_files_dropped_after_land(
    renew: Callable[..., Path], s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The metrics say how the renewal stands (issue 35): why the last one brought no grant
    (the same one is published: `not_newer`), then when one did, and when its URL dies."""
    metrics = tmp_path / "postbox.prom"
    a = start(tmp_path, renew("15s"), metrics_file=str(metrics))

    def sample(name: str, labels: tuple[tuple[str, str], ...] = ()) -> Optional[float]:
        return parse(metrics).get((name, labels)) if metrics.exists() else None

    try:
        a.start().ready()
        (a.watch / "before.txt").write_bytes(b"under grant 1")
        assert eventually(lambda: a.uploaded("fleet/before.txt") == 1), a.text()
        assert eventually(lambda: "no upload starts until the next grant" in a.text(), 60)
        failing = ("postbox_renewal_failing", (("reason", "not_newer"),))
        assert eventually(lambda: sample(*failing) == 1, 30), metrics.read_text()
        assert sample("postbox_last_renewal_timestamp_seconds") == 0
        (a.watch / "after.txt").write_bytes(b"dropped after grant 1 expired")
        # The agent's own word that the file is complete and waits: due, not sending.
        assert eventually(lambda: a.counts().get("due") == 1 and not a.counts()["sending"])
        assert a.uploaded("fleet/after.txt") == 0
        renew("10m")  # the operator's timer: grant 1 is past half its life, so a new one
        assert eventually(lambda: a.uploaded("fleet/after.txt") == 1), a.text()
        assert a.stop() == ExitCode.OK
    finally:
        a.stop()
    assert "renewed grant taken" in a.text()
    assert sample("postbox_last_renewal_timestamp_seconds") > time.time() - 120  # type: ignore[operator]
    assert not any(name == "postbox_renewal_failing" for name, _ in parse(metrics))
    taken = load_grant(Path(a.env["POSTBOX_GRANT_FILE"]))
    dies = presigned_expiry(str(taken.renew_url))
    assert dies is not None
    assert sample("postbox_renewal_url_expiry_timestamp_seconds") == int(dies.timestamp())
    assert objects(s3, bucket, "fleet/") == {
        "fleet/before.txt": b"under grant 1",
        "fleet/after.txt": b"dropped after grant 1 expired",
    }
    on_disk = json.loads(Path(a.env["POSTBOX_GRANT_FILE"]).read_text())
    assert on_disk == json.loads(s3.get_object(Bucket=bucket, Key=PUBLISHED)["Body"].read())
    assert Path(a.env["POSTBOX_GRANT_FILE"]).stat().st_mode & 0o777 == 0o600


def test_an_agent_whose_grant_expired_long_ago_comes_up_through_its_renewal_url(
    renew: Callable[..., Path], s3: Any, bucket: str, tmp_path: Path
) -> None:
    """As an instance an autoscaling group starts weeks after its launch template was made."""
    old = renew("2s")
    time.sleep(3)
    renew("10m")
    a = start(tmp_path, old)
    (a.watch / "result.txt").write_bytes(b"late instance")
    try:
        a.start().ready()
        assert eventually(lambda: a.uploaded("fleet/result.txt") == 1), a.text()
        assert a.stop() == ExitCode.OK
    finally:
        a.stop()
    assert "renewed grant taken" in a.text()


@pytest.mark.parametrize("flaw", ["wider prefix", "another store"])
def test_a_widened_or_redirected_next_grant_is_refused_and_the_current_one_stays(
    flaw: str, renew: Callable[..., Path], store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    current = renew("20s")
    if flaw == "wider prefix":
        argv = ["grant", "--bucket", bucket, "--prefix", "other/", "--expires", "10m"]
        argv += ["--endpoint-url", store.endpoint, "--region", store.region]
        wider = tmp_path / "wider.json"
        assert issuer_main([*argv, "-o", str(wider)]) == 0
        bad = json.loads(wider.read_text())
        expected = "the published grant's prefix 'other/' is not within 'fleet/': refused"
    else:
        bad = json.loads(renew("10m", "--force").read_text())
        bad["url"] = bad["url"].replace("127.0.0.1", "localhost")
        expected = "the published grant is for http://localhost"
    s3.put_object(Bucket=bucket, Key=PUBLISHED, Body=json.dumps(bad).encode())
    a = start(tmp_path, current)
    try:
        a.start().ready()
        assert eventually(lambda: expected in a.text()), a.text()
        (a.watch / "still.txt").write_bytes(b"under the current grant")
        assert eventually(lambda: a.uploaded("fleet/still.txt") == 1), a.text()
        assert a.stop() == ExitCode.OK
    finally:
        a.stop()
    assert "next grant not taken, the current one stays" in a.text()
    assert a.text().count(expected) == 1  # asked every second, said once


def keeper(
    tmp_path: Path,
    renew_url: str,
    now: dt.datetime,
    identity: str,
    inbox: list[Message],
    **options: Any,
) -> GrantKeeper:
    """A grant keeper whose grant (6 h, agent/test_renewal_rules.py) renews from `renew_url`,
    the store's time being `now`."""
    document = {**grant_doc(), "renew": renew_url}
    path = tmp_path / f"grant-{identity}.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    settings = Settings(watch_dir=tmp_path, state_dir=tmp_path, grant_file=path)
    grant = load_grant(path)
    return GrantKeeper(
        settings, grant, Deadline(lambda: now), inbox.append, taken=lambda: 0,
        identity=identity, **options,
    )  # fmt: skip


def test_a_fleet_on_one_grant_asks_for_the_next_one_each_at_its_own_moment(
    moto_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two instances, one grant, both started at a moment between their two: the one whose
    moment has passed asks at start, the other does not (nothing is published: 404)."""
    url = f"{moto_store.endpoint}/no-such-bucket/next.json"
    probe = keeper(tmp_path, url, dt.datetime.now(dt.timezone.utc), "probe", [])
    early, late = sorted(FLEET[:20], key=lambda name: moment(probe.grant, name))[::19]
    at = {name: moment(probe.grant, name) for name in (early, late)}
    assert at[early] is not None and at[late] is not None
    between = at[early] + (at[late] - at[early]) / 2
    asked = []
    for name in (early, late):
        caplog.clear()
        with caplog.at_level(logging.INFO, "agent.keeper"):
            keeper(tmp_path, url, between, name, []).start()
        asked += [name for r in caplog.records if "no next grant is published yet" in r.message]
    assert asked == [early]


@pytest.mark.parametrize(("draw", "wait"), [(min, 30.0), (max, 90.0)])
def test_the_next_question_waits_a_jittered_time(
    draw: Callable[[float, float], float],
    wait: float,
    moto_store: Store,
    tmp_path: Path,
) -> None:
    """POSTBOX_RENEW_EVERY_SECONDS=60, the jitter drawn at its least (30 s) or most (90 s): the
    keeper asks again not before that wait, and at it."""
    url = f"{moto_store.endpoint}/no-such-bucket/next.json"
    late = SIGNED + dt.timedelta(hours=5)  # past every moment (4.8 h at most), before expiry
    for then, asks in ((wait - 0.1, 1), (wait, 2)):
        inbox: list[Message] = []
        k = keeper(tmp_path, url, late, FLEET[0], inbox, uniform=draw)
        k.check(100.0)
        assert eventually(lambda: len(inbox) == 1)  # noqa: B023  (read at once)
        first = inbox[0]
        assert isinstance(first, Renewed)
        k.renewed(first.future)
        k.check(100.0 + then)
        k.close()  # waits for a question under way
        assert len(inbox) == asks


def test_a_renewal_that_fails_by_a_bug_is_logged_once_and_the_grant_stays(
    moto_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal ended by an exception that is not a RenewalError (a bug): one ERROR with the
    traceback, however often; the current grant stays, and the daemon goes on; once a renewal
    ends otherwise, the next bug is said again."""
    k = keeper(tmp_path, f"{moto_store.endpoint}/x", dt.datetime.now(dt.timezone.utc), "i", [])
    grant = k.grant

    def ended(error: BaseException) -> Future[AnyGrant]:
        future: Future[AnyGrant] = Future()
        future.set_exception(error)
        return future

    with caplog.at_level(logging.INFO, "agent.keeper"):
        k.renewed(ended(KeyError("a bug")))
        k.renewed(ended(KeyError("a bug")))
        k.renewed(ended(RenewalError("no next grant is published yet (404)")))
        k.renewed(ended(KeyError("a bug")))
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(bugs) == 2 and all(r.exc_info for r in bugs)
    assert bugs[0].message == (
        "renewal failed unexpectedly (a bug, please report it): the current grant stays; "
        "asking again"
    )
    assert k.grant is grant


def test_a_renewal_answer_cut_short_is_a_renewal_error(moto_store: Store) -> None:
    """The store's answer ends before its Content-Length: a RenewalError (said, and asked again),
    not urllib3's exception, which would end the daemon."""
    s3 = s3_client(moto_store)
    s3.create_bucket(Bucket="grants")
    s3.put_object(Bucket="grants", Key="next.json", Body=json.dumps(grant_doc()).encode())
    signed = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "grants", "Key": "next.json"}
    )
    with fault_proxy(moto_store.endpoint, TRUNCATE) as proxy:
        url = signed.replace(moto_store.endpoint, proxy.url)  # signed for the store it reaches
        with pytest.raises(RenewalError) as caught:
            renewal.fetch(requests.Session(), url, 30)
        assert [(e.method, e.status, e.delivered) for e in proxy.exchanges] == [("GET", 200, False)]
    assert str(caught.value) == "the renewal URL did not answer (ChunkedEncodingError)"


def test_renew_reads_a_403_on_the_published_grant_for_what_it_may_be(
    store: Store, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credentials without s3:ListBucket get 403 AccessDenied, not 404, for a published grant
    that is not there yet (a first publish, or after a revocation deleted it): renew said
    "AWS answered AccessDenied None"; it names both cases and the permissions that tell them
    apart (exit 4). The 403 comes from a proxy in front of the store: moto checks no IAM."""
    with fault_proxy(store.endpoint, (403, "AccessDenied", "Access Denied")) as proxy:
        argv = ["renew", "--bucket", bucket, "--prefix", "fleet/", "--expires", "1h"]
        argv += ["--publish", f"s3://{bucket}/{PUBLISHED}", "--endpoint-url", proxy.url]
        code = issuer_main([*argv, "--region", store.region, "-o", str(tmp_path / "g.json")])
    err = capsys.readouterr().err
    assert code == 4, err  # issuer.errors.ExitCode.STORE
    assert (
        f"s3://{bucket}/{PUBLISHED} cannot be read (AccessDenied): missing, or not readable by "
        "these credentials" in err
    ), err
    assert f"s3:GetObject on it and s3:ListBucket on arn:aws:s3:::{bucket}" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "g.json").exists()


def test_a_failing_renewal_is_a_warning_once_the_grant_is_past_three_quarters_of_its_life(
    moto_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 35: "no next grant is published yet (404)" was INFO however late, so `journalctl
    -p warning` showed nothing until the grant had expired. The 6 h grant, its renewal failing
    twice at each time: at 4 h (2/3 of its life) INFO, once; at 5 h (past 3/4) WARNING, once,
    with the time left."""
    url = f"{moto_store.endpoint}/no-such-bucket/next.json"
    k = keeper(tmp_path, url, SIGNED + dt.timedelta(hours=4), FLEET[0], [])
    with caplog.at_level(logging.INFO, "agent.keeper"):
        for hours in (4, 4, 5, 5):
            k.deadline = Deadline(lambda h=hours: SIGNED + dt.timedelta(hours=h))  # type: ignore[misc]
            failed: Future[AnyGrant] = Future()
            failed.set_exception(RenewalError("no next grant is published yet (404)"))
            k.renewed(failed)
    said = [(r.levelno, r.message) for r in caplog.records if "next grant not taken" in r.message]
    assert said == [
        (logging.INFO, "next grant not taken, the current one stays: no next grant is "
                       "published yet (404)"),
        (logging.WARNING, "next grant not taken, the current one stays: no next grant is "
                          "published yet (404) (the grant expires in 1h00m)"),
    ]  # fmt: skip
