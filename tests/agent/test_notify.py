"""sd_notify: the agent tells systemd READY, STATUS and STOPPING, and never waits to do so."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from agent.errors import ExitCode
from agent.notify import Notifier
from demo.stores import Store
from demo.systemd import NotifyListener
from tests.agentprocess import eventually
from tests.conftest import GrantMaker, with_url
from tests.faultproxy import HOLD, fault_proxy
from tests.inprocess import running


def test_a_receiver_that_never_reads_does_not_stall_the_agent(tmp_path: Path) -> None:
    """A datagram socket whose queue is full blocks a plain send for as long as nobody reads;
    the dispatcher sends STATUS, so that would stall every upload and SIGTERM with it."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        notifier = Notifier(str(path))
        sender = threading.Thread(
            target=lambda: [notifier.status(f"{n} uploaded") for n in range(2000)], daemon=True
        )
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), "a STATUS send waited on a receiver that does not read"
        assert receiver.recv(100) == b"STATUS=0 uploaded"  # what fitted was delivered


def test_the_watchdog_is_pinged_by_the_main_loop_and_stops_when_it_hangs(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    """WatchdogSec= in the unit: systemd kills and restarts an agent whose pings stop. They come
    from the main loop alone, so a loop stuck in one call (here, the grant check made to block)
    sends none, however long it is stuck, and they resume once it runs again."""
    listener = NotifyListener(tmp_path / "notify.sock")
    stuck, release = threading.Event(), threading.Event()

    def hang() -> None:
        notifier.send("MARK=1")  # datagrams arrive in order: every earlier ping is in before it
        stuck.set()
        release.wait(60)

    pings = lambda: listener.messages.count("WATCHDOG=1")  # noqa: E731
    watch = tmp_path / "watch"
    watch.mkdir()
    notifier = Notifier(str(listener.path), watchdog_seconds=0.2)
    try:
        with running(watch, tmp_path / "state", make_grant(), notifier=notifier) as agent:
            try:
                agent.ready()
                assert eventually(lambda: pings() >= 3)
                agent.agent._check_grant = hang  # type: ignore[method-assign]
                assert stuck.wait(30) and listener.wait_for("MARK=1", 30)
                before = pings()
                time.sleep(1.0)  # five watchdog intervals with the loop stuck: no ping may come
                assert pings() == before
            finally:
                release.set()
            assert eventually(lambda: pings() >= before + 2)
    finally:
        release.set()
        listener.close()


def test_stopping_with_an_upload_under_way_asks_systemd_for_more_time(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str, s3: Any
) -> None:
    """TimeoutStopSec= would kill a long upload mid-body: while one is under way at stop, the
    agent sends EXTEND_TIMEOUT_USEC (and says why in STATUS), then exits 0 once it ends."""
    listener = NotifyListener(tmp_path / "notify.sock")
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "big.bin").write_bytes(b"x" * 1024 * 1024)
    try:
        with fault_proxy(store.endpoint) as proxy:
            proxy.by_key = {"runs/1/big.bin": [HOLD]}
            proxy.stall_seconds = 60
            grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
            notifier = Notifier(str(listener.path))
            with running(watch, tmp_path / "state", grant, notifier=notifier) as agent:
                agent.ready()
                assert eventually(lambda: len(proxy.attempts("runs/1/big.bin")) == 1)
                agent.agent.stopping.set()  # as SIGTERM does
                assert listener.wait_for("EXTEND_TIMEOUT_USEC=30000000", 30)
                assert any("stopping: 1 upload(s) finishing" in m for m in listener.messages)
                proxy.released.set()
                assert agent.wait() == ExitCode.OK
        assert "uploaded runs/1/big.bin" in agent.text()
    finally:
        listener.close()


def test_the_status_line_counts_refused_and_failed_files(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    """A file over the grant's size limit is refused before sending: STATUS must count it."""
    listener = NotifyListener(tmp_path / "notify.sock")
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "too-big.bin").write_bytes(b"x" * 2048)
    (watch / "fine.txt").write_bytes(b"ok")
    try:
        grant = make_grant("runs/1/", "30m", "--max-size", "1KiB")
        with running(watch, tmp_path / "state", grant) as agent:
            agent.ready()
            assert eventually(lambda: "uploaded runs/1/fine.txt" in agent.text()), agent.text()
            assert eventually(lambda: "refused too-big.bin" in agent.text()), agent.text()
            assert agent.agent.describe().startswith(
                "1 uploaded, 0 sending, 0 waiting, 1 refused, 0 failed; grant expires in "
            )
    finally:
        listener.close()
