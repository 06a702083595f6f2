"""sd_notify: the agent tells systemd READY, STATUS and STOPPING, and never waits to do so."""

from __future__ import annotations

import json
import logging
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


def writing(state: Path) -> int:
    """Files open for writing, as the agent's status.json says (0 before it is written)."""
    try:
        return int(json.loads((state / "status.json").read_text())["counts"]["writing"])
    except (OSError, ValueError):
        return 0


def test_the_watchdog_is_pinged_by_the_main_loop_and_stops_when_it_hangs(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    """WatchdogSec= in the unit: systemd kills and restarts an agent whose pings stop. They come
    from the main loop alone, so a loop stuck in one call sends none, however long it is stuck,
    and they resume once it runs again. The call that sticks is a real one: a log line the
    dispatcher writes (a file deleted before it was sent) to a handler that blocks, as a stalled
    journald would. Datagrams arrive in the order they were sent, so a ping between the two
    marks the stuck call sends, five intervals apart, would have come from elsewhere."""
    listener = NotifyListener(tmp_path / "notify.sock")
    stuck, release = threading.Event(), threading.Event()

    class Stall(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "skipped held.txt" not in record.getMessage():
                return
            notifier.send("MARK=1")
            stuck.set()
            until = time.monotonic() + 5 * 0.2  # five watchdog intervals by the pinger's clock
            while time.monotonic() < until:
                time.sleep(0.05)
            notifier.send("MARK=2")
            release.wait(60)

    watch = tmp_path / "watch"
    watch.mkdir()
    notifier = Notifier(str(listener.path), watchdog_seconds=0.2)
    stall = Stall()
    logging.getLogger("agent").addHandler(stall)
    try:
        with running(watch, tmp_path / "state", make_grant(), notifier=notifier) as agent:
            try:
                agent.ready()
                with (watch / "held.txt").open("w") as writer:  # open: writing, never due
                    writer.write("x")
                    writer.flush()
                    assert eventually(lambda: writing(tmp_path / "state") == 1)  # seen: status
                    (watch / "held.txt").unlink()  # the dispatcher says "skipped held.txt"
                    assert stuck.wait(30) and listener.wait_for("MARK=2", 30)
                between = listener.messages[
                    listener.messages.index("MARK=1") : listener.messages.index("MARK=2")
                ]
                assert "WATCHDOG=1" not in between
            finally:
                release.set()
            after = len(listener.messages)
            assert eventually(lambda: listener.messages[after:].count("WATCHDOG=1") >= 2)
    finally:
        release.set()
        logging.getLogger("agent").removeHandler(stall)
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
    """A file over the grant's size limit is refused before sending: the STATUS= line the agent
    sends systemd (read here off its notify socket, as systemd reads it) must count it."""
    listener = NotifyListener(tmp_path / "notify.sock")
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "too-big.bin").write_bytes(b"x" * 2048)
    (watch / "fine.txt").write_bytes(b"ok")
    line = "STATUS=1 uploaded, 0 sending, 0 waiting, 1 refused, 0 failed; grant expires in "
    try:
        grant = make_grant("runs/1/", "30m", "--max-size", "1KiB")
        notifier = Notifier(str(listener.path))
        with running(watch, tmp_path / "state", grant, notifier=notifier, report_every=0.2):
            assert listener.wait_for(line, 30), listener.messages
        assert listener.messages[0].startswith("READY=1\nSTATUS=")  # READY says it too
    finally:
        listener.close()
