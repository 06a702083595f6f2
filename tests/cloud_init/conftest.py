"""The first-boot machine (tests/vm.py) booted from rendered user-data, for the tests here."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from demo.stores import Store
from issuer.cli import main as issuer_main
from tests.conftest import GrantMaker, require_root, require_tool
from tests.vm import Machine

# Any index pip asks is a closed port: an install that needs one fails.
NO_INDEX = "[global]\nindex-url = http://127.0.0.1:9/simple\nretries = 0\n"


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


@pytest.fixture
def boot(
    tmp_path: Path, make_grant: GrantMaker, store: Store, wheelhouse: Path
) -> Iterator[Callable[..., Machine]]:
    """Boot a machine whose user-data (with `options`, a grant for runs/vm/) ends with the job
    `job`, if any."""
    require_root("the first-boot machine (namespaces and mounts)")
    for tool in ("unshare", "nsenter", "cloud-init", "setpriv"):
        require_tool(tool)
    workdir = Path("/var/tmp") / f"postbox-vm-{tmp_path.name}"
    machines: list[Machine] = []

    def start(job: Optional[str], *options: str) -> Machine:
        out = tmp_path / "user-data"
        argv = ["user-data", "--grant", str(make_grant("runs/vm/")), "--wheelhouse"]
        argv += [str(wheelhouse), "--endpoint-url", store.endpoint, "--region", store.region]
        argv += ["--settle-seconds", "1", *(["--job", job] if job else []), *options]
        assert issuer_main([*argv, "-o", str(out)]) == 0
        workdir.mkdir()
        files: dict[str, Path | str] = {"/etc/pip.conf": NO_INDEX}
        machine = Machine(workdir, out.read_text(), files)
        machines.append(machine.__enter__())
        return machine

    try:
        yield start
    finally:
        for machine in machines:
            machine.stop()
        shutil.rmtree(workdir, ignore_errors=True)
