"""The last shutdown, for real: a batch job in the first-boot machine (tests/vm.py) drops its
results and powers the machine off, and every file is in the bucket once the machine is gone.

The job is the user-data's own (`postbox-issuer user-data --job`, run after the installer, as
examples/batch-job.sh renders it): it runs as an ordinary user in the group
`postbox`, writes N files into the watch dir, and then either powers off at once (the agent's
drain on SIGTERM sends them: the unit is stopped before the machine goes), or first runs
`postbox-agent wait` (no sudo, no grant read) and powers off only if it exits 0; there the agent
is given no stop budget, so what is in the bucket was stored before the power-off.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.conftest import objects
from tests.vm import Machine

pytestmark = pytest.mark.timeout(900)
FILES = 300
JOB_UID = 4242
# The job: it starts once the agent is up (the installer starts it without waiting; a batch
# job's own work outlasts the agent's start), then writes N result files, as an ordinary user
# of the group postbox.
DROP = (
    "for _ in $(seq 120); do systemctl is-active --quiet postbox-agent && break; sleep 1; done; "
    f"gid=$(getent group postbox | cut -d: -f3) && "
    f"setpriv --reuid={JOB_UID} --regid={JOB_UID} --groups=$gid sh -c '"
    "umask 022; mkdir -p /var/spool/postbox/batch; i=0; "
    f'while [ $i -lt {FILES} ]; do printf "result %d\\n" $i > /var/spool/postbox/batch/r$i.out; '
    "i=$((i+1)); done"
)


def expected() -> dict[str, bytes]:
    return {f"runs/vm/postbox-vm/batch/r{i}.out": b"result %d\n" % i for i in range(FILES)}


def test_a_job_that_powers_off_at_once_loses_none_of_its_files(
    boot: Callable[..., Machine], s3: Any, bucket: str
) -> None:
    machine = boot(f"{DROP}' && systemctl poweroff")
    assert machine.gone(600), "the machine did not power off"
    assert objects(s3, bucket, "runs/") == expected()


def test_a_job_that_waits_then_powers_off_finds_its_files_stored_first(
    boot: Callable[..., Machine], s3: Any, bucket: str
) -> None:
    """No stop budget: the power-off sends nothing more, so the files in the bucket were stored
    before `wait` returned 0 (the job powers off only then)."""
    wait = "/opt/postbox/bin/postbox-agent wait --timeout 5m"
    machine = boot(f"{DROP}; {wait}' && systemctl poweroff", "--stop-budget-seconds", "0")
    assert machine.gone(600), "the machine did not power off: wait did not exit 0"
    assert objects(s3, bucket, "runs/") == expected()
