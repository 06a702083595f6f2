"""Writers the agent did not see begin: a file still open for writing across a restart.

With POSTBOX_AFTER_UPLOAD=delete or move, a file is deleted or moved only once no writer can be
left: the kernel's word (a read lease, which Linux grants only while no one has the file open
for writing) where it gives one, else a close the agent saw. A file kept for that reason is sent
again once its writer closes it, and only then deleted or moved. The agent runs as a process
(`postbox-agent run`), restarted as systemd would, against moto over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode
from agent.files import ignore_lease_breaks, open_for_writing
from demo.stores import Store
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, objects, require_root, require_tool

NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
HEADER = b"id,value\n"
ROWS = b"".join(b"%d,%d\n" % (n, n * n) for n in range(1000))


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


def test_the_kernel_says_whether_a_file_is_open_for_writing(tmp_path: Path) -> None:
    ignore_lease_breaks()
    path = tmp_path / "f"
    with path.open("wb") as out:
        out.write(b"x")
        assert open_for_writing(tmp_path, path) is True
    assert open_for_writing(tmp_path, path) is False
    with path.open("rb"):  # a reader is no writer
        assert open_for_writing(tmp_path, path) is False
    assert open_for_writing(tmp_path, tmp_path / "missing") is None


def test_without_cap_lease_the_kernel_will_not_say_for_another_users_file(tmp_path: Path) -> None:
    require_root("giving a file to another user")
    require_tool("setpriv")
    path = tmp_path / "theirs"
    path.write_bytes(b"x")
    os.chown(path, 65534, 65534)
    probe = (
        "import sys; from pathlib import Path; from agent.files import open_for_writing; "
        f"print(open_for_writing(Path({str(tmp_path)!r}), Path({str(path)!r})))"
    )
    found = subprocess.run(
        [*NO_CAPABILITIES, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert found.stdout.strip() == "None"


@pytest.mark.parametrize("after", ["delete", "move"])
def test_a_file_held_open_across_a_restart_is_kept_then_sent_complete_and_only_then_removed(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str, after: str
) -> None:
    """A job opens results.csv and writes its header; the agent restarts; the job is quiet for
    longer than the settle time, then writes the rest and closes. The header alone is sent
    (that version was complete as far as anyone could tell), but the file is not removed while
    the job holds it; the complete file is sent at its close, and then removed."""
    grant = make_grant("runs/1/")
    first = agent(grant, after_upload=after)
    first.start().ready()
    path = first.watch / "results.csv"
    with path.open("wb") as job:
        job.write(HEADER)
        job.flush()
        # A restart (systemd, an upgrade, a crash); 3: the stop left the open file.
        assert first.stop() == ExitCode.FILES_LEFT
        second = agent(grant, after_upload=after)
        second.start().ready()
        assert eventually(lambda: "kept results.csv after its upload" in second.text())
        assert objects(s3, bucket) == {"runs/1/results.csv": HEADER}
        assert "a process still has it open for writing" in second.text()
        assert path.read_bytes() == HEADER
        job.write(ROWS)
    complete = HEADER + ROWS
    assert eventually(lambda: objects(s3, bucket) == {"runs/1/results.csv": complete})
    moved = second.watch / ".uploaded" / "results.csv"
    if after == "delete":
        assert eventually(lambda: not path.exists()), second.text()
    else:
        assert eventually(moved.exists), second.text()
        assert moved.read_bytes() == complete
    assert second.stop() == ExitCode.OK
    assert second.uploaded("runs/1/results.csv") == 2


def test_without_the_kernels_word_a_file_whose_close_was_not_seen_is_kept_until_it_is(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """The agent without CAP_LEASE, the file another user's: no lease, so no proof. A file found
    at start (its close unseen) is sent and kept; closed by its writer, it is deleted (the store
    has that version: nothing is sent again)."""
    require_root("running the agent without capabilities, giving a file to another user")
    require_tool("setpriv")
    a = agent(make_grant("runs/1/"), after_upload="delete")
    a.wrapper = NO_CAPABILITIES
    path = a.watch / "found.csv"
    path.write_bytes(b"written before the agent started")
    os.chown(path, 65534, 65534)
    a.start().ready()
    assert eventually(lambda: "kept found.csv after its upload" in a.text()), a.text()
    assert "the agent did not see it closed" in a.text()
    assert path.exists()
    with path.open("ab"):  # its writer closes it (here: opens it for writing, adds nothing)
        pass
    assert eventually(lambda: not path.exists()), a.text()
    assert a.stop() == ExitCode.OK
    assert a.uploaded("runs/1/found.csv") == 1
    assert objects(s3, bucket) == {"runs/1/found.csv": b"written before the agent started"}
