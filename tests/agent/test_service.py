"""The agent as operators run it: `postbox-agent run` as a process, moto's S3 over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import typing
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode
from agent.journal import read_only, read_sent
from demo.stores import Store
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import HOLD, fault_proxy
from tests.journals import journal_of, zeroed


def test_files_before_start_new_files_and_nested_folders_all_land(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    a = agent(make_grant("runs/1/"), log_level="DEBUG")
    (a.watch / "early.txt").write_bytes(b"before the agent started")
    a.start().ready()
    (a.watch / "deep/er/folder").mkdir(parents=True)
    (a.watch / "deep/er/folder/late.bin").write_bytes(os.urandom(70_000))
    (a.watch / "top.csv").write_bytes(b"x,y\n1,2\n")
    expected = {
        "runs/1/early.txt": b"before the agent started",
        "runs/1/deep/er/folder/late.bin": (a.watch / "deep/er/folder/late.bin").read_bytes(),
        "runs/1/top.csv": b"x,y\n1,2\n",
    }
    assert eventually(lambda: objects(s3, bucket) == expected), a.text()
    assert a.stop() == ExitCode.OK
    assert a.notify is not None and any("STATUS=" in m for m in a.notify.messages)
    fields = json.loads(Path(a.env["POSTBOX_GRANT_FILE"]).read_text())["fields"]
    for secret in ("x-amz-signature", "policy"):
        assert fields[secret] not in a.text()


def test_file_written_slowly_is_sent_once_and_complete(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    a = agent(make_grant("runs/1/")).start().ready()
    content = b"".join(b"line %03d\n" % i for i in range(30))
    with (a.watch / "slow.log").open("wb") as out:
        for i in range(0, len(content), 30):  # 3 s open, much longer than the settle interval
            out.write(content[i : i + 30])
            out.flush()
            time.sleep(0.1)
    assert eventually(lambda: objects(s3, bucket) == {"runs/1/slow.log": content}), a.text()
    assert eventually(lambda: a.settled(sent=1)), a.counts()
    assert a.stop() == ExitCode.OK
    assert a.uploaded("runs/1/slow.log") == 1


def test_temporary_names_are_ignored_until_renamed(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    a = agent(make_grant("runs/1/")).start().ready()
    for name in (".hidden", "data.tmp", "data.part"):
        (a.watch / name).write_bytes(b"partial")
    (a.watch / "marker.txt").write_bytes(b"m")  # its events come after theirs
    assert eventually(lambda: a.settled(sent=1)), a.counts()  # the marker; nothing else waits
    assert objects(s3, bucket) == {"runs/1/marker.txt": b"m"}
    (a.watch / "data.part").rename(a.watch / "data.csv")
    assert eventually(lambda: objects(s3, bucket).get("runs/1/data.csv") == b"partial"), a.text()
    assert a.stop() == ExitCode.OK


def test_excluded_files_are_never_sent_nor_journaled_and_status_and_metrics_count_them(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """POSTBOX_INCLUDE and POSTBOX_EXCLUDE as a batch job's operator sets them: files there at
    the start (the walk) and written later (events), in folders and not, a `!` taking one back;
    a folder moved under an excluded name is not sent."""
    metrics = tmp_path / "postbox.prom"
    a = agent(make_grant("runs/1/"), include="*.csv, results/**, *.log",
              exclude="logs/, debug*.log, !debug-keep.log", metrics_file=str(metrics),
              log_level="DEBUG")  # fmt: skip
    (a.watch / "logs").mkdir()
    for name in ("a.csv", "logs/b.csv", "debug1.log", "notes.txt"):  # before the start
        (a.watch / name).write_bytes(name.encode())
    a.start().ready()
    (a.watch / "results/deep").mkdir(parents=True)
    (a.watch / "staged").mkdir()
    with (a.watch / "staged/d.csv").open("wb") as writing:  # sent at its close, if at all
        writing.write(b"results/logs/d.csv")
        writing.flush()
        (a.watch / "staged").rename(a.watch / "results" / "logs")  # under an excluded folder
    for name in ("results/deep/x.bin", "debug-keep.log", "run.log", "logs/c.csv", "debug2.log",
                 "other.json"):  # fmt: skip
        (a.watch / name).write_bytes(name.encode())
    sent = ["a.csv", "results/deep/x.bin", "debug-keep.log", "run.log"]
    excluded = ["logs/b.csv", "debug1.log", "notes.txt", "logs/c.csv", "debug2.log",
                "other.json", "results/logs/d.csv"]  # fmt: skip
    expected = {f"runs/1/{name}": name.encode() for name in sent}
    assert eventually(lambda: objects(s3, bucket) == expected), a.text()
    assert eventually(lambda: a.settled(sent=4)), a.counts()
    assert (
        "; sending only the files matching POSTBOX_INCLUDE (*.csv, results/**, *.log) and not "
        "matching POSTBOX_EXCLUDE (logs/, debug*.log, !debug-keep.log)\n" in a.text()
    )  # the start's line
    assert (  # the walk counts them apart: they take no place among the files to send
        "start-up scan: 1 file(s) to send, 0 already sent, 3 excluded by "
        "POSTBOX_INCLUDE/POSTBOX_EXCLUDE (not sent)" in a.text()
    )
    assert "not sent logs/b.csv: excluded by POSTBOX_EXCLUDE (logs/)" in a.text()
    assert "not sent notes.txt: not matched by POSTBOX_INCLUDE (" in a.text()

    def counted() -> bool:
        run = json.loads(status(a, "--json").stdout)["run"] or {}
        return run.get("excluded", {}).get("files") == len(excluded)

    assert eventually(counted), (a.text(), status(a, "--json").stdout)
    assert (
        "excluded   7 file(s) not sent, by POSTBOX_INCLUDE (*.csv, results/**, *.log) and "
        "POSTBOX_EXCLUDE (logs/, debug*.log, !debug-keep.log)\n" in status(a).stdout
    )
    assert a.stop() == ExitCode.OK  # an excluded file is not a file left
    assert "postbox_excluded_files_total 7" in metrics.read_text()
    journal = a.watch.parent / "state" / "journal.sqlite3"
    assert read_sent(journal, excluded) == {}
    assert read_only(journal) == (4, [])  # four sent, no refusal kept
    assert objects(s3, bucket) == expected


def status(agent: AgentProcess, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "status", *options], env=agent.env, capture_output=True, text=True, timeout=60
    )


def test_a_restart_does_not_send_a_file_again(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    grant = make_grant("runs/1/")
    first = agent(grant)
    (first.watch / "once.txt").write_bytes(b"once")
    first.start().ready()
    assert eventually(lambda: first.uploaded("runs/1/once.txt") == 1), first.text()
    assert first.stop() == ExitCode.OK
    s3.delete_object(Bucket=bucket, Key="runs/1/once.txt")  # a re-send would bring it back
    second = agent(grant).start().ready()
    (second.watch / "twice.txt").write_bytes(b"new")
    assert eventually(lambda: "runs/1/twice.txt" in objects(s3, bucket)), second.text()
    assert second.stop() == ExitCode.OK
    assert objects(s3, bucket) == {"runs/1/twice.txt": b"new"}
    assert "start-up scan: 0 file(s) to send, 1 already sent" in second.text()


def test_an_expired_grant_stops_the_agent_at_start_with_its_exit_code(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """Expiry while running is tests/agent/test_expiry.py, on a clock the test moves. Here the
    grant is past its expiry before the agent starts (a busy machine only makes it more so)."""
    grant = make_grant("runs/1/", "1s")
    time.sleep(1.5)
    a = agent(grant)
    assert a.start().wait() == ExitCode.EXPIRED
    assert "expired" in a.text()


def test_503_from_the_store_is_retried_until_the_file_lands(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    slow = (503, "SlowDown", "Please reduce your request rate.")
    with fault_proxy(store.endpoint, slow, slow) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        (a.watch / "busy.txt").write_bytes(b"eventually")
        a.start().ready()
        assert eventually(lambda: objects(s3, bucket) == {"runs/1/busy.txt": b"eventually"}), (
            a.text()
        )
        assert a.stop() == ExitCode.OK
    assert proxy.posts == 3
    assert a.text().count("retrying runs/1/busy.txt") == 2


@pytest.mark.parametrize(
    "refusal",
    [
        (403, "AccessDenied", "Invalid according to Policy: Policy Condition failed"),
        (400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"),
        (400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"),
    ],
    ids=["403-AccessDenied", "400-EntityTooLarge", "400-EntityTooSmall"],
)
def test_a_final_refusal_is_not_retried_and_the_file_stays(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
    refusal: tuple[int, str, str],
) -> None:
    with fault_proxy(store.endpoint, default=refusal) as proxy:
        a = agent(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"), after_upload="delete")
        (a.watch / "denied.txt").write_bytes(b"keep me")
        a.start().ready()
        assert eventually(lambda: "refused denied.txt" in a.text()), a.text()
        assert eventually(lambda: a.settled(refused=1)), a.counts()  # waits: no retry is due
        assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    status, code, message = refusal
    assert proxy.posts == 1
    assert f"{status} {code}: {message}" in a.text()
    assert (a.watch / "denied.txt").read_bytes() == b"keep me"


def test_preflight_refuses_a_file_too_large_for_the_grant_and_sends_nothing(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """moto would accept the file whatever the policy's size range; the proxy proves the agent
    refused it itself, before sending a byte."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(
            with_url(make_grant("runs/1/", "30m", "--max-size", "1KiB"), f"{proxy.url}/{bucket}/")
        )
        with (a.watch / "huge.bin").open("wb") as sparse:
            sparse.truncate(6 * 1024**3)
        a.start().ready()
        assert eventually(lambda: "refused huge.bin" in a.text()), a.text()
        assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    assert proxy.posts == 0
    assert "over S3's POST limit" in a.text()
    assert (a.watch / "huge.bin").stat().st_size == 6 * 1024**3


def test_after_upload_delete_removes_only_what_the_store_confirmed(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    a = agent(make_grant("runs/1/"), after_upload="delete")
    (a.watch / "gone.txt").write_bytes(b"sent, then deleted")
    a.start().ready()
    assert eventually(lambda: not (a.watch / "gone.txt").exists()), a.text()
    assert objects(s3, bucket) == {"runs/1/gone.txt": b"sent, then deleted"}
    assert a.stop() == ExitCode.OK


def test_check_reports_the_grant_and_exits_by_the_documented_codes(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, tmp_path: Path, bucket: str
) -> None:
    good = agent(make_grant("runs/7/")).start("check")
    assert good.wait() == ExitCode.OK
    assert "keys       under prefix runs/7/" in good.text() and "ready      yes" in good.text()
    assert (
        "reachable  ok: HTTP " in good.text() and f"bucket     ok: {bucket} exists" in good.text()
    )
    bad_grant = tmp_path / "bad.json"
    bad_grant.write_text("{}")
    assert agent(bad_grant).start("check").wait() == ExitCode.CONFIG
    unreachable = with_url(make_grant("runs/7/"), f"http://127.0.0.1:9/{bucket}/")
    assert agent(unreachable).start("check").wait() == ExitCode.UNREACHABLE


def test_upload_command_sends_named_files_once(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str, tmp_path: Path
) -> None:
    grant = make_grant("runs/1/")
    a = agent(grant)
    (a.watch / "sub").mkdir()
    (a.watch / "sub/in.txt").write_bytes(b"inside")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")
    assert a.start("upload", str(a.watch / "sub/in.txt"), str(outside)).wait() == ExitCode.OK
    assert objects(s3, bucket) == {"runs/1/sub/in.txt": b"inside", "runs/1/outside.txt": b"outside"}
    again = agent(grant).start("upload", str(a.watch / "sub/in.txt"))
    assert again.wait() == ExitCode.OK
    assert "already sent runs/1/sub/in.txt" in again.text()
    missing = agent(grant).start("upload", str(tmp_path / "missing.txt"))
    assert missing.wait() == ExitCode.FILES_LEFT
    (a.watch / "sub/debug.log").write_bytes(b"named")  # the filters are the watcher's
    named = agent(grant, exclude="*.log").start("upload", str(a.watch / "sub/debug.log"))
    assert named.wait() == ExitCode.OK
    assert objects(s3, bucket)["runs/1/sub/debug.log"] == b"named"
    big = tmp_path / "big.bin"  # in parts: the line says a join is still to come
    big.write_bytes(os.urandom(6 * 1024**2))
    parted = agent(grant, split_bytes="5MiB", part_bytes="5MiB").start("upload", str(big))
    assert parted.wait() == ExitCode.OK
    assert (
        f"uploaded runs/1/big.bin ({6 * 1024**2} bytes, in parts: postbox-issuer assemble joins "
        "them)\n" in parted.text()
    ), parted.text()
    assert "uploaded runs/1/sub/in.txt (6 bytes)\n" in a.text()


def test_a_put_url_grant_sends_the_first_file_as_its_one_object(
    agent: Callable[..., AgentProcess], put_grant: Callable[..., Path], s3: Any, bucket: str
) -> None:
    a = agent(put_grant("results/final.csv", "10m", "--content-type", "text/csv"))
    a.start().ready()
    (a.watch / "out.csv").write_bytes(b"x,y\n")
    assert eventually(lambda: objects(s3, bucket) == {"results/final.csv": b"x,y\n"}), a.text()
    head = s3.head_object(Bucket=bucket, Key="results/final.csv")
    assert head["ContentType"] == "text/csv"
    (a.watch / "second.csv").write_bytes(b"later")
    assert eventually(lambda: "refused second.csv" in a.text()), a.text()
    assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    assert "the grant allows one object (results/final.csv), taken by out.csv" in a.text()
    assert objects(s3, bucket) == {"results/final.csv": b"x,y\n"}
    assert (a.watch / "second.csv").read_bytes() == b"later"


def test_a_put_refused_by_the_store_is_final_and_the_file_stays(
    agent: Callable[..., AgentProcess], put_grant: Callable[..., Path], store: Store
) -> None:
    """The URL was signed for Content-Type text/csv; the grant file says text/plain. RGW refuses
    the PUT (403 SignatureDoesNotMatch); moto checks no presigned signature, so it is skipped."""
    if store.kind == "moto":
        pytest.skip("moto does not check presigned URL signatures")
    path = put_grant("results/typed.csv", "10m", "--content-type", "text/csv")
    document = json.loads(path.read_text())
    document["headers"]["Content-Type"] = "text/plain"
    path.write_text(json.dumps(document))
    a = agent(path)
    (a.watch / "typed.csv").write_bytes(b"x")
    a.start().ready()
    assert eventually(lambda: "refused typed.csv" in a.text()), a.text()
    assert eventually(lambda: a.settled(refused=1)), a.counts()  # waits: no retry is due
    assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    assert "403 SignatureDoesNotMatch" in a.text() and "retrying" not in a.text()
    assert (a.watch / "typed.csv").read_bytes() == b"x"


def test_symlinks_fifos_and_symlinked_folders_are_never_uploaded(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    a = agent(make_grant("runs/1/")).start().ready()
    # Made while the agent watches, so each arrives as an event and reaches the uploader.
    (a.watch / "link.txt").symlink_to(secret)
    (a.watch / "folder").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(a.watch / "pipe")
    (a.watch / "real.txt").write_bytes(b"real")
    assert eventually(lambda: "refused pipe: the name is a FIFO" in a.text()), a.text()
    assert eventually(lambda: "refused link.txt: the name is a symlink" in a.text()), a.text()
    assert eventually(lambda: "runs/1/real.txt" in objects(s3, bucket)), a.text()
    assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    assert objects(s3, bucket) == {"runs/1/real.txt": b"real"}
    assert "s3cr3t" not in a.text()


def test_upload_command_with_a_put_grant_sends_one_file_only(
    agent: Callable[..., AgentProcess], put_grant: Callable[..., Path], s3: Any, bucket: str
) -> None:
    grant = put_grant("results/one.csv")
    a = agent(grant)
    (a.watch / "first.csv").write_bytes(b"first")
    (a.watch / "second.csv").write_bytes(b"second")
    first, second = str(a.watch / "first.csv"), str(a.watch / "second.csv")
    assert a.start("upload", first, second).wait() == ExitCode.FILES_LEFT
    assert "the grant allows one object (results/one.csv), taken by first.csv" in a.text()
    assert objects(s3, bucket) == {"results/one.csv": b"first"}


def test_a_file_renamed_in_from_outside_is_complete_at_once(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    """The atomic-write pattern: written elsewhere on the same file system, then renamed into
    the watch dir. The rename says it is complete, so it does not wait to settle (an hour here)."""
    a = agent(make_grant("runs/1/"), settle_seconds="3600").start().ready()
    staged = tmp_path / "staging" / "result.csv"
    staged.parent.mkdir()
    staged.write_bytes(b"a,b\n1,2\n")
    os.rename(staged, a.watch / "result.csv")
    assert eventually(lambda: objects(s3, bucket) == {"runs/1/result.csv": b"a,b\n1,2\n"}), a.text()
    assert a.stop() == ExitCode.OK


def test_check_fails_on_a_missing_bucket_watch_dir_or_state_dir_and_says_which(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    """Each would stop every upload; each is found before the service starts. (Not writable is
    not shown: the tests run as root, whom os.access lets do anything.)"""
    grant = make_grant("runs/7/")
    watch_gone = agent(grant, watch_dir=str(tmp_path / "nowhere"))
    assert watch_gone.start("check").wait() == ExitCode.NOT_READY
    assert "watch dir  FAILED: " in watch_gone.text() and "does not exist" in watch_gone.text()
    (tmp_path / "a-file").write_text("")
    state_file = agent(grant, state_dir=str(tmp_path / "a-file"))
    result = subprocess.run(
        [*AGENT, "check", "--json"], env=state_file.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == ExitCode.NOT_READY, result.stderr
    report = json.loads(result.stdout)
    assert (report["ready"], report["exit_code"]) == (False, ExitCode.NOT_READY)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert list(failed) == ["state dir"] and "is not a folder" in failed["state dir"]
    s3.delete_bucket(Bucket=bucket)
    no_bucket = agent(grant).start("check")
    assert no_bucket.wait() == ExitCode.NOT_READY
    assert f"bucket     FAILED: {bucket} does not exist (HTTP 404)" in no_bucket.text()


def test_a_second_sigterm_while_uploads_drain_stops_at_once_and_the_file_is_sent_next_start(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, bucket: str, s3: Any
) -> None:
    """The first SIGTERM lets the upload under way finish (here it is held by the proxy for a
    minute); a second one stops at once, as uvicorn's does: the upload is cut, the log says so,
    and the file, still in the watch dir and not journaled, is sent at the next start."""
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/held.bin": [HOLD]}
        proxy.stall_seconds = 60
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant)
        (a.watch / "held.bin").write_bytes(b"h" * 4096)
        a.start().ready()
        assert eventually(lambda: len(proxy.attempts("runs/1/held.bin")) == 1), a.text()
        assert a.process is not None
        a.process.send_signal(signal.SIGTERM)
        assert eventually(lambda: "stopping: sending the 1 complete file(s) first" in a.text())
        assert a.process.poll() is None  # the first signal waits for the upload under way
        a.process.send_signal(signal.SIGTERM)
        # Long before the proxy's 60 s hold ends; 3: a file is left, the exit status says so.
        assert a.wait(30) == ExitCode.FILES_LEFT, a.text()
        assert "stopped at once (a second signal): 1 upload(s) under way cut" in a.text()
        assert objects(s3, bucket) == {}
        assert (a.watch / "held.bin").exists()
        proxy.by_key = {}
        proxy.released.set()
        a.start().ready()
        assert eventually(lambda: a.uploaded("runs/1/held.bin") == 1), a.text()
        assert a.stop() == ExitCode.OK
    assert objects(s3, bucket) == {"runs/1/held.bin": b"h" * 4096}


def test_a_damaged_journal_stops_run_with_its_own_code_and_check_and_status_say_why(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, tmp_path: Path
) -> None:
    """Pages zeroed in a journal of 20,000 rows: `run` exits 65 (the unit does not restart on
    it) with one line naming the file and the way out; `check` is not ready and says the same;
    `status` says why it cannot read the journal instead of a question mark."""
    a = agent(make_grant("runs/1/"))
    journal = journal_of(Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3", 20_000)
    zeroed(journal)
    assert a.start().wait() == ExitCode.JOURNAL_DAMAGED, a.text()
    errors = [line for line in a.text().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"journal {journal} is damaged" in errors[0], a.text()
    assert "mv " in errors[0] and "start the agent again" in errors[0]
    check = agent(make_grant("runs/1/")).start("check")
    assert check.wait() == ExitCode.NOT_READY
    assert f"journal    FAILED: journal {journal} is damaged" in check.text(), check.text()
    status = subprocess.run(
        [*AGENT, "status"], env=a.env, capture_output=True, text=True, timeout=60
    )
    assert f"journal    CANNOT BE READ: journal {journal} is damaged" in status.stdout, status


def test_a_sigterm_right_after_a_batch_lands_sends_every_file_first(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """1,000 x 4 KiB moved into the watch dir, SIGTERM 0.3 s later (what `shutdown` does to
    the unit): every file is stored before the agent exits, and its last line says so."""
    a = agent(make_grant("runs/1/")).start().ready()
    staging = tmp_path / "staging"
    staging.mkdir()
    expected = {}
    for n in range(1000):
        content = os.urandom(4096)
        (staging / f"r{n:04d}.out").write_bytes(content)
        expected[f"runs/1/r{n:04d}.out"] = content
    for n in range(1000):
        os.rename(staging / f"r{n:04d}.out", a.watch / f"r{n:04d}.out")
    time.sleep(0.3)  # as a job that powers off right after its last file
    assert a.stop() == ExitCode.OK, a.text()[-3000:]
    last = a.text().strip().splitlines()[-1]
    assert last.endswith("stopped: 1000 file(s) uploaded in this run, none left"), last
    assert objects(s3, bucket) == expected


def test_a_stop_says_what_it_leaves_and_a_file_being_written_is_not_sent_half(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A file still open for writing at the stop is left (its writer may not be done), and the
    last line names how many and where, as do the exit status (3) and `status`; the complete
    one beside it is sent first."""
    a = agent(make_grant("runs/1/")).start().ready()
    with (a.watch / "open.log").open("wb") as writer:
        writer.write(b"half")
        writer.flush()
        assert eventually(lambda: a.counts().get("writing") == 1), a.counts()
        (a.watch / "done.csv").write_bytes(b"whole")
        assert a.stop() == ExitCode.FILES_LEFT
    last = a.text().strip().splitlines()[-1]
    assert last.endswith(
        f"stopped: 1 file(s) uploaded in this run, 1 left in {a.watch} (1 writing): open.log"
    )
    status = subprocess.run(
        [*AGENT, "status", "--json"], env=a.env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == ExitCode.NOT_RUNNING
    assert json.loads(status.stdout)["run"]["left"] == {"writing": 1}
    text = subprocess.run([*AGENT, "status"], env=a.env, capture_output=True, text=True).stdout
    assert "stopped    with 1 file(s) left unsent (1 writing)" in text, text
    assert objects(s3, bucket) == {"runs/1/done.csv": b"whole"}


@pytest.mark.parametrize("bypassed", [False, True])
def test_uploads_go_through_the_proxy_the_environment_names_unless_no_proxy_says_not(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    bypassed: bool,
) -> None:
    """HTTP_PROXY and NO_PROXY, as requests honours them: the grant names the store itself, and
    the uploads go through the proxy (which is told the whole URL), or straight to the store
    when NO_PROXY names its host."""
    with fault_proxy(store.endpoint) as proxy:
        a = agent(make_grant("runs/1/"))
        for name in ("HTTP_PROXY", "http_proxy"):
            a.env[name] = proxy.url
        for name in ("NO_PROXY", "no_proxy"):
            a.env[name] = "127.0.0.1" if bypassed else ""
        a.start().ready()
        (a.watch / "via.csv").write_bytes(b"1,2\n")
        assert eventually(lambda: objects(s3, bucket) == {"runs/1/via.csv": b"1,2\n"}), a.text()
        assert a.stop() == ExitCode.OK
    assert [e.key for e in proxy.exchanges] == ([] if bypassed else ["runs/1/via.csv"])


def test_a_stop_counts_files_refused_or_failing_among_those_it_leaves(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
) -> None:
    """A file the grant refuses (over --max-size) and one whose every attempt the store answers
    503 (retried through the stop's 2 s budget, then cut) are as unsent as one still being
    written: a batch machine that powers off loses them. Before, the stop said "none left" and
    exited 0."""
    slow_down = (503, "SlowDown", "Please reduce your request rate.")
    with fault_proxy(store.endpoint) as proxy:
        small = make_grant("runs/1/", "30m", "--max-size", "100")
        grant = with_url(small, f"{proxy.url}/{bucket}/")
        proxy.by_key = {"runs/1/slow.csv": [slow_down] * 1000}
        a = agent(grant, stop_budget_seconds="2").start().ready()
        (a.watch / "big.bin").write_bytes(b"x" * 101)
        (a.watch / "slow.csv").write_bytes(b"1,2\n")
        assert eventually(lambda: a.counts().get("refused") == 1), a.text()
        assert eventually(lambda: len(proxy.attempts("runs/1/slow.csv")) >= 2), a.text()
        assert a.stop() == ExitCode.FILES_LEFT, a.text()
    last = a.text().strip().splitlines()[-1]
    assert last.endswith(f"2 left in {a.watch} (1 refused, 1 failed): big.bin, slow.csv") or (
        last.endswith(f"2 left in {a.watch} (1 refused, 1 failed): slow.csv, big.bin")
    ), last


def test_files_closed_right_before_sigterm_are_sent_though_their_events_come_after_it(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """20 files open for writing (the agent has them as being written), all closed, then SIGTERM
    at once: the close events may still be on their way through watchdog when the drain's walk
    ends. The drain waits for a marker of its own to come back through the same events, so each
    file is sent, not left as still being written."""
    a = agent(make_grant("runs/1/")).start().ready()
    writers = [(a.watch / f"w{n:02d}.log").open("wb") for n in range(20)]
    for writer in writers:
        writer.write(b"complete")
        writer.flush()
    assert eventually(lambda: a.counts().get("writing") == 20), a.counts()
    for writer in writers:
        writer.close()
    assert a.stop() == ExitCode.OK, a.text()[-2000:]
    assert a.text().strip().splitlines()[-1].endswith("20 file(s) uploaded in this run, none left")
    assert len(objects(s3, bucket)) == 20


def test_the_shell_carries_out_every_action_and_routes_every_message() -> None:
    """Each action the core may return has its carrier in the shell (but the two its caller
    reads back); each message a thread may put on the inbox has a handler, in the shell or in
    the core: a new kind without one would end the daemon as a bug the first time it came."""
    from agent import core, service  # noqa: PLC0415  (the tables under test, private)
    from agent.actions import Action, Answer, Tried  # noqa: PLC0415
    from agent.inbox import Message  # noqa: PLC0415

    assert set(typing.get_args(Action)) - set(service._CARRY) == {Answer, Tried}
    routed = set(service._HANDLERS) | set(core._RULES)
    assert set(typing.get_args(Message)) - routed == set()
    assert set(service._HANDLERS) & set(core._RULES) == set()  # one place for each kind
