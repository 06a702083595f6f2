"""The pinned wheelhouse: `postbox-issuer wheelhouse`, `user-data --wheelhouse`, and the
installer's own checks of what it downloads.

No test here asks a package index: the wheelhouse is built from the checkout's wheel and the
wheels `make install` downloaded (tests/wheels.py), with PIP_NO_INDEX=1. The installer's
download, check and refusal run for real, against both servers, as an unprivileged user (each
case fails before it would touch the machine); tests/cloud_init/test_first_boot.py installs from
a wheelhouse for real, with no index reachable.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from demo.stores import Store
from issuer.cli import main
from issuer.errors import ExitCode
from tests.conftest import ROOT, build_wheelhouse, objects
from tests.issuer.test_userdata import cloud_init_schema

INSTALLER = ROOT / "cloud-init" / "install-agent.sh"
# The wheels the agent's lock must hold on every target (pip: the installer runs it from it).
NEEDED = {"s3_postbox", "pip", "pydantic_core", "pydantic_settings", "watchdog", "tenacity"}
NEEDED |= {"requests", "urllib3", "pathspec"}


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_each_target_gets_a_lock_that_pins_every_wheel_it_installs_by_hash(
    wheelhouse: Path,
) -> None:
    content = members(wheelhouse)
    locks = {
        name[6:-4]: text.decode() for name, text in content.items() if name.startswith("locks/")
    }
    assert {"cp39-x86_64", "cp39-aarch64"} <= set(locks)
    for tag, text in locks.items():
        python, arch = tag.split("-")
        pins = dict(re.findall(r"^(\S+)==\S+ --hash=sha256:([0-9a-f]{64})$", text, re.M))
        assert set(pins) >= NEEDED and len(pins) == len(text.splitlines())
        by_hash = {hashlib.sha256(data).hexdigest(): name for name, data in content.items()}
        wheels = {pins_name: by_hash[digest] for pins_name, digest in pins.items()}
        # The one compiled dependency: the wheel for this target's Python and machine.
        assert f"-{python}-{python}-" in wheels["pydantic_core"] and arch in wheels["pydantic_core"]
        assert all(name.startswith("wheels/") for name in wheels.values())
    # pydantic-settings dropped Python 3.9: each target's lock has its own resolution.
    newest = max(locks, key=lambda tag: (int(tag[3:].split("-")[0]), tag))
    assert newest != "cp39-x86_64" and locks["cp39-x86_64"] != locks[newest]


def test_the_same_wheels_give_the_same_archive(
    wheelhouse: Path, wheel: Path, tmp_path: Path, test_wheels: Path
) -> None:
    """Reproducible: names sorted, no times, owners or modes from the machine that built it."""
    again = build_wheelhouse(tmp_path / "again.tar", wheel, "--python", "3.9")
    with tarfile.open(again) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "", 0o644)}
    assert (
        again.read_bytes()
        == build_wheelhouse(tmp_path / "third.tar", wheel, "--python", "3.9").read_bytes()
    )


def test_a_target_with_no_wheels_is_named_and_nothing_is_written(
    wheel: Path,
    tmp_path: Path,
    test_wheels: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    out = tmp_path / "w.tar"
    argv = ["wheelhouse", "--agent", str(wheel), "--find-links", str(test_wheels), "-o", str(out)]
    assert (
        main([*argv, "--python", "3.9", "--python", "3.12", "--arch", "x86_64"]) == ExitCode.INPUT
    )
    error = capsys.readouterr().err
    assert "no wheels for cp312-x86_64 (Python 3.12 on x86_64)" in error and not out.exists()
    assert main([*argv, "--python", "2.7"]) == ExitCode.INPUT
    assert "--python '2.7' is not a CPython version from 3.9 on" in capsys.readouterr().err


def render(tmp_path: Path, store: Store, grant: Path, *options: str) -> dict[str, Any]:
    out = tmp_path / "user-data"
    aws = ["--endpoint-url", store.endpoint, "--region", store.region]
    assert main(["user-data", "--grant", str(grant), *aws, *options, "-o", str(out)]) == 0
    return dict(yaml.safe_load(out.read_text()))


def test_user_data_uploads_the_wheelhouse_beside_the_data_and_hands_vms_a_signed_url(
    store: Store,
    s3: Any,
    bucket: str,
    make_grant: Any,
    tmp_path: Path,
    wheelhouse: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sha256 = hashlib.sha256(wheelhouse.read_bytes()).hexdigest()
    config = render(tmp_path, store, make_grant(), "--wheelhouse", str(wheelhouse))
    source, url, named = config["runcmd"][0][4:]
    assert (source, named) == ("wheelhouse", sha256)
    key = f"postbox/wheelhouse-{sha256}.tar"
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"sha256": sha256}
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=604800" in url
    answer = requests.get(url, timeout=30)  # what the VM does, with no credentials
    assert answer.status_code == 200 and hashlib.sha256(answer.content).hexdigest() == sha256
    assert "the wheelhouse URL expires at" in capsys.readouterr().err
    # Idempotent: the same bytes are not uploaded again.
    modified = s3.head_object(Bucket=bucket, Key=key)["LastModified"]
    render(tmp_path, store, make_grant(), "--wheelhouse", str(wheelhouse))
    assert s3.head_object(Bucket=bucket, Key=key)["LastModified"] == modified
    assert set(objects(s3, bucket)) == {key}


def test_user_data_puts_the_wheelhouse_in_the_store_the_grant_records(
    store: Store, s3: Any, bucket: str, make_grant: Any, tmp_path: Path, wheelhouse: Path
) -> None:
    """No --endpoint-url nor --region: the grant's URL and its signature's scope say where
    its bucket is (here the test's store, not AWS, which this machine cannot reach)."""
    sha256 = hashlib.sha256(wheelhouse.read_bytes()).hexdigest()
    out = tmp_path / "user-data"
    argv = ["user-data", "--grant", str(make_grant()), "--wheelhouse", str(wheelhouse)]
    assert main([*argv, "-o", str(out)]) == 0
    source, url, _ = yaml.safe_load(out.read_text())["runcmd"][0][4:]
    assert source == "wheelhouse" and url.startswith(f"{store.endpoint}/")
    assert f"postbox/wheelhouse-{sha256}.tar" in objects(s3, bucket)


def test_a_wheelhouse_where_instances_may_write_or_with_another_source_is_refused(
    store: Store,
    make_grant: Any,
    tmp_path: Path,
    wheelhouse: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    grant = str(make_grant("runs/1/"))
    argv = [
        "user-data",
        "--grant",
        grant,
        "--endpoint-url",
        store.endpoint,
        "--region",
        store.region,
    ]
    argv += ["--wheelhouse", str(wheelhouse)]
    assert main([*argv, "--wheelhouse-key", "runs/1/w.tar"]) == ExitCode.INPUT
    assert "where every instance may write (the grant's 'runs/1/')" in capsys.readouterr().err
    assert main([*argv, "--index-url", "https://pypi.example.com/simple"]) == ExitCode.INPUT
    assert "drop --agent-wheel and --index-url" in capsys.readouterr().err
    assert main([*argv, "--wheelhouse-expires", "8d"]) == ExitCode.INPUT
    assert "over 7d, a SigV4 URL's limit" in capsys.readouterr().err
    assert main([*argv[:-2], "--wheelhouse-url", "https://cdn.example.com/w.tar"]) == ExitCode.INPUT
    assert "--wheelhouse-url and --wheelhouse-key need --wheelhouse FILE" in capsys.readouterr().err
    not_a_wheelhouse = tmp_path / "w.tar"
    not_a_wheelhouse.write_bytes(b"not a tar")
    assert main([*argv[:-1], str(not_a_wheelhouse)]) == ExitCode.INPUT
    assert (
        "is not a tar archive: build one with postbox-issuer wheelhouse" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "source",
    [
        [],
        ["--index-url", "https://pypi.example.com/simple"],
        ["--agent-wheel", "https://example.com/s3_postbox-0.1.0-py3-none-any.whl"],
        ["--wheelhouse", "WHEELHOUSE"],
        [
            "--wheelhouse",
            "WHEELHOUSE",
            "--wheelhouse-url",
            "https://d111.cloudfront.net/w.tar?Expires=1&Signature="
            + "A" * 344
            + "&Key-Pair-Id=K2JCJMDEHXQW5F",
        ],
    ],
    ids=["index", "index-url", "agent-wheel", "wheelhouse", "wheelhouse-url"],
)
@pytest.mark.parametrize("renews", [False, True], ids=["grant", "renewing-grant"])
@pytest.mark.parametrize("store", ["moto"], indirect=True)  # the schema is the same on both
def test_every_install_source_is_valid_cloud_config_within_ec2s_limit(
    source: list[str],
    renews: bool,
    store: Store,
    bucket: str,
    make_grant: Any,
    tmp_path: Path,
    wheelhouse: Path,
) -> None:
    if renews:
        grant = tmp_path / "grant.json"
        argv = ["renew", "--bucket", bucket, "--prefix", "fleet/", "--expires", "6h"]
        argv += ["--publish", f"s3://{bucket}/grants/fleet.json", "--endpoint-url", store.endpoint]
        assert main([*argv, "--region", store.region, "-o", str(grant)]) == 0
    else:
        grant = make_grant()
    options = [str(wheelhouse) if o == "WHEELHOUSE" else o for o in source]
    options += ["--after-upload", "delete", "--watch-dir", "/data/results-of-the-nightly-batch"]
    render(tmp_path, store, grant, *options)
    out = tmp_path / "user-data"
    result = cloud_init_schema(out)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout
    assert out.stat().st_size <= 16384  # plain, not gzipped: every variant fits as it is


def run_installer(url: str, sha256: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The user-data's installer in wheelhouse mode, as nobody when root: each case here fails
    before it would create a venv, a user or a unit. Nobody runs a copy in a folder it may
    read: the checkout may lie in a private one (a clone in `mktemp -d`, mode 0700)."""
    with tempfile.TemporaryDirectory(prefix="postbox-installer-", dir="/var/tmp") as folder:
        os.chmod(folder, 0o755)  # noqa: S103  (nobody must read the copy in it)
        installer = Path(folder) / "install-agent"
        shutil.copyfile(INSTALLER, installer)
        installer.chmod(0o644)
        argv = ["sh", str(installer), str(tmp_path / "spool"), str(tmp_path / "state")]
        argv += [str(tmp_path / "grant.json"), "wheelhouse", url, sha256]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        environment = {"PATH": os.environ["PATH"], "HOME": folder, "NO_PROXY": "127.0.0.1"}
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environment)


def publish(s3: Any, bucket: str, key: str, data: bytes, expires: int = 600) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return str(
        s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
    )


def test_the_installer_refuses_a_wheelhouse_that_is_not_the_one_the_user_data_names(
    s3: Any, bucket: str, tmp_path: Path, wheelhouse: Path
) -> None:
    data = wheelhouse.read_bytes()
    tampered = data[:-1024] + b"x" * 1024
    result = run_installer(
        publish(s3, bucket, "w.tar", tampered), hashlib.sha256(data).hexdigest(), tmp_path
    )
    assert result.returncode != 0
    assert (
        "SHA-256 is not the one in the user-data" in result.stderr
        and "nothing installed" in result.stderr
    )
    assert "X-Amz-Signature" not in result.stderr  # the log names the wheelhouse without its query


def test_the_installer_opens_only_wheels_and_locks(s3: Any, bucket: str, tmp_path: Path) -> None:
    """A hash only proves the archive is the operator's: it still may not write outside."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("wheels/../../../etc/cron.d/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    data = buffer.getvalue()
    result = run_installer(
        publish(s3, bucket, "w.tar", data), hashlib.sha256(data).hexdigest(), tmp_path
    )
    assert result.returncode != 0 and "not a wheelhouse" in result.stderr


def test_the_installer_names_the_locks_when_none_is_for_this_instance(
    s3: Any, bucket: str, tmp_path: Path, wheel: Path, test_wheels: Path
) -> None:
    foreign = build_wheelhouse(tmp_path / "arm.tar", wheel, "--python", "3.9", "--arch", "aarch64")
    data = foreign.read_bytes()
    result = run_installer(
        publish(s3, bucket, "w.tar", data), hashlib.sha256(data).hexdigest(), tmp_path
    )
    assert result.returncode != 0
    assert "has no lock for this instance's Python 3.9+" in result.stderr
    assert "only for: cp39-aarch64; build it with that --python and --arch" in result.stderr


def test_the_installer_says_an_expired_wheelhouse_url_is_why(
    rgw_store: Store, tmp_path: Path, wheelhouse: Path
) -> None:
    """RGW refuses a presigned GET past its X-Amz-Expires (403), as S3 does; moto serves it."""
    from demo.stores import s3_client  # noqa: PLC0415

    s3 = s3_client(rgw_store)
    bucket = f"expired-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    url = publish(s3, bucket, "w.tar", b"tiny", expires=1)
    time.sleep(2.5)  # past the URL's one second: the store's verdict, not a race
    result = run_installer(url, hashlib.sha256(b"tiny").hexdigest(), tmp_path)
    assert result.returncode != 0
    assert "refused the wheelhouse URL (403): it has expired or was revoked" in result.stderr
