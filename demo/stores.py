"""Local S3 servers on 127.0.0.1 for `make demo`, the tests and the benchmarks: moto's server,
and Ceph's RADOS Gateway, which enforces POST policies as Amazon S3 does (moto accepts every POST).

Each is a context manager that starts its processes, yields a `Store`, and stops exactly the
processes it started, whatever happened in between. `s3_client` is the operator's view of one.
"""

from __future__ import annotations

import base64
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import boto3

# The local servers' fixed test user, for boto3 and the issuer's environment.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

RGW_PACKAGES = "radosgw ceph-mon ceph-osd ceph-common"
RGW_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


@dataclass(frozen=True)
class Store:
    kind: str  # "moto" or "rgw"
    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"  # noqa: S105  (the local servers' fixed test user)
    region: str = "us-east-1"


class StoreUnavailable(RuntimeError):
    """The server's programs are not installed; the message says how to install them."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unused_low_port() -> int:
    """A port below the kernel's range for outgoing connections that nothing listens on."""
    for _ in range(200):
        port = random.randint(20000, 31999)  # noqa: S311  (not for security)
        if not _listening(port):
            return port
    raise RuntimeError("no free port found in 20000-31999")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _wait(what: str, ready: Callable[[], bool], processes: list[Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for process in processes:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited while starting; its log: {process.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 10) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _launch(name: str, command: list[str], log: Path) -> Process:
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Process(name, popen, log)


@contextlib.contextmanager
def moto_server(directory: Path) -> Iterator[Store]:
    """moto's S3 server in its own process."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _launch(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        directory / "moto.log",
    )  # fmt: skip
    try:
        _wait("moto's server", lambda: _listening(port), [process], 30)
        yield Store("moto", f"http://127.0.0.1:{port}")
    finally:
        process.stop()


def rgw_available() -> Optional[str]:
    """None when Ceph RGW can run here, else the one-line reason it cannot."""
    missing = [tool for tool in RGW_TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"Ceph RGW is not installed ({', '.join(missing)} missing): "
            f"apt-get install --no-install-recommends {RGW_PACKAGES}"
        )
    return None


@contextlib.contextmanager
def rgw_server(
    directory: Path,
    timeout: float = 60,
    store_bytes: int = 1024**3,
    *,
    on_disk: bool = False,
    storage_classes: tuple[str, ...] = (),
) -> Iterator[Store]:
    """A throwaway Ceph cluster: one monitor, one OSD, one gateway, no cephx.

    Everything lives in `directory` and listens on 127.0.0.1. Start-up takes a few seconds. The
    OSD keeps objects in memory, at most `store_bytes` of them; `on_disk`, in a sparse file of
    that size in `directory` instead (bluestore: slower to start, and for the benchmark of a file
    larger than memory can hold beside its copy). `storage_classes`: more than STANDARD, each
    one stored in its own pool.
    """
    reason = rgw_available()
    if reason:
        raise StoreUnavailable(reason)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("mon.a", "osd.0", "run", "crash", "rgw"):
        (directory / name).mkdir(exist_ok=True)
    port, mon_port = _unused_low_port(), _unused_low_port()
    conf = directory / "ceph.conf"
    conf.write_text(
        _ceph_conf(directory, port, mon_port, uuid.uuid4(), store_bytes, on_disk=on_disk)
    )
    fsid = conf.read_text().split("fsid = ", 1)[1].split("\n", 1)[0]
    started: list[Process] = []
    setup_log = directory / "setup.log"

    def setup(*command: str) -> None:
        with setup_log.open("ab") as out:
            subprocess.run(
                [command[0], "-c", str(conf), *command[1:]], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, check=True, timeout=timeout,
            )  # fmt: skip

    def daemon(*command: str) -> None:
        log = directory / f"{command[0]}.out"
        started.append(_launch(command[0], [command[0], "-c", str(conf), "-f", *command[1:]], log))

    try:
        monmap = str(directory / "monmap")
        subprocess.run(
            ["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
             f"[v2:127.0.0.1:{mon_port}]", monmap],
            capture_output=True, check=True, timeout=timeout,
        )  # fmt: skip
        setup("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        daemon("ceph-mon", "-i", "a")
        _wait("ceph-mon", lambda: _listening(mon_port), started, timeout)
        osd_uuid = str(uuid.uuid4())
        setup("ceph", "osd", "new", osd_uuid)
        setup("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        daemon("ceph-osd", "-i", "0")
        daemon("radosgw", "-n", "client.rgw")
        _wait("radosgw", lambda: _answers_http(port), started, timeout)
        setup("radosgw-admin", "user", "create", "--uid=testing", "--display-name=testing",
              "--access-key=testing", "--secret=testing")  # fmt: skip
        if storage_classes:  # the gateway reads its placement at start: added, then restarted
            for name in storage_classes:
                setup("radosgw-admin", "zonegroup", "placement", "add", "--rgw-zonegroup=default",
                      "--placement-id=default-placement", f"--storage-class={name}")  # fmt: skip
                setup("radosgw-admin", "zone", "placement", "add", "--rgw-zone=default",
                      "--placement-id=default-placement", f"--storage-class={name}",
                      f"--data-pool=default.rgw.{name.lower()}.data")  # fmt: skip
            started.pop().stop()
            daemon("radosgw", "-n", "client.rgw")
            _wait("radosgw", lambda: _answers_http(port), started, timeout)
        yield Store("rgw", f"http://127.0.0.1:{port}")
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"Ceph set-up step {exc.cmd[0]} failed; its log: {setup_log}") from None
    finally:
        for process in reversed(started):  # gateway, then OSD, then monitor
            process.stop()


def _answers_http(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            sock.settimeout(5)
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


KMS_KEY_ID = "postbox-test-key"  # SSE-KMS's key id on the test RGW (and any on moto)
_KMS_KEY = base64.b64encode(bytes(range(32))).decode()  # a test key: 32 bytes, AES-256


def _ceph_conf(
    directory: Path, port: int, mon_port: int, fsid: uuid.UUID, store_bytes: int, *, on_disk: bool
) -> str:
    """The settings that matter for a one-node test cluster (shared/s3-rgw's recipe).

    `tcp_nodelay=1`: without it RGW's web server holds back small writes (Nagle), and a client
    that sends one request after another waits about 48 ms for each answer, a stall Amazon S3
    does not have; the tests and benchmarks measure the agent, not that."""
    store = (
        f"osd objectstore = bluestore\nbluestore block size = {store_bytes}\n"
        "bluestore fsck on mkfs = false\nosd memory target = 1073741824"
        if on_disk
        else f"osd objectstore = memstore\nmemstore device bytes = {store_bytes}"
    )
    return f"""[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
run dir = {directory}/run
crash dir = {directory}/crash
log file = {directory}/$name.log
mon cluster log file = {directory}/cluster.log
mon data = {directory}/mon.$id
osd data = {directory}/osd.$id
{store}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
mon data avail crit = 0
mon data avail warn = 0
paxos propose interval = 0.02
paxos min wait = 0.01
mon warn on insecure global id reclaim allowed = false

[client]
# re-check the OSD map often: radosgw may start before the OSD is up
objecter tick interval = 0.5

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{port} tcp_nodelay=1
rgw data = {directory}/rgw
rgw thread pool size = 64
# SSE-KMS with a key held in the configuration (the "testing" backend; no KMS server), over
# plain HTTP on 127.0.0.1: the tests store parts under aws:kms with the key id `{KMS_KEY_ID}`
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = {KMS_KEY_ID}={_KMS_KEY}
rgw crypt require ssl = false
"""


def s3_client(store: Store) -> Any:
    """The operator's view of the store: a boto3 client with the local test user."""
    return boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name=store.region,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
    )
