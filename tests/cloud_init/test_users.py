"""`wait` and `status` as each user runs them, in the machine booted from the rendered user-data
(tests/vm.py): root, a batch job in the group `postbox`, a user outside it. Each gets the true
answer or one line that names the fix (exit 77), never "stored" for what it could not see and
never a traceback; a temporary name is said at once; and once the agent has stopped at its
grant's expiry, a job's `wait` says so at once, counting what the journal recorded.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from tests.conftest import GrantMaker, objects
from tests.vm import Machine

pytestmark = pytest.mark.timeout(900)
JOB_UID = 4242  # in the group postbox (no passwd entry needed)
OUTSIDER_UID = 4343  # in no group of the machine's
AGENT = "/opt/postbox/bin/postbox-agent"
SPOOL = "/var/spool/postbox"


def test_wait_and_status_tell_each_user_the_truth_or_how_to_be_let_in(
    boot: Callable[..., Machine], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    machine = boot(None)
    machine.wait_for("systemctl is-active --quiet postbox-agent", 600)
    gid = machine.check("getent group postbox | cut -d: -f3").strip()
    job = f"setpriv --reuid={JOB_UID} --regid={JOB_UID} --groups={gid}"
    outsider = f"setpriv --reuid={OUTSIDER_UID} --regid={OUTSIDER_UID} --clear-groups"
    machine.check(
        f"{job} sh -c 'umask 022; mkdir {SPOOL}/run; for i in 1 2 3; do echo $i > "
        f"{SPOOL}/run/r$i.csv; done; echo x > {SPOOL}/run/summary.tsv.tmp'"
    )

    # The job, in the group: its files stored, the temporary name said, and at once when named.
    waited = machine.run(f"{job} {AGENT} wait --timeout 2m {SPOOL}/run")
    assert waited.returncode == 0 and "stored: all 3 file(s)" in waited.stdout, waited
    assert "never sent" in waited.stderr and "run/summary.tsv.tmp" in waited.stderr, waited
    tmp = machine.run(f"{job} {AGENT} wait --timeout 10m {SPOOL}/run/summary.tsv.tmp")
    assert tmp.returncode == 3 and "not stored run/summary.tsv.tmp: a temporary" in tmp.stdout
    # status.json is written when what it says changed, looked at every 2 s
    machine.wait_for(f"{job} {AGENT} status | grep -q '^uploaded   3 in this run'", 30)
    status = machine.run(f"{job} {AGENT} status --json")
    assert status.returncode == 0, status
    said = json.loads(status.stdout)
    assert said["run"]["counts"]["sent"] == 3, said
    # the journal is the agent's alone while it runs; root reads it
    assert "the group reads it once the agent has stopped" in said["journal_error"], said

    # Outside the group: one line each, the fix named, nothing said stored.
    for command in ("wait --timeout 10m", f"wait {SPOOL}/run/r1.csv", "status"):
        refused = machine.run(f"{outsider} {AGENT} {command}")
        assert refused.returncode == 77, (command, refused)
        assert refused.stdout == "" and len(refused.stderr.splitlines()) == 1, refused
        assert "sudo usermod -aG postbox " in refused.stderr, refused

    # Root sees what the job sees.
    assert machine.run(f"{AGENT} wait --timeout 2m {SPOOL}/run").returncode == 0
    ever = json.loads(machine.check(f"{AGENT} status --json"))["uploaded_ever"]
    assert ever == 3, ever

    # A job with umask 077 makes a folder the agent cannot list (2700): `wait` says so at once,
    # with the fix (exit 3, not "unseen" until its timeout), and `status` names the folder.
    # Made readable, its files are sent at once, not at the next rescan (300 s from boot).
    machine.check(f"{job} sh -c 'umask 077; mkdir {SPOOL}/private; echo p > {SPOOL}/private/p.csv'")
    assert machine.check(f"stat -c %a {SPOOL}/private") == "2700\n"
    stuck = machine.run(f"{job} {AGENT} wait --timeout 10m {SPOOL}/private")
    assert stuck.returncode == 3, stuck
    assert "not stored private/p.csv: in private, which the agent cannot list" in stuck.stdout
    assert f"chmod -R g+rX {SPOOL}/private" in stuck.stdout, stuck.stdout
    # status.json is written when what it says changed, looked at every 2 s
    unreadable = f"{job} {AGENT} status | grep -A1 '^folders ' | grep -q 'private'"
    machine.wait_for(unreadable, 30)
    said = json.loads(machine.check(f"{job} {AGENT} status --json"))
    assert [f["path"] for f in said["run"]["unreadable_folders"]] == ["private"], said
    machine.check(f"{job} chmod -R g+rX {SPOOL}/private")
    opened = machine.run(f"{job} {AGENT} wait --timeout 60 {SPOOL}/private")
    assert opened.returncode == 0 and "stored: all 1 file(s)" in opened.stdout, opened

    # The grant in force is replaced by one that expires in a minute: the agent sends late.log,
    # then stops at the expiry (with nothing left, exit 0); a file written after that is never
    # sent, and the job's `wait`, started then, says so at once (its grace is 10 minutes), the
    # five files stored by the journal's word and only that one left.
    short = make_grant("runs/vm/", "1m").read_text()
    machine.check(f"cat > /etc/postbox/grant.json <<'EOF'\n{short}\nEOF")
    machine.wait_for("journalctl -o cat -u postbox-agent | grep -q 'grant taken'", 60)
    machine.check(f"{job} sh -c 'umask 022; echo late > {SPOOL}/run/late.log'")
    machine.wait_for("! systemctl is-active --quiet postbox-agent", 240)
    assert "grant expired" in machine.journal("postbox-agent.service")
    machine.check(f"{job} sh -c 'umask 022; echo after > {SPOOL}/run/after.csv'")
    done = machine.run(f"{job} {AGENT} wait --agent-grace 10m --json {SPOOL}/run", timeout=120)
    assert done.returncode == 79, done
    report = json.loads(done.stdout)
    assert report["result"] == "grant expired", report
    assert report["left"] == [{"path": "run/after.csv", "state": "unseen"}], report
    assert report["stored"] == 4  # under run/
    assert len(objects(s3, bucket, "runs/vm/")) == 5
