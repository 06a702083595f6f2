"""A pinned wheelhouse: the agent's wheel and everything it imports, for each Python and machine a
fleet's images run, so that no instance asks a package index at boot.

`build` runs `pip download` once per target (a CPython version and a machine: the wheels pip
would pick on that target, glibc 2.28 or newer) and writes one archive, a reproducible tar
(names sorted, times, owners and modes fixed: the same wheels give the same bytes):

    wheels/FILE.whl          every wheel any target needs, once
    locks/cp311-x86_64.txt   one per target: NAME==VERSION --hash=sha256:HEX for each wheel it
                             installs, pip among them (the installer runs pip from its wheel)

The user-data names the archive's SHA-256; cloud-init/install-agent.sh checks it before it opens
the archive, picks the lock for the instance's own Python and machine, and installs with
`pip install --no-index --require-hashes`. The resolution may differ per target (a package that
dropped Python 3.9 is pinned older there), which is why each target has a lock of its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from agent.grant import parse_grant
from issuer.aws import aws_errors, object_metadata
from issuer.errors import InputError
from issuer.signer import Signer
from issuer.units import format_duration
from issuer.urls import MAX_PRESIGNED_SECONDS, presigned_url
from issuer.userdata import index_source, wheelhouse_source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")  # the agent's requires-python, and on
ARCHES = ("x86_64", "aarch64")
# The oldest glibc a wheel may need: RHEL 8 and its rebuilds, Debian 10, Ubuntu 20.04 (Amazon
# Linux 2023 has 2.34). pip takes an exact platform tag, so the legacy manylinux2014 (glibc 2.17)
# name is given too: some projects tag their wheels with it alone.
PLATFORMS = ("manylinux_2_28_{arch}", "manylinux2014_{arch}")
MAX_ARCHIVE = 512 * 1024**2  # the installer refuses a larger download; so does the issuer
_WHEEL_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)-.+\.whl$")
_PYTHON = re.compile(r"^3\.(9|[1-9][0-9])$")


@dataclass(frozen=True)
class Target:
    """Where an instance runs the agent: a CPython version and a machine (`uname -m`)."""

    python: str  # "3.11"
    arch: str  # "x86_64"

    @property
    def tag(self) -> str:
        """The lock's name, as the installer spells the instance's own: cp311-x86_64."""
        return f"cp{self.python.replace('.', '')}-{self.arch}"


def targets(pythons: Sequence[str], arches: Sequence[str]) -> list[Target]:
    for python in pythons:
        if not _PYTHON.match(python):
            raise InputError(f"--python {python!r} is not a CPython version from 3.9 on, like 3.11")
    for arch in arches:
        if arch not in ARCHES:
            raise InputError(f"--arch {arch!r} is not one of {', '.join(ARCHES)}")
    wanted = {Target(python, arch) for python in pythons for arch in arches}
    return sorted(wanted, key=lambda t: (tuple(map(int, t.python.split("."))), t.arch))


def build(
    agent: str, wanted: Sequence[Target], output: Path, pip_options: Sequence[str] = ()
) -> str:
    """Download the wheels for every target, write the archive to `output`; its SHA-256."""
    wheels: dict[str, bytes] = {}
    locks: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="postbox-wheelhouse-") as scratch:
        for target in wanted:
            folder = Path(scratch) / target.tag
            download([agent, "pip"], target, folder, pip_options)
            locks[target.tag] = lock(folder, wheels)
    data = archive(wheels, locks)
    if len(data) > MAX_ARCHIVE:
        raise InputError(
            f"the wheelhouse is {len(data)} bytes, over the installer's {MAX_ARCHIVE}: "
            "give fewer --python or --arch"
        )
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise InputError(
            f"-o {output} cannot be written ({exc.strerror}): pick another path"
        ) from None
    return hashlib.sha256(data).hexdigest()


def download(
    requirements: Sequence[str], target: Target, dest: Path, pip_options: Sequence[str] = ()
) -> None:
    """`pip download` of the wheels `requirements` need on `target` (no source builds)."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    command += ["--dest", str(dest), "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", target.python]
    for platform in PLATFORMS:
        command += ["--platform", platform.format(arch=target.arch)]
    try:
        result = subprocess.run(
            [*command, *pip_options, *requirements],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except FileNotFoundError:
        raise InputError("building a wheelhouse needs pip beside the issuer: install pip") from None
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        said = errors[0] if errors else result.stderr.strip()[-300:]
        raise InputError(
            f"no wheels for {target.tag} (Python {target.python} on {target.arch}): pip said "
            f"{said!r}; drop that --python or --arch, or give --find-links or --index-url"
        )


def lock(folder: Path, wheels: dict[str, bytes]) -> str:
    """The lock for the wheels pip put in `folder`; adds them to `wheels` (file name: bytes)."""
    lines = []
    for path in sorted(folder.iterdir()):
        match = _WHEEL_NAME.match(path.name)
        if match is None:
            raise InputError(f"pip downloaded {path.name}, which is not a wheel: report this")
        data = path.read_bytes()
        if wheels.setdefault(path.name, data) != data:
            raise InputError(f"two different files are named {path.name}: check your indexes")
        digest = hashlib.sha256(data).hexdigest()
        lines.append(f"{match['name']}=={match['version']} --hash=sha256:{digest}\n")
    return "".join(lines)


def archive(wheels: dict[str, bytes], locks: dict[str, str]) -> bytes:
    """The reproducible tar of `wheels/` and `locks/` (see the module's docstring)."""
    members = {f"wheels/{name}": data for name, data in wheels.items()}
    members.update({f"locks/{tag}.txt": text.encode() for tag, text in locks.items()})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    return buffer.getvalue()


@dataclass(frozen=True)
class Wheelhouse:
    """A wheelhouse file as the user-data needs it: its bytes' SHA-256 and its targets."""

    data: bytes
    sha256: str
    tags: tuple[str, ...]


def read(path: Path) -> Wheelhouse:
    """A wheelhouse `build` wrote, checked the way the installer will read it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"--wheelhouse {path} cannot be read ({exc.strerror})") from None
    fix = "build one with postbox-issuer wheelhouse"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            names = tar.getnames()
    except tarfile.TarError:
        raise InputError(f"--wheelhouse {path} is not a tar archive: {fix}") from None
    tags = tuple(
        name.removeprefix("locks/").removesuffix(".txt")
        for name in names
        if name.startswith("locks/") and name.endswith(".txt")
    )
    if not tags:
        raise InputError(f"--wheelhouse {path} has no locks/: {fix}")
    if len(data) > MAX_ARCHIVE:
        raise InputError(f"--wheelhouse {path} is over the installer's {MAX_ARCHIVE} bytes")
    return Wheelhouse(data, hashlib.sha256(data).hexdigest(), tags)


def publish(
    house: Wheelhouse,
    grant: dict[str, Any],
    signer: Signer,
    expires_in: int,
    now: dt.datetime,
    *,
    key: Optional[str] = None,
) -> str:
    """Upload the wheelhouse to the grant's bucket, outside the grant's reach (default
    postbox/wheelhouse-SHA256.tar), and return a presigned GET URL for it."""
    parsed = parse_grant(grant)
    bucket = parsed.bucket or grant.get("bucket")  # a PUT grant's: `url --format grant`'s
    if not isinstance(bucket, str):
        raise InputError(
            "the grant names no bucket to put the wheelhouse in: give --wheelhouse-url"
        )
    key = key or f"postbox/wheelhouse-{house.sha256}.tar"
    reach = parsed.single_key or parsed.prefix
    if key.startswith(reach):
        raise InputError(
            f"--wheelhouse-key {key} is where every instance may write (the grant's "
            f"{reach!r}): put it outside"
        )
    if expires_in > MAX_PRESIGNED_SECONDS:
        raise InputError(
            f"--wheelhouse-expires {format_duration(expires_in)} is over 7d, a SigV4 URL's "
            "limit: publish the wheelhouse yourself and give --wheelhouse-url"
        )
    signing = signer.open(bucket, expires_in, now)
    upload(signing.s3, bucket, key, house)
    expires_at = now + dt.timedelta(seconds=signing.expires_in)
    logger.warning(
        "the wheelhouse URL expires at %s: instances that boot later cannot install the "
        "agent; render the user-data again before then, or give --wheelhouse-url",
        f"{expires_at:%Y-%m-%dT%H:%M:%SZ}",
    )
    return presigned_url(signing.s3, "get", bucket, key, signing.expires_in)


def upload(s3: S3Client, bucket: str, key: str, house: Wheelhouse) -> None:
    """Put the wheelhouse at s3://bucket/key, unless the same bytes are there already (its
    SHA-256 is kept in the object's metadata): `user-data` may run as often as you like."""
    metadata = object_metadata(s3, bucket, key) or {}
    if metadata.get("sha256") == house.sha256:
        return
    with aws_errors(f"uploading the wheelhouse to s3://{bucket}/{key}"):
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=house.data,
            ContentType="application/x-tar",
            Metadata={"sha256": house.sha256},
        )


@dataclass(frozen=True)
class Install:
    """How user-data's installer gets the agent: the package index (or one wheel URL), or a
    wheelhouse file (published beside the grant, or at a URL the operator gives)."""

    index_url: Optional[str] = None
    agent_wheel: Optional[str] = None
    wheelhouse: Optional[Path] = None
    wheelhouse_url: Optional[str] = None
    wheelhouse_key: Optional[str] = None
    wheelhouse_seconds: int = MAX_PRESIGNED_SECONDS


def install_source(
    install: Install, grant: dict[str, Any], signer: Signer, now: dt.datetime
) -> tuple[str, ...]:
    """The installer's source: the package index, or the wheelhouse, uploaded and signed."""
    if install.wheelhouse is None:
        if install.wheelhouse_url or install.wheelhouse_key:
            raise InputError("--wheelhouse-url and --wheelhouse-key need --wheelhouse FILE")
        return index_source(install.index_url, install.agent_wheel)
    if install.agent_wheel is not None or install.index_url is not None:
        raise InputError(
            "--wheelhouse installs from the wheelhouse alone: drop --agent-wheel and --index-url"
        )
    house = read(install.wheelhouse)
    url = install.wheelhouse_url or publish(
        house, grant, signer, install.wheelhouse_seconds, now, key=install.wheelhouse_key
    )
    return wheelhouse_source(url, house.sha256)
