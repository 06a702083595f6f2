"""`postbox-issuer assemble`: join the files agents sent in parts (agent/parts.py), server-side.

For each manifest under the prefix: the parts it names are checked (there, of the size and MD5
it says); then CreateMultipartUpload on the file's key (with the encryption the parts are stored
with: what the grant required, by the store's word, never the manifest's),
UploadPartCopy of each part, `copies` at once (no byte passes through this machine: the store
copies, and several copies at once keep it busy as a multipart upload's several streams do), and
CompleteMultipartUpload; the object is checked against the manifest (its size, and its ETag,
which for a multipart object is the MD5 of the parts' MD5s and their count); only then are the
parts and, last, the manifest deleted.

Idempotent: a second run finds nothing; a run that died half-way is finished by the next (an
object already joined is recognised by its size and ETag, and only its leftovers are deleted;
an incomplete upload of the key left by a run that died is aborted); a manifest whose parts are
missing or differ is reported and left untouched. A file without a manifest (still being sent)
is never touched, so it is safe beside running agents.

Each manifest is judged on its own: one the store refuses (exit 4), one that cannot be joined
or breaks a limit (at most 4 MiB, nested no deeper than JSON needs, at most 10,000 parts, each
but the last of 5 MiB to 5 GiB; exit 5), or one whose reading fails otherwise (exit 1) is named
with its key and the run goes on; the run's code is the worst seen, and every file joined is
reported with its size and SHA-256 all the same.

Under SSE-KMS (by the store's word, never the manifest's) an ETag is not an MD5: parts and the
object are checked by their sizes only.

A manifest is written by whoever holds a grant, and assemble runs with the operator's
credentials: it joins only what the manifest's own place allows. The file's key must be the
one the manifest's key is derived from (PREFIX + RELPATH for PREFIX.postbox-parts/RELPATH/
VERSION/manifest.json) and every part must lie beside the manifest, so a manifest can neither
copy another object of the bucket nor write outside the prefix its grant could write.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions

from agent.parts import FORMAT, MANIFEST, MAX_PARTS, MIN_PART, NAMESPACE

__all__ = ["NAMESPACE", "Report", "assemble", "manifests", "multipart_etag"]
from issuer.aws import aws_errors
from issuer.errors import CredentialsError, ExitCode, IssuerError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # boto3-stubs, a development dependency: types only
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef


T = TypeVar("T")
R = TypeVar("R")
COPIES = 8  # parts copied at once: the AWS CLI copies 10 at once, rclone 4
MAX_MANIFEST = 4 * 1024**2  # bytes: 10,000 parts' entries take about 1.5 MB
MAX_PART = 5 * 1024**3  # S3's largest part


class Broken(Exception):
    """A manifest that cannot be joined as it stands: why, in one line."""


@dataclass
class Report:
    assembled: list[str] = field(default_factory=list)  # the files' keys
    finished: list[str] = field(default_factory=list)  # joined by an earlier run: tidied
    would: list[str] = field(default_factory=list)  # --dry-run
    broken: list[tuple[str, str]] = field(default_factory=list)  # (manifest key, why)
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # key: (size, SHA-256)
    exit_code: ExitCode = ExitCode.OK  # the worst seen

    def fail(self, manifest_key: str, why: str, code: ExitCode) -> None:
        self.broken.append((manifest_key, why))
        worst = [ExitCode.OK, ExitCode.PARTS, ExitCode.STORE, ExitCode.FAILURE]
        self.exit_code = max(self.exit_code, code, key=worst.index)


def assemble(
    s3: S3Client,
    bucket: str,
    prefix: str,
    *,
    dry_run: bool = False,
    keep_parts: bool = False,
    copies: int = COPIES,
) -> Report:
    """`copies`: requests at once (HEADs of the parts, then their copies); the client's
    connection pool must hold as many (issuer.aws.s3_client's `connections`)."""
    with ThreadPoolExecutor(copies, thread_name_prefix="assemble") as pool:
        return _assemble(s3, bucket, prefix, pool, dry_run=dry_run, keep_parts=keep_parts)


def _assemble(
    s3: S3Client,
    bucket: str,
    prefix: str,
    pool: ThreadPoolExecutor,
    *,
    dry_run: bool,
    keep_parts: bool,
) -> Report:
    report = Report()
    for manifest_key in manifests(s3, bucket, prefix):
        try:  # each manifest on its own: one that fails, whatever the reason, stops no other
            _one(s3, bucket, manifest_key, pool, report, dry_run=dry_run, keep_parts=keep_parts)
        except Broken as exc:
            report.fail(manifest_key, str(exc), ExitCode.PARTS)
        except CredentialsError:
            raise  # every manifest would fail alike
        except IssuerError as exc:
            report.fail(manifest_key, exc.message, exc.exit_code)
        except Exception as exc:  # a hostile manifest must not end the run
            why = f"unexpected error ({exc.__class__.__name__}: {exc})"
            report.fail(manifest_key, why, ExitCode.FAILURE)
    return report


def _one(
    s3: S3Client,
    bucket: str,
    manifest_key: str,
    pool: ThreadPoolExecutor,
    report: Report,
    *,
    dry_run: bool,
    keep_parts: bool,
) -> None:
    manifest = _read(s3, bucket, manifest_key)
    if _joined(s3, bucket, manifest):
        if not dry_run and not keep_parts:
            _delete(s3, bucket, manifest, manifest_key)
        report.finished.append(manifest["key"])
        report.files[manifest["key"]] = (manifest["size"], manifest["sha256"])
        return
    encryption = _check_parts(s3, bucket, manifest, pool)  # the store's word, never the manifest's
    kms = _kms(encryption)
    if dry_run:
        report.would.append(manifest["key"])
        return
    _join(s3, bucket, manifest, pool, kms=kms, encryption=encryption)
    if not _joined(s3, bucket, manifest):
        raise Broken("the joined object does not match the manifest")
    if not keep_parts:
        _delete(s3, bucket, manifest, manifest_key)
    report.assembled.append(manifest["key"])
    report.files[manifest["key"]] = (manifest["size"], manifest["sha256"])


def manifests(s3: S3Client, bucket: str, prefix: str) -> Iterator[str]:
    """Every manifest's key under `prefix`, and every one of a file whose key is under it: the
    parts of PREFIX/r0/f lie under PREFIX.postbox-parts/r0/f/, beside the grant's prefix (not
    known here: any point of `prefix` may be where it ends)."""
    marker = f"{NAMESPACE}/"
    places = [prefix] + [prefix[:i] + marker + prefix[i:] for i in range(len(prefix))]
    seen: set[str] = set()
    for place in places:
        with aws_errors(f"listing s3://{bucket}/{place}"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=place)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if marker in key and key.endswith(f"/{MANIFEST}") and key not in seen:
                        seen.add(key)
                        yield key


def _read(s3: S3Client, bucket: str, key: str) -> dict[str, Any]:
    """The manifest, read with limits (its size, its depth, its parts' count and sizes): it is
    anybody's with a grant."""
    with aws_errors(f"reading s3://{bucket}/{key}"):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_MANIFEST + 1)
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
    return dict(manifest)


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
    if sum(p["size"] for p in parts) != manifest["size"]:
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
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
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


def _check_parts(
    s3: S3Client, bucket: str, manifest: dict[str, Any], pool: ThreadPoolExecutor
) -> dict[str, Any]:
    """Broken unless every part is there with its size and MD5; the encryption the parts are
    stored with, as CreateMultipartUpload's arguments. Those are the store's word, the grant's
    policy enforced when the parts came: a manifest is anybody's with a grant, and one naming
    a KMS key of its own choosing must not have the operator's credentials encrypt with it."""

    def look(part: dict[str, Any]) -> dict[str, Any] | None:
        with aws_errors(f"looking at s3://{bucket}/{part['key']}"):
            return _head(s3, bucket, part["key"])

    heads = _each(pool, look, manifest["parts"])
    for number, (part, head) in enumerate(zip(manifest["parts"], heads), 1):
        if head is None:
            raise Broken(f"part {number} ({part['key']}) is missing")
    stored = {(h.get("ServerSideEncryption", ""), h.get("SSEKMSKeyId", "")) for h in heads if h}
    if len(stored) > 1:
        raise Broken("its parts are not all stored with the same encryption")
    ((algorithm, key_id),) = stored
    claimed = _encryption_args(manifest).get("ServerSideEncryption", "")
    if claimed and algorithm and claimed != algorithm:
        raise Broken(f"it says {claimed} and its parts are stored with {algorithm}")
    encryption = {"ServerSideEncryption": algorithm} if algorithm else {}
    encryption |= {"SSEKMSKeyId": key_id} if key_id else {}
    kms = _kms(encryption)  # a manifest claiming SSE-KMS must not turn the MD5 checks off
    for number, (part, head) in enumerate(zip(manifest["parts"], heads), 1):
        assert head is not None
        if head["ContentLength"] != part["size"]:
            raise Broken(f"part {number} is {head['ContentLength']} bytes, not {part['size']}")
        if not kms and head["ETag"].strip('"') != part["md5"]:
            raise Broken(f"part {number}'s ETag {head['ETag']} is not the MD5 {part['md5']}")
    return encryption


def _kms(encryption: dict[str, Any]) -> bool:
    """Encrypted with SSE-KMS (CreateMultipartUpload's arguments): ETags are not MD5s."""
    return str(encryption.get("ServerSideEncryption", "")).startswith("aws:kms")


def multipart_etag(md5s: list[str]) -> str:
    """S3's ETag of an object joined from parts with these MD5s."""
    joined = b"".join(bytes.fromhex(md5) for md5 in md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(md5s)}"  # noqa: S324  (S3's own rule)


def _joined(s3: S3Client, bucket: str, manifest: dict[str, Any]) -> bool:
    """The file's object is there, as the manifest says it must be (its ETag checked unless the
    store says it is under SSE-KMS)."""
    with aws_errors(f"looking at s3://{bucket}/{manifest['key']}"):
        head = _head(s3, bucket, manifest["key"])
    if head is None or head["ContentLength"] != manifest["size"]:
        return False
    expected = multipart_etag([p["md5"] for p in manifest["parts"]])
    return _kms(dict(head)) or head["ETag"].strip('"') == expected


def _join(
    s3: S3Client,
    bucket: str,
    manifest: dict[str, Any],
    pool: ThreadPoolExecutor,
    *,
    kms: bool,
    encryption: dict[str, Any],
) -> None:
    key = manifest["key"]
    with aws_errors(f"joining s3://{bucket}/{key}"):
        for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            if upload["Key"] == key:  # left by a run that died: abort it
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **encryption)["UploadId"]

        def copy(numbered: tuple[int, dict[str, Any]]) -> CompletedPartTypeDef:
            number, part = numbered
            return _copy_part(s3, bucket, number, part, key=key, upload_id=upload_id, kms=kms)

        try:  # no copy is under way when the upload is aborted: none lands after the abort
            done = _each(pool, copy, list(enumerate(manifest["parts"], 1)))
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise


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
) -> CompletedPartTypeDef:
    """Part `number` of the upload, copied by the store (UploadPartCopy), or sent through this
    machine (`_through_here`) where the store will not copy it: it answered NoSuchKey for a
    part it has just shown (`_check_parts`), or the part's key holds a `%` that starts no
    escape, which no store is asked to copy (it would abort RGW)."""
    why = f"a '%' in {part['key']} starts no escape, and RGW dies copying it"
    if not _NO_ESCAPE.search(part["key"]):
        with aws_errors(f"copying part {number} into s3://{bucket}/{key}"):
            try:
                copied = s3.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": part["key"]},
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchKey":
                    raise
                why = f"the store answered NoSuchKey to the copy of {part['key']}, which it has"
            else:
                etag = copied["CopyPartResult"]["ETag"]
                if not kms and etag.strip('"') != part["md5"]:
                    raise Broken(f"part {number} was copied with ETag {etag}, not {part['md5']}")
                return {"ETag": etag, "PartNumber": number}
    return _through_here(s3, bucket, number, part, key=key, upload_id=upload_id, kms=kms, why=why)


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
) -> CompletedPartTypeDef:
    """Part `number` read from the store and sent back into the upload (GET, UploadPart),
    streamed: never held whole (a part is up to 5 GiB). Sent with the MD5 the manifest names
    as its Content-MD5, so the store takes no other bytes (BadDigest), even under SSE-KMS."""
    md5 = part["md5"]
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise Broken(f"part {number}'s MD5 {md5!r} is not an MD5")
    logger.warning(
        "part %d of s3://%s/%s goes through this machine (%d bytes): %s",
        number, bucket, key, part["size"], why,
    )  # fmt: skip
    doing = f"sending part {number} through this machine into s3://{bucket}/{key}"
    with (
        aws_errors(doing),
        io.BufferedReader(_Download(s3, bucket, part["key"], part["size"])) as body,
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
            if exc.response.get("Error", {}).get("Code") == "BadDigest":
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

    def __init__(self, s3: S3Client, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._s3, self._bucket, self._key, self._size = s3, bucket, key, size
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
            self._body = self._s3.get_object(Bucket=self._bucket, Key=self._key, Range=where)[
                "Body"
            ]
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


def _delete(s3: S3Client, bucket: str, manifest: dict[str, Any], manifest_key: str) -> None:
    """The parts, then the manifest: a run cut in between finds the object joined, and tidies."""
    keys = [p["key"] for p in manifest["parts"]]
    with aws_errors(f"deleting the parts of s3://{bucket}/{manifest['key']}"):
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        s3.delete_object(Bucket=bucket, Key=manifest_key)
