"""A throwaway machine for first-boot tests: systemd as PID 1 over an overlay of this machine.

`Machine` starts systemd in new mount, PID, UTS and cgroup namespaces, chrooted into an overlay
whose lower layer is this machine's root and whose upper layer is a tmpfs: everything the
machine writes (users, /etc, /opt, /var) vanishes when it stops, and this machine's files are
never touched. The kernel, the network namespace (so 127.0.0.1 is this machine's, where the test
S3 server listens) and the CPU are shared; /proc/sys and /sys are read-only inside.

systemd loads units only from the machine's /etc/systemd/system (emptied of this machine's
enablement links) and from a directory of stand-in targets written here, so it starts nothing but
what a test asks for: journald, cloud-init's four stages on the seeded user-data (NoCloud, only
the write_files, runcmd and scripts_user modules, network configuration off), and whatever the
user-data's runcmd starts; and `systemctl poweroff`, which stops every unit, then the machine.
That is the part of a first boot (and of a last shutdown) s3-postbox relies on; the rest of a
real boot (udev, networking, getty) is not here.

Needs root (namespaces, mounts) and util-linux's `unshare` and `nsenter`.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/system"
STAND_INS = "/run/postbox-vm/units"
CLOUD_CFG = """\
datasource_list: [NoCloud]
network: {config: disabled}
cloud_init_modules: [write_files]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts_user]
"""
FIRST_BOOT = """\
[Unit]
Description=cloud-init's four stages on the seeded user-data
DefaultDependencies=no
Wants=systemd-journald.socket
After=systemd-journald.socket

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=900
ExecStart=/usr/bin/cloud-init init --local
ExecStart=/usr/bin/cloud-init init
ExecStart=/usr/bin/cloud-init modules --mode=config
ExecStart=/usr/bin/cloud-init modules --mode=final
"""
# What `systemctl poweroff` starts: every unit stopped (in the reverse order of their start),
# then systemd's own end, which in a PID namespace ends the namespace.
POWER_OFF = (
    "poweroff.target",
    "systemd-poweroff.service",
    "shutdown.target",
    "umount.target",
    "final.target",
)
TARGETS = ("sysinit", "basic", "sockets", "network", "network-online", "multi-user", "paths")

# Runs as PID 1's parent in the new namespaces, then becomes systemd. $1: the layers' mount point,
# $2: a directory whose tree is copied over the machine's root before it boots, $3 and on: paths
# (globs) removed from the machine's root first.
BOOT = r"""
set -eu
layers="$1"; seed="$2"; shift 2
mount --make-rprivate /
mount -t tmpfs -o mode=0700 tmpfs "$layers"
mkdir "$layers/upper" "$layers/work" "$layers/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$layers/root"
root="$layers/root"
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
rm -rf "$root/etc/systemd/system" "$root/var/lib/cloud" "$root/etc/cloud/cloud.cfg.d"
mkdir -p "$root/etc/systemd/system" "$root/etc/cloud/cloud.cfg.d"
for path in "$@"; do
    for found in "$root"$path; do rm -rf "$found"; done
done
cp -a "$seed/." "$root/"
hostname postbox-vm
exec chroot "$root" /usr/bin/env -i container=postbox-vm \
    SYSTEMD_UNIT_PATH="/etc/systemd/system:/run/postbox-vm/units" \
    /lib/systemd/systemd --system --unit=postbox-vm.target --log-target=journal-or-kmsg \
    --show-status=no
"""


class Machine:
    """A booted throwaway machine; use as a context manager. See the module's docstring."""

    def __init__(
        self,
        workdir: Path,
        user_data: str,
        files: dict[str, Path | str] | None = None,
        remove: tuple[str, ...] = (),
    ) -> None:
        """`files`: the machine's path and the file to copy there, or its text; `remove`: paths
        (globs) of this machine's that the booted one does not have."""
        self.workdir = workdir
        self.seed = workdir / "seed"
        self.remove = remove
        self._lay_seed(user_data, files or {})
        self.cgroup = _cgroup2_root() / f"postbox-vm-{os.getpid()}-{id(self)}"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0  # systemd's PID, as this machine sees it

    def _lay_seed(self, user_data: str, files: dict[str, Path | str]) -> None:
        nocloud = self.seed / "var/lib/cloud/seed/nocloud"
        nocloud.mkdir(parents=True)
        (nocloud / "user-data").write_text(user_data)
        (nocloud / "meta-data").write_text("instance-id: postbox-vm\nlocal-hostname: postbox-vm\n")
        (self.seed / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
        (self.seed / "etc/cloud/cloud.cfg.d/99-postbox-vm.cfg").write_text(CLOUD_CFG)
        units = self.seed / STAND_INS.lstrip("/")
        units.mkdir(parents=True)
        for name in TARGETS:
            (units / f"{name}.target").write_text(
                f"[Unit]\nDescription=stand-in for {name}.target\nDefaultDependencies=no\n"
            )
        for name in ("systemd-journald.service", "systemd-journald.socket",
                     "systemd-journald-dev-log.socket", *POWER_OFF):  # fmt: skip
            (units / name).write_bytes(Path(SYSTEMD, name).read_bytes())
        (units / "postbox-first-boot.service").write_text(FIRST_BOOT)
        (units / "postbox-vm.target").write_text(
            "[Unit]\nDescription=first boot\nDefaultDependencies=no\n"
            "Wants=systemd-journald.service postbox-first-boot.service\n"
        )
        for vm_path, source in files.items():
            target = self.seed / vm_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, str):
                target.write_text(source)
            else:
                target.write_bytes(source.read_bytes())
            target.chmod(0o755 if vm_path.startswith("/usr/local/bin/") else 0o644)

    def __enter__(self) -> Machine:
        layers = self.workdir / "layers"
        layers.mkdir()
        boot = self.workdir / "boot.sh"
        boot.write_text(BOOT)
        self.cgroup.mkdir()
        log = (self.workdir / "boot.log").open("wb")
        # Into the machine's own cgroup first: unshare --cgroup makes it the machine's root.
        enter = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        unshare = ["unshare", "--mount", "--uts", "--pid", "--fork", "--cgroup", "--kill-child"]
        self.process = subprocess.Popen(
            [
                "sh",
                "-c",
                enter,
                str(self.cgroup),
                *unshare,
                "sh",
                str(boot),
                str(layers),
                str(self.seed),
                *self.remove,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            self.pid = self._find_systemd()
            self.wait_for("systemctl show --property=Version >/dev/null", 30)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _find_systemd(self) -> int:
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the machine did not boot: {self.boot_log()}")
            for pid in _pids(self.cgroup):
                try:
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if exe.endswith("/systemd") and Path(f"/proc/{pid}/root").resolve() != Path("/"):
                    return pid
            time.sleep(0.1)
        raise RuntimeError(f"systemd did not start in the machine: {self.boot_log()}")

    def boot_log(self) -> str:
        return (self.workdir / "boot.log").read_text(errors="replace")[-2000:]

    def run(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`command` run by sh inside the machine, as root."""
        namespaces = ["--mount", "--uts", "--pid", "--cgroup", "--root", "--wd"]
        return subprocess.run(
            ["nsenter", "--target", str(self.pid), *namespaces, "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )

    def check(self, command: str, *, timeout: float = 60) -> str:
        result = self.run(command, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(
                f"in the machine, {command!r} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def wait_for(self, command: str, seconds: float) -> None:
        """Until `command` succeeds in the machine, at most `seconds` (then AssertionError)."""
        deadline = time.monotonic() + seconds
        while True:
            if self.run(command).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"in the machine, {command!r} did not succeed in {seconds}s")
            time.sleep(0.5)

    def gone(self, seconds: float) -> bool:
        """The machine has powered off (its systemd ended), within `seconds`."""
        assert self.process is not None
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def journal(self, unit: str) -> str:
        return self.run(f"journalctl --no-pager -o cat -u {shlex.quote(unit)}").stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.pid:
                os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: takes all with it
            self.process.kill()
            self.process.wait(timeout=30)
        _remove_cgroup(self.cgroup)


def _pids(cgroup: Path) -> list[int]:
    """Every process in `cgroup` and below (systemd moves itself into init.scope)."""
    pids = []
    for procs in cgroup.rglob("cgroup.procs"):
        try:
            pids += [int(line) for line in procs.read_text().split()]
        except OSError:
            continue
    return pids


def _cgroup2_root() -> Path:
    """Where this machine mounts the unified (v2) cgroup hierarchy."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise RuntimeError("no cgroup2 hierarchy is mounted: the machine's systemd needs one")


def _remove_cgroup(cgroup: Path) -> None:
    """Remove the machine's cgroup tree, leaves first, once its processes are gone."""
    if not cgroup.exists():
        return
    deadline = time.monotonic() + 10
    for directory in sorted((p for p in cgroup.rglob("*") if p.is_dir()), reverse=True):
        _rmdir(directory, deadline)
    _rmdir(cgroup, deadline)


def _rmdir(directory: Path, deadline: float) -> None:
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
