"""`postbox-issuer assemble`: join the files agents sent in parts (agent/parts.py), server-side.

The manifests under the prefix are taken file by file: all the finished versions of one file
(its manifests, and the object at its key) are judged together, and the newest wins, by the
store's clock: when it took each manifest, and the object (for an object assemble joined, when
it took the manifest it was joined from, which the object carries). Older versions' parts and
manifests are removed; two versions stored within one second are named and left (the agent
stores a file's versions over a second apart: agent/delivery.py).

The newest version's parts are checked (there, of the size and MD5 it says); then
CreateMultipartUpload on the file's key with what the parts are stored with, by the store's
word (their HEAD and tags), never the manifest's: their Content-Type, storage class, tags and
encryption (what the grant required), and as metadata the file's SHA-256 (the manifest's) and
time (rclone's format: the parts', which must be the manifest's); every part must agree on each,
or the file is named and left. UploadPartCopy of each part,
`copies` at once (no byte passes through this machine: the store copies, and several copies at
once keep it busy as a multipart upload's several streams do; but for a part the store will
not copy, which is streamed through: _copy_part), and CompleteMultipartUpload, on
the condition that the key is still as it was; the object is checked against the manifest (its
size, the version it names, and its ETag, which for a multipart object is the MD5 of the parts'
MD5s and their count); only then are the parts and, last, the manifest deleted. In a
versioned bucket (versioning Enabled or Suspended), the versions of the parts that were checked
are the ones copied, and they and the manifest's version read are the ones deleted, by
VersionId: no noncurrent version or delete marker is left, and a part written again meanwhile
stays.

Idempotent: a second run finds nothing; a run that died half-way is finished by the next (an
object already joined is recognised by the version it names, and only its leftovers are
deleted; an incomplete upload of the key left by a run that died is aborted); a manifest whose
parts are missing or differ is reported and left untouched. A file without a manifest (still
being sent) is never touched, so it is safe beside running agents.

Each manifest is judged on its own: one the store refuses (exit 4), one that cannot be joined
or breaks a limit (at most agent.parts.MAX_MANIFEST, about 20 MiB: the largest an agent writes;
nested no deeper than JSON needs, at most 10,000 parts, each but the last of 5 MiB to 5 GiB;
exit 5), or one whose reading fails otherwise (exit 1) is named with its key and the run goes
on; the run's code is the worst seen, and every file joined is reported with its size and
SHA-256 all the same.

Under SSE-KMS (by the store's word, never the manifest's) an ETag is not an MD5: a part is
checked by its size and its date (no later than its manifest's), the object by its size and the
version it names.

A manifest is written by whoever holds a grant, and assemble runs with the operator's
credentials: it joins only what the manifest's own place allows. The file's key must be the
one the manifest's key is derived from (PREFIX + RELPATH for PREFIX.postbox-parts/RELPATH/
VERSION/manifest.json) and every part must lie beside the manifest, so a manifest can neither
copy another object of the bucket nor write outside the prefix its grant could write.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode

import botocore.exceptions

from agent.parts import FORMAT, MANIFEST, MAX_MANIFEST, MAX_PART, MAX_PARTS, MIN_PART, NAMESPACE
from agent.shown import printable

__all__ = ["NAMESPACE", "Report", "Version", "assemble", "manifests", "multipart_etag"]
from issuer.aws import aws_errors, error_code, missing
from issuer.errors import CredentialsError, ExitCode, IssuerError, StoreError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # boto3-stubs, a development dependency: types only
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CopySourceTypeDef,
        ObjectIdentifierTypeDef,
        TagTypeDef,
    )


T = TypeVar("T")
R = TypeVar("R")
COPIES = 8  # parts copied at once: the AWS CLI copies 10 at once, rclone 4
# The metadata of an object assemble joined: the version's name, and when the store took its
# manifest (seconds since the epoch), which is how new the object is (README, "Files of any size")
VERSION_META = "postbox-version"
STORED_META = "postbox-stored"
# The file's SHA-256 (its manifest's) and time (rclone's format), as the agent gives every
# object it sends whole (CONTRACT-34): x-amz-meta-sha256, x-amz-meta-mtime
SHA256_META = "sha256"
MTIME_META = "mtime"
STANDARD = "STANDARD"  # the storage class an object has when HEAD names none


_HEX32 = re.compile(r"[0-9a-f]{32}")  # an MD5, as the agent writes it
_HEX64 = re.compile(r"[0-9a-f]{64}")  # a SHA-256
_RCLONE_TIME = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,9})?")  # x-amz-meta-mtime, rclone's
_MANIFEST_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # agent/parts.py


class Broken(Exception):
    """A manifest that cannot be joined as it stands: why, in one line."""


class _Missing(Exception):
    def __init__(self, number: int, key: str) -> None:
        super().__init__(number, key)
        self.number, self.key = number, key


class Gone(Exception):
    """A manifest removed since it was listed, with its parts: another run (a timer's and an S3
    event's at once, say) joined its version or found it superseded."""


@dataclass
class Report:
    """What a run did, file by file; `echo`, when given, hears each line as it happens (a run
    cut short has said what it did). Names are printed as `printable` has them: a manifest's
    key and the file's are anybody's with a grant, and may hold control characters."""

    bucket: str = ""
    assembled: list[str] = field(default_factory=list)  # the files' keys
    finished: list[str] = field(default_factory=list)  # joined by an earlier run: tidied
    superseded: list[tuple[str, str]] = field(default_factory=list)  # (manifest key, file key)
    newer: dict[str, str] = field(default_factory=dict)  # superseded manifest: by what
    gone: list[str] = field(default_factory=list)  # manifests another run took meanwhile
    would: list[str] = field(default_factory=list)  # --dry-run
    broken: list[tuple[str, str, ExitCode]] = field(default_factory=list)  # manifest key, why
    # key: (size, the SHA-256 its manifest gives, the version): the bytes are not read here
    files: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    # key: the SHA-256 the object carries (x-amz-meta-sha256: its manifest's) by the store's
    # word, or will carry (--dry-run); None for an object an older assemble joined without it
    carried: dict[str, str | None] = field(default_factory=dict)
    exit_code: ExitCode = ExitCode.OK  # the worst seen
    echo: Callable[[str], None] | None = None
    dry_run: bool = False
    keep_parts: bool = False

    @property
    def tidied(self) -> str:
        """What became of the parts and manifest of a version joined, or superseded."""
        return "kept" if self.keep_parts else "left" if self.dry_run else "removed"

    def _say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)

    def _at(self, key: str) -> str:
        return f"s3://{self.bucket}/{printable(key)}"

    def joined(
        self, version: Version, head: dict[str, Any] | None, *, earlier: bool = False
    ) -> None:
        """`head`: the joined object's, as the store has it."""
        key, size, sha256 = version.key, version.manifest["size"], version.manifest["sha256"]
        self.files[key] = (size, sha256, version.name)
        carried = (head or {}).get("Metadata", {}).get(SHA256_META)
        self.carried[key] = carried if carried == sha256 else None
        facts = f"{size} bytes, SHA-256 by its manifest {sha256}"
        if earlier:
            self.finished.append(key)
            self._say(f"already assembled {self._at(key)} ({facts}; leftovers {self.tidied})")
        else:
            self.assembled.append(key)
            self._say(f"assembled {self._at(key)} ({facts})")

    def would_join(self, version: Version) -> None:
        self.would.append(version.key)
        size, sha256 = version.manifest["size"], version.manifest["sha256"]
        self.files[version.key] = (size, sha256, version.name)
        self.carried[version.key] = sha256
        self._say(f"would assemble {self._at(version.key)} ({size} bytes, version {version.name})")

    def older(self, version: Version, newer: str) -> None:
        self.superseded.append((version.manifest_key, version.key))
        self.newer[version.manifest_key] = newer
        self._say(
            f"superseded {self._at(version.manifest_key)}: {newer}; its parts and manifest "
            f"{self.tidied}"
        )

    def went(self, manifest_key: str) -> None:
        self.gone.append(manifest_key)
        self._say(
            f"gone {self._at(manifest_key)}: removed meanwhile, with its parts, by another run"
        )

    def fail(self, manifest_key: str, why: str, code: ExitCode) -> None:
        self.broken.append((manifest_key, why, code))
        worst = [ExitCode.OK, ExitCode.PARTS, ExitCode.STORE, ExitCode.FAILURE]
        self.exit_code = max(self.exit_code, code, key=worst.index)
        self._say(f"NOT assembled {self._at(manifest_key)}: {printable(why)} (left as it is)")


@dataclass(frozen=True)
class Version:
    """One finished version of a file sent in parts: its manifest, read and checked, and when
    the store took it."""

    manifest_key: str  # PREFIX.postbox-parts/RELPATH/VERSION/manifest.json
    stored: int  # the manifest's LastModified, whole seconds: the store's clock
    manifest: dict[str, Any]
    read_as: str | None = None  # the manifest's VersionId as read (a versioned bucket's)

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def name(self) -> str:
        return self.manifest_key.rsplit("/", 2)[-2]


def assemble(
    s3: S3Client,
    bucket: str,
    prefix: str,
    *,
    dry_run: bool = False,
    keep_parts: bool = False,
    copies: int = COPIES,
    echo: Callable[[str], None] | None = None,
    slow: S3Client | None = None,
) -> Report:
    """`copies`: requests at once (HEADs of the parts, then their copies); the client's
    connection pool must hold twice as many (issuer.aws.s3_client's `connections`: a part
    streamed through this machine holds a GET and an UploadPart at once). `echo` hears
    each line of the report as it happens. `slow`: the client for the calls that may take
    minutes to answer (the copies, the completion), if `s3` waits less."""
    report = Report(bucket, echo=echo, dry_run=dry_run, keep_parts=keep_parts)
    versioned = not dry_run and _versioned(s3, bucket)
    with ThreadPoolExecutor(copies, thread_name_prefix="assemble") as pool:
        run = _Run(s3, slow or s3, bucket, pool, report, dry_run, keep_parts, versioned)
        for listed in _by_place(manifests(s3, bucket, prefix)).values():
            run.place(listed)
    return report


@contextmanager
def _judged(report: Report, manifest_key: str) -> Iterator[None]:
    """Whatever goes wrong with one manifest is named with its key; the run goes on."""
    try:
        yield
    except Gone:
        report.went(manifest_key)
    except Broken as exc:
        report.fail(manifest_key, str(exc), ExitCode.PARTS)
    except CredentialsError:
        raise  # every manifest would fail alike
    except IssuerError as exc:
        report.fail(manifest_key, exc.message, exc.exit_code)
    except Exception as exc:  # a hostile manifest must not end the run
        why = f"unexpected error ({exc.__class__.__name__}: {exc})"
        report.fail(manifest_key, why, ExitCode.FAILURE)


@dataclass
class _Run:
    s3: S3Client
    slow: S3Client  # for the copies and the completion
    bucket: str
    pool: ThreadPoolExecutor
    report: Report
    dry_run: bool
    keep_parts: bool
    versioned: bool  # versioning Enabled or Suspended: objects are read and deleted by version

    def place(self, listed: list[tuple[str, int]]) -> None:
        """The finished versions whose parts lie in one place (PREFIX.postbox-parts/RELPATH/):
        each file's newest is joined, the others' leftovers removed. A manifest that cannot
        be read is named and is no version."""
        files: dict[str, list[Version]] = {}
        for manifest_key, stored in listed:
            with _judged(self.report, manifest_key):
                manifest, read_as = _read(self.s3, self.bucket, manifest_key, self.versioned)
                version = Version(manifest_key, stored, manifest, read_as)
                files.setdefault(version.key, []).append(version)
        for versions in files.values():
            versions.sort(key=lambda v: v.stored)
            with _judged(self.report, versions[-1].manifest_key):
                self.file(versions)

    def file(self, versions: list[Version]) -> None:
        """`versions` of one file, oldest first. Newest is by the store's clock: when it took
        each manifest, and the object at the key (or, for one assemble joined, when it took
        the manifest it was joined from). The agent commits a file's versions at least a
        second apart (agent/commits.py): two that share a second are not the agent's, and
        are left for a person to judge."""
        newest, key = versions[-1], versions[-1].key
        with aws_errors(f"looking at s3://{self.bucket}/{key}"):
            head = _head(self.s3, self.bucket, key)
        current, stored = _current(head, versions)
        if current is None and stored is not None and stored > newest.stored:
            newer = f"s3://{self.bucket}/{printable(key)} is newer (stored {_when(stored)})"
            for version in versions:  # sent whole (or written otherwise) after every one
                self._tidy(version)
                self.report.older(version, newer)
            return
        ties = [v.manifest_key for v in versions[:-1] if v.stored == newest.stored]
        if current is None and stored == newest.stored:
            ties.append(key)
        if ties:
            others = ", ".join(f"s3://{self.bucket}/{printable(k)}" for k in ties)
            raise Broken(
                f"it and {others} were stored in the same second ({_when(newest.stored)}), "
                "which no agent does: which is newer the store cannot tell; keep the one you "
                "want (delete the others: a manifest with its parts, or the object) and run "
                "assemble again"
            )
        newer = f"its newer version {newest.name} is {'there' if self.dry_run else 'joined'}"
        if current is newest:
            self._tidy(newest)
            self.report.joined(newest, head, earlier=True)
        else:
            parts = _check_parts(self.s3, self.bucket, newest, self.pool, self.versioned)
            if self.dry_run:
                self.report.would_join(newest)
            elif not self._join(newest, head, parts):  # another run joined a newer one
                newer = f"s3://{self.bucket}/{printable(key)} is newer"
        for version in versions[:-1]:
            self._tidy(version)
            self.report.older(version, newer)

    def _join(self, newest: Version, head: dict[str, Any] | None, parts: Parts) -> bool:
        """Join `newest` over `head` (what was at its key): True if the key holds it now.
        Another run (a timer's and an S3 event's at once) may join it first (then it is found
        joined, or gone), or a newer version over it (then it is superseded: False)."""
        key = newest.key
        try:
            made = _join(self.s3, self.slow, self.bucket, newest, pool=self.pool, head=head,
                         parts=parts)  # fmt: skip
        except (Broken, StoreError):  # KeyChanged among them
            taken = self._taken_meanwhile(newest)
            if taken is None:
                raise
            return taken
        with aws_errors(f"looking at s3://{self.bucket}/{key}"):
            joined = _head(self.s3, self.bucket, key)
        if _current(joined, [newest])[0] is not newest:
            raise Broken("the joined object does not match the manifest")
        _tag(self.s3, self.bucket, key, parts.tags, made)
        self._tidy(newest, parts)
        self.report.joined(newest, joined)
        return True

    def _taken_meanwhile(self, newest: Version) -> bool | None:
        """After a join failed: whether another run (a timer's and an S3 event's at once) took
        this version meanwhile, and said so: True if it joined it, False if it joined a newer
        one over it; Gone if it removed it (its parts going under this run's copies, its
        manifest with them); None if none did (the failure is this run's)."""
        key = newest.key
        with aws_errors(f"looking at s3://{self.bucket}/{key}"):
            joined = _head(self.s3, self.bucket, key)
            current, stored = _current(joined, [newest])
            if current is newest:
                self._tidy(newest)
                self.report.joined(newest, joined, earlier=True)
                return True
            if current is None and stored is not None and stored > newest.stored:
                self._tidy(newest)
                newer = f"s3://{self.bucket}/{printable(key)} is newer (stored {_when(stored)})"
                self.report.older(newest, newer)
                return False
            if _head(self.s3, self.bucket, newest.manifest_key) is None:
                raise Gone()
        return None

    def _tidy(self, version: Version, parts: Parts | None = None) -> None:
        """The version's parts and manifest deleted. In a versioned bucket, by version: for
        the version joined, those its parts were checked and copied at (`parts`), for another
        the ones a look finds now; its manifest's, the one read; never another, so nothing of
        it is left (no noncurrent version, no delete marker) and a part written again since
        stays."""
        if self.dry_run or self.keep_parts:
            return
        ids: list[str | None] = []
        if self.versioned:
            ids = list(parts.version_ids) if parts else self._version_ids(version)
        _delete(self.s3, self.bucket, version, ids)

    def _version_ids(self, version: Version) -> list[str | None]:
        """Each part's VersionId now (None: none there)."""

        def look(key: str) -> str | None:
            with aws_errors(f"looking at s3://{self.bucket}/{key}"):
                head = _head(self.s3, self.bucket, key)
            return None if head is None else _version_id(head, versioned=True)

        return _each(self.pool, look, [p["key"] for p in version.manifest["parts"]])


def _by_place(listed: Iterable[tuple[str, int]]) -> dict[str, list[tuple[str, int]]]:
    """The manifests by the place of their versions (PREFIX.postbox-parts/RELPATH/): one file's
    versions are judged together."""
    places: dict[str, list[tuple[str, int]]] = {}
    for manifest_key, stored in listed:
        places.setdefault(manifest_key.rsplit("/", 2)[0] + "/", []).append((manifest_key, stored))
    return places


def _current(
    head: dict[str, Any] | None, versions: list[Version]
) -> tuple[Version | None, int | None]:
    """The object at a file's key: the version it was joined from (by the metadata assemble
    gives what it joins, or, from an older assemble, by its size and multipart ETag), and when
    the store took it (for an object assemble joined, when it took the manifest). Only a
    multipart object can be assemble's: a grant's POST never makes one, whatever metadata it
    sends."""
    if head is None:
        return None, None
    stored = int(head["LastModified"].timestamp())
    etag = head["ETag"].strip('"')
    if "-" not in etag:  # sent whole
        return None, stored
    meta = head.get("Metadata", {})
    named = meta.get(VERSION_META)
    kms = _kms(head)
    for version in versions:
        if head["ContentLength"] != version.manifest["size"]:
            continue
        md5s = multipart_etag([p["md5"] for p in version.manifest["parts"]]) == etag
        if (named == version.name and (kms or md5s)) or (named is None and md5s):
            return version, version.stored
    if str(meta.get(STORED_META, "")).isdigit():
        return None, int(meta[STORED_META])
    return None, stored


def _when(stored: int) -> str:
    return dt.datetime.fromtimestamp(stored, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifests(s3: S3Client, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """Every manifest's key under `prefix`, and every one of a file whose key is under it, with
    when the store took it (whole seconds): the parts of PREFIX/r0/f lie under
    PREFIX.postbox-parts/r0/f/, beside the grant's prefix (not known here: any point of
    `prefix` may be where it ends). A prefix already among the parts is looked under alone."""
    marker = f"{NAMESPACE}/"
    places = [prefix]
    if marker not in prefix:
        places += [prefix[:i] + marker + prefix[i:] for i in range(len(prefix))]
    seen: set[str] = set()
    for place in places:
        with aws_errors(f"listing s3://{bucket}/{place}"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=place)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if marker in key and key.endswith(f"/{MANIFEST}") and key not in seen:
                        seen.add(key)
                        yield key, int(item["LastModified"].timestamp())


def _read(
    s3: S3Client, bucket: str, key: str, versioned: bool
) -> tuple[dict[str, Any], str | None]:
    """The manifest, read with limits (its size, its depth, its parts' count and sizes): it is
    anybody's with a grant; and in a versioned bucket, the version read."""
    with aws_errors(f"reading s3://{bucket}/{key}"):
        try:
            got = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            raise Gone() from None
        body = got["Body"].read(MAX_MANIFEST + 1)
        got["Body"].close()
    if len(body) > MAX_MANIFEST:
        raise Broken(f"it is over {MAX_MANIFEST} bytes")
    try:
        manifest = json.loads(body)
    except RecursionError:
        raise Broken("not a manifest (nested too deep)") from None
    except ValueError as exc:
        raise Broken(f"not a manifest ({exc.__class__.__name__})") from None
    _check(manifest)
    _in_place(key, manifest)
    return dict(manifest), _version_id(dict(got), versioned)


def _check(manifest: Any) -> None:
    """Broken unless `manifest` has the fields and the parts a manifest has."""
    if not isinstance(manifest, dict) or manifest.get("postbox_manifest") != FORMAT:
        raise Broken(f"not a manifest of format {FORMAT}")
    parts = manifest.get("parts")
    if not isinstance(parts, list) or not parts:
        raise Broken("not a manifest (no list of parts)")
    if len(parts) > MAX_PARTS:
        raise Broken(f"it has {len(parts)} parts, over the store's {MAX_PARTS}")
    for number, part in enumerate(parts, 1):
        _check_part(number, part, last=number == len(parts))
    for name, kind in (("key", str), ("size", int), ("sha256", str), ("encryption", dict)):
        if type(manifest.get(name)) is not kind:
            raise Broken(f"not a manifest (its {name} is not a {kind.__name__})")
    if not _HEX64.fullmatch(manifest["sha256"]):
        raise Broken("not a manifest (its sha256 is not 64 hex digits)")
    if NAMESPACE in manifest["key"].split("/"):  # no agent sends such a file: a dot name
        raise Broken(f"its key {printable(manifest['key'])} lies among the parts")
    _check_extent(manifest["size"], parts)


def _check_extent(size: int, parts: list[dict[str, Any]]) -> None:
    """Broken unless the parts follow each other, no gap and no overlap, to the file's size."""
    if sum(p["size"] for p in parts) != size:
        raise Broken("its parts do not add up to its size")
    offset = 0
    for part in parts:
        if part["offset"] != offset:
            raise Broken("its parts' offsets do not follow each other")
        offset += part["size"]


def _check_part(number: int, part: Any, *, last: bool) -> None:
    fields = {"key": str, "offset": int, "size": int, "md5": str}
    if not isinstance(part, dict) or any(type(part.get(n)) is not t for n, t in fields.items()):
        raise Broken(f"not a manifest (part {number} is not a key, offset, size and md5)")
    if not _HEX32.fullmatch(part["md5"]):
        raise Broken(f"not a manifest (part {number}'s md5 is not 32 hex digits)")
    if not (0 if last else MIN_PART) <= part["size"] <= MAX_PART:
        raise Broken(
            f"part {number} is {part['size']} bytes: the store joins parts of {MIN_PART} "
            f"bytes to {MAX_PART} (the last may be smaller)"
        )


def _in_place(manifest_key: str, manifest: dict[str, Any]) -> None:
    """Broken unless the file's key and every part's are where this manifest's key says."""
    folder = manifest_key[: -len(MANIFEST)]  # PREFIX.postbox-parts/RELPATH/VERSION/
    version = folder.rstrip("/").rsplit("/", 1)[-1]
    namespace = folder[: -len(version) - 2]  # PREFIX.postbox-parts/RELPATH
    marker = f"{NAMESPACE}/"
    # The prefix may end anywhere, and a file's own names may hold the marker's text: each
    # place it is found names a key; the manifest's must be one of them.
    owners = {
        namespace[:i] + namespace[i + len(marker) :]
        for i in range(len(namespace))
        if namespace.startswith(marker, i)
    }
    if manifest["key"] not in owners:
        raise Broken(f"its key {manifest['key']!r} is not the one its place names")
    for number, part in enumerate(manifest["parts"], 1):
        if part["key"] != f"{folder}{number:05d}":
            raise Broken(f"part {number}'s key {part['key']!r} is not beside the manifest")


def _head(s3: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return dict(s3.head_object(Bucket=bucket, Key=key))
    except botocore.exceptions.ClientError as exc:
        if missing(exc):
            return None
        raise


def _each(pool: ThreadPoolExecutor, call: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`call` of every item on the pool, the results in the items' order. The first exception
    is raised once every call under way has ended (none left running behind it); the calls not
    yet started are not made."""
    futures = [pool.submit(call, item) for item in items]
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    failed = next((f for f in futures if f in done and f.exception() is not None), None)
    if failed is not None:
        for future in futures:
            future.cancel()
        wait(futures)
        raise failed.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


@dataclass(frozen=True)
class Parts:
    """A version's parts as the store has them, checked: what their object is made with."""

    encryption: dict[str, Any]  # CreateMultipartUpload's arguments (_encryption)
    properties: dict[str, Any]  # its ContentType, StorageClass (but STANDARD), Tagging
    metadata: dict[str, str]  # the file's SHA-256 and time
    tags: dict[str, str]
    version_ids: tuple[str | None, ...]  # each part's, as checked (None: unversioned bucket)


def _check_parts(
    s3: S3Client, bucket: str, version: Version, pool: ThreadPoolExecutor, versioned: bool
) -> Parts:
    """Broken unless every part is there with its size and MD5; under SSE-KMS, whose ETags are
    not MD5s, with its size, and stored no later than the manifest (the agent stores the
    manifest last: a part newer than it was written over since, or is being sent again after
    a journal was lost). Then what the parts are stored with, by the store's word (their HEAD
    and tags, never the manifest's claims), which every part must agree on: the object's
    properties (_properties)."""

    def look(numbered: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        number, part = numbered
        with aws_errors(f"looking at s3://{bucket}/{part['key']}"):
            head = _head(s3, bucket, part["key"])
        if head is None:  # the looks not begun are not made: a forged list of 10,000 costs few
            raise _Missing(number, part["key"])
        return head

    def gone(gap: _Missing) -> Exception:
        with aws_errors(f"looking at s3://{bucket}/{version.manifest_key}"):
            if _head(s3, bucket, version.manifest_key) is None:
                return Gone()  # with its manifest: another run joined or removed it
            joined, _ = _current(_head(s3, bucket, version.key), [version])
            if joined is version:  # another run joined it and is removing its parts
                return Gone()
        return Broken(f"part {gap.number} ({printable(gap.key)}) is missing")

    manifest = version.manifest
    numbered = list(enumerate(manifest["parts"], 1))
    try:  # the last first: a manifest whose parts are not there fails at once
        heads = _each(pool, look, numbered[-1:]) + _each(pool, look, numbered[:-1])
    except _Missing as gap:
        raise gone(gap) from None
    heads = heads[1:] + heads[:1]
    encryption = _encryption(manifest, heads)
    _check_heads(version, heads, kms=_kms(encryption))
    ids = tuple(_version_id(head, versioned) for head in heads)
    try:
        tagged = _each(pool, lambda n: _tags(s3, bucket, *n), list(zip(numbered, ids)))
    except _Missing as gap:
        raise gone(gap) from None
    return _properties(version, heads, tagged, encryption, ids)


def _check_heads(version: Version, heads: list[dict[str, Any]], *, kms: bool) -> None:
    """Broken unless each part is as the manifest says (_check_parts). `kms`: as the store
    has the parts (a manifest claiming SSE-KMS must not turn the MD5 checks off)."""
    for number, (part, head) in enumerate(zip(version.manifest["parts"], heads), 1):
        if head["ContentLength"] != part["size"]:
            raise Broken(f"part {number} is {head['ContentLength']} bytes, not {part['size']}")
        if not kms and head["ETag"].strip('"') != part["md5"]:
            raise Broken(f"part {number}'s ETag {head['ETag']} is not the MD5 {part['md5']}")
        if kms and int(head["LastModified"].timestamp()) > version.stored:
            raise Broken(
                f"part {number} was stored at {_when(int(head['LastModified'].timestamp()))}, "
                f"after its manifest ({_when(version.stored)}): written over since, or being "
                "sent again (then run assemble later)"
            )


def _tags(
    s3: S3Client, bucket: str, numbered: tuple[int, dict[str, Any]], version_id: str | None
) -> dict[str, str]:
    """A part's tags (that version's, in a versioned bucket); _Missing if it is gone."""
    number, part = numbered
    with aws_errors(f"reading the tags of s3://{bucket}/{part['key']}"):
        try:
            asked = s3.get_object_tagging(Bucket=bucket, Key=part["key"], **_at(version_id))
        except botocore.exceptions.ClientError as exc:
            if missing(exc):
                raise _Missing(number, part["key"]) from None
            raise
    return {t["Key"]: t["Value"] for t in asked.get("TagSet", [])}  # RGW: none, no TagSet


def _properties(
    version: Version,
    heads: list[dict[str, Any]],
    tagged: list[dict[str, str]],
    encryption: dict[str, Any],
    version_ids: tuple[str | None, ...],
) -> Parts:
    """What the joined object is made with: the Content-Type, storage class and tags its parts
    are stored with, every part the same (a part without them, an older agent's or under a
    grant without their conditions, gives the object none), and the file's SHA-256 (its
    manifest's) and time (_mtime)."""
    key = version.key
    content_type = _agreed(key, "Content-Type", [h.get("ContentType") for h in heads])
    storage = _agreed(key, "storage class", [h.get("StorageClass") or STANDARD for h in heads])
    tagging = _agreed(key, "tags", [urlencode(sorted(t.items()), quote_via=quote) for t in tagged])
    mtime = _agreed(key, "x-amz-meta-mtime", [h.get("Metadata", {}).get(MTIME_META) for h in heads])
    metadata = {SHA256_META: version.manifest["sha256"]}
    time = _mtime(version, mtime)
    if time is not None:
        metadata[MTIME_META] = time
    properties: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    if storage != STANDARD:
        properties["StorageClass"] = storage
    if tagging:
        properties["Tagging"] = tagging
    return Parts(encryption, properties, metadata, tagged[0], version_ids)


def _agreed(key: str, what: str, values: list[T], shown: Callable[[T], str] = repr) -> T:
    """The value every part has; Broken naming the file, `what`, and the first two parts
    that differ and their values."""
    for number, value in enumerate(values, 1):
        if value != values[0]:
            raise Broken(
                f"the parts of {printable(key)} disagree on their {what}: part 1 has "
                f"{shown(values[0])}, part {number} {shown(value)}"
            )
    return values[0]


def _mtime(version: Version, parts: str | None) -> str | None:
    """The joined object's x-amz-meta-mtime: the parts' (in rclone's format, as the agent
    gives them), which must be the manifest's time to the microsecond it records; for parts
    without one, the manifest's time in rclone's format; None if neither has one."""
    recorded = version.manifest.get("mtime")
    try:
        when = dt.datetime.strptime(recorded, _MANIFEST_TIME) if isinstance(recorded, str) else None
    except ValueError:
        when = None
    micros = (
        None if when is None else (when - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    )
    if parts is None:
        return None if micros is None else _rclone_time(micros)
    if (
        micros is None
        or not _RCLONE_TIME.fullmatch(parts)
        or abs(int(decimal.Decimal(parts) * 10**9) - micros * 1000) >= 1000
    ):
        raise Broken(
            f"the x-amz-meta-mtime of the parts of {printable(version.key)}, {parts!r}, is not "
            f"its manifest's time {recorded if isinstance(recorded, str) and recorded else 'none'}"
        )
    return parts


def _rclone_time(micros: int) -> str:
    """Microseconds since the epoch as rclone writes x-amz-meta-mtime: seconds, the decimals
    without trailing zeros."""
    seconds, fraction = divmod(abs(micros), 10**6)
    sign = "-" if micros < 0 else ""
    return f"{sign}{seconds}.{fraction:06d}".rstrip("0").rstrip(".")


def _encryption(manifest: dict[str, Any], heads: list[dict[str, Any]]) -> dict[str, Any]:
    """The encryption the parts are stored with, as CreateMultipartUpload's arguments: the
    store's word, the grant's policy enforced when the parts came. A manifest is anybody's
    with a grant, and one naming a KMS key of its own choosing must not have the operator's
    credentials encrypt with it."""
    stored = [(h.get("ServerSideEncryption", ""), h.get("SSEKMSKeyId", "")) for h in heads]
    algorithm, key_id = _agreed(manifest["key"], "encryption", stored, _shown_encryption)
    claimed = _encryption_args(manifest).get("ServerSideEncryption", "")
    if claimed and algorithm and claimed != algorithm:
        raise Broken(f"it says {claimed} and its parts are stored with {algorithm}")
    encryption = {"ServerSideEncryption": algorithm} if algorithm else {}
    return encryption | ({"SSEKMSKeyId": key_id} if key_id else {})


def _shown_encryption(stored: tuple[str, str]) -> str:
    algorithm, key_id = stored
    return f"{algorithm or 'none'}{f' with key {key_id}' if key_id else ''}"


def _version_id(answer: dict[str, Any], versioned: bool) -> str | None:
    """The version a HEAD or GET answered with, in a versioned bucket (`null`: one stored
    while versioning was suspended, which some stores do not name); None otherwise."""
    return (answer.get("VersionId") or "null") if versioned else None


def _at(version_id: str | None) -> dict[str, Any]:
    """A request's VersionId argument: that version, or (None) the current object."""
    return {} if version_id is None else {"VersionId": version_id}


def _versioned(s3: S3Client, bucket: str) -> bool:
    """Versioning Enabled or Suspended: a delete by key would leave a delete marker, and keep
    what it hides as a noncurrent version."""
    with aws_errors(f"reading the versioning of bucket {bucket}"):
        status = s3.get_bucket_versioning(Bucket=bucket).get("Status", "")
    return status in ("Enabled", "Suspended")


def _kms(encryption: dict[str, Any]) -> bool:
    """Encrypted with SSE-KMS (CreateMultipartUpload's arguments): ETags are not MD5s."""
    return str(encryption.get("ServerSideEncryption", "")).startswith("aws:kms")


def multipart_etag(md5s: list[str]) -> str:
    """S3's ETag of an object joined from parts with these MD5s."""
    joined = b"".join(bytes.fromhex(md5) for md5 in md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(md5s)}"  # noqa: S324  (S3's own rule)


def _join(
    s3: S3Client,
    slow: S3Client,
    bucket: str,
    version: Version,
    *,
    pool: ThreadPoolExecutor,
    head: dict[str, Any] | None,
    parts: Parts,
) -> str | None:
    """The version's parts joined into its file's key, unless the key changed since `head`
    (what was there when the newest was chosen): it is looked at again once the parts are
    copied, and CompleteMultipartUpload is made on the condition that it is still as it was
    (If-Match its ETag, or If-None-Match: * when there was none), so a file sent whole
    meanwhile is never overwritten by an older version (on a store that keeps neither
    condition, RGW 16, but for one sent in the instant between the look and the completion).
    The object carries which version it is and when the store took its manifest, so the
    next run knows it, and what its parts are stored with (`parts`: its properties, the file's
    SHA-256 and time), made of the versions of the parts that were checked. The VersionId of
    the object made, in a versioned bucket."""
    key, manifest, kms = version.key, version.manifest, _kms(parts.encryption)
    metadata = {VERSION_META: version.name, STORED_META: str(version.stored), **parts.metadata}
    condition: dict[str, str] = {"IfMatch": head["ETag"]} if head else {"IfNoneMatch": "*"}
    with aws_errors(f"joining s3://{bucket}/{key}"):
        upload_id = s3.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=metadata, **parts.properties, **parts.encryption
        )["UploadId"]

        def copy(numbered: tuple[int, dict[str, Any]]) -> CompletedPartTypeDef:
            number, part = numbered
            return _copy_part(slow, bucket, number, part, key=key, upload_id=upload_id, kms=kms,
                              version_id=parts.version_ids[number - 1])  # fmt: skip

        try:  # no copy is under way when the upload is aborted: none lands after the abort
            done = _each(pool, copy, list(enumerate(manifest["parts"], 1)))
            if _seen(_head(s3, bucket, key)) != _seen(head):  # a store without conditions
                raise PreconditionFailed()
            try:
                made = slow.complete_multipart_upload(  # S3 may take minutes over a large object
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                    **condition,  # type: ignore[arg-type]
                )
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) != "PreconditionFailed":
                    raise
                raise PreconditionFailed() from None
        except PreconditionFailed:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise KeyChanged(
                f"s3://{bucket}/{key} changed while its parts were copied (a newer version "
                "sent whole?): nothing was overwritten; run assemble again"
            ) from None
        except BaseException:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
    return made.get("VersionId")


def _tag(s3: S3Client, bucket: str, key: str, tags: dict[str, str], version_id: str | None) -> None:
    """The joined object (the version made, in a versioned bucket) given its parts' tags where
    the store did not keep CreateMultipartUpload's (RGW 16 drops them)."""
    if not tags:
        return
    with aws_errors(f"tagging s3://{bucket}/{key}"):
        asked = s3.get_object_tagging(Bucket=bucket, Key=key, **_at(version_id))
        if {t["Key"]: t["Value"] for t in asked.get("TagSet", [])} != tags:
            tag_set: list[TagTypeDef] = [{"Key": k, "Value": v} for k, v in tags.items()]
            s3.put_object_tagging(
                Bucket=bucket, Key=key, Tagging={"TagSet": tag_set}, **_at(version_id)
            )


class PreconditionFailed(Exception):
    """The file's key is not as it was when its newest version was chosen."""


class KeyChanged(StoreError):
    """... said: nothing was overwritten, and a run again sees what is there now."""


def _seen(head: dict[str, Any] | None) -> tuple[str, object] | None:
    """What tells one object at a key from another."""
    return None if head is None else (head["ETag"], head["LastModified"])


# RGW (16.2.15) URL-decodes UploadPartCopy's x-amz-copy-source twice (CopyObject's once, as S3
# does): the source `a%41b` is looked for as `aAb` (NoSuchKey), and one whose second decoding
# meets a `%` that starts no escape (`100%.csv`) makes the gateway abort, for every client.
_NO_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _copy_part(
    s3: S3Client,
    bucket: str,
    number: int,
    part: dict[str, Any],
    *,
    key: str,
    upload_id: str,
    kms: bool,
    version_id: str | None,
) -> CompletedPartTypeDef:
    """Part `number` of the upload (`version_id`: the version checked, in a versioned bucket),
    copied by the store (UploadPartCopy), or sent through this
    machine (`_through_here`) where the store will not copy it: it answered NoSuchKey for a
    part it has just shown (`_check_parts`), or the part's key holds a `%` that starts no
    escape, which no store is asked to copy (it would abort RGW)."""
    why = f"a '%' in {part['key']} starts no escape, and RGW dies copying it"
    source: CopySourceTypeDef = {"Bucket": bucket, "Key": part["key"]}
    if version_id is not None:
        source["VersionId"] = version_id
    if not _NO_ESCAPE.search(part["key"]):
        with aws_errors(f"copying part {number} into s3://{bucket}/{key}"):
            try:
                copied = s3.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                )
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) != "NoSuchKey":
                    raise
                if _head(s3, bucket, part["key"]) is None:  # gone indeed: not the store's fault
                    raise Broken(
                        f"part {number} ({part['key']}) went while it was copied"
                    ) from None
                why = f"the store answered NoSuchKey to the copy of {part['key']}, which it has"
            else:
                etag = copied["CopyPartResult"]["ETag"]
                if not kms and etag.strip('"') != part["md5"]:
                    raise Broken(f"part {number} was copied with ETag {etag}, not {part['md5']}")
                return {"ETag": etag, "PartNumber": number}
    return _through_here(s3, bucket, number, part, key=key, upload_id=upload_id, kms=kms, why=why,
                         version_id=version_id)  # fmt: skip


def _through_here(
    s3: S3Client,
    bucket: str,
    number: int,
    part: dict[str, Any],
    *,
    key: str,
    upload_id: str,
    kms: bool,
    why: str,
    version_id: str | None,
) -> CompletedPartTypeDef:
    """Part `number` read from the store and sent back into the upload (GET, UploadPart),
    streamed: never held whole (a part is up to 5 GiB). Sent with the MD5 the manifest names
    as its Content-MD5, so the store takes no other bytes (BadDigest), even under SSE-KMS."""
    md5 = part["md5"]
    if not _HEX32.fullmatch(md5):
        raise Broken(f"part {number}'s MD5 {md5!r} is not an MD5")
    logger.warning(
        "part %d of s3://%s/%s goes through this machine (%d bytes): %s",
        number, bucket, key, part["size"], why,
    )  # fmt: skip
    doing = f"sending part {number} through this machine into s3://{bucket}/{key}"
    with (
        aws_errors(doing),
        io.BufferedReader(_Download(s3, bucket, part["key"], part["size"], version_id)) as body,
    ):
        try:
            sent = s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=part["size"],
                ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "BadDigest":
                raise Broken(f"part {number} read from the store is not the MD5 {md5}") from None
            raise
    etag = sent["ETag"]
    if not kms and etag.strip('"') != md5:
        raise Broken(f"part {number} read from the store is not the MD5 {md5} (ETag {etag})")
    return {"ETag": etag, "PartNumber": number}


class _Download(io.RawIOBase):
    """The first `size` bytes of an object, as a file botocore can send: read from a GET as
    they are asked for. botocore reads a body through for its checksum and (over plain http)
    its signature before it sends it: each time it seeks back, a new ranged GET begins."""

    def __init__(
        self, s3: S3Client, bucket: str, key: str, size: int, version_id: str | None = None
    ) -> None:
        super().__init__()
        self._s3, self._bucket, self._key, self._size = s3, bucket, key, size
        self._version = _at(version_id)  # that version (in a versioned bucket), or the current
        self._at = 0
        self._body: StreamingBody | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        at = offset + {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        if at < 0:
            raise ValueError(f"negative seek position {at}")
        if at != self._at:
            self._stop()
            self._at = at
        return self._at

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._at)
        if want <= 0:
            return 0
        if self._body is None:
            where = f"bytes={self._at}-{self._size - 1}"
            self._body = self._s3.get_object(
                Bucket=self._bucket, Key=self._key, Range=where, **self._version
            )["Body"]
        data = self._body.read(want)
        if not data:  # the object is shorter than the manifest says: never send less
            raise Broken(f"s3://{self._bucket}/{self._key} ended before its {self._size} bytes")
        memoryview(buffer)[: len(data)] = data
        self._at += len(data)
        return len(data)

    def close(self) -> None:
        self._stop()
        super().close()

    def _stop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


def _encryption_args(manifest: dict[str, Any]) -> dict[str, Any]:
    fields = {k.lower(): v for k, v in manifest.get("encryption", {}).items()}
    args: dict[str, Any] = {}
    if "x-amz-server-side-encryption" in fields:
        args["ServerSideEncryption"] = fields["x-amz-server-side-encryption"]
    if "x-amz-server-side-encryption-aws-kms-key-id" in fields:
        args["SSEKMSKeyId"] = fields["x-amz-server-side-encryption-aws-kms-key-id"]
    return args


def _delete(s3: S3Client, bucket: str, version: Version, ids: list[str | None]) -> None:
    """The parts, then the manifest: a run cut in between finds the object joined, and tidies.
    `ids`: in a versioned bucket, each part's version to delete (None: none), and the manifest's
    is the one read; else empty, and each is deleted by its key."""
    keys = [p["key"] for p in version.manifest["parts"]]
    objects: list[ObjectIdentifierTypeDef] = (
        [{"Key": k, "VersionId": i} for k, i in zip(keys, ids) if i is not None]
        if ids
        else [{"Key": k} for k in keys]
    )
    with aws_errors(f"deleting the parts of s3://{bucket}/{version.key}"):
        for start in range(0, len(objects), 1000):  # DeleteObjects takes 1,000 keys at most
            batch = objects[start : start + 1000]
            answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            _refused(bucket, version.key, answer.get("Errors", []))
        s3.delete_object(Bucket=bucket, Key=version.manifest_key, **_at(version.read_as))


def _refused(bucket: str, key: str, errors: Sequence[Mapping[str, Any]]) -> None:
    """StoreError for what DeleteObjects answered 200 but did not delete (a version under a
    legal hold or a retention; credentials without s3:DeleteObjectVersion), naming the first
    and how many: never reported as removed while it stays."""
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise StoreError(
            f"s3://{bucket}/{key} is joined, but its part s3://{bucket}/{first.get('Key')} was "
            f"not deleted{more} (the store answered {first.get('Code')}): release its hold, or "
            "give assemble's credentials s3:DeleteObject and s3:DeleteObjectVersion, and run "
            "assemble again to remove the parts"
        )
