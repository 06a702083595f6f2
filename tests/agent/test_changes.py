"""The filesystem and the grant change under a running agent (a real process, moto over HTTP).

Some tests need root: to drop the agent's capabilities (so a file's mode binds it), to mount a
folder the agent's inotify watches cannot see, or to give the state dir a small file system.
The inotify tests use a real kernel limit and a real queue overflow.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from watchdog.events import FileCreatedEvent

from agent import changes
from agent.changes import Change, Changed
from agent.errors import ExitCode
from agent.grant import load_grant
from agent.inbox import Poll, Rewatch
from agent.journal import Journal
from agent.scanner import Scanner
from agent.watcher import WatchDir
from demo.stores import Store
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, fill_up, objects, require_root, require_tool, with_url
from tests.faultproxy import FORWARD, HOLD, fault_proxy
from tests.journals import journal_0_1_0

MiB = 1024 * 1024
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


def test_a_file_deleted_after_it_was_seen_is_skipped_with_one_log_line(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    with fault_proxy(store.endpoint) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"), settle_seconds="2")
        (a.watch / "gone.txt").write_bytes(b"here, then not")
        a.start().ready()  # the start-up scan found it; it settles for 2 s
        (a.watch / "gone.txt").unlink()
        assert eventually(lambda: "gone.txt: deleted before it was sent" in a.text())
        (a.watch / "marker.txt").write_bytes(b"m")  # its events come after the deletion's
        assert eventually(lambda: a.settled(sent=1)), a.counts()
        assert a.stop() == ExitCode.OK
    assert a.text().count("gone.txt") == 1
    assert proxy.attempts("runs/1/gone.txt") == []


def test_a_file_that_changes_while_it_is_sent_is_sent_again_once_complete(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    """The proxy holds the first upload before reading its body, so the agent is still reading
    the file when it grows; that version is not recorded, the complete one is sent after it."""
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/grows.bin": [HOLD, FORWARD]}
        proxy.stall_seconds = 2
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        a.start().ready()
        path = a.watch / "grows.bin"
        first = os.urandom(32 * MiB)
        path.write_bytes(first)
        assert eventually(lambda: len(proxy.attempts("runs/1/grows.bin")) == 1)
        with path.open("ab") as out:
            out.write(b"the end")
        assert eventually(lambda: a.uploaded("runs/1/grows.bin") == 1, timeout=60), a.text()
        assert a.stop() == ExitCode.OK
    assert "runs/1/grows.bin changed while it was sent" in a.text()
    assert len(proxy.attempts("runs/1/grows.bin")) == 2
    assert s3.get_object(Bucket=bucket, Key="runs/1/grows.bin")["Body"].read() == first + b"the end"


def test_an_unreadable_file_is_reported_and_sent_once_it_becomes_readable(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """The agent runs without capabilities (as the unit runs it), so a file's mode binds it."""
    require_root("running the agent without capabilities")
    require_tool("setpriv")
    a = agent(make_grant("runs/1/"))
    a.wrapper = NO_CAPABILITIES
    a.start().ready()
    path = a.watch / "locked.txt"
    path.write_bytes(b"not yet")
    path.chmod(0)
    assert eventually(lambda: "cannot read locked.txt" in a.text()), a.text()
    assert eventually(lambda: a.settled(unreadable=1)), a.counts()  # waits for a chmod
    assert objects(s3, bucket) == {}
    path.chmod(0o644)
    assert eventually(lambda: objects(s3, bucket) == {"runs/1/locked.txt": b"not yet"}), a.text()
    assert a.stop() == ExitCode.OK
    assert a.text().count("cannot read locked.txt") == 1


JOB = ["setpriv", "--reuid=65534", "--regid=0", "--clear-groups", "sh", "-c"]  # in group 0


def without_capabilities(
    agent: Callable[..., AgentProcess], grant: Path
) -> tuple[AgentProcess, Callable[[str], object]]:
    """An agent started without capabilities (no rescan) on a watch dir 2770, and a batch job:
    a shell script run in the watch dir as another user in the agent's group."""
    require_root("running the agent without capabilities and a job as another user")
    require_tool("setpriv")
    a = agent(grant, rescan_seconds="0")
    a.wrapper = NO_CAPABILITIES
    a.watch.chmod(0o2770)
    a.start().ready()
    return a, lambda script: subprocess.run([*JOB, script], cwd=a.watch, check=True)


def test_a_folder_the_agent_cannot_read_is_said_once_and_sent_as_soon_as_it_can(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A batch job (another user, in the agent's group) with umask 077 makes a folder 2700 in
    the watch dir (2770). The agent, without capabilities, cannot list or watch it: it says so
    once with the fix, `status` lists the folder and `wait` names its files (exit 3) rather
    than waiting for them. `chmod -R g+rX`: its files are sent at once (the periodic rescan is
    off), and one written there later too, by its own event: the folder is watched now."""
    a, job = without_capabilities(agent, make_grant("runs/1/"))
    out = a.watch / "out"
    job("umask 077 && mkdir out && printf one > out/a.txt && printf two > out/b.txt")
    fix = f"chmod -R g+rX {out}, or write with umask 007"
    said = f"cannot list {out} (Permission denied): its files are not sent until the agent "
    assert eventually(lambda: said in a.text()), a.text()
    assert f"can read it: {fix}" in a.text()
    reason = f"Permission denied: {fix}"

    def folders() -> Any:
        return json.loads(_status(a, "--json").stdout)["run"]["unreadable_folders"]

    assert eventually(lambda: folders() == [{"path": "out", "reason": reason}]), a.text()
    assert (
        f"folders    1 the agent cannot list, their files not sent:\n           out: {reason}\n"
        in (_status(a).stdout)
    )
    waited = subprocess.run(
        [*AGENT, "wait", "--timeout", "60s"], env=a.env, capture_output=True, text=True, timeout=90
    )
    assert waited.returncode == ExitCode.FILES_LEFT, waited
    assert f"not stored out/a.txt: in out, which the agent cannot list ({reason})" in waited.stdout
    assert objects(s3, bucket) == {}
    job("chmod -R g+rX out")
    expected = {"runs/1/out/a.txt": b"one", "runs/1/out/b.txt": b"two"}
    assert eventually(lambda: objects(s3, bucket) == expected), a.text()
    job("umask 027 && printf three > out/c.txt")
    expected["runs/1/out/c.txt"] = b"three"
    assert eventually(lambda: objects(s3, bucket) == expected), a.text()
    assert eventually(lambda: folders() == []), a.text()
    assert a.stop() == ExitCode.OK
    assert a.text().count("cannot list") == 1, a.text()
    assert "inotify cannot watch" not in a.text()


def test_a_stop_counts_a_folder_the_agent_cannot_list_among_what_it_leaves(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A stop while a job's umask-077 folder is there: its files are as lost as any left on a
    machine that goes away. The last line names the folder and the stop exits 3 (it said
    "none left" and exited 0; a user trial)."""
    a, job = without_capabilities(agent, make_grant("runs/1/"))
    (a.watch / "sent.txt").write_bytes(b"sent")
    job("umask 077 && mkdir out && printf one > out/a.txt")
    assert eventually(lambda: "cannot list" in a.text() and a.settled(sent=1)), a.text()
    assert a.stop() == ExitCode.FILES_LEFT, a.text()
    last = a.text().splitlines()[-1]
    assert " INFO stopped: 1 file(s) uploaded in this run" in last, a.text()
    assert "1 folder(s) the agent cannot list, their files not sent: out" in last, last
    assert "none left" not in last
    assert objects(s3, bucket) == {"runs/1/sent.txt": b"sent"}


def test_a_new_watch_takes_over_without_losing_or_repeating_an_event(tmp_path: Path) -> None:
    """`WatchDir.rewatch` (what a folder's chmod sets off) starts a new observer while a writer
    makes files: each file's events come once each and in order, before, during and after the
    handover; then the old observer is stopped."""
    heard: queue.SimpleQueue[Changed] = queue.SimpleQueue()
    watch_dir = WatchDir(tmp_path, heard.put)
    watch_dir.open()
    names = [f"f{n:04d}" for n in range(600)]
    wrote_some = threading.Event()

    def write() -> None:
        for n, name in enumerate(names):
            (tmp_path / name).write_bytes(b"x")
            if n == 200:
                wrote_some.set()

    writer = threading.Thread(target=write)
    try:
        writer.start()
        assert wrote_some.wait(30)
        assert watch_dir.rewatch(0.0)  # the writer goes on meanwhile
        writer.join(60)
        (tmp_path / "end").write_bytes(b"e")
        events: dict[str, list[Change]] = {}
        while Change.CLOSED not in events.get("end", []):
            change = heard.get(timeout=30)
            events.setdefault(change.relpath, []).append(change.kind)
        assert watch_dir.follow(1.0) is False  # the handover ended: the old observer stops
    finally:
        watch_dir.stop()
    written = [Change.CREATED, Change.WRITTEN, Change.CLOSED]
    assert {name: events.get(name) for name in names} == {name: written for name in names}


def test_a_handover_puts_the_old_observers_events_before_the_marker_and_the_new_ones_after(
    tmp_path: Path,
) -> None:
    """The rule `rewatch` keeps, fed by hand: both observers hear every event; the old one's
    count until the marker, the new one's after it (it waits for the old one to get there), so
    none is lost, doubled or put out of order. A handover forced (no marker heard in time)
    lets the new one speak at once."""
    put: list[Changed] = []
    handover = changes.Handover(".postbox-barrier-1")
    old, new = (
        changes._Handler(tmp_path, put.append),
        changes._Handler(tmp_path, put.append, handover),
    )
    old.handing_over = handover
    created = lambda name: FileCreatedEvent(str(tmp_path / name))  # noqa: E731
    new.on_any_event(created("before"))  # the old one puts it
    old.on_any_event(created("before"))
    old.on_any_event(created(".postbox-barrier-1"))
    old.on_any_event(created("after"))  # the new one puts it
    new.on_any_event(created(".postbox-barrier-1"))
    new.on_any_event(created("after"))
    assert put == [Changed(Change.CREATED, "before"), Changed(Change.CREATED, "after")]
    put.clear()
    forced = changes.Handover(".postbox-barrier-2")
    late = changes._Handler(tmp_path, put.append, forced)
    late.on_any_event(created("unheard"))
    forced.force()
    late.on_any_event(created("heard"))
    assert put == [Changed(Change.CREATED, "heard")]


def test_folders_left_unwatched_are_watched_anew_before_the_agent_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A walk lists more folders than inotify watches: the first time, the agent watches anew
    (a folder unreadable when watchdog met it may be readable now, and a limit shows then as
    inotify's own error); only if a walk after it still finds folders unwatched does it poll,
    and then it does not blame a limit it has not met."""
    watch = tmp_path / "watch"
    for name in ("a", "b"):
        (watch / name).mkdir(parents=True)
    put: list[Any] = []
    watch_dir = WatchDir(watch, put.append)
    watch_dir.open()
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    scanner = Scanner(watch_dir, journal, put.append, threading.Event(), watches=lambda: 1)
    try:
        scanner.walk()
        assert [m for m in put if isinstance(m, (Poll, Rewatch))] == [
            Rewatch("1 of 3 folders watched")
        ]
        put.clear()
        scanner.walk()
        (poll,) = [m for m in put if isinstance(m, (Poll, Rewatch))]
        assert poll == Poll("1 of 3 folders watched")
        with caplog.at_level(logging.WARNING):
            watch_dir.fall_back_to_polling(poll.why)
    finally:
        watch_dir.stop()
        journal.close()
    assert f"inotify cannot watch all of {watch} (1 of 3 folders watched): looking" in caplog.text
    assert "max_user_watches" not in caplog.text


def _status(a: AgentProcess, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "status", *options], env=a.env, capture_output=True, text=True, timeout=60
    )


def test_a_watch_dir_removed_and_created_again_is_followed(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    a = agent(make_grant("runs/1/"))
    a.start().ready()
    (a.watch / "before.txt").write_bytes(b"1")
    assert eventually(lambda: a.uploaded("runs/1/before.txt") == 1)
    shutil.rmtree(a.watch)
    assert eventually(lambda: "was removed or replaced by what is not a folder" in a.text())
    a.watch.mkdir()
    assert eventually(lambda: "was created again: watching it" in a.text())
    (a.watch / "after.txt").write_bytes(b"2")
    assert eventually(lambda: a.uploaded("runs/1/after.txt") == 1), a.text()
    assert a.stop() == ExitCode.OK
    assert objects(s3, bucket) == {"runs/1/before.txt": b"1", "runs/1/after.txt": b"2"}


def test_a_watch_dir_that_is_a_symlink_is_refused_at_start(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A link there (to /etc, say) would have the agent upload what it points to: refused, with
    the real folder to name instead."""
    a = agent(make_grant("runs/1/"))
    elsewhere = a.watch.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_bytes(b"not for the bucket")
    a.watch.rmdir()
    a.watch.symlink_to(elsewhere)
    assert a.start().wait() == ExitCode.CONFIG
    assert (
        f"watch dir {a.watch} is a symlink, which the agent never follows: set "
        f"POSTBOX_WATCH_DIR to the folder itself ({elsewhere})" in a.text()
    )
    assert objects(s3, bucket) == {}


def test_a_watch_dir_replaced_by_a_symlink_while_running_is_not_followed(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    a = agent(make_grant("runs/1/"))
    a.start().ready()
    elsewhere = a.watch.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_bytes(b"not for the bucket")
    a.watch.rename(a.watch.parent / "old-watch")
    a.watch.symlink_to(elsewhere)
    assert eventually(lambda: "was removed or replaced by what is not a folder" in a.text())
    (elsewhere / "later.txt").write_bytes(b"nor this")
    assert a.turns(12)  # two housekeeping rounds or more: it would have followed the link
    assert objects(s3, bucket) == {}
    a.watch.unlink()
    a.watch.mkdir()
    (a.watch / "after.txt").write_bytes(b"a folder again")
    assert eventually(lambda: a.uploaded("runs/1/after.txt") == 1), a.text()
    assert a.stop() == ExitCode.OK
    assert objects(s3, bucket) == {"runs/1/after.txt": b"a folder again"}


def test_when_inotify_watches_run_out_the_agent_polls_and_says_so(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A user namespace of its own, where at most 2 inotify watches are allowed: the watch dir has
    more folders than that. The limit is the kernel's (max_inotify_watches), not simulated."""
    require_root("a user namespace with its own inotify limit")
    require_tool("unshare")
    a = agent(make_grant("runs/1/"))
    for n in range(4):
        (a.watch / f"folder{n}").mkdir()
    a.wrapper = [
        "unshare", "--user", "--map-root-user", "sh", "-c",
        'echo 2 > /proc/sys/user/max_inotify_watches && exec "$@"', "limit",
    ]  # fmt: skip
    a.start().ready()
    assert eventually(lambda: "looking for changes every 2s instead" in a.text()), a.text()
    (a.watch / "folder3/late.txt").write_bytes(b"polled")
    assert eventually(lambda: objects(s3, bucket) == {"runs/1/folder3/late.txt": b"polled"})
    assert a.stop() == ExitCode.OK


def test_folders_made_later_beyond_the_inotify_limit_are_noticed_by_a_rescan(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """As above, but the folders come after the start: watchdog skips them without a word, and
    the periodic rescan compares the folders it walked with the watches the kernel counts."""
    require_root("a user namespace with its own inotify limit")
    require_tool("unshare")
    a = agent(make_grant("runs/1/"), rescan_seconds="1")
    a.wrapper = [
        "unshare", "--user", "--map-root-user", "sh", "-c",
        'echo 2 > /proc/sys/user/max_inotify_watches && exec "$@"', "limit",
    ]  # fmt: skip
    a.start().ready()
    for n in range(4):
        (a.watch / f"folder{n}").mkdir()
    assert eventually(lambda: "looking for changes every 2s instead" in a.text()), a.text()
    assert "(inotify watch limit reached: raise fs.inotify.max_user_watches)" in a.text()
    (a.watch / "folder3/late.txt").write_bytes(b"polled")
    assert eventually(lambda: objects(s3, bucket) == {"runs/1/folder3/late.txt": b"polled"})
    assert a.stop() == ExitCode.OK


def test_an_inotify_queue_overflow_is_caught_by_a_full_rescan(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """The agent is stopped (SIGSTOP) while 40,000 events fill its inotify queue (the kernel keeps
    16,384 by default), then files are written whose events the kernel drops. watchdog says
    nothing to its handler; the agent notices the overflow and walks the watch dir. The periodic
    rescan is off here, so nothing else could find those files."""
    a = agent(make_grant("runs/1/"), rescan_seconds="0")
    a.start().ready()
    assert a.process is not None
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    a.process.send_signal(signal.SIGSTOP)
    try:
        one, two = (os.open(a.watch / name, os.O_WRONLY | os.O_CREAT) for name in (".a", ".b"))
        for _ in range((limit + 4000) // 2):  # alternating, so the kernel cannot merge them
            os.write(one, b"x")
            os.write(two, b"x")
        os.close(one)
        os.close(two)
        for n in range(5):
            (a.watch / f"lost{n}.txt").write_bytes(b"%d" % n)
    finally:
        a.process.send_signal(signal.SIGCONT)
    expected = {f"runs/1/lost{n}.txt": b"%d" % n for n in range(5)}
    assert eventually(lambda: objects(s3, bucket) == expected, timeout=60), a.text()
    assert a.stop() == ExitCode.OK


def test_a_periodic_rescan_finds_files_no_event_announced(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str, tmpfs: Any
) -> None:
    """A file system mounted inside the watch dir after the agent started: its files raise no
    inotify event the agent watches. The periodic rescan (POSTBOX_RESCAN_SECONDS) finds them."""
    a = agent(make_grant("runs/1/"), rescan_seconds="1")
    a.start().ready()
    mounted = tmpfs(a.watch / "mnt", "1m")
    (mounted / "unseen.txt").write_bytes(b"found by the rescan")
    assert eventually(
        lambda: objects(s3, bucket) == {"runs/1/mnt/unseen.txt": b"found by the rescan"}
    )
    assert a.stop() == ExitCode.OK


def test_a_refused_file_waits_for_a_new_grant_which_is_taken_without_a_restart(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    """403 is final under the grant that got it: no retry, not even after a restart (the journal
    keeps S3's reason and a digest of the grant). Replacing the grant file with a new grant
    (rotation) is noticed by the running agent, and the refused file is sent under it."""
    denied = (403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/refused.txt": [denied, FORWARD]}
        grant_file = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant_file)
        a.start().ready()
        (a.watch / "refused.txt").write_bytes(b"second time lucky")
        assert eventually(lambda: "Invalid according to Policy: Policy expired." in a.text())
        assert eventually(lambda: a.settled(refused=1)), a.counts()  # waits for a new grant
        assert len(proxy.attempts("runs/1/refused.txt")) == 1  # not retried under that grant
        assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
        a.start().ready()  # the journal remembers the refusal, and under which grant
        assert "1 refused before under this grant (they wait for a new one" in a.text()
        assert len(proxy.attempts("runs/1/refused.txt")) == 1
        rotated = with_url(make_grant("runs/1/", "2h"), f"{proxy.url}/{bucket}/")
        os.replace(rotated, grant_file)
        assert eventually(lambda: a.uploaded("runs/1/refused.txt") == 1), a.text()
        assert a.stop() == ExitCode.OK
    assert "new grant taken" in a.text() and "1 waiting file(s) tried again" in a.text()
    assert objects(s3, bucket) == {"runs/1/refused.txt": b"second time lucky"}


@pytest.mark.parametrize("flaw", ["not JSON", "signed for another bucket"])
def test_a_grant_file_replaced_by_a_bad_one_keeps_the_current_grant(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str, flaw: str
) -> None:
    """'Signed for another bucket': a well-formed, signed grant whose policy's bucket is not the
    one its URL points at, which S3 would refuse with every file (tests/agent/test_conformance)."""
    grant_file = make_grant("runs/1/")
    a = agent(grant_file)
    a.start().ready()
    broken = grant_file.with_suffix(".new")
    if flaw == "not JSON":
        broken.write_text("{not json")
    else:
        document = json.loads(grant_file.read_text())
        document["url"] = document["url"].replace(bucket, "another-bucket")
        broken.write_text(json.dumps(document))
    broken.chmod(0o600)
    os.replace(broken, grant_file)
    assert eventually(lambda: "new grant not taken, the current one stays" in a.text())
    if flaw != "not JSON":
        assert "would be refused by S3: its policy allows bucket" in a.text()
    (a.watch / "still.txt").write_bytes(b"sent under the old grant")
    assert eventually(
        lambda: objects(s3, bucket) == {"runs/1/still.txt": b"sent under the old grant"}
    )
    assert a.stop() == ExitCode.OK


def test_a_full_state_dir_pauses_uploads_and_keeps_every_record(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    tmpfs: Any,
) -> None:
    """The state dir is a 2 MiB tmpfs. Filled up, the journal cannot record the next upload: the
    agent says so and starts no new upload; freed, it records and goes on. A restart then sends
    nothing again: no record was lost."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        state = tmpfs(Path(a.env["POSTBOX_STATE_DIR"]), "2m")
        a.start().ready()
        (a.watch / "one.txt").write_bytes(b"1")
        assert eventually(lambda: a.uploaded("runs/1/one.txt") == 1)
        filler = fill_up(state)
        for name in ("two.txt", "three.txt", "four.txt"):
            (a.watch / name).write_bytes(name.encode())
            time.sleep(0.3)
        assert eventually(lambda: "new uploads pause until the state dir" in a.text()), a.text()
        # status.json cannot be written to a full state dir: the main loop's turns say how long.
        assert a.turns(12)  # two housekeeping rounds or more: what was under way has ended
        posts_while_full = proxy.posts
        assert a.turns(12)  # two more, each of which would dispatch what is due
        assert proxy.posts == posts_while_full  # nothing new started while the journal is full
        filler.unlink()
        assert eventually(lambda: "uploads resume" in a.text(), timeout=30), a.text()
        assert eventually(lambda: len(objects(s3, bucket)) == 4), a.text()
        assert a.stop() == ExitCode.OK
        posts = proxy.posts
        a.start().ready()  # READY comes after the start-up scan, which found nothing to send
        assert "start-up scan: 0 file(s) to send, 4 already sent" in a.text(), a.text()
        assert a.stop() == ExitCode.OK
        assert proxy.posts == posts  # every record survived: the restart sent nothing
    db = sqlite3.connect(str(state / "journal.sqlite3"))
    assert db.execute("SELECT COUNT(*) FROM sent").fetchone() == (4,)
    db.close()


def test_no_upload_starts_that_the_observed_rate_says_cannot_finish_before_expiry(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """Every upload is held 2 s by the proxy, so the agent measures about 0.5 MiB/s on a 1 MiB
    file; a 64 MiB file would need two minutes, and the grant has less than that left."""
    with fault_proxy(store.endpoint) as proxy:
        proxy.hold_all = True
        proxy.stall_seconds = 2
        a = agent(with_url(make_grant("runs/1/", "100s"), f"{proxy.url}/{bucket}/"))
        a.start().ready()
        (a.watch / "measure.bin").write_bytes(os.urandom(MiB))
        assert eventually(lambda: a.uploaded("runs/1/measure.bin") == 1)
        (a.watch / "huge.bin").write_bytes(os.urandom(64 * MiB))
        assert eventually(lambda: "not starting huge.bin" in a.text()), a.text()
        assert a.stop() == ExitCode.FILES_LEFT  # huge.bin stays unsent (too long)
    assert proxy.attempts("runs/1/huge.bin") == []
    assert "it waits for a new grant" in a.text()


def test_sigterm_lets_an_upload_in_flight_finish_records_it_and_exits_0(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    with fault_proxy(store.endpoint) as proxy:
        proxy.hold_all = True
        proxy.stall_seconds = 3
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        a.start().ready()
        (a.watch / "inflight.bin").write_bytes(os.urandom(4 * MiB))
        assert eventually(lambda: len(proxy.exchanges) == 1)
        assert a.stop() == ExitCode.OK  # SIGTERM while the proxy holds the upload
        assert a.uploaded("runs/1/inflight.bin") == 1
        (a.watch / "after-stop.txt").write_bytes(b"next run")
        a.start().ready()
        assert eventually(lambda: a.uploaded("runs/1/after-stop.txt") == 1)
        assert a.stop() == ExitCode.OK
    assert [e.key for e in proxy.exchanges] == ["runs/1/inflight.bin", "runs/1/after-stop.txt"]
    assert len(objects(s3, bucket)) == 2


def test_a_fifo_swapped_in_at_the_grant_path_is_refused_and_the_agent_goes_on(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the agent read the new grant on
    its only dispatching thread, so uploads stopped and SIGTERM went unheard."""
    grant_file = make_grant("runs/1/")
    a = agent(grant_file)
    a.start().ready()
    fifo = grant_file.with_suffix(".fifo")
    os.mkfifo(fifo, 0o600)
    os.replace(fifo, grant_file)
    assert eventually(lambda: "is a FIFO, not a regular file" in a.text()), a.text()
    assert "new grant not taken, the current one stays" in a.text()
    (a.watch / "still.txt").write_bytes(b"sent under the old grant")
    assert eventually(
        lambda: objects(s3, bucket) == {"runs/1/still.txt": b"sent under the old grant"}
    )
    assert a.stop() == ExitCode.OK


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_a_state_dir_that_cannot_hold_the_journal_stops_the_agent_with_its_own_code(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, tmpfs: Any, trouble: str
) -> None:
    """Exit 73, which the unit does not restart (a restart cannot make room or remount), and a
    message that says which."""
    a = agent(make_grant("runs/1/"))
    state = tmpfs(Path(a.env["POSTBOX_STATE_DIR"]), "1m")
    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        expected = "is on a read-only file system (mount it read-write"
    else:
        fill_up(state)
        expected = "is full (free space on it"
    assert a.start().wait() == ExitCode.STATE_DIR, a.text()
    lines = [line for line in a.text().splitlines() if "journal" in line]
    assert len(lines) == 1 and expected in lines[0], a.text()


def test_a_restart_onto_a_full_state_dir_with_its_journal_there_exits_73_and_sends_nothing(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    tmpfs: Any,
) -> None:
    """The state dir fills up while the agent runs: the store has a file the journal cannot
    record, and the agent stops so (the journal, its -wal and -shm stay, with no room to
    checkpoint). Restarted onto the same full state dir, where SQLite opens the journal without
    a word, the agent refuses to start (73) rather than send again what it could not record."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        state = tmpfs(Path(a.env["POSTBOX_STATE_DIR"]), "2m")
        a.start().ready()
        (a.watch / "one.txt").write_bytes(b"1")
        assert eventually(lambda: a.uploaded("runs/1/one.txt") == 1), a.text()
        fill_up(state)
        (a.watch / "two.txt").write_bytes(b"2")
        assert eventually(lambda: "new uploads pause until the state dir" in a.text()), a.text()
        a.stop()
        assert (state / "journal.sqlite3").exists()
        posts = proxy.posts
        before = len(a.text())
        assert a.start().wait() == ExitCode.STATE_DIR, a.text()
        assert proxy.posts == posts  # nothing sent again
        lines = [line for line in a.text()[before:].splitlines() if "journal" in line]
        assert len(lines) == 1 and "is full (free space on it" in lines[0], a.text()
    assert objects(s3, bucket) == {"runs/1/one.txt": b"1", "runs/1/two.txt": b"2"}


def rewrite_keeping_the_mtime(path: Path, content: bytes) -> None:
    """What `cp -p`, `touch -r`, `rsync -t --inplace` or `tar x` leave: new bytes in place, the
    same size, the old mtime put back."""
    st = path.stat()
    time.sleep(0.02)  # past the kernel's timestamp tick: the ctime then differs whatever runs
    with path.open("r+b") as out:
        out.write(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_a_same_size_rewrite_that_puts_the_mtime_back_is_sent_again(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """While the agent runs (its close is seen), and while it is stopped (its start-up scan
    compares the journal's version, the ctime included, with the file's)."""
    a = agent(make_grant("runs/1/"))
    path = a.watch / "same.bin"
    path.write_bytes(b"C" * 4096)
    a.start().ready()
    stored = lambda: objects(s3, bucket).get("runs/1/same.bin")  # noqa: E731
    assert eventually(lambda: stored() == b"C" * 4096), a.text()
    rewrite_keeping_the_mtime(path, b"D" * 4096)
    assert eventually(lambda: stored() == b"D" * 4096), a.text()
    assert a.stop() == ExitCode.OK
    rewrite_keeping_the_mtime(path, b"E" * 4096)
    a.start().ready()
    assert eventually(lambda: stored() == b"E" * 4096), a.text()
    assert a.stop() == ExitCode.OK


def test_an_upgrade_over_a_journal_of_release_0_1_0_sends_nothing_again(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """Its rows have no ctime: they match their files on the rest, the start-up scan records
    each file's ctime, and a rewrite that puts the mtime back is then sent."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        for name in ("a.csv", "deep/b.csv"):
            (a.watch / name).parent.mkdir(parents=True, exist_ok=True)
            (a.watch / name).write_bytes(b"sent by 0.1.0")
        journal = journal_0_1_0(
            Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3", a.watch, "runs/1/"
        )
        a.start().ready()
        assert "start-up scan: 0 file(s) to send, 2 already sent" in a.text(), a.text()
        rewrite_keeping_the_mtime(a.watch / "a.csv", b"rewritten 0.2")
        assert eventually(lambda: a.uploaded("runs/1/a.csv") == 1), a.text()
        assert a.stop() == ExitCode.OK
    assert [e.key for e in proxy.exchanges] == ["runs/1/a.csv"]  # deep/b.csv: never again
    db = sqlite3.connect(str(journal))
    assert db.execute("SELECT COUNT(*) FROM sent WHERE ctime_ns IS NULL").fetchone() == (0,)
    db.close()


class Appender:
    """A writer that appends a line every 0.1 s to a file it holds open, until told to stop."""

    def __init__(self, path: Path) -> None:
        self.stream = path.open("ab")
        self.lines = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.stream.write(b"line %04d\n" % self.lines)
            self.stream.flush()
            self.lines += 1

    def close(self) -> bytes:
        self.stop.set()
        self.thread.join()
        self.stream.close()
        return b"".join(b"line %04d\n" % n for n in range(self.lines))


@pytest.mark.parametrize("after_upload", ["keep", "delete"])
def test_a_file_still_written_when_its_folder_moves_is_sent_once_complete(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    after_upload: str,
) -> None:
    """`mv watch/ren1 watch/ren2` two seconds into a writer's appends (watchdog reports a
    move of each file inside: its writer did not rename it), and a folder with an open file
    moved in from outside: each file is sent once, whole, after its writer closes it."""
    a = agent(make_grant("runs/1/"), after_upload=after_upload).start().ready()
    (a.watch / "ren1").mkdir()
    inside = Appender(a.watch / "ren1" / "live.log")
    staging = tmp_path / "staging" / "out"
    staging.mkdir(parents=True)
    outside = Appender(staging / "live.log")
    assert eventually(lambda: inside.lines >= 20 and a.counts().get("writing") == 1)
    (a.watch / "ren1").rename(a.watch / "ren2")
    staging.rename(a.watch / "out")
    assert a.turns(12)  # two housekeeping rounds and more: time to have sent it, had it
    assert objects(s3, bucket) == {}
    whole, moved_in = inside.close(), outside.close()
    expected = {"runs/1/ren2/live.log": whole, "runs/1/out/live.log": moved_in}
    assert eventually(lambda: objects(s3, bucket) == expected), a.text()
    assert eventually(lambda: a.settled(sent=2)), a.text()
    assert a.stop() == ExitCode.OK
    assert a.uploaded("runs/1/ren2/live.log") == a.uploaded("runs/1/out/live.log") == 1
    assert "runs/1/ren1/live.log" not in a.text()
    gone = after_upload == "delete"
    assert (a.watch / "ren2/live.log").exists() is not gone


def test_files_refused_before_are_one_line_at_a_restart_and_status_lists_them(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, tmp_path: Path
) -> None:
    """10,000 refusals kept in the journal under the grant in force (as the store's answers
    left them): a restart tries none of them, says so in its start-up line, logs no warning per
    file, and `postbox-agent status` lists every one with its reason."""
    grant = make_grant("runs/1/")
    a = agent(grant)
    identity = load_grant(grant).identity
    rows = []
    for n in range(10_000):
        path = a.watch / f"r{n // 1000}" / f"f{n:05d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
        st = path.lstat()
        relpath = path.relative_to(a.watch).as_posix()
        version = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        rows.append((relpath, *version, identity, "403 AccessDenied: Policy Condition failed", 1.0))
    journal = Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3"
    Journal(journal).close()
    db = sqlite3.connect(str(journal))
    with db:
        db.executemany(
            "INSERT INTO refused (path, size, mtime_ns, inode, ctime_ns, grant_id, reason, "
            "refused_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    db.close()
    a.start().ready()
    assert eventually(lambda: a.settled(refused=10_000)), a.counts()
    assert a.stop() == ExitCode.FILES_LEFT  # the 10,000 refused stay unsent
    line = "start-up scan: 0 file(s) to send, 0 already sent, 10000 refused before under this grant"
    assert line in a.text(), a.text()[-2000:]
    assert a.text().count("WARNING") == 0
    status = subprocess.run(
        [*AGENT, "status"], env=a.env, capture_output=True, text=True, timeout=60
    )
    kept = status.stdout.split("10000 refusal(s), until a new grant:", 1)[1]
    assert kept.count("403 AccessDenied: Policy Condition failed") == 10_000


def test_a_folder_that_cannot_be_listed_is_said_once_however_often_it_is_walked(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """A folder whose path is longer than PATH_MAX (made one level at a time, relative to the
    one above): every walk meets it, the log says so once; the stop names it among what it
    leaves (its files, if any, are not sent) and exits 3."""
    a = agent(make_grant("runs/1/"), rescan_seconds="0.3")
    fd = os.open(a.watch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(18):  # 18 x 251 bytes: past the 4096 of PATH_MAX
            os.mkdir("d" * 250, dir_fd=fd)
            deeper = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    try:
        a.start().ready()
        assert a.turns(12)  # 1.1 s or more of the agent's time: three rescans and more
        assert a.stop() == ExitCode.FILES_LEFT
    finally:  # shutil's walk goes folder by folder (fds): pytest's own cleanup could not
        shutil.rmtree(a.watch / ("d" * 250))
    assert a.text().count("WARNING cannot list") == 1, a.text()
    assert "(File name too long)" in a.text()
    assert "1 folder(s) the agent cannot list, their files not sent: d" in a.text().splitlines()[-1]
