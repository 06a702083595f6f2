"""The agent's answers to `postbox-agent wait` (agent/wait.py), over a Unix socket; `ask` is
`wait`'s side of it. What is asked and answered, and its bounds, is agent/question.py.

The socket (`POSTBOX_WAIT_SOCKET`, /run/postbox/wait.sock: the unit's RuntimeDirectory, 0750
postbox:postbox) is 0660, so a batch job in the group `postbox` may ask without sudo, and learns
nothing it could not see already: the states of files in the watch dir it can list, and how long
the grant has left (never the grant itself).

The dispatcher answers for the files in its ledger (`Asked`); the journal, read here, for the
others, after the ledger, so a file sent meanwhile is `sending` one time, then `stored`.

No client can silence the socket for the others (any member of the group may connect, and send
anything): each is served on a thread of its own, up to `Bounds.clients` at once (one more is
closed at once, and its `wait` asks again); its question is read whole within
`question_seconds` (a trickle does not move that deadline) and at most `question_bytes` and
`question_paths` long, and its answer taken within `reply_seconds`. A question that is not one
(agent/question.py) is dropped with a debug line. One answer is built at a time (`_answering`),
so the memory a question costs is held once, whatever the number of clients; `ask` splits a
long list into questions within the bounds and merges their answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.errors import AgentError, JournalError
from agent.journal import Journal
from agent.question import BOUNDS, UNCHECKED, BadQuestion, Bounds, by_journal, question, questions
from agent.rules import Once
from agent.shown import printable

logger = logging.getLogger(__name__)

_LISTENING = 64  # connections the kernel holds before they are accepted


@dataclass(frozen=True)
class Asked:
    """`wait` asks how these files stand: the dispatcher sets `answer` to the ledger's states of
    those it holds (state value, why) and how the agent stands (`agent`)."""

    paths: list[str]
    answer: Future[tuple[dict[str, Any], dict[str, tuple[str, str]]]]


class WaitSocket:
    """Serves `wait`: a thread accepts, one more per client; `ask` puts the question on the
    inbox."""

    def __init__(
        self,
        path: Path,
        watch_dir: Path,
        journal: Journal,
        ask: Callable[[Asked], None],
        bounds: Bounds = BOUNDS,
    ) -> None:
        self.path, self.watch_dir, self.journal, self._ask = path, watch_dir, journal, ask
        self.bounds = bounds
        self._server: Optional[socket.socket] = None
        self._closed = threading.Event()
        self._clients = threading.BoundedSemaphore(bounds.clients)
        self._answering = threading.Lock()  # one answer built at a time: its memory held once
        self._turning_away = False  # said once until a client is served again
        self._said = Once(most=100)  # faults logged in full once; again at debug

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
            with contextlib.suppress(OSError):  # wakes the accepting thread (Linux)
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()

    def _serve(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                peer, _ = self._server.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return
                # Out of file descriptors (EMFILE) or memory: the next accept may succeed.
                self._fault(f"accept {exc.errno}", "cannot accept a wait (%s): trying again", exc)
                self._closed.wait(0.1)
                continue
            try:
                self._admit(peer)
            except Exception as exc:  # never the end of the socket: a bug, said once
                peer.close()
                self._bug(exc)

    def _admit(self, peer: socket.socket) -> None:
        """Serve `peer` on a thread of its own, or close it at once when the bound is reached."""
        if not self._clients.acquire(blocking=False):
            peer.close()
            if not self._turning_away:
                logger.warning(
                    "%d waits at once: turning more away until one ends (each asks again)",
                    self.bounds.clients,
                )
            self._turning_away = True
            return
        self._turning_away = False
        try:
            threading.Thread(
                target=self._serve_one, args=(peer,), name="wait client", daemon=True
            ).start()
        except RuntimeError as exc:  # no thread to be had (memory, the tasks' limit)
            self._clients.release()
            peer.close()
            self._fault("thread", "cannot answer a wait (%s): it asks again", exc)

    def _serve_one(self, peer: socket.socket) -> None:
        """One question, one answer; whatever happens, the peer is closed, its place freed, and
        a fault that is not the peer's is logged."""
        try:
            with peer:
                try:
                    self._converse(peer)
                except (BadQuestion, OSError) as exc:  # the peer's doing, or its going
                    logger.debug("a wait's question was dropped (%s): %s", _who(peer), exc)
                except AgentError as exc:  # the journal cannot be read just now
                    self._fault(exc.message, "a wait was not answered: %s", exc.message)
                except Exception as exc:
                    self._bug(exc)
        finally:
            self._clients.release()

    def _converse(self, peer: socket.socket) -> None:
        bounds = self.bounds
        raw = _receive(peer, time.monotonic() + bounds.question_seconds, bounds.question_bytes)
        if not self._answering.acquire(timeout=bounds.answer_seconds):
            raise TimeoutError(f"no answer within {bounds.answer_seconds:.0f} s")
        try:
            reply = json.dumps(self.answer(question(raw, bounds.question_paths))).encode()
        finally:
            self._answering.release()
        del raw
        peer.settimeout(bounds.reply_seconds)  # sendall's whole, not each send's (Python 3.5+)
        peer.sendall(reply)

    def answer(self, paths: list[str]) -> dict[str, Any]:
        """How `paths` stand: the ledger's states first, then the journal for the others."""
        answer: Future[tuple[dict[str, Any], dict[str, tuple[str, str]]]] = Future()
        self._ask(Asked(paths, answer))
        try:
            agent, held = answer.result(timeout=self.bounds.answer_seconds)
        except FutureTimeout:  # not an OSError before Python 3.11
            raise TimeoutError(
                f"the dispatcher did not answer within {self.bounds.answer_seconds:.0f} s"
            ) from None
        files: dict[str, tuple[str, str]] = dict(held)
        others = [p for p in paths if p not in held]
        try:
            sent = self.journal.sent_versions([p for p in others if _utf8(p)])  # none else kept
        except JournalError as exc:  # none is called stored (damaged: the daemon says so, once)
            files.update((relpath, (UNCHECKED, exc.message)) for relpath in others)
            return {"agent": agent, "files": files}
        files.update(by_journal(self.watch_dir, others, sent))
        return {"agent": agent, "files": files}

    def _bug(self, exc: Exception) -> None:
        """Not the peer's doing: logged with its traceback the first time, at debug after."""
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        line = f"{where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        key = f"{type(exc).__name__} {line}"
        if not self._said.first(key):
            logger.debug("a wait was not answered: unexpected error, a bug: %r", exc)
            return
        logger.error(
            "a wait was not answered: unexpected error, a bug (please report it)",
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def _fault(self, key: str, message: str, *args: object) -> None:
        """A fault of the agent's own (not the peer's): a warning the first time, debug after."""
        level = logging.WARNING if self._said.first(key) else logging.DEBUG
        logger.log(level, message, *args)


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
        server.listen(_LISTENING)
    except OSError:
        server.close()
        raise
    return server


def _receive(peer: socket.socket, deadline: float, limit: int) -> bytes:
    """The question, read whole by `deadline` (each byte a client trickles leaves it where it
    is), and no more than `limit` bytes of it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        _within(peer, deadline, "send the whole question")
        chunk = peer.recv(min(1 << 16, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BadQuestion(f"over {limit} bytes")
        chunks.append(chunk)


def _utf8(relpath: str) -> bool:
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8: the agent sends none such
        return False
    return True


def _who(peer: socket.socket) -> str:
    """The process at the other end, as the kernel says (Linux)."""
    size = struct.calcsize("3i")
    try:
        pid, uid, _ = struct.unpack(
            "3i", peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
        )
    except (OSError, AttributeError, struct.error):
        return "a client"
    return f"pid {pid}, uid {uid}"


def ask(path: Path, paths: list[str], timeout: float, bounds: Bounds = BOUNDS) -> dict[str, Any]:
    """`wait`'s side: how `paths` stand, asked in as many questions as `bounds` need, each one
    answered within `timeout` seconds. OSError: no agent answers on `path` in time."""
    agent: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for asked in questions(paths, bounds):
        answer = _ask_once(path, asked, time.monotonic() + timeout)
        agent = answer.get("agent", {})  # the last word on the grant
        files.update(answer.get("files", {}))
    return {"agent": agent, "files": files}


def _ask_once(path: Path, asked: bytes, deadline: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        _within(client, deadline, "connect")
        client.connect(os.fspath(path))
        _within(client, deadline, "take the question")
        client.sendall(asked)
        client.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while _within(client, deadline, "answer") and (chunk := client.recv(1 << 20)):
            chunks.append(chunk)
    if not chunks:
        raise ConnectionResetError("the agent closed the connection without an answer")
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise ValueError("the agent's answer is not a JSON object")
    return answer


def _within(sock: socket.socket, deadline: float, what: str) -> bool:
    """`sock`'s next step may take what is left until `deadline` (a socket's own timeout is
    each step's: a peer that trickles would never reach it); TimeoutError if nothing is."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"did not {what} in time")
    sock.settimeout(left)
    return True
