"""This instance's own key segment: `POSTBOX_KEY_PREFIX` with its placeholders filled in.

One user-data boots many instances, all with the same grant and prefix; a segment of each
instance's own, after the grant's prefix, keeps two instances' `results/part-0001.bin` apart.
The values come from the machine itself, with no network and no credentials:

- `{instance_id}`: cloud-init's instance data (`v1.instance_id` in the JSON file named by
  `POSTBOX_INSTANCE_DATA`, default /run/cloud-init/instance-data.json);
- `{hostname}`: the host's name;
- `{machine_id}`: /etc/machine-id.

A placeholder that cannot be filled is a start-up error (exit 78), never an empty segment: an
empty one would put every instance's files under the same keys again.

The same values name the instance where a fleet must not act in step (`identity`: the moment an
agent asks for its next grant, agent/renewal.py).
"""

from __future__ import annotations

import json
import re
import socket
import string
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.errors import ConfigError
from agent.policy import MAX_KEY_BYTES
from agent.shown import printable

PLACEHOLDERS = ("instance_id", "hostname", "machine_id")
SAMPLE = {  # values of the kind each placeholder takes, for checking a template ahead of boot
    "instance_id": "i-0123456789abcdef0",
    "hostname": "ip-10-0-0-1",
    "machine_id": "0123456789abcdef0123456789abcdef",
}
MACHINE_ID = Path("/etc/machine-id")
_MAX_SEGMENT_BYTES = 256  # leaves the file's path most of S3's 1,024 bytes
_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # what a filled placeholder may be


def key_segment(
    template: str,
    instance_data: Path,
    *,
    machine_id: Path = MACHINE_ID,
    hostname: Callable[[], str] = socket.gethostname,
) -> str:
    """`template` with each placeholder filled; ConfigError naming what is missing and the fix."""
    sources: dict[str, Callable[[], str]] = {
        "instance_id": lambda: _instance_id(instance_data),
        "machine_id": lambda: _read(machine_id, "machine id", "POSTBOX_KEY_PREFIX's {machine_id}"),
        "hostname": hostname,
    }
    return fill(template, {name: sources[name]() for name in _placeholders(template)})


def identity(
    instance_data: Path,
    *,
    machine_id: Path = MACHINE_ID,
    hostname: Callable[[], str] = socket.gethostname,
) -> str:
    """What tells this instance from the others of its fleet: its instance id, else its machine
    id, else its host name. Never an error: a name two instances share only puts them in step."""
    try:
        return _instance_id(instance_data)
    except ConfigError:
        pass
    try:
        return _read(machine_id, "machine id", "") or hostname()
    except ConfigError:
        return hostname()


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with `values` in place, checked as every key is. Pure (the issuer checks a
    template with sample values before it goes into user-data)."""
    for name in _placeholders(template):
        if not _VALUE.fullmatch(values[name]):
            raise ConfigError(
                f"setting POSTBOX_KEY_PREFIX: {{{name}}} is {printable(values[name])!r}, not 1 to "
                "128 letters, digits, '.', '_' or '-': use another placeholder"
            )
    segment = template.format(**values)
    _check(segment)
    return segment


def _placeholders(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"setting POSTBOX_KEY_PREFIX {printable(template)!r} is not a template ({exc}): "
            "use {instance_id}, {hostname} or {machine_id}, and no other braces"
        ) from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            raise ConfigError(
                f"setting POSTBOX_KEY_PREFIX: {{{printable(name)}}} is not a placeholder: use "
                "{instance_id}, {hostname} or {machine_id}"
            )
        names.append(name)
    return names


def _instance_id(path: Path) -> str:
    text = _read(path, "cloud-init's instance data", "POSTBOX_KEY_PREFIX's {instance_id}")
    try:
        value = json.loads(text)["v1"]["instance_id"]
    except (ValueError, KeyError, TypeError):
        value = None
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"cloud-init's instance data {path} has no v1.instance_id, which POSTBOX_KEY_PREFIX's "
            "{instance_id} needs: set POSTBOX_INSTANCE_DATA, or use {hostname} or {machine_id}"
        )
    return value


def _read(path: Path, what: str, needed_by: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ConfigError(
            f"{what} {path} cannot be read ({reason}), and {needed_by} needs it: fix it or "
            "change POSTBOX_KEY_PREFIX"
        ) from None


def _check(segment: str) -> None:
    """The rules every key follows, for the part every key of this instance shares."""
    why = ""
    if segment.startswith("/") or "//" in segment:
        why = "starts with '/' or holds '//'"
    elif ".." in segment.split("/"):
        why = "holds a '..' segment"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in segment):
        why = "holds control characters"
    elif "${filename}" in segment:
        why = "holds ${filename}, which S3 would replace"
    elif len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES:
        why = f"is over {_MAX_SEGMENT_BYTES} bytes, leaving too little of S3's {MAX_KEY_BYTES}"
    if why:
        raise ConfigError(
            f"setting POSTBOX_KEY_PREFIX {printable(segment)!r} {why}: give a short relative "
            "prefix such as {instance_id}/"
        )
