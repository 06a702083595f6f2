"""`make demo`: the whole path on one machine, with moto's S3 server on 127.0.0.1 as the store.

issuer grant -> issuer user-data -> (as cloud-init would) the files it writes, under a temporary
root -> the agent started from exactly those files (the unit's ExecStart, its env file, its grant)
-> a batch job dropping files -> the objects that landed, with sizes and MD5s. Everything it
starts, it stops. Needs the test extras (moto[server]); not part of the agent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from demo.stores import CREDENTIALS, Store, StoreUnavailable, moto_server, rgw_server, s3_client
from demo.systemd import NotifyListener

BIN = Path(sys.executable).parent
VM_AGENT = "/opt/postbox/bin/postbox-agent"


def lay_out(user_data: str, root: Path) -> list[Any]:
    """Write the user-data's `write_files` under `root` as cloud-init would; return its runcmd."""
    config = yaml.safe_load(user_data)
    for entry in config["write_files"]:
        target = root / entry["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["content"], encoding="utf-8")
        target.chmod(int(entry.get("permissions", "0644"), 8))
    return list(config.get("runcmd", []))


def exec_start(unit: Path) -> list[str]:
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.split("=", 1)[1])
    raise ValueError(f"{unit} has no ExecStart=")


def agent_command(root: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's command and environment, with the VM's paths mapped under `root`.

    Only the paths move: the env file the user-data wrote is read as it is, and the POSTBOX_*
    variables that point into the VM's filesystem are pointed into `root` instead.
    """
    command = exec_start(root / "etc/systemd/system/postbox-agent.service")
    assert command[0] == VM_AGENT, command
    command[0] = str(BIN / "postbox-agent")
    env_file = root / "etc/postbox/agent.env"
    env = {"POSTBOX_ENV_FILE": str(env_file)}
    instance_data = root / "run/cloud-init/instance-data.json"  # cloud-init writes it at boot
    if instance_data.exists():
        env["POSTBOX_INSTANCE_DATA"] = str(instance_data)
    for line in env_file.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        if name.endswith(("_DIR", "_FILE")) and value.startswith("/"):
            env[name] = str(root / value.lstrip("/"))
    # The unit's RuntimeDirectory, where `wait` asks: under `root` too.
    env["POSTBOX_WAIT_SOCKET"] = str(root / "run/postbox/wait.sock")
    Path(env["POSTBOX_WAIT_SOCKET"]).parent.mkdir(parents=True, exist_ok=True)
    if "POSTBOX_METRICS_FILE" in env:  # the installer makes node_exporter's folder
        Path(env["POSTBOX_METRICS_FILE"]).parent.mkdir(parents=True, exist_ok=True)
    return command, env


def run(cmd: list[str], env: Optional[dict[str, str]] = None) -> None:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})


def write_batch(watch: Path) -> dict[str, bytes]:
    """What a batch job does: nested result files, one written slowly, one via a temporary name."""
    files = {
        "summary.csv": b"run,status\n42,ok\n",
        "results/2026/part-0001.bin": os.urandom(3 * 1024 * 1024 + 17),
        "results/2026/part-0002.bin": os.urandom(256 * 1024),
        "logs/slow.log": b"".join(b"line %04d\n" % i for i in range(40)),
        "report.json": b'{"ok": true}\n',
    }
    for name in ("summary.csv", "results/2026/part-0001.bin", "results/2026/part-0002.bin"):
        target = watch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[name])
    slow = watch / "logs/slow.log"
    slow.parent.mkdir(parents=True, exist_ok=True)
    with slow.open("wb") as out:  # open for 2 s: must be sent once, complete
        for i in range(0, len(files["logs/slow.log"]), 40):
            out.write(files["logs/slow.log"][i : i + 40])
            out.flush()
            time.sleep(0.2)
    temporary = watch / ".report.json.part"
    temporary.write_bytes(files["report.json"])
    time.sleep(1)  # the temporary name is ignored...
    temporary.rename(watch / "report.json")  # ...until it is renamed into place
    return files


def landed(store: Store, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    s3 = s3_client(store)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: (o["Size"], o["ETag"].strip('"')) for o in listing}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--s3", choices=("moto", "rgw"), default="moto", help="the local store")
    args = parser.parse_args(argv)
    os.environ.update(CREDENTIALS)
    work = Path(tempfile.mkdtemp(prefix="postbox-demo-"))
    print(f"demo: working in {work}")
    server = moto_server if args.s3 == "moto" else rgw_server
    try:
        with server(work / args.s3) as store:
            print(f"demo: {store.kind} S3 server at {store.endpoint}")
            return demo(store, work)
    except StoreUnavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


DEMO_INSTANCE = "i-0de30000000000001"


def demo(store: Store, work: Path) -> int:
    bucket, prefix, endpoint = "postbox-demo", "runs/demo-0001/", store.endpoint
    root = work / "vm"
    s3_client(store).create_bucket(Bucket=bucket)
    grant, user_data = work / "grant.json", work / "user-data.yaml"
    run([str(BIN / "postbox-issuer"), "grant", "--bucket", bucket, "--prefix", prefix,
         "--expires", "30m", "--max-size", "10MiB", "--endpoint-url", endpoint,
         "-o", str(grant)])  # fmt: skip
    run([str(BIN / "postbox-issuer"), "user-data", "--grant", str(grant),
         "--settle-seconds", "1", "-o", str(user_data)])  # fmt: skip
    print(f"demo: user-data is {user_data.stat().st_size} bytes")
    runcmd = lay_out(user_data.read_text(encoding="utf-8"), root)
    print(f"demo: laid out the user-data's files under {root} (runcmd would run {runcmd[0][0]})")
    (root / "var/spool/postbox").mkdir(parents=True)  # what the installer does on a VM
    instance_data = root / "run/cloud-init/instance-data.json"  # and what cloud-init writes
    instance_data.parent.mkdir(parents=True)
    instance_data.write_text(json.dumps({"v1": {"instance_id": DEMO_INSTANCE}}))
    prefix += f"{DEMO_INSTANCE}/"  # the user-data's default key segment, {instance_id}/
    command, env = agent_command(root)
    listener = NotifyListener(work / "notify.sock")
    env["NOTIFY_SOCKET"] = str(listener.path)
    print("$", " ".join(f"{k}={v}" for k, v in env.items()), " ".join(command), flush=True)
    agent = subprocess.Popen(command, env={**os.environ, **env})
    try:
        if not listener.wait_for("READY=1", 30):
            raise RuntimeError("the agent did not report READY=1 within 30 s")
        print("demo: the agent reported READY=1; a batch job now writes its results")
        files = write_batch(root / "var/spool/postbox")
        print("demo: the job ends as a batch job should, waiting until its results are stored")
        waited = subprocess.run(
            [str(BIN / "postbox-agent"), "wait", "--timeout", "60s"],
            check=False,
            env={**os.environ, **env},
        )
        print(f"demo: postbox-agent wait exited {waited.returncode}")
        time.sleep(1)  # anything sent twice would show up now
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        listener.close()
    print(f"demo: the agent stopped on SIGTERM with exit code {code}")
    objects = landed(store, bucket, prefix)
    print(f"\nobjects in s3://{bucket}/{prefix}")
    print(f"  {'key':<30} {'bytes':>9}  {'md5 (ETag)':<32}  matches")
    ok = code == 0 and waited.returncode == 0 and set(objects) == set(files)
    for name, content in sorted(files.items()):
        size, etag = objects.get(name, (0, "-"))
        same = etag == hashlib.md5(content).hexdigest()  # noqa: S324  (S3's ETag is the MD5)
        ok = ok and same and size == len(content)
        print(f"  {name:<30} {size:>9}  {etag:<32}  {'yes' if same else 'NO'}")
    print("\ndemo: OK, every file landed once and complete" if ok else "\ndemo: FAILED")
    print(f"demo: the grant, the user-data and the agent's files are kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
