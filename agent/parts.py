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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Optional

from agent.errors import PreflightError
from agent.files import FileVersion
from agent.keys import PARTS_NAMESPACE, object_key

NAMESPACE = PARTS_NAMESPACE
MANIFEST = "manifest.json"
MIN_PART = 5 * 1024**2  # UploadPartCopy: every part but the last
MAX_PARTS = 10_000
FORMAT = 1  # the manifest's format; assemble refuses one it does not know


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
) -> Plan:
    """The parts of `version` of the file at `relpath` (key `key`), under the prefix `base`
    (the grant's and this instance's): `part_bytes` each, or more where 10,000 parts need it,
    never over `largest` nor under `smallest` (the grant's size range). PreflightError when no
    plan can follow the rules: it names the limit."""
    size = version.size
    part = max(part_bytes, MIN_PART, math.ceil(size / MAX_PARTS))
    if largest < MIN_PART:
        raise PreflightError(
            f"size {size} needs parts, and the grant's largest size {largest} is under the "
            f"smallest part S3 can join ({MIN_PART}): issue a grant with --max-size 5MiB or more"
        )
    if math.ceil(size / MAX_PARTS) > largest:
        raise PreflightError(
            f"size {size} is over {MAX_PARTS} parts of the grant's largest size {largest}"
        )
    part = min(part, largest)
    count = max(1, math.ceil(size / part))
    sizes = [part] * (count - 1) + [size - part * (count - 1)]
    if count > 1 and sizes[-1] < smallest:  # a last part under the grant's smallest size
        if sizes[-2] + sizes[-1] <= largest:  # joins the one before
            sizes[-2:] = [sizes[-2] + sizes[-1]]
            count -= 1
        else:  # or takes from it what it lacks
            lacking = smallest - sizes[-1]
            sizes[-2] -= lacking
            sizes[-1] += lacking
            if sizes[-2] < max(MIN_PART, smallest):
                raise PreflightError(
                    f"size {size} cannot be cut into parts within the grant's size range "
                    f"{smallest}..{largest}: issue a grant with a lower --min-size"
                )
    name = version_name(version, sizes)
    folder = PurePosixPath(NAMESPACE, *relpath.split("/"), name)
    parts = tuple(
        Part(
            n + 1,
            n * part if n < count - 1 else size - sizes[-1],
            sizes[n],
            object_key(base, folder / f"{n + 1:05d}"),
        )
        for n in range(count)
    )
    return Plan(key, name, parts, object_key(base, folder / MANIFEST))


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
    mtime = dt.datetime.fromtimestamp(version.mtime_ns / 1e9, dt.timezone.utc)
    document: dict[str, Any] = {
        "postbox_manifest": FORMAT,
        "key": plan.key,
        "size": version.size,
        "sha256": sha256,
        "mtime": mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "part_size": plan.part_size,
        "parts": [
            {"key": p.key, "offset": p.offset, "size": p.size, "md5": md5s[p.number]}
            for p in plan.parts
        ],
        "encryption": encryption or {},
    }
    body = json.dumps(document, indent=1).encode()
    return body + b" " * (smallest - len(body))
