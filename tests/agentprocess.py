"""`postbox-agent run` as a process, as operators run it: real signals, a real NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from demo.systemd import NotifyListener

AGENT = [sys.executable, "-m", "agent"]


class AgentProcess:
    """One `postbox-agent` process with its own watch and state dirs; logs kept for asserts."""

    def __init__(self, tmp_path: Path, grant: Path, **settings: str) -> None:
        self.watch = tmp_path / "watch"
        self.watch.mkdir(exist_ok=True)
        self.log = tmp_path / "agent.log"
        self.env = {
            **os.environ,
            "POSTBOX_GRANT_FILE": str(grant),
            "POSTBOX_WATCH_DIR": str(self.watch),
            "POSTBOX_STATE_DIR": str(tmp_path / "state"),
            "POSTBOX_SETTLE_SECONDS": "0.5",
            "POSTBOX_EXPIRY_MARGIN_SECONDS": "0",
            "POSTBOX_ENV_FILE": str(self._empty_env_file(tmp_path)),
            "PYTHONFAULTHANDLER": "1",  # SIGABRT prints every thread's stack (see `stop`)
            "WATCHDOG_USEC": "200000",  # the main loop pings at most every 0.1 s (`turns`)
            **{f"POSTBOX_{k.upper()}": v for k, v in settings.items()},
        }
        self.wrapper: list[str] = []  # a command that runs the agent (setpriv, unshare)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.notify: Optional[NotifyListener] = None

    @staticmethod
    def _empty_env_file(tmp_path: Path) -> Path:
        path = tmp_path / "agent.env"
        path.touch()
        return path

    def start(self, *command: str) -> AgentProcess:
        # A socket path must fit in 107 bytes: pytest's tmp_path may not.
        sock = Path(tempfile.mkdtemp(prefix="postbox-notify-")) / "notify.sock"
        self.notify = NotifyListener(sock)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.wrapper, *AGENT, *(command or ("run",))],
                env={**self.env, "NOTIFY_SOCKET": str(sock)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def ready(self) -> AgentProcess:
        notify, process = self.notify, self.process
        assert notify is not None and process is not None
        assert eventually(lambda: notify.wait_for("READY=1", 0) or process.poll() is not None)
        assert notify.wait_for("READY=1", 0), self.text()
        return self

    def stop(self) -> int:
        assert self.process is not None and self.notify is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            # Hung: have it print where every thread is (faulthandler) into its log, then fail.
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(10)
            self.notify.close()
            raise AssertionError(
                f"no exit 60 s after SIGTERM; its threads:\n{self.text()}"
            ) from None
        self.notify.close()
        return code

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed; as a crash or the OOM killer would."""
        assert self.process is not None and self.notify is not None
        self.process.kill()
        self.process.wait(60)
        self.notify.close()

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def turns(self, pings: int, timeout: float = 60) -> bool:
        """Wait for `pings` more watchdog pings, which only the main loop sends, at most one per
        0.1 s of its own clock: 12 of them span at least 1.1 s of the agent's time, two rounds
        of its housekeeping (every 0.5 s). Time passed where the agent counts it, not a sleep
        that a busy machine could spend elsewhere."""
        assert self.notify is not None
        messages = self.notify.messages
        start = messages.count("WATCHDOG=1")
        return eventually(lambda: messages.count("WATCHDOG=1") >= start + pings, timeout)

    def counts(self) -> dict[str, int]:
        """This run's counts by state, and `sent`, as the agent writes them to its status.json
        (written when they change, looking every 2 s); {} before it has written them."""
        path = Path(self.env["POSTBOX_STATE_DIR"]) / "status.json"
        try:
            return dict(json.loads(path.read_text())["counts"])
        except (OSError, ValueError, KeyError):
            return {}

    def settled(self, **expected: int) -> bool:
        """The agent's own word that nothing more will happen until something changes: no file
        written, settling, due, sending or waiting to be recorded, and each `expected` count
        (sent=1, refused=1...) as given. "Nothing happened" is shown by this, not by a sleep."""
        counts = self.counts()
        busy = ("writing", "settling", "due", "sending", "unrecorded")
        return (
            bool(counts)
            and not any(counts[state] for state in busy)
            and all(counts.get(name.replace("_", " ")) == n for name, n in expected.items())
        )

    def uploaded(self, key: str) -> int:
        return self.text().count(f"uploaded {key} (")


def eventually(condition: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
