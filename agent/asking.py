"""The agent's answers to `postbox-agent wait` (agent/wait.py), over a Unix socket.

The socket (`POSTBOX_WAIT_SOCKET`, /run/postbox/wait.sock: the unit's RuntimeDirectory, 0750
postbox:postbox) is 0660, so a batch job in the group `postbox` may ask without sudo, and learns
nothing it could not see already: the states of files in the watch dir it can list, and how long
the grant has left (never the grant itself).

One question per connection: a JSON object `{"paths": [relpath, ...]}`, then the end of the
writer's side; one answer: `{"agent": {...}, "files": {relpath: [status, reason]}}`. A status is
a ledger state's value (agent/states.py); `stored` (the journal has recorded the store's answer
for the version now there, or for the path, now gone: deleted or moved after upload); `changed`
(the journal has an older version: the new one is not seen yet); or `unknown` (neither the
ledger nor the journal has it: `wait` tells a file not yet seen from one gone by looking itself,
with the job's own permissions, so the agent never says whether anything else exists); or
`journal unreadable` (not in the ledger, and the journal cannot be read: not called stored). The
dispatcher answers for the files in its ledger (`Asked`); the journal, read here, for the others,
after the ledger, so a file sent meanwhile is `sending` one time, then `stored`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.errors import AgentError, JournalError
from agent.files import FileVersion
from agent.journal import Journal
from agent.logs import printable

logger = logging.getLogger(__name__)

STORED, CHANGED, UNKNOWN = "stored", "changed", "unknown"
UNCHECKED = "journal unreadable"  # neither held nor looked up: wait waits, and says so
MAX_QUESTION_BYTES = 256 * 1024 * 1024  # a million long paths
IO_SECONDS = 30.0  # a peer that neither asks nor reads for this long is dropped
ANSWER_SECONDS = 30.0  # the dispatcher answers within a loop's turn; this is for a stuck one


@dataclass(frozen=True)
class Asked:
    """`wait` asks how these files stand: the dispatcher sets `answer` to the ledger's states of
    those it holds (state value, why) and how the agent stands (`agent`)."""

    paths: list[str]
    answer: Future[tuple[dict[str, Any], dict[str, tuple[str, str]]]]


class WaitSocket:
    """Serves `wait` on a thread of its own; `ask` puts the question on the inbox."""

    def __init__(
        self, path: Path, watch_dir: Path, journal: Journal, ask: Callable[[Asked], None]
    ) -> None:
        self.path, self.watch_dir, self.journal, self._ask = path, watch_dir, journal, ask
        self._server: Optional[socket.socket] = None
        self._closed = threading.Event()

    def open(self) -> None:
        """Listen, or say once why `wait` cannot reach this agent and go on without."""
        try:
            self._server = _listen(self.path)
        except OSError as exc:
            logger.warning(
                "cannot listen on %s (%s): `postbox-agent wait` cannot reach this agent "
                "(the unit's RuntimeDirectory makes its folder; or set POSTBOX_WAIT_SOCKET)",
                self.path,
                exc.strerror or exc,
            )
            return
        except AgentError as exc:
            logger.warning("%s", exc.message)
            return
        threading.Thread(target=self._serve, name="wait", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            with contextlib.suppress(OSError):  # ours: _listen refused to take another's
                self.path.unlink()
            self._server.close()

    def _serve(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                peer, _ = self._server.accept()
            except OSError:  # closed
                return
            with peer:
                peer.settimeout(IO_SECONDS)
                try:
                    peer.sendall(json.dumps(self.answer(_read_question(peer))).encode())
                except (OSError, ValueError, TimeoutError) as exc:
                    logger.debug("a wait was dropped: %s", exc)

    def answer(self, paths: list[str]) -> dict[str, Any]:
        """How `paths` stand: the ledger's states first, then the journal for the others."""
        answer: Future[tuple[dict[str, Any], dict[str, tuple[str, str]]]] = Future()
        self._ask(Asked(paths, answer))
        agent, held = answer.result(timeout=ANSWER_SECONDS)
        files: dict[str, tuple[str, str]] = dict(held)
        others = [p for p in paths if p not in held]
        try:
            sent = self.journal.sent_versions(others)
        except JournalError as exc:  # none is called stored (damaged: the daemon says so, once)
            files.update((relpath, (UNCHECKED, exc.message)) for relpath in others)
            return {"agent": agent, "files": files}
        for relpath in others:
            recorded = sent.get(relpath)
            if recorded is None:
                files[relpath] = (UNKNOWN, "")
                continue
            now = FileVersion.at(self.watch_dir / relpath)
            files[relpath] = (STORED, "") if now is None or now.matches(recorded) else (CHANGED, "")
        return {"agent": agent, "files": files}


def _listen(path: Path) -> socket.socket:
    """Bound to `path`, 0660; a socket left there by an agent that died is replaced, one that
    answers (another agent's) is not."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            path.unlink()  # stale: nothing listens
        else:
            raise AgentError(
                f"another agent listens on {printable(str(path))}: `postbox-agent wait` reaches "
                "that one (give each agent its own POSTBOX_WAIT_SOCKET)"
            )
        finally:
            probe.close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(os.fspath(path))
        os.chmod(path, 0o660)
        server.listen(16)
    except OSError:
        server.close()
        raise
    return server


def _read_question(peer: socket.socket) -> list[str]:
    chunks, size = [], 0
    while chunk := peer.recv(1 << 20):
        size += len(chunk)
        if size > MAX_QUESTION_BYTES:
            raise ValueError("question too large")
        chunks.append(chunk)
    question = json.loads(b"".join(chunks))
    paths = question.get("paths") if isinstance(question, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError('a question is {"paths": [relpath, ...]}')
    return [p for p in paths if _inside(p)]


def _inside(relpath: str) -> bool:
    """A relative path that stays beneath the watch dir (the question comes from another user)."""
    if not relpath or relpath.startswith("/") or "\0" in relpath:
        return False
    return ".." not in relpath.split("/")


def ask(path: Path, paths: list[str], timeout: float) -> dict[str, Any]:
    """`wait`'s side: one question, one answer. OSError: no agent answers on `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(os.fspath(path))
        client.sendall(json.dumps({"paths": paths}).encode())
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(1 << 20):
            chunks.append(chunk)
    if not chunks:
        raise ConnectionResetError("the agent closed the connection without an answer")
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    return answer
