"""A file too large for one POST, sent in parts: the plan, the keys, the manifest. Pure.

A grant cannot start a multipart upload (that needs credentials), so a large file goes as
ordinary objects, its parts, under the same grant; the operator's side joins them server-side
(`postbox-issuer assemble`: UploadPartCopy of each part, in order). Everything of one file
version lives under a namespace of its own beside the file's key:

    PREFIX SEGMENT .postbox-parts/ RELPATH / VERSION / 00001, 00002, ..., manifest.json

`.postbox-parts` starts with a dot, which no file of the watch dir's can (such names are never
sent), so a file's key never falls among parts. VERSION names the file's version (size, mtime,
inode, ctime) and how it is cut (the part size, the last part's): a file that changes starts
over under a new name, and so does one whose parts a new setting or grant cuts otherwise, so
parts of different cuts are never mixed in. The manifest, stored last, is the commit point:
the file's size, each part's key, offset, size and MD5 (the ETag the store answered), the
SHA-256 of the whole file and its time. `assemble` joins only what a manifest names.

S3's rules for UploadPartCopy shape the plan: every part but the last is at least 5 MiB, at most
10,000 parts, each at most 5 GiB; and a part is a POST under the grant, so within the grant's
size range too: a last part under the grant's smallest size joins the part before (or, where
that would be over the largest, takes the bytes it lacks from it), and the manifest is padded
with spaces (JSON allows them) to that size.

The manifest is a POST under the grant too, stored after every part: its size is known from the
plan (every MD5 has 32 hex digits, the SHA-256 64, the time a fixed format), so the plan takes
parts large enough for it to fit the grant's largest size, and a file for which no cut does is
refused before its first part. No manifest is ever over MAX_MANIFEST, the largest any plan makes
(10,000 parts, keys as long as S3 allows of characters JSON escapes): assemble reads that much.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Optional

from agent.errors import PreflightError
from agent.keys import PARTS_NAMESPACE, object_key
from agent.policy import MAX_KEY_BYTES
from agent.versions import FileVersion

NAMESPACE = PARTS_NAMESPACE
MANIFEST = "manifest.json"
MIN_PART = 5 * 1024**2  # UploadPartCopy: every part but the last
MAX_PART = 5 * 1024**3  # UploadPartCopy: every part
MAX_PARTS = 10_000
FORMAT = 1  # the manifest's format; assemble refuses one it does not know
_VERSION_DIGITS = 16  # hex digits of a version's name
# The encryption fields a manifest records, as JSON: the grant's (a KMS key's ID or ARN is at most
# 2048 characters); a grant whose fields take more cannot carry a file in parts.
ENCRYPTION_ROOM = 8 * 1024


@dataclass(frozen=True)
class Part:
    number: int  # from 1
    offset: int
    size: int
    key: str


@dataclass(frozen=True)
class Plan:
    """How one version of a file goes in parts, and where."""

    key: str  # the file's own key: what assemble makes
    version: str  # the version's name in the keys
    parts: tuple[Part, ...]
    manifest_key: str

    @property
    def part_size(self) -> int:
        return self.parts[0].size


def version_name(version: FileVersion, sizes: list[int]) -> str:
    """The name of one version of a file cut into parts of `sizes` (each but the last is the
    first's size, or the one before the last is shorter)."""
    cut = f"{sizes[0]}:{sizes[-2] if len(sizes) > 1 else 0}:{sizes[-1]}"
    values = f"{version.size}:{version.mtime_ns}:{version.inode}:{version.ctime_ns}:{cut}"
    return hashlib.sha256(values.encode()).hexdigest()[:16]


def plan(
    base: str,
    relpath: str,
    key: str,
    version: FileVersion,
    *,
    part_bytes: int,
    largest: int,
    smallest: int = 0,
    encryption: Optional[dict[str, str]] = None,
) -> Plan:
    """The parts of `version` of the file at `relpath` (key `key`), under the prefix `base`
    (the grant's and this instance's): `part_bytes` each, or more where 10,000 parts need it
    or the manifest (with the grant's `encryption` fields) would not fit the grant otherwise,
    never over `largest` nor under `smallest` (the grant's size range). PreflightError when no
    plan can follow the rules: it names the limit. Nothing is read or sent."""
    size = version.size
    if largest < MIN_PART:
        raise PreflightError(
            f"size {size} needs parts, and the grant's largest size {largest} is under the "
            f"smallest part S3 can join ({MIN_PART}): issue a grant with --max-size 5MiB or more"
        )
    largest = min(largest, MAX_PART)
    if math.ceil(size / MAX_PARTS) > largest:
        raise PreflightError(
            f"size {size} is over {MAX_PARTS} parts of the grant's largest size {largest}"
        )
    folder = PurePosixPath(NAMESPACE, *relpath.split("/"))
    unnamed = folder / ("0" * _VERSION_DIGITS)  # the keys' length does not depend on the name
    object_key(base, unnamed / MANIFEST)  # the longest: a path too long is refused for it first
    any_part = object_key(base, unnamed / "00001")
    shape = _Shape(key, any_part, version, encryption or {})
    part = min(max(part_bytes, MIN_PART, math.ceil(size / MAX_PARTS)), largest)
    sizes = _cut(size, part, largest, smallest)
    room = min(largest, MAX_MANIFEST)
    if max(shape.measure(sizes), smallest) > room:
        sizes = _fewer_parts(shape, part, largest, smallest, room)
    name = version_name(version, sizes)
    offsets = [0, *itertools.accumulate(sizes[:-1])]
    parts = tuple(
        Part(n + 1, offsets[n], sizes[n], object_key(base, folder / name / f"{n + 1:05d}"))
        for n in range(len(sizes))
    )
    return Plan(key, name, parts, object_key(base, folder / name / MANIFEST))


def _cut(size: int, part: int, largest: int, smallest: int) -> list[int]:
    """The sizes of the parts of `size` bytes cut into parts of `part`, within the grant's size
    range `smallest`..`largest`; PreflightError when the last part cannot be."""
    count = max(1, math.ceil(size / part))
    sizes = [part] * (count - 1) + [size - part * (count - 1)]
    if count > 1 and sizes[-1] < smallest:  # a last part under the grant's smallest size
        if sizes[-2] + sizes[-1] <= largest:  # joins the one before
            sizes[-2:] = [sizes[-2] + sizes[-1]]
        else:  # or takes from it what it lacks
            lacking = smallest - sizes[-1]
            sizes[-2] -= lacking
            sizes[-1] += lacking
            if sizes[-2] < max(MIN_PART, smallest):
                raise PreflightError(
                    f"size {size} cannot be cut into parts within the grant's size range "
                    f"{smallest}..{largest}: issue a grant with a lower --min-size"
                )
    return sizes


def _fewer_parts(shape: _Shape, part: int, largest: int, smallest: int, room: int) -> list[int]:
    """The cut with the most parts (larger than `part`, up to `largest`) whose manifest fits in
    `room` bytes; PreflightError naming the manifest's size when none does."""

    size = shape.version.size

    def fitting(count: int) -> Optional[list[int]]:
        try:
            sizes = _cut(size, min(math.ceil(size / count), largest), largest, smallest)
        except PreflightError:
            return None
        return sizes if max(shape.measure(sizes), smallest) <= room else None

    low, high = math.ceil(size / largest), math.ceil(size / part)  # high: does not fit
    best = fitting(low)
    if best is None:
        fewest = _cut(size, largest, largest, 0)
        needed = max(shape.measure(fewest), smallest)
        if room < largest:  # over what assemble reads, whatever the grant
            fix = (
                f"issue a grant with a --min-size of {MAX_MANIFEST} bytes or less"
                if smallest > room
                else "issue a grant with fewer encryption fields"
            )
            raise PreflightError(
                f"size {size} needs a manifest of {needed} bytes (in {len(fewest)} parts), over "
                f"the {MAX_MANIFEST} bytes postbox-issuer assemble reads: {fix}"
            )
        raise PreflightError(
            f"size {size} needs a manifest of {needed} bytes (in {len(fewest)} parts of the "
            f"grant's largest size), over the grant's largest size {largest}: shorten the file's "
            "path, or issue a grant with a larger --max-size"
        )
    while high - low > 1:  # the most parts that fit: low fits, high does not
        middle = (low + high) // 2
        sizes = fitting(middle)
        if sizes is None:
            high = middle
        else:
            low, best = middle, sizes
    return best


@dataclass(frozen=True)
class _Shape:
    """What a manifest holds but its parts' numbers: its length follows from them."""

    key: str
    part_key: str  # any part's: all have the same length, and the same characters to escape
    version: FileVersion
    encryption: dict[str, str]

    @functools.cached_property
    def rendered(self) -> tuple[int, int]:
        """The manifest's lengths with one part and with two, every number of one digit."""
        one, two = (
            _render(self.key, self.version, [(self.part_key, 0, 0, "0" * 32)] * count,
                    sha256="0" * 64, part_size=0, encryption=self.encryption)
            for count in (1, 2)
        )  # fmt: skip
        return len(one), len(two)

    def measure(self, sizes: list[int]) -> int:
        """The manifest's length in bytes (unpadded) for parts of `sizes`: each part adds what
        the second added, and each number its digits past the first."""
        one, two = self.rendered
        offsets = [0, *itertools.accumulate(sizes[:-1])]
        digits = sum(len(str(o)) for o in offsets) + sum(len(str(s)) for s in sizes)
        extra = digits - 2 * len(sizes) + len(str(sizes[0])) - 1  # the part size's too
        return one + (two - one) * (len(sizes) - 1) + extra


def manifest(
    plan: Plan,
    version: FileVersion,
    md5s: dict[int, str],
    sha256: str,
    encryption: Optional[dict[str, str]] = None,
    *,
    smallest: int = 0,
) -> bytes:
    """The manifest, once every part is stored (`md5s`: each part's, by number), padded with
    spaces to `smallest` bytes (the grant's smallest size)."""
    parts = [(p.key, p.offset, p.size, md5s[p.number]) for p in plan.parts]
    body = _render(
        plan.key,
        version,
        parts,
        sha256=sha256,
        part_size=plan.part_size,
        encryption=encryption or {},
    )
    return body + b" " * (smallest - len(body))


def manifest_size(
    plan: Plan,
    version: FileVersion,
    encryption: Optional[dict[str, str]] = None,
    *,
    smallest: int = 0,
) -> int:
    """The size of `plan`'s manifest (`manifest`'s), known before any part is sent."""
    shape = _Shape(plan.key, plan.parts[0].key, version, encryption or {})
    return max(shape.measure([p.size for p in plan.parts]), smallest)


def _render(
    key: str,
    version: FileVersion,
    parts: list[tuple[str, int, int, str]],  # key, offset, size, MD5
    *,
    sha256: str,
    part_size: int,
    encryption: dict[str, str],
) -> bytes:
    """The manifest's JSON, unpadded. Non-ASCII characters are written as themselves (UTF-8),
    so only `"` and `\\` take two bytes where a key has one."""
    document: dict[str, Any] = {
        "postbox_manifest": FORMAT,
        "key": key,
        "size": version.size,
        "sha256": sha256,
        "mtime": _mtime(version),
        "part_size": part_size,
        "parts": [
            {"key": k, "offset": offset, "size": size, "md5": md5} for k, offset, size, md5 in parts
        ],
        "encryption": encryption,
    }
    return json.dumps(document, indent=1, ensure_ascii=False).encode()


def _mtime(version: FileVersion) -> str:
    """The file's time as the manifest writes it; PreflightError for one past the years a date
    can hold (1 to 9999)."""
    try:
        mtime = dt.datetime.fromtimestamp(version.mtime_ns / 1e9, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise PreflightError(
            f"its modification time ({version.mtime_ns / 1e9:.0f} s from 1970) is outside the "
            "years 1 to 9999 its manifest can record: set it with touch"
        ) from None
    return mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _largest_manifest() -> int:
    """MAX_MANIFEST: the manifest of 10,000 parts of 5 GiB, of a file whose key is as long as
    the manifest's own key (1024 bytes) allows, every byte of it a `"` (escaped: two bytes), its
    encryption fields ENCRYPTION_ROOM bytes of JSON."""
    longest = MAX_KEY_BYTES - len(f"{NAMESPACE}//{'0' * _VERSION_DIGITS}/{MANIFEST}")
    escaped = '"' * longest  # the file's key; a part's holds its characters and the namespace's
    part_key = f"{escaped}{NAMESPACE}//{'0' * _VERSION_DIGITS}/00001"
    latest = FileVersion(MAX_PARTS * MAX_PART, 253402300799 * 10**9, 0, 0)  # 9999-12-31T23:59:59Z
    shape = _Shape(escaped, part_key, latest, {})
    return shape.measure([MAX_PART] * MAX_PARTS) - len("{}") + ENCRYPTION_ROOM


MAX_MANIFEST = _largest_manifest()  # bytes: postbox-issuer assemble reads no more
