"""`wait` and `status` as the users who run them: a job in the group postbox, a user outside it,
root. Each either tells the truth or refuses in one line that names the fix (exit 77); none
says "stored" of files it could not see, and none ends in a traceback.

The agent runs as root here, over folders laid out as the installer lays them out (the watch dir
2770 and the state dir 0750, in the group of the job), in a place every user may pass through.
The job's commands run as uid 4242: the interpreter lives under /root, which that user may not
enter, so the command imports everything first and then gives up root (`as_user`), as `setpriv`
would before `exec` in the booted machine (tests/cloud_init/test_users.py runs them there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode
from demo.stores import Store
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, require_root

JOB_UID = 4242
GROUP = 4243  # the group postbox of the test: the job is in it unless told otherwise
OTHER_UID = 4244  # another job's user, in the group too

_AS_USER = """
import os, sys
from agent.cli import main  # everything first: the interpreter's files are root's
import _strptime, encodings.unicode_escape  # loaded on first use: time.strptime, printable
uid, groups, argv = int(sys.argv[1]), [int(g) for g in sys.argv[2].split(",") if g], sys.argv[3:]
os.setgroups(groups)
os.setgid(groups[0] if groups else uid)
os.setuid(uid)
os.umask(0o077 if os.environ.get("JOB_UMASK") == "077" else 0o022)
sys.exit(main(argv))
"""


def as_user(
    env: dict[str, str], uid: int, groups: list[int], *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`postbox-agent ARGV` run by `uid` with `groups` (the first its own group)."""
    command = [sys.executable, "-c", _AS_USER, str(uid), ",".join(map(str, groups)), *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def store(moto_store: Store) -> Store:
    """Who may look does not depend on the store."""
    return moto_store


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder every user may pass through (pytest's own are root's alone)."""
    require_root("running commands as other users")
    folder = Path(tempfile.mkdtemp(prefix="postbox-users-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def laid_out(
    place: Path, make_grant: GrantMaker, wait_socket: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """An agent over a watch dir 2770 and a state dir 2750 in the group GROUP, its socket in a
    folder 0750 of that group, as the unit and the installer make them."""
    started: list[AgentProcess] = []

    def make(expires: str = "30m", **settings: str) -> AgentProcess:
        a = AgentProcess(place, make_grant("runs/1/", expires), **settings)
        for folder, mode in ((a.watch, 0o2770), (place / "state", 0o2750)):
            folder.mkdir(exist_ok=True)
            os.chown(folder, 0, GROUP)
            folder.chmod(mode)
        os.chown(wait_socket.parent, 0, GROUP)
        wait_socket.parent.chmod(0o2750)  # setgid: the socket is the group's, as postbox's
        a.env["POSTBOX_WAIT_SOCKET"] = str(wait_socket)
        started.append(a)
        return a

    yield make
    for a in started:
        if a.process is not None and a.process.poll() is None:
            a.process.kill()
            a.process.wait()


def test_wait_by_a_user_outside_the_group_is_refused_at_once_never_told_stored(
    laid_out: Callable[..., AgentProcess],
) -> None:
    """Before: "cannot list ...: its files are not waited for", then "stored: all 0 file(s)",
    exit 0, while a file was still being written: `wait && poweroff` lost it. Now exit 77 and
    the fix, with the whole watch dir and with a PATH in it."""
    a = laid_out().start().ready()
    with (a.watch / "open.log").open("wb") as writer:
        writer.write(b"still being written")
        writer.flush()
        for paths in ([], [str(a.watch / "open.log")]):
            done = as_user(a.env, JOB_UID, [JOB_UID], "wait", *paths, "--json")
            assert done.returncode == ExitCode.NO_PERMISSION, done
            assert done.stdout == "", done.stdout  # no result, least of all "stored"
            (line,) = done.stderr.splitlines()
            assert f"cannot read {'the watch dir ' if not paths else ''}{a.watch}" in line
            assert "(Permission denied): run it as a member of the group" in line, line
            assert f"(sudo usermod -aG {GROUP} " in line, line
            assert "Traceback" not in done.stderr
    assert a.stop() == ExitCode.OK


def test_wait_by_a_member_who_cannot_list_another_jobs_private_folder_is_refused(
    laid_out: Callable[..., AgentProcess],
) -> None:
    """Another job made its folder with umask 077 (2700): a member cannot see what is in it, so
    it cannot say the watch dir is stored: exit 77, naming the folder and the chmod that opens
    it. Named as PATHs, the job's own files are waited for as before."""
    a = laid_out().start().ready()
    private = a.watch / "other-job"
    private.mkdir(mode=0o2700)
    (private / "result.csv").write_bytes(b"1\n")
    os.chown(private, OTHER_UID, GROUP)
    (a.watch / "mine.csv").write_bytes(b"2\n")
    done = as_user(a.env, JOB_UID, [JOB_UID, GROUP], "wait")
    assert done.returncode == ExitCode.NO_PERMISSION, done
    assert "stored" not in done.stdout
    assert f"cannot read the folder {private}" in done.stderr, done.stderr
    assert f"chmod -R g+rX {private}" in done.stderr, done.stderr
    mine = as_user(a.env, JOB_UID, [JOB_UID, GROUP], "wait", str(a.watch / "mine.csv"))
    assert mine.returncode == ExitCode.OK, mine
    a.stop()


def test_status_by_a_member_reads_the_state_dir_and_anyone_else_is_told_the_fix(
    laid_out: Callable[..., AgentProcess],
) -> None:
    """Before: a member of the group postbox, or anyone but postbox and root, got "CRITICAL
    unexpected error, a bug" and a PermissionError on the journal (exit 1)."""
    a = laid_out().start().ready()
    (a.watch / "one.txt").write_bytes(b"1")
    assert eventually(lambda: a.counts().get("sent") == 1), a.counts()
    member = as_user(a.env, JOB_UID, [JOB_UID, GROUP], "status", "--json")
    assert member.returncode == ExitCode.OK, member
    report = json.loads(member.stdout)
    # While the agent runs its journal is its own (a reader's lock would pause its writes): the
    # rest is shown, and the journal's row says when and how it can be read.
    assert report["running"] and report["run"]["counts"]["sent"] == 1, report
    assert "the group reads it once the agent has stopped" in report["journal_error"], report
    shown = as_user(a.env, JOB_UID, [JOB_UID, GROUP], "status")
    text = shown.stdout
    assert "journal    the agent's own while it runs" in text and "CANNOT" not in text, shown
    outsider = as_user(a.env, JOB_UID, [JOB_UID], "status")
    assert outsider.returncode == ExitCode.NO_PERMISSION, outsider
    (line,) = outsider.stderr.splitlines()
    assert "cannot read the state dir" in line and "sudo usermod -aG" in line, line
    assert a.stop() == ExitCode.OK
    # Stopped: the journal's -wal is gone, and a reader who may not make one still reads it.
    member = as_user(a.env, JOB_UID, [JOB_UID, GROUP], "status", "--json")
    assert member.returncode == ExitCode.NOT_RUNNING, member
    stopped = json.loads(member.stdout)
    assert stopped["uploaded_ever"] == 1 and not stopped["journal_error"], stopped


def test_a_job_in_the_group_cannot_open_the_journal_while_the_agent_runs_so_cannot_lock_it(
    laid_out: Callable[..., AgentProcess],
) -> None:
    """A job that holds a read lock on the journal's -shm (fcntl needs only a file open for
    reading) pauses every write of the agent's: files stored but unrecorded, `wait` timing out.
    While the agent runs, the journal, its -wal and its -shm are the agent's alone."""
    a = laid_out().start().ready()
    (a.watch / "one.txt").write_bytes(b"1")
    assert eventually(lambda: a.counts().get("sent") == 1), a.counts()
    state = Path(a.env["POSTBOX_STATE_DIR"])
    opener = (
        "import fcntl, os, sys\n"
        "for name in argv:\n"
        "    try:\n"
        "        fd = os.open(name, os.O_RDONLY)\n"
        "    except PermissionError:\n"
        "        continue\n"
        "    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 8, 120)\n"
        "    print('locked', name)\n"
    )
    names = [str(state / f"journal.sqlite3{end}") for end in ("", "-wal", "-shm")]
    tried = subprocess.run(
        [sys.executable, "-c", _AS_USER.replace("from agent.cli import main", "import fcntl")
         .replace("sys.exit(main(argv))", f"exec({opener!r})"),
         str(JOB_UID), f"{JOB_UID},{GROUP}", *names],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert tried.returncode == 0 and "locked" not in tried.stdout, tried
    assert a.stop() == ExitCode.OK


def test_wait_after_the_agent_stopped_at_its_grants_expiry_says_so_at_once_by_the_journal(
    laid_out: Callable[..., AgentProcess], s3: Any, bucket: str
) -> None:
    """Before: started after the agent exited on an expired grant, `wait` waited out its grace
    (30 s), exited 6 and listed as "left (unseen)" files the journal recorded as stored. Now,
    run by a member, it reads the journal and status.json and ends at once with 79, the stored
    counted as stored and only the file the agent never sent left. The grace is 10 minutes:
    an answer before it is not the grace running out."""
    a = laid_out("10s").start().ready()
    for n in range(3):
        (a.watch / f"r{n}.csv").write_bytes(b"%d\n" % n)
    writer = (a.watch / "late.log").open("wb")
    writer.write(b"still writing at the expiry")
    writer.flush()
    try:
        assert eventually(lambda: a.counts().get("sent") == 3), a.counts()
        assert a.wait(60) == ExitCode.EXPIRED
        done = as_user(a.env, JOB_UID, [JOB_UID, GROUP], "wait", "--agent-grace", "10m", "--json")
    finally:
        writer.close()
    assert done.returncode == ExitCode.EXPIRED, done
    report = json.loads(done.stdout)
    assert report["result"] == "grant expired"
    assert report["stored"] == 3
    assert report["left"] == [{"path": "late.log", "state": "unseen"}]
