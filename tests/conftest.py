"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), buckets, grants, tools."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, cast

import pytest

from demo.stores import CREDENTIALS, Store, moto_server, rgw_available, rgw_server, s3_client
from issuer.cli import main as issuer_main
from tests.agentprocess import AgentProcess

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """The tool's path; skip without it, except under CI=true, where its absence is a failure."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install {_PACKAGES.get(name, name)})"
        if IN_CI:
            pytest.fail(message + "; under CI=true a missing tool is a failure")
        pytest.skip(message)
    return path


def rclone_copy(store: Store, bucket: str, prefix: str, into: Path, home: Path) -> None:
    """rclone, configured by its environment only, copies `prefix` of the bucket into `into`."""
    rclone = require_tool("rclone")
    remote = {
        "TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": store.endpoint,
        "ACCESS_KEY_ID": store.access_key, "SECRET_ACCESS_KEY": store.secret_key,
        "REGION": store.region,
    }  # fmt: skip
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "NO_PROXY": "127.0.0.1,localhost",
        **{f"RCLONE_CONFIG_POSTBOX_{name}": value for name, value in remote.items()},
    }
    config = home / "rclone.conf"  # empty: never /dev/null, which rclone chmods 0600 on a save
    config.touch()
    done = subprocess.run(
        [rclone, "--config", str(config), "copy", f"postbox:{bucket}/{prefix}", str(into)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def require_root(why: str) -> None:
    """Skip unless root, except under CI=true, where not being root is a failure."""
    if os.geteuid() != 0:
        message = f"{why} needs root"
        if IN_CI:
            pytest.fail(message + "; under CI=true that is a failure")
        pytest.skip(message)


def require_rgw() -> None:
    """Skip without Ceph RGW's programs, except under CI=true, where their absence is a failure."""
    reason = rgw_available()
    if reason:
        if IN_CI:
            pytest.fail(reason + "; under CI=true a missing server is a failure")
        pytest.skip(reason)


_PACKAGES = {
    "cloud-init": "cloud-init",
    "systemd-analyze": "systemd",
    "shellcheck": "shellcheck",
    "curl": "curl",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout, as `python -m build` makes it (no network needed)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("s3_postbox-*.whl")
    return built


TEST_WHEELS = Path(os.environ.get("POSTBOX_TEST_WHEELS", ROOT / ".venv" / "test-wheels"))


@pytest.fixture(scope="session")
def test_wheels() -> Path:
    """The dependency wheels `make install` downloaded (tests/wheels.py): no test asks an index."""
    if not any(TEST_WHEELS.glob("*.whl")):
        message = f"no wheels in {TEST_WHEELS}: run make install (python -m tests.wheels)"
        if IN_CI:
            pytest.fail(message + "; under CI=true that is a failure")
        pytest.skip(message)
    return TEST_WHEELS


def build_wheelhouse(output: Path, agent: Path, *options: str) -> Path:
    """`postbox-issuer wheelhouse` with no package index: only the checkout's wheel and the
    wheels in TEST_WHEELS."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_NO_INDEX", "1")
        argv = ["wheelhouse", "--agent", str(agent), "--find-links", str(TEST_WHEELS)]
        assert issuer_main([*argv, *options, "-o", str(output)]) == 0
    return output


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, wheel: Path, test_wheels: Path) -> Path:
    """A wheelhouse of this checkout's agent for Python 3.9 and this machine's python3 (the
    first-boot machine's), on x86_64 and aarch64."""
    from tests.wheels import system_python  # noqa: PLC0415 (tests.wheels imports the issuer)

    pythons = sorted({"3.9", system_python() or "3.11"})
    options = [option for python in pythons for option in ("--python", python)]
    return build_wheelhouse(
        tmp_path_factory.mktemp("wheelhouse") / "wheelhouse.tar", wheel, *options
    )


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's POSTBOX_* settings, systemd socket or AWS profile."""
    for name in list(os.environ):
        if name.startswith(("POSTBOX_", "AWS_")) or name == "NOTIFY_SOCKET":
            monkeypatch.delenv(name)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254


@pytest.fixture(autouse=True)
def wait_socket(monkeypatch: pytest.MonkeyPatch, clean_environment: None) -> Iterator[Path]:
    """Each test's agents answer `wait` on a socket of their own, in a short path (a socket's
    must fit in 107 bytes: pytest's tmp_path may not)."""
    folder = Path(tempfile.mkdtemp(prefix="postbox-wait-"))
    path = folder / "wait.sock"
    monkeypatch.setenv("POSTBOX_WAIT_SOCKET", str(path))
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """moto's server: accepts every POST whatever its policy says, and its 201 has no body."""
    with moto_server(tmp_path_factory.mktemp("moto")) as store:
        yield store


@pytest.fixture(scope="session")
def rgw_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Ceph's RADOS Gateway: enforces POST policies, signatures and expiry as Amazon S3 does.
    Its storage classes: STANDARD and RGW_CLASS."""
    require_rgw()
    with rgw_server(tmp_path_factory.mktemp("rgw"), storage_classes=(RGW_CLASS,)) as store:
        yield store


@pytest.fixture(params=["moto", "rgw"])
def store(request: pytest.FixtureRequest) -> Store:
    """Each test that takes `store` runs against both servers."""
    return cast(Store, request.getfixturevalue(f"{request.param}_store"))


@pytest.fixture
def s3(store: Store) -> Any:
    return s3_client(store)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


GrantMaker = Callable[..., Path]
RGW_CLASS = "COLD"  # a storage class of rgw_store's besides STANDARD


@pytest.fixture
def make_grant(store: Store, bucket: str, tmp_path: Path) -> GrantMaker:
    """Sign a grant with `postbox-issuer grant` for the test's bucket; returns its path."""

    def make(prefix: str = "runs/1/", expires: str = "30m", *options: str) -> Path:
        path = tmp_path / f"grant-{uuid.uuid4().hex[:6]}.json"
        argv = ["grant", "--bucket", bucket, "--prefix", prefix, "--expires", expires]
        argv += ["--endpoint-url", store.endpoint, "--region", store.region, "-o", str(path)]
        assert issuer_main([*argv, *options]) == 0
        return path

    return make


@pytest.fixture
def put_grant(store: Store, bucket: str, tmp_path: Path) -> Callable[..., Path]:
    """A presigned PUT URL as a grant, from `postbox-issuer url put --format grant`."""

    def make(key: str, expires: str = "10m", *options: str) -> Path:
        path = tmp_path / "put-grant.json"
        argv = ["url", "put", "--bucket", bucket, "--key", key, "--expires", expires]
        argv += ["--endpoint-url", store.endpoint, "--region", store.region, "--format", "grant"]
        assert issuer_main([*argv, *options, "-o", str(path)]) == 0
        return path

    return make


def objects(s3: Any, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under `prefix`, read back whole, by key."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def with_url(grant: Path, url: str) -> Path:
    """The same signed grant, sent elsewhere (a fault proxy): the URL is not part of the policy."""
    document = json.loads(grant.read_text())
    document["url"] = url
    grant.write_text(json.dumps(document))
    return grant


# Secrets never reach what the agent and the issuer print. After the session, every grant the
# tests made is read back for its secrets (signature, security token, policy), and every output
# the tests captured (each test's stdout, stderr and log, and every agent's log file) is searched
# for them. moto's and Ceph's own logs are the servers', not ours, and are not searched.
_CAPTURED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _CAPTURED.extend(content for _, content in report.sections)


def _secrets_in(document: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(document, dict):
        for name, value in document.items():
            if isinstance(value, str) and name.lower() in SECRET_FIELDS and len(value) >= 16:
                found.add(value)
            found |= _secrets_in(value)
        for name in ("url", "renew"):  # a PUT grant's URL, a renewal URL
            url = document.get(name)
            if isinstance(url, str):
                found |= {m for m in re.findall(r"X-Amz-Signature=([0-9a-f]{16,})", url)}
    return found


SECRET_FIELDS = {"x-amz-signature", "x-amz-security-token", "policy", "signature"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    secrets: set[str] = set()
    for path in base.rglob("*.json"):
        if not path.is_file():  # a test may leave a FIFO at a grant's path: reading it blocks
            continue
        with contextlib.suppress(OSError, ValueError):
            secrets |= _secrets_in(json.loads(path.read_text()))
    outputs = [("captured output", text) for text in _CAPTURED]
    outputs += [(str(p), p.read_text(errors="replace")) for p in base.rglob("agent.log")]
    leaks = sorted({where for where, text in outputs for s in secrets if s in text})
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nsecrets of {len(secrets)} grant(s) found in: {', '.join(leaks)}")
    else:
        print(f"\nno secret of {len(secrets)} grant(s) in {len(outputs)} captured outputs")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Make `postbox-agent run` processes for the test; any still running at the end is killed."""
    started: list[AgentProcess] = []

    def make(grant: Path, **settings: str) -> AgentProcess:
        process = AgentProcess(tmp_path, grant, **settings)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.process.kill()
            process.process.wait()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """Mount a small tmpfs at a path (root only); unmounted at the end of the test."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        require_root("mounting a tmpfs")
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
        )
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(folder: Path) -> Path:
    """Write a file into `folder` until its file system is full (ENOSPC); returns the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler
