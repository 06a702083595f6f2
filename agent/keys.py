"""Map a file under the watch dir to its object key, and tell temporary names apart. Pure.

The rule (README, "Keys"): key = policy prefix + the path relative to the watch dir, `/`-separated.
A path that cannot make a key S3 would store under exactly that name is refused, never rewritten:
invalid UTF-8, control characters, `${filename}` (S3 would substitute it), or over 1024 bytes.
"""

from __future__ import annotations

import unicodedata
from pathlib import PurePosixPath
from typing import Union

from agent.errors import PreflightError
from agent.policy import MAX_KEY_BYTES
from agent.shown import printable

TEMPORARY_SUFFIXES = (".tmp", ".part")
# Where the parts of a file sent in parts go (agent/parts.py), beside the keys of files: no
# file's own path may hold this name.
PARTS_NAMESPACE = ".postbox-parts"


def is_temporary(relpath: Union[str, PurePosixPath]) -> bool:
    """True for a name a writer has not finished with: `.*`, `*.tmp`, `*.part`, in any component
    (`relpath` as a path, or as a `/`-separated string)."""
    parts = relpath.split("/") if isinstance(relpath, str) else relpath.parts
    return any(part.startswith(".") or part.endswith(TEMPORARY_SUFFIXES) for part in parts)


def is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as lone surrogates):
    no S3 key, journal row or log line can hold it as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def object_key(prefix: str, relpath: PurePosixPath) -> str:
    """The key for `relpath`, or PreflightError saying why the file cannot have one."""
    if relpath.is_absolute() or not relpath.parts or ".." in relpath.parts:
        raise PreflightError(f"path {printable(str(relpath))} is not inside the watch dir")
    key = prefix + "/".join(relpath.parts)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise PreflightError(f"name {printable(key)} is not valid UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise PreflightError(f"name {printable(key)} contains control characters")
    if "${filename}" in key:
        raise PreflightError(
            f"name {printable(key)} contains ${{filename}}, which S3 would replace"
        )
    if size > MAX_KEY_BYTES:
        raise PreflightError(f"key for {printable(key[:60])}... is {size} bytes, over S3's 1024")
    return key
