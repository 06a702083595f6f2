"""What an object says about its file, beside its bytes: its Content-Type, its SHA-256 and the
file's modification time, sent as form fields of its POST. Pure.

The agent sends such a field only where the grant's policy has a condition naming it (S3
refuses a field no condition covers), and never over a value the grant's own fields hold (an
operator who signs `{"Content-Type": "text/csv"}` gets that). A grant with none of them uploads
as before, byte for byte. What each field holds:

- `Content-Type`: guessed from the file's name with the standard library's built-in table
  (`mimetypes.MimeTypes()`, never the machine's /etc/mime.types, so every VM guesses alike),
  as the AWS CLI does; `application/octet-stream` when the name says nothing. A part is typed by
  its file's name, a manifest is `application/json`.
- `x-amz-meta-sha256`: the lowercase hex SHA-256 of this object's bytes (the file, the part, the
  manifest); `x-amz-checksum-sha256`: the same digest in base64, S3's own checksum.
- `x-amz-meta-mtime`: the file's modification time as rclone writes it (seconds since 1970,
  up to nine fractional digits, no trailing zero), so `rclone copy` from the bucket restores it.
"""

from __future__ import annotations

import base64
import functools
import mimetypes
from collections.abc import Mapping
from typing import Optional, Union
from xml.etree import ElementTree

from agent.policy import Policy
from agent.shown import printable

CONTENT_TYPE = "Content-Type"
META_SHA256 = "x-amz-meta-sha256"
META_MTIME = "x-amz-meta-mtime"
CHECKSUM_SHA256 = "x-amz-checksum-sha256"
FIELDS = (CONTENT_TYPE, META_SHA256, META_MTIME, CHECKSUM_SHA256)  # in the order they are sent
_SHA256 = frozenset({META_SHA256, CHECKSUM_SHA256})  # those that need the bytes read first

UNKNOWN_TYPE = "application/octet-stream"
MANIFEST_TYPE = "application/json"


def signed(policy: Policy) -> tuple[str, ...]:
    """The per-object fields the policy has a condition on, in FIELDS' order."""
    named = {c.field for c in policy.conditions}
    return tuple(name for name in FIELDS if name.lower() in named)


def needs_sha256(policy: Policy) -> bool:
    """Whether an object under this policy carries its SHA-256: its bytes are read once before
    the form is sent (the form's fields precede the file)."""
    return any(name in _SHA256 for name in signed(policy))


def without_sha256(policy: Policy) -> Policy:
    """The policy without its conditions on the SHA-256 fields: what a form can be judged by
    before the bytes are read (a file the grant refuses anyway is not read for nothing)."""
    kept = tuple(c for c in policy.conditions if c.field not in _SHA256)
    return Policy(policy.expiration, kept)


def content_type(name: str) -> str:
    """The type of a file called `name`, by its suffix; an encoding (`.gz`) is not a type.
    The name is put under a folder so that one such as `data:x.html` is not read as a URL."""
    return _types().guess_type(f"./{name}")[0] or UNKNOWN_TYPE


@functools.cache
def _types() -> mimetypes.MimeTypes:
    """The standard library's built-in table. Making one has `mimetypes` read the machine's
    files into its module-wide table once (not into this one): at the first use, not import."""
    return mimetypes.MimeTypes()


def rclone_time(mtime_ns: int) -> str:
    """A time in nanoseconds since 1970 as rclone's X-Amz-Meta-Mtime holds it: seconds, then up
    to nine fractional digits without trailing zeros (`1765130400.5`, `1765130400`)."""
    sign = "-" if mtime_ns < 0 else ""
    seconds, fraction = divmod(abs(mtime_ns), 10**9)
    digits = f"{fraction:09d}".rstrip("0")
    return f"{sign}{seconds}.{digits}" if digits else f"{sign}{seconds}"


def object_fields(
    policy: Policy,
    given: Mapping[str, str],
    *,
    kind: str,
    mtime_ns: int,
    sha256: Optional[bytes],
) -> dict[str, str]:
    """The per-object fields to add to a form whose grant fields are `given`: each the policy
    names and `given` does not hold. `kind`: the object's Content-Type; `sha256`: the digest of
    its bytes, None only when `needs_sha256(policy)` is false (or to judge the rest first)."""
    held = {name.lower() for name in given}
    values = {CONTENT_TYPE: kind, META_MTIME: rclone_time(mtime_ns)}
    if sha256 is not None:
        values[META_SHA256] = sha256.hex()
        values[CHECKSUM_SHA256] = base64.b64encode(sha256).decode()
    return {
        name: values[name] for name in signed(policy) if name.lower() not in held and name in values
    }


def exact(policy: Policy, field: str) -> Optional[str]:
    """The one value the policy allows in `field` (an exact condition), if it fixes one."""
    values = [c.value for c in policy.conditions if c.field == field and c.op == "eq"]
    return values[0] if values else None


def tags_of(tagging: Optional[str]) -> Union[dict[str, str], str]:
    """The tags of a `tagging` field; the text itself when it is not S3's Tagging XML."""
    if tagging is None:
        return {}
    if "<!" in tagging:  # a DTD or entity is no part of S3's document: shown, never expanded
        return tagging
    try:
        root = ElementTree.fromstring(tagging)  # noqa: S314 (no DTD: refused above)
    except ElementTree.ParseError:
        return tagging
    return {tag.findtext("Key") or "": tag.findtext("Value") or "" for tag in root.iter("Tag")}


def describe_tags(tags: Union[dict[str, str], str]) -> str:
    """`tags_of`'s answer in words, safe for a terminal."""
    if isinstance(tags, str):
        return printable(tags)
    if not tags:
        return "none"
    return printable(", ".join(f"{key}={value}" for key, value in tags.items()))
