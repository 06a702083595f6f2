"""The wait socket (agent/asking.py) against clients that are not `wait`: whatever one sends, or
however slowly, the next `wait` is answered; a question is bounded in size, in time and in the
clients served at once (README, "Batch jobs on machines that go away")."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.asking import Asked, WaitSocket, ask
from agent.journal import Journal
from agent.question import BOUNDS, Bounds, question, questions
from agent.versions import FileVersion

Dispatcher = Callable[[Asked], None]


def empty_ledger(asked: Asked) -> None:
    """The dispatcher's part, for a ledger that holds none of the files."""
    asked.answer.set_result(({"grant_left": 60, "expired": False}, {}))


@pytest.fixture
def serve(tmp_path: Path, wait_socket: Path) -> Iterator[Callable[..., WaitSocket]]:
    """A wait socket of a journal that recorded nothing, answered by `dispatcher`."""
    watch = tmp_path / "watch"
    watch.mkdir()
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    servers: list[WaitSocket] = []

    def make(dispatcher: Dispatcher = empty_ledger, **options: Any) -> WaitSocket:
        server = WaitSocket(wait_socket, watch, journal, dispatcher, **options)
        server.open()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
    journal.close()


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(20)
    client.connect(os.fspath(path))
    return client


def told(client: socket.socket) -> bytes:
    """Everything the agent says until it closes (b"": it dropped the question)."""
    chunks = []
    while chunk := client.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def asked_raw(path: Path, raw: bytes) -> bytes:
    with connect(path) as client:
        client.sendall(raw)
        client.shutdown(socket.SHUT_WR)
        return told(client)


DEEP = 30_000  # far past Python's recursion limit, within the size bound


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"paths": ' + b"[" * DEEP + b"]" * DEEP + b"}", id="nested lists"),
        pytest.param(b'{"a": ' * DEEP + b"1" + b"}" * DEEP, id="nested objects"),
        pytest.param(b'{"paths": ["caf\xc3\x28.csv"]}', id="not UTF-8"),
        pytest.param(b"\xff\xfe\x00\x00\x00", id="a stray byte order mark"),
        pytest.param(b'["a.csv"]', id="not an object"),
        pytest.param(b'{"paths": "a.csv"}', id="paths not a list"),
        pytest.param(b'{"paths": [' + b"9" * 100_000 + b"]}", id="a huge number"),
        pytest.param(b'{"paths": [1e999999, NaN]}', id="numbers out of range"),
        pytest.param(b"", id="nothing"),
    ],
)
def test_a_bad_question_is_dropped_and_the_next_wait_is_answered(
    serve: Callable[..., WaitSocket], wait_socket: Path, raw: bytes, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    serve()
    assert asked_raw(wait_socket, raw) == b""
    answer = ask(wait_socket, ["a.csv"], 20)
    assert answer["files"] == {"a.csv": ["unknown", ""]}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "a wait's question was dropped" in caplog.text


def test_a_bug_while_answering_is_logged_once_with_its_traceback_and_the_next_wait_answered(
    serve: Callable[..., WaitSocket], wait_socket: Path, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    calls: list[Asked] = []

    def dispatcher(asked: Asked) -> None:  # a bug the first two times
        calls.append(asked)
        if len(calls) <= 2:
            raise TypeError("a bug in the dispatcher's part")
        empty_ledger(asked)

    serve(dispatcher)
    for _ in range(2):
        with pytest.raises(ConnectionResetError):
            ask(wait_socket, ["a.csv"], 20)
    assert ask(wait_socket, ["a.csv"], 20)["files"] == {"a.csv": ["unknown", ""]}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert errors[0].exc_info is not None and errors[0].levelno == logging.ERROR
    assert "a bug (please report it)" in errors[0].getMessage()
    assert "TypeError" in caplog.text


def test_a_client_sending_a_byte_at_a_time_does_not_delay_another_wait(
    serve: Callable[..., WaitSocket], wait_socket: Path
) -> None:
    serve()
    with connect(wait_socket) as slow:
        slow.sendall(b'{"pa')  # and nothing more for now
        began = time.monotonic()
        assert ask(wait_socket, ["a.csv"], 20)["files"] == {"a.csv": ["unknown", ""]}
        assert time.monotonic() - began < 20


def test_a_question_over_the_size_bound_is_refused_before_it_is_read_whole(
    serve: Callable[..., WaitSocket], wait_socket: Path
) -> None:
    """The agent stops reading at the bound and closes: the sender is told (a broken pipe) long
    before it could send 64 MiB, and the next wait is answered."""
    serve()
    with connect(wait_socket) as client:
        client.sendall(b'{"paths": ["')
        sent = sent_until_closed(client, b"x" * 65536, 1024)  # 64 MiB at most
    assert sent < BOUNDS.question_bytes + 8 * 1024 * 1024  # the bound and the socket's buffers
    assert ask(wait_socket, ["a.csv"], 20)["files"] == {"a.csv": ["unknown", ""]}


def test_a_name_that_is_not_utf8_is_answered_unknown_with_the_others(
    serve: Callable[..., WaitSocket], wait_socket: Path
) -> None:
    """A file whose name is not UTF-8 (kept as lone surrogates), not in the ledger yet: the
    journal cannot hold such a name, so it is `unknown`; the question is not dropped."""
    serve()
    files = ask(wait_socket, ["caf\udce9.csv", "a.csv"], 20)["files"]
    assert files == {"caf\udce9.csv": ["unknown", ""], "a.csv": ["unknown", ""]}


def test_a_long_list_is_asked_in_bounded_questions_and_every_file_is_answered(
    serve: Callable[..., WaitSocket], wait_socket: Path
) -> None:
    asked: list[int] = []

    def dispatcher(question: Asked) -> None:
        asked.append(len(question.paths))
        empty_ledger(question)

    serve(dispatcher)
    paths = [f"run-{n // 1000:03d}/{n:06d}.csv" for n in range(30_000)]
    files = ask(wait_socket, paths, 60)["files"]
    assert files == {p: ["unknown", ""] for p in paths}
    assert len(asked) >= 3 and sum(asked) == len(paths), asked


def test_a_client_trickling_its_question_is_dropped_at_its_deadline(
    serve: Callable[..., WaitSocket], wait_socket: Path
) -> None:
    """A byte every 50 ms never lets a read wait long, yet the whole question is due within
    `question_seconds` of the connection: past it, the agent closes (the next send fails)."""
    serve(bounds=Bounds(question_seconds=0.5))
    with connect(wait_socket) as slow:
        sent_until_closed(slow, b" ", 400, pause=0.05)  # 20 s at least: 40 times the deadline


def sent_until_closed(client: socket.socket, data: bytes, times: int, pause: float = 0) -> int:
    """Send `data` up to `times` times: how much went before the agent closed the connection
    (and a failed test if it never did)."""
    sent = 0
    for _ in range(times):
        try:
            client.sendall(data)
        except ConnectionError:  # a broken pipe, or reset
            return sent
        sent += len(data)
        time.sleep(pause)
    raise AssertionError(f"the agent took all {sent} bytes")


def test_an_answer_not_taken_is_given_up_at_its_deadline_and_frees_the_place(
    serve: Callable[..., WaitSocket], wait_socket: Path
) -> None:
    """One client at a time here: it asks about many long names and never reads the answer;
    once `reply_seconds` have passed, the agent gives up on it and the next wait is answered."""
    serve(bounds=Bounds(clients=1, reply_seconds=0.5))
    names = [f"{n:06d}-" + "x" * 200 for n in range(2000)]  # an answer far over the buffers
    with connect(wait_socket) as idle:
        idle.sendall(next(questions(names)))
        idle.shutdown(socket.SHUT_WR)
        assert answered_within(wait_socket, 100)


def answered_within(path: Path, tries: int) -> bool:
    """A wait is answered within `tries` tries, 0.2 s apart (a refused one is closed at once)."""
    for _ in range(tries):
        try:
            files = ask(path, ["a.csv"], 20)["files"]
        except ConnectionError:  # closed unanswered
            time.sleep(0.2)
        else:
            return bool(files == {"a.csv": ["unknown", ""]})
    return False


def test_beyond_the_bound_of_clients_at_once_one_more_is_closed_at_once(
    serve: Callable[..., WaitSocket], wait_socket: Path, caplog: Any
) -> None:
    """Four clients that say nothing hold the four places: a fifth, a real question, is closed
    unanswered at once (its wait asks again), with one warning; once one ends, a wait is
    answered."""
    serve(bounds=Bounds(clients=4, question_seconds=600))
    idle = [connect(wait_socket) for _ in range(4)]
    try:
        for _ in range(3):
            with pytest.raises(ConnectionError):  # reset, or a broken pipe if closed sooner
                ask(wait_socket, ["a.csv"], 20)
        idle.pop().close()
        assert answered_within(wait_socket, 100)
    finally:
        for client in idle:
            client.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["4 waits at once: turning more away until one ends (each asks again)"]


def test_many_waits_at_once_each_get_their_own_answer_from_the_journal(
    serve: Callable[..., WaitSocket], wait_socket: Path, tmp_path: Path
) -> None:
    """Sixteen waits ask at once, each about its own file the journal recorded: the journal is
    read on their threads together, and each is told `stored` of its own file."""
    server = serve()
    for n in range(16):
        (server.watch_dir / f"{n}.csv").write_bytes(b"x")
        version = FileVersion.at(server.watch_dir / f"{n}.csv")
        assert version is not None
        server.journal.record(f"{n}.csv", version, f"k/{n}.csv", "md5", "etag")
    told: dict[int, list[Any]] = {}

    def job(n: int) -> None:
        told[n] = [ask(wait_socket, [f"{n}.csv", "none.csv"], 20)["files"] for _ in range(20)]

    threads = [threading.Thread(target=job, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for n in range(16):
        expected = {f"{n}.csv": ["stored", ""], "none.csv": ["unknown", ""]}
        assert told.get(n) == [expected] * 20, n


def test_a_question_is_refused_over_the_bound_of_paths() -> None:
    bounds = Bounds(question_paths=3)
    assert question(b'{"paths": ["a", "b", "c"]}', bounds.question_paths) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="over 3 paths"):
        question(b'{"paths": ["a", "b", "c", "d"]}', bounds.question_paths)


def test_a_million_paths_make_questions_within_the_bounds_holding_every_path_once() -> None:
    """Whatever the names (short, or the longest Linux allows with every byte escaped six
    times over), each question fits the agent's bounds, and together they ask about all."""
    longest = "\x01" * 4096
    paths = [f"{n % 1000}/{n}" for n in range(1_000_000)] + [longest, "\udce9.csv"]
    asked: list[str] = []
    count = 0
    for raw in questions(paths):
        count += 1
        assert len(raw) <= BOUNDS.question_bytes
        asked += question(raw)
    assert asked == paths
    assert count <= 110  # full ones: 10,000 short paths each
