"""`postbox-agent wait`: a batch job asks the running agent whether its files are stored, and
each way it can end has its own exit code (README, "Batch jobs on machines that go away")."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.asking import Asked, WaitSocket, ask
from agent.errors import ExitCode
from agent.journal import Journal
from agent.states import PENDING, WAITING, State
from agent.versions import FileVersion
from agent.wait import Lines, Tally, _ended
from demo.stores import Store
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, fill_up, objects, with_url
from tests.faultproxy import fault_proxy
from tests.journals import wal_overwritten


@pytest.fixture
def store(moto_store: Store) -> Store:
    """What wait says does not depend on the store: the drain on stop is tested on both."""
    return moto_store


def wait(a: AgentProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`postbox-agent wait` with the agent's settings, as a job beside it runs it."""
    return subprocess.run(
        [*AGENT, "wait", *args], env=a.env, capture_output=True, text=True, timeout=timeout
    )


def test_wait_returns_0_once_every_file_is_stored_a_file_being_written_included(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """Files complete and one still open for writing when `wait` starts: it returns only after
    the writer closed it and the store has it, and by then every file is in the bucket."""
    a = agent(make_grant("runs/1/")).start().ready()
    (a.watch / "logs").mkdir()
    expected = {}
    for n in range(50):
        content = os.urandom(4096)
        (a.watch / "logs" / f"r{n:02d}.out").write_bytes(content)
        expected[f"runs/1/logs/r{n:02d}.out"] = content
    writer = (a.watch / "open.log").open("wb")
    writer.write(b"first half ")
    writer.flush()
    assert eventually(lambda: a.counts().get("writing") == 1), a.counts()
    result: list[subprocess.CompletedProcess[str]] = []
    waiter = threading.Thread(target=lambda: result.append(wait(a, "--every", "1s")))
    waiter.start()
    # wait goes on while the file is written: its progress line says so, more than once.
    assert eventually(lambda: a.counts().get("sent") == 50), a.counts()
    assert a.turns(12) and waiter.is_alive()
    writer.write(b"second half")
    writer.close()
    expected["runs/1/open.log"] = b"first half second half"
    waiter.join(120)
    assert result and result[0].returncode == ExitCode.OK, result
    assert objects(s3, bucket) == expected  # all stored when wait returned
    out = result[0].stdout
    assert "stored: all 51 file(s) (" in out, out
    assert "waiting: 1 file(s) left (1 writing)" in out, out
    assert a.stop() == ExitCode.OK


def test_wait_names_a_refused_file_with_its_reason_and_exits_3(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A file over the grant's size limit can never be stored under it: wait does not hang on
    it, it names it with the reason; the file beside it is stored."""
    a = agent(make_grant("runs/1/", "30m", "--max-size", "1KiB")).start().ready()
    (a.watch / "small.txt").write_bytes(b"fits")
    (a.watch / "big.bin").write_bytes(b"x" * 4096)
    done = wait(a)
    assert done.returncode == ExitCode.FILES_LEFT, done
    assert "not stored big.bin: " in done.stdout and "4096" in done.stdout, done.stdout
    assert "1 file(s) stored" in done.stdout
    assert objects(s3, bucket) == {"runs/1/small.txt": b"fits"}
    assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent


def test_wait_times_out_with_its_own_code_and_says_what_is_left(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    a = agent(make_grant("runs/1/")).start().ready()
    with (a.watch / "open.log").open("wb") as writer:
        writer.write(b"never closed in time")
        writer.flush()
        assert eventually(lambda: a.counts().get("writing") == 1), a.counts()
        done = wait(a, "--timeout", "1s", "--json")
    assert done.returncode == ExitCode.TIMED_OUT, done
    report = json.loads(done.stdout)
    assert report["result"] == "timed out"
    assert report["left"] == [{"path": "open.log", "state": "writing"}]
    assert a.stop() == ExitCode.OK


def test_wait_says_the_grant_expired_with_files_left_and_exits_79(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """The grant expires while a file is still written: no upload can start, the agent stops
    (79), and wait, which saw the expiry coming, says so rather than 'not running'."""
    a = agent(make_grant("runs/1/", "10s")).start().ready()
    with (a.watch / "late.log").open("wb") as writer:
        writer.write(b"still writing at the expiry")
        writer.flush()
        done = wait(a, "--agent-grace", "10m")
        assert a.wait(60) == ExitCode.EXPIRED
    assert done.returncode == ExitCode.EXPIRED, done
    assert "the grant expired" in done.stdout and "left late.log (writing)" in done.stdout


def test_wait_exits_6_when_no_agent_answers(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    a = agent(make_grant("runs/1/"))  # never started
    (a.watch / "result.csv").write_bytes(b"1,2\n")
    done = wait(a, "--agent-grace", "1s")
    assert done.returncode == ExitCode.NOT_RUNNING, done
    assert "the agent does not answer on" in done.stdout
    assert "left result.csv (unseen)" in done.stdout


def test_wait_exits_6_after_its_agent_grace_when_the_socket_takes_the_question_and_never_answers(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, wait_socket: Path
) -> None:
    """Something listens on the socket (a hung agent: the kernel takes the connections and
    the question) and never answers: wait gives up after its --agent-grace of 2 s, not after
    the 60 s one answer may take at most."""
    a = agent(make_grant("runs/1/"))  # never started
    (a.watch / "result.csv").write_bytes(b"1,2\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(os.fspath(wait_socket))
        hung.listen(64)  # never accepted, never answered
        began = time.monotonic()
        done = wait(a, "--agent-grace", "2s")
        took = time.monotonic() - began
    assert done.returncode == ExitCode.NOT_RUNNING, done
    assert "the agent does not answer on" in done.stdout
    assert took < 30, took  # 2 s, and the command's start, however slow the machine


def test_wait_reads_the_journal_of_a_stopped_agent_whatever_the_names_in_the_watch_dir(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """Before: with the agent stopped, a name that is not UTF-8 in the watch dir went into the
    journal's query and `wait` ended with "CRITICAL unexpected error, a bug" (exit 1). What the
    journal recorded is stored; the rest is left, named."""
    a = agent(make_grant("runs/1/")).start().ready()
    (a.watch / "sent.csv").write_bytes(b"1")
    assert eventually(lambda: a.counts().get("sent") == 1), a.counts()
    assert a.stop() == ExitCode.OK
    with open(os.fsencode(a.watch) + b"/caf\xe9.csv", "wb") as latin1:
        latin1.write(b"2")
    done = wait(a, "--agent-grace", "1s", "--json")
    assert done.returncode == ExitCode.NOT_RUNNING, done
    report = json.loads(done.stdout)
    assert report["stored"] == 1 and report["left"][0]["path"] == "caf\\xe9.csv", report


def test_wait_refuses_a_path_outside_the_watch_dir(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, tmp_path: Path
) -> None:
    a = agent(make_grant("runs/1/")).start().ready()
    done = wait(a, str(tmp_path))
    assert done.returncode == ExitCode.USAGE, done
    assert f"is not under the watch dir {a.watch}" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert a.stop() == ExitCode.OK


def test_wait_names_a_temporary_name_or_a_symlink_at_once_and_takes_paths_as_the_shell_does(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """Before: `wait` on `summary.tsv.tmp` said "unseen" until its --timeout (124), `wait` on
    the folder said nothing of it, and `wait sub/../sub/ok.txt` or on a symlink waited for
    ever. A name the agent never sends is said at once, by name (exit 3, within a --timeout of
    10 minutes); a folder's temporary names are named on stderr; `..` is resolved."""
    a = agent(make_grant("runs/1/")).start().ready()
    sub = a.watch / "sub"
    sub.mkdir()
    (sub / "ok.txt").write_bytes(b"ok")
    (sub / "summary.tsv.tmp").write_bytes(b"never renamed")
    (a.watch / "link.txt").symlink_to(sub / "ok.txt")
    for named in (sub / "summary.tsv.tmp", a.watch / "link.txt"):
        done = wait(a, str(named), "--timeout", "10m", "--json")
        assert done.returncode == ExitCode.FILES_LEFT, done
        (refused,) = json.loads(done.stdout)["refused"]
        assert refused["path"] == named.relative_to(a.watch).as_posix()
        assert "never sent" in refused["reason"] or "sends no symlink" in refused["reason"]
    folder = wait(a, str(sub))
    assert folder.returncode == ExitCode.OK, folder
    assert "stored: all 1 file(s)" in folder.stdout
    assert "never sent" in folder.stderr and "sub/summary.tsv.tmp" in folder.stderr, folder
    dotted = wait(a, f"{sub}/../sub/ok.txt", "--timeout", "10m")
    assert dotted.returncode == ExitCode.OK, dotted
    whole = wait(a, "--timeout", "10m")  # the symlink the agent refuses, refused here too
    assert whole.returncode == ExitCode.FILES_LEFT, whole
    assert "not stored link.txt: a symlink" in whole.stdout, whole.stdout
    assert a.stop() == ExitCode.FILES_LEFT, a.text()  # the agent counts the symlink as left


def test_wait_names_what_the_filters_exclude_instead_of_waiting_for_it(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """POSTBOX_EXCLUDE=logs/,*.log: a job that waits for its results folder is not held up by
    the log beside them (named on stderr and in --json, not waited for: exit 0); one that names
    an excluded file or folder is told at once that it is never sent (exit 3, a job's bug),
    within a --timeout of 10 minutes."""
    a = agent(make_grant("runs/1/"), exclude="logs/, *.log").start().ready()
    out = a.watch / "out"
    (out / "logs").mkdir(parents=True)
    (out / "result.csv").write_bytes(b"r")
    (out / "run.log").write_bytes(b"l")
    (out / "logs" / "debug.txt").write_bytes(b"d")
    folder = wait(a, str(out), "--timeout", "10m", "--json")
    assert folder.returncode == ExitCode.OK, folder
    document = json.loads(folder.stdout)
    assert document["stored"] == 1 and document["refused"] == []
    assert document["excluded"] == [
        {"path": "out/run.log", "reason": "excluded by POSTBOX_EXCLUDE (*.log)"},
        {"path": "out/logs/debug.txt", "reason": "excluded by POSTBOX_EXCLUDE (logs/)"},
    ]
    assert folder.stderr == (
        "not waited for, excluded by POSTBOX_INCLUDE or POSTBOX_EXCLUDE (never sent): "
        "out/run.log, out/logs/debug.txt\n"
    )
    for named, why in (("out/run.log", "*.log"), ("out/logs", "logs/"), ("out/x.log", "*.log")):
        done = wait(a, str(a.watch / named), "--timeout", "10m")  # x.log: not there (yet)
        assert done.returncode == ExitCode.FILES_LEFT, done
        assert done.stdout.startswith(
            f"not stored {named}: excluded by POSTBOX_EXCLUDE ({why}), never sent: leave it out "
            "of wait's PATHs, or change the setting\n"
        ), done.stdout
    assert a.stop() == ExitCode.OK


def test_a_folder_whose_every_file_is_excluded_is_never_stored_whatever_the_patterns(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """A folder all of whose files the filters exclude, where no pattern says so of the folder
    itself: one only INCLUDE leaves out (`*.csv`, a folder of .txt), one EXCLUDE names with a
    `!` beside it that could take a file back. `wait` on it said "stored: all 0 file(s)", exit
    0, and the job powered off with nothing sent; now it is named as never sent, exit 3."""
    a = agent(make_grant("runs/1/"), include="*.csv, deep/**",
              exclude="deep/, !deep/keep.csv").start().ready()  # fmt: skip
    for name in ("txts/a.txt", "txts/b.txt", "deep/x.csv", "deep/y.bin"):
        (a.watch / name).parent.mkdir(exist_ok=True)
        (a.watch / name).write_bytes(b"x")
    for folder in ("txts", "deep"):
        done = wait(a, str(a.watch / folder), "--timeout", "10m")
        assert done.returncode == ExitCode.FILES_LEFT, done
        assert done.stdout.startswith(
            f"not stored {folder}: every file in it is excluded, never sent: leave it out of "
            "wait's PATHs, or change the setting\n"
        ), done.stdout
    assert a.stop() == ExitCode.OK


def test_wait_with_other_settings_than_the_agents_takes_the_agents_word_that_a_file_is_excluded(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """A job whose own environment lacks the agent's POSTBOX_EXCLUDE (set in a drop-in's
    Environment=, say) lists the log as a file to wait for: the agent says it is excluded, and
    `wait` ends at once, naming it (exit 3), instead of waiting for it until its --timeout."""
    a = agent(make_grant("runs/1/"), exclude="*.log").start().ready()
    (a.watch / "run.log").write_bytes(b"l")
    env = {k: v for k, v in a.env.items() if k != "POSTBOX_EXCLUDE"}
    done = subprocess.run([*AGENT, "wait", "--timeout", "10m"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == ExitCode.FILES_LEFT, done
    assert "not stored run.log: excluded by POSTBOX_EXCLUDE (*.log)\n" in done.stdout, done
    assert a.stop() == ExitCode.OK


def test_wait_json_is_utf8_whatever_the_names_and_timeout_takes_bare_seconds(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """Before: `--timeout 150` was refused (coreutils' timeout takes bare seconds) and a name
    that is not UTF-8 came out of `--json` as a lone surrogate, which strict parsers reject."""
    a = agent(make_grant("runs/1/")).start().ready()
    raw = os.fsencode(a.watch) + b"/caf\xe9.csv"
    with open(raw, "wb") as latin1:
        latin1.write(b"1")
    done = wait(a, "--timeout", "100.5", "--json")
    assert done.returncode == ExitCode.FILES_LEFT, done  # no S3 key can hold the name
    report = json.loads(done.stdout.encode("utf-8"))  # strict: valid UTF-8 throughout
    (refused,) = report["refused"]
    assert refused["path"] == "caf\\xe9.csv" and refused["path_hex"] == b"caf\xe9.csv".hex()
    assert a.stop() == ExitCode.FILES_LEFT


def test_wait_timeout_0_means_no_limit_as_coreutils_timeout_0_does(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """Before: `--timeout 0` looked once and exited 124 with a file still being written."""
    a = agent(make_grant("runs/1/")).start().ready()
    writer = (a.watch / "open.log").open("wb")
    writer.write(b"half")
    writer.flush()
    assert eventually(lambda: a.counts().get("writing") == 1), a.counts()
    with subprocess.Popen(
        [*AGENT, "wait", "--timeout", "0", "--every", "1s"], env=a.env, stdout=subprocess.PIPE
    ) as waiter:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().startswith(b"waiting: 1 file(s) left (1 writing)")
        writer.close()
        assert waiter.wait(120) == ExitCode.OK
    assert a.stop() == ExitCode.OK


def test_an_agent_outside_systemd_listens_in_its_state_dir_and_wait_finds_it(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, tmp_path: Path
) -> None:
    """Before: started by hand or in a container, where /run/postbox does not exist, the agent
    warned once and every `wait` exited 6 after 30 s."""
    state = Path(tempfile.mkdtemp(prefix="postbox-state-"))  # a socket's path fits 107 bytes
    try:
        a = (
            agent(
                make_grant("runs/1/"),
                wait_socket=str(tmp_path / "no-such-run-dir" / "wait.sock"),
                state_dir=str(state),
            )
            .start()
            .ready()
        )
        (a.watch / "one.txt").write_bytes(b"1")
        done = wait(a, "--agent-grace", "10m", "--timeout", "10m")
        assert done.returncode == ExitCode.OK, (done, a.text())
        assert (state / "wait.sock").is_socket()
        assert "cannot listen" not in a.text()
        assert a.stop() == ExitCode.OK
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_wait_with_paths_counts_only_those_and_a_file_sent_then_deleted_is_stored(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """With PATHs only their files count (an open file elsewhere does not hold wait up); a file
    the agent sent and then deleted (after-upload delete) is stored, by the journal's word."""
    # A file in a folder made just now may be found by the folder's walk before its events
    # are heard: it then settles, here for longer than the test.
    a = agent(make_grant("runs/1/"), after_upload="delete", settle_seconds="600")
    a.start().ready()
    (a.watch / "job-1").mkdir()
    job = [(a.watch / "job-1" / name).open("wb") for name in ("a.txt", "b.txt")]
    other = (a.watch / "other.log").open("wb")
    for stream in (*job, other):
        stream.write(b"written")
        stream.flush()
    with subprocess.Popen(
        [*AGENT, "wait", str(a.watch / "job-1"), "--every", "1s"],
        env=a.env,
        stdout=subprocess.PIPE,
        text=True,
    ) as waiter:
        assert waiter.stdout is not None
        first = waiter.stdout.readline()  # it has listed its files, and is waiting
        assert first.startswith("waiting: 2 file(s) left ("), first
        for stream in job:
            stream.close()
        assert waiter.wait(120) == ExitCode.OK
        assert "stored: all 2 file(s)" in waiter.stdout.read()
    assert objects(s3, bucket) == {
        "runs/1/job-1/a.txt": b"written",
        "runs/1/job-1/b.txt": b"written",
    }
    assert eventually(lambda: not (a.watch / "job-1" / "a.txt").exists())  # deleted...
    again = wait(a, str(a.watch / "job-1" / "a.txt"))  # ...and still known as stored
    assert again.returncode == ExitCode.OK, again
    other.close()
    assert a.stop() == ExitCode.OK


def test_wait_never_calls_a_file_stored_before_the_journal_recorded_it(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    tmpfs: Any,
) -> None:
    """The state dir is full: the store has the file, the journal cannot record it. wait does
    not call it stored (a job that then deletes its data would lose what the agent might send
    again, or not); once the journal records it, wait returns 0."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        state = tmpfs(Path(a.env["POSTBOX_STATE_DIR"]), "2m")
        a.start().ready()
        filler = fill_up(state)
        (a.watch / "one.txt").write_bytes(b"1")
        assert eventually(lambda: "new uploads pause until the state dir" in a.text()), a.text()
        assert objects(s3, bucket) == {"runs/1/one.txt": b"1"}  # the store has it
        done = wait(a, "--timeout", "2s", "--json")
        assert done.returncode == ExitCode.TIMED_OUT, done
        assert json.loads(done.stdout)["left"] == [{"path": "one.txt", "state": "unrecorded"}]
        filler.unlink()
        done = wait(a, "--json")
        assert done.returncode == ExitCode.OK, done
        assert json.loads(done.stdout)["stored"] == 1
        assert a.stop() == ExitCode.OK


def test_the_socket_says_nothing_of_files_outside_the_watch_dir(
    tmp_path: Path, wait_socket: Path
) -> None:
    """A member of the group postbox may ask anything: a path out of the watch dir is not
    answered, and of a file the agent never sent the answer is `unknown` whether it exists or
    not (wait looks itself, with the job's own permissions), even through a symlinked folder.
    Of a file it sent, `stored`, then `changed` once rewritten."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (tmp_path / "secret").write_bytes(b"not the job's")
    (watch / "link").symlink_to(tmp_path)
    (watch / "sent.csv").write_bytes(b"1")
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    version = FileVersion.at(watch / "sent.csv")
    assert version is not None
    journal.record("sent.csv", version, "k/sent.csv", "md5", "etag")

    def dispatcher(asked: Asked) -> None:  # the ledger holds none of them
        asked.answer.set_result(({"grant_left": 60}, {}))

    server = WaitSocket(wait_socket, watch, journal, dispatcher)
    server.open()
    try:
        paths = ["../secret", "/etc/passwd", "link/secret", "link/nothing", "sent.csv"]
        files = ask(wait_socket, paths, 10)["files"]
        assert files == {
            "link/secret": ["unknown", ""],
            "link/nothing": ["unknown", ""],
            "sent.csv": ["stored", ""],
        }
        (watch / "sent.csv").write_bytes(b"2")
        assert ask(wait_socket, ["sent.csv"], 10)["files"] == {"sent.csv": ["changed", ""]}
        assert oct(wait_socket.stat().st_mode & 0o777) == "0o660"
    finally:
        server.close()
        journal.close()
    assert not wait_socket.exists()


def test_a_journal_that_cannot_be_read_calls_nothing_stored_and_the_socket_goes_on(
    tmp_path: Path, wait_socket: Path
) -> None:
    """Random bytes over the journal's WAL while the agent runs: the socket cannot look up a
    file the ledger does not hold, so it calls none stored (`wait` keeps waiting, and says
    why), the ledger's states still come, and the next question is answered too: the socket's
    thread lives on."""
    watch = tmp_path / "watch"
    watch.mkdir()
    path = tmp_path / "state" / "journal.sqlite3"
    journal = Journal(path)
    for name in ("sent.csv", "also.csv"):
        (watch / name).write_bytes(b"1")
        version = FileVersion.at(watch / name)
        assert version is not None
        journal.record(name, version, f"k/{name}", "md5", "etag")
    wal_overwritten(path)

    def dispatcher(asked: Asked) -> None:  # the ledger holds one file, being sent
        held = {"sending.csv": ("sending", "")}
        asked.answer.set_result(
            ({"grant_left": 60}, {p: held[p] for p in asked.paths if p in held})
        )

    server = WaitSocket(wait_socket, watch, journal, dispatcher)
    server.open()
    try:
        for _ in range(2):
            files = ask(wait_socket, ["sent.csv", "also.csv", "sending.csv"], 10)["files"]
            assert {p: status for p, (status, _) in files.items()} == {
                "sent.csv": "journal unreadable",
                "also.csv": "journal unreadable",
                "sending.csv": "sending",
            }
            assert f"journal {path} is damaged" in files["sent.csv"][1]
    finally:
        server.close()
        journal.close()


def test_on_a_terminal_wait_redraws_one_progress_line_in_place(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """A person at a shell sees the line redrawn in place (files and bytes left, rate, time
    left), not a line every 10 s; the result replaces it."""
    a = agent(make_grant("runs/1/")).start().ready()
    (a.watch / "done.csv").write_bytes(b"x" * 70_000)
    writer = (a.watch / "open.log").open("wb")
    writer.write(b"half")
    writer.flush()
    assert eventually(lambda: a.counts().get("sent") == 1 and a.counts().get("writing") == 1)
    leader, follower = pty.openpty()
    with subprocess.Popen([*AGENT, "wait"], env=a.env, stdout=follower, stderr=follower) as waiter:
        os.close(follower)
        seen = b""
        while seen.count(b"\r\x1b[K") < 3:  # three redraws, each at its poll
            seen += os.read(leader, 4096)
        writer.close()
        assert waiter.wait(60) == ExitCode.OK
        while b"stored: all 2 file(s)" not in seen:
            seen += os.read(leader, 4096)
    os.close(leader)
    text = seen.decode()
    # Nothing was stored while it waited: no rate, no time left (what was stored before the
    # wait began is not a pace).
    assert "\r\x1b[Kwaiting: 1 file(s) left (1 writing), 4 B; 1 stored\r" in text, text
    assert "/s" not in text and "about" not in text, text
    assert "\n" not in text.split("stored: all")[0].replace("\r\n", "")  # redrawn in place
    assert a.stop() == ExitCode.OK


def test_the_rate_is_what_was_stored_during_the_wait_lately_never_a_decaying_average() -> None:
    """Before: 25 files stored before the wait and nothing since gave "25 stored, 30.0 MiB/s,
    about 0m00s left", the rate decaying every 10 s. The rate counts only what was stored over
    the last 30 s of this wait; with nothing stored, none is shown, and the line says so."""
    tally = Tally({"done.csv": 30 << 20, "open.log": 4})
    tally.apply({"done.csv": ["stored", ""], "open.log": ["writing", ""]}, Path("/nowhere"))
    out = io.StringIO()
    progress = Lines(out, as_json=False, started=0.0)
    for now in (0.5, 10.0, 20.0, 40.0):  # the first answer came at 0.5 s; nothing since
        progress.pace.sample(tally.stored_bytes(), now)
        progress.show(tally, now)
    lines = out.getvalue().splitlines()
    assert lines[0] == "waiting: 1 file(s) left (1 writing), 4 B; 1 stored", lines
    assert lines[-1] == "waiting: 1 file(s) left (1 writing), 4 B; 1 stored, none in the last 30 s"
    assert not any("/s" in line for line in lines), lines

    tally = Tally({f"f{n}": 1 << 20 for n in range(10)})
    shown = io.StringIO()
    pace = Lines(shown, as_json=False, started=0.0)
    for n in range(5):  # one MiB stored each second, from the first answer on
        tally.apply({f"f{n}": ["stored", ""]}, Path("/nowhere"))
        pace.pace.sample(tally.stored_bytes(), float(n))
    assert pace.pace.rate() == 1 << 20
    pace.show(tally, 4.0)
    assert shown.getvalue().endswith("; 5 stored, 1.0 MiB/s, about 0m05s left\n")


@pytest.mark.parametrize(
    ("agent", "now", "expires_at", "silent", "timed_out", "code"),
    [
        ({"expired": True}, 5.0, 100.0, False, False, ExitCode.EXPIRED),  # the agent says so
        (None, 100.0, 100.0, True, False, ExitCode.EXPIRED),  # silent once its grant ended
        (None, 99.9, 100.0, True, False, ExitCode.NOT_RUNNING),  # silent before: not running
        (None, 99.9, 100.0, False, False, None),  # silent a moment: wait on
        (None, 5.0, None, True, False, ExitCode.NOT_RUNNING),  # never heard its grant's end
        ({"expired": False}, 5.0, 100.0, False, True, ExitCode.TIMED_OUT),
        ({"expired": False}, 5.0, 100.0, False, False, None),
    ],
    ids=["said-expired", "silent-past-expiry", "silent-before", "a-moment", "no-expiry-known",
         "timed-out", "waits-on"],
)  # fmt: skip
def test_each_way_a_wait_with_files_left_ends_on_a_clock_the_test_holds(
    agent: dict[str, Any] | None,
    now: float,
    expires_at: float | None,
    silent: bool,
    timed_out: bool,
    code: ExitCode | None,
) -> None:
    """The two ways to exit 79 (the agent says its grant expired; the agent fell silent once
    the grant it last spoke of had ended), each with its own row, beside the ways not to."""
    tally = Tally({"a.csv": 3})
    assert _ended(tally, agent, now, expires_at, silent_too_long=silent, timed_out=timed_out) == (
        code
    )


@pytest.mark.parametrize("state", list(State), ids=[s.value for s in State])
def test_what_wait_is_told_of_each_state_the_agent_holds_a_file_in(
    state: State, tmp_path: Path
) -> None:
    """Every state of the ledger (agent/states.py) as `wait` is told it: the waiting states end
    the wait for that file, not stored (exit 3, with why); a file on its way, or stored but not
    yet recorded, is waited for; and the journal's "stored" ends it stored. A state added
    later must be put in one of these, or this fails."""
    tally = Tally({"a.csv": 3})
    tally.apply({"a.csv": (state.value, "why")}, tmp_path)
    if state in WAITING:
        assert tally.refused == {"a.csv": "why"} and not tally.left
    else:
        assert state in (*PENDING, State.SENDING, State.UNRECORDED)
        assert tally.left == {"a.csv": state.value} and not tally.refused
    tally.apply({"a.csv": ("stored", "")}, tmp_path)
    assert (tally.stored == {"a.csv": 3}) is (state not in WAITING)
