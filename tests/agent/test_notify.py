"""sd_notify: the agent tells systemd READY, STATUS and STOPPING, and never waits to do so."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from agent.notify import Notifier


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
