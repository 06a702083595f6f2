"""First boot, for real: cloud-init applies the user-data and the hardened unit runs the agent.

The machine is `tests.vm.Machine`: systemd 252 as PID 1 in private namespaces over a throwaway
overlay of this machine, cloud-init's own stages on the user-data `postbox-issuer user-data`
renders. The installer downloads the wheelhouse built from this checkout (`user-data
--wheelhouse`: uploaded to the S3 server, a signed GET URL in the user-data) and installs from it
alone: the machine's pip is pointed at a closed port for its index, it has no ensurepip (as
Debian's cloud images, without python3-venv) and its python3 is a stand-in for RHEL 8's Python 3.6,
so the install works only if it asks no index, needs no ensurepip and finds python3.11 itself.
It creates the user `postbox` and enables the unit from `systemd/`, which then runs the agent
with no capability but CAP_LEASE (the user-data asks for `--after-upload delete`, whose drop-in
adds it), no new privileges, a read-only system and a system-call filter. A batch job, an
ordinary user in the group `postbox`, drops a file; the test reads it back from the S3 server on
127.0.0.1, and sees the agent delete the job's file once the kernel granted it a lease (no writer
left) inside that sandbox. An agent that hangs (SIGSTOP) is killed by systemd's watchdog and
started again (a drop-in shortens WatchdogSec to 5 s for the test).
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo.stores import Store
from issuer.cli import main as issuer_main
from tests.agentprocess import eventually
from tests.cloud_init.conftest import NO_INDEX
from tests.conftest import objects, require_root, require_tool
from tests.vm import Machine
from tests.wheels import system_python

pytestmark = pytest.mark.timeout(900)
BATCH_UID = 4242  # the batch job's user: no passwd entry needed, only the group postbox


PUBLISHED = "grants/vm.json"  # where the renewer publishes the VM's next grant


def renew(store: Store, bucket: str, path: Path, expires: str, *options: str) -> Path:
    argv = ["renew", "--bucket", bucket, "--prefix", "runs/vm/", "--expires", expires]
    argv += ["--publish", f"s3://{bucket}/{PUBLISHED}", "--endpoint-url", store.endpoint]
    assert issuer_main([*argv, "--region", store.region, *options, "-o", str(path)]) == 0
    return path


# The unit's watchdog is 60 s; the test's 5 s (and no 120 s wait between SIGABRT and SIGKILL)
# shows a restart within the test's patience.
WATCHDOG_DROP_IN = "/etc/systemd/system/postbox-agent.service.d/test-watchdog.conf"
WATCHDOG = "[Service]\nWatchdogSec=5s\nTimeoutAbortSec=5s\nRestartSec=1s\n"
# RHEL 8 keeps Python 3.6 as python3 (newer ones as python3.X): too old for the agent.
OLD_PYTHON3 = "#!/bin/sh\necho 'python3 is Python 3.6 here (a stand-in for RHEL 8)' >&2\nexit 1\n"


@pytest.fixture
def machine(tmp_path: Path, store: Store, bucket: str, wheelhouse: Path) -> Iterator[Machine]:
    require_root("the first-boot machine (namespaces and mounts)")
    for tool in ("unshare", "nsenter", "cloud-init", "setpriv"):
        require_tool(tool)
    user_data = tmp_path / "user-data"
    # A grant that renews itself, short-lived so the agent asks for the next one within the test.
    grant = renew(store, bucket, tmp_path / "grant.json", "2m")
    argv = ["user-data", "--grant", str(grant), "--wheelhouse", str(wheelhouse)]
    argv += ["--endpoint-url", store.endpoint, "--region", store.region]
    argv += ["--after-upload", "delete", "--settle-seconds", "1"]
    assert issuer_main([*argv, "-o", str(user_data)]) == 0
    workdir = Path("/var/tmp") / f"postbox-vm-{tmp_path.name}"  # the upper layer's mount point
    workdir.mkdir()
    files: dict[str, Path | str] = {
        "/etc/pip.conf": NO_INDEX,
        "/root/.config/pip/pip.conf": NO_INDEX,
    }
    files["/usr/local/bin/python3"] = OLD_PYTHON3
    files[WATCHDOG_DROP_IN] = WATCHDOG
    try:
        with Machine(
            workdir, user_data.read_text(), files, ("/usr/lib/python3*/ensurepip",)
        ) as booted:
            try:
                yield booted
            finally:
                print(booted.journal("postbox-first-boot.service")[-4000:])
                print(booted.journal("postbox-agent.service")[-4000:])
    finally:
        shutil.rmtree(workdir)


def test_first_boot_runs_the_agent_as_postbox_under_the_hardened_unit(
    machine: Machine, s3: Any, bucket: str, store: Store, tmp_path: Path
) -> None:
    machine.wait_for("systemctl is-active --quiet postbox-first-boot.service", 600)
    # Type=notify: active only once the agent said READY=1 after its start-up scan.
    state = "systemctl show --property=ActiveState --value postbox-agent"
    machine.wait_for(f"{state} | grep -qx 'active\\|failed'", 60)
    assert machine.check(state) == "active\n"

    assert machine.check("stat -c '%U %G %a' /etc/postbox/grant.json") == "postbox postbox 600\n"
    assert machine.check("stat -c '%U %G %a' /var/spool/postbox") == "postbox postbox 2770\n"
    assert machine.check("stat -c '%U %G %a' /var/lib/postbox") == "postbox postbox 750\n"
    assert machine.check("getent passwd postbox | cut -d: -f7") == "/usr/sbin/nologin\n"
    assert not machine.run("ls -d /opt/postbox/lib/python3*/site-packages/boto3").stdout
    # Installed from the wheelhouse alone, by python3.X (python3 was too old), without ensurepip.
    python = system_python()
    first_boot = machine.journal("postbox-first-boot.service")
    tag = f"cp{str(python).replace('.', '')}-{platform.machine()}"
    assert f"installing from the wheelhouse's {tag} lock" in first_boot
    assert machine.check("readlink -f /opt/postbox/bin/python") == f"/usr/bin/python{python}\n"
    assert machine.run(f"/usr/bin/python{python} -c 'import ensurepip'").returncode != 0
    assert "X-Amz-Signature" not in first_boot
    # The agent's install has postbox-issuer too, without its extras: one line says so.
    issuer = machine.run("/opt/postbox/bin/postbox-issuer --version")
    assert issuer.returncode == 2 and "pip install 's3-postbox[issuer]'" in issuer.stderr
    assert len(issuer.stderr.splitlines()) == 1

    pid_of = "systemctl show --property=MainPID --value postbox-agent"
    pid = machine.check(pid_of).strip()
    assert machine.check(f"stat -c %U /proc/{pid}") == "postbox\n"
    status = dict(
        line.split(":\t", 1)
        for line in machine.check(f"cat /proc/{pid}/status").splitlines()
        if ":\t" in line
    )
    cap_lease = f"{1 << 28:016x}"  # CAP_LEASE is capability 28
    assert status["CapEff"] == status["CapBnd"] == cap_lease
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")

    gid = machine.check("getent group postbox | cut -d: -f3").strip()
    machine.check(
        f"setpriv --reuid={BATCH_UID} --regid={BATCH_UID} --groups={gid} "
        "sh -c 'umask 022; printf \"result 1\\n\" > /var/spool/postbox/result-1.txt'"
    )
    # The user-data's default key segment, {instance_id}/, from cloud-init's own instance data.
    expected = {"runs/vm/postbox-vm/result-1.txt": b"result 1\n"}
    assert eventually(lambda: objects(s3, bucket, "runs/") == expected)
    assert eventually(lambda: not machine.run("ls /var/spool/postbox/result-1.txt").stdout)
    assert "kept result-1.txt" not in machine.journal("postbox-agent.service")

    # journald reads each line's priority from its <N> prefix, and stamps the time itself: an
    # error (a job's file the agent may not read) is in `journalctl -p err`, INFO lines are not.
    machine.check(
        f"setpriv --reuid={BATCH_UID} --regid={BATCH_UID} --groups={gid} "
        "sh -c 'umask 077; printf \"private\\n\" > /var/spool/postbox/private.txt'"
    )
    errors = "journalctl --no-pager -o cat -p err -u postbox-agent"
    machine.wait_for(f"{errors} | grep -q 'cannot read private.txt'", 60)
    assert "watching /var/spool/postbox" not in machine.check(errors)
    entries = [
        json.loads(line)
        for line in machine.check("journalctl --no-pager -o json -u postbox-agent").splitlines()
    ]
    watching = next(e for e in entries if "watching /var/spool/postbox" in e["MESSAGE"])
    assert watching["PRIORITY"] == "6" and watching["MESSAGE"].startswith("INFO watching")

    # The renewer publishes the next grant; the agent, in its sandbox, fetches it and writes it
    # over /etc/postbox/grant.json (the drop-in and the installer's root:postbox 1770 folder).
    renewed = renew(store, bucket, tmp_path / "next.json", "10m", "--force")
    assert eventually(
        lambda: "renewed grant taken" in machine.journal("postbox-agent.service"), timeout=150
    )
    assert machine.check("stat -c '%U %a' /etc/postbox/grant.json") == "postbox 600\n"
    assert machine.check("stat -c '%U %G %a' /etc/postbox") == "root postbox 1770\n"
    assert json.loads(machine.check("cat /etc/postbox/grant.json")) == json.loads(
        renewed.read_text()
    )
    machine.check(
        f"setpriv --reuid={BATCH_UID} --regid={BATCH_UID} --groups={gid} "
        "sh -c 'umask 022; printf \"result 2\\n\" > /var/spool/postbox/result-2.txt'"
    )
    expected["runs/vm/postbox-vm/result-2.txt"] = b"result 2\n"
    assert eventually(lambda: objects(s3, bucket, "runs/") == expected)

    # A hung agent (stopped outright here) stops pinging the watchdog: systemd kills it and
    # starts it again, and the new one uploads.
    machine.check(f"kill -STOP {machine.check(pid_of).strip()}")
    restarts = "systemctl show --property=NRestarts --value postbox-agent"
    machine.wait_for(f'test "$({restarts})" = 1 && systemctl is-active --quiet postbox-agent', 90)
    assert "Watchdog timeout" in machine.run("journalctl --no-pager -u postbox-agent").stdout
    machine.check(
        f"setpriv --reuid={BATCH_UID} --regid={BATCH_UID} --groups={gid} "
        "sh -c 'umask 022; printf \"result 3\\n\" > /var/spool/postbox/result-3.txt'"
    )
    expected["runs/vm/postbox-vm/result-3.txt"] = b"result 3\n"
    assert eventually(lambda: objects(s3, bucket, "runs/") == expected)

    # At shutdown units stop in the reverse order of their start: ordered after
    # network-online.target and before shutdown.target, the agent drains while the network is
    # up, and the machine waits for it (systemd's own account, in the machine).
    after = machine.check("systemctl show --property=After --value postbox-agent").split()
    assert "network-online.target" in after and "shutdown.target" not in after
    before = machine.check("systemctl show --property=Before --value postbox-agent").split()
    assert "shutdown.target" in before
    # `wait` as the batch job (group postbox, no sudo, no grant read): result-3.txt is stored
    # (and deleted after upload: the journal's word); private.txt never will be, and is named.
    job = f"setpriv --reuid={BATCH_UID} --regid={BATCH_UID} --groups={gid} "
    wait = "/opt/postbox/bin/postbox-agent wait --timeout 2m"
    waited = machine.run(f"{job} {wait} /var/spool/postbox/result-3.txt")
    assert waited.returncode == 0 and "stored: all 1 file(s)" in waited.stdout, waited
    waited = machine.run(f"{job} {wait}")
    assert waited.returncode == 3 and "not stored private.txt: " in waited.stdout, waited
    assert machine.check("stat -c '%U %G %a' /run/postbox") == "postbox postbox 750\n"

    # systemctl stop sends SIGTERM: the agent drains inside the sandbox too, and says what it
    # leaves: private.txt, which it may not read, stays unsent, so it exits 3 and systemd shows
    # the unit failed (on a machine that goes away, that file is lost).
    machine.check("systemctl stop postbox-agent.service", timeout=150)
    result = machine.check("systemctl show --property=Result,ExecMainStatus postbox-agent")
    assert result.split() == ["Result=exit-code", "ExecMainStatus=3"]
    last = machine.check("journalctl --no-pager -o cat -u postbox-agent | grep 'stopped: '")
    assert "1 left in /var/spool/postbox (1 unreadable): private.txt" in last, last

    # Metrics for node_exporter's textfile collector, written from inside the sandbox into the
    # folder the installer opened to postbox (group-writable and sticky), at stop as every 10 s.
    prom = "/var/lib/prometheus/node-exporter"
    assert machine.check(f"stat -c '%U %G %a' {prom}") == "root postbox 1775\n"
    assert machine.check(f"stat -c '%U %a' {prom}/postbox.prom") == "postbox 644\n"
    samples = {
        (sample.name, sample.labels.get("result")): sample.value
        for family in text_string_to_metric_families(machine.check(f"cat {prom}/postbox.prom"))
        for sample in family.samples
    }
    assert samples[("postbox_uploaded_files_total", None)] == 1  # result-3.txt, since the restart
    assert samples[("postbox_grant_seconds_left", None)] > 0
