"""Decode an S3 POST policy and judge a form against it, as S3 would, before any byte is sent.

Pure: no I/O, no clock. The policy is the grant's single source of truth: the prefix, the size
range, the expiry and every rule the agent enforces come from here, never from unsigned fields.
It is not a signature checker: only the store can tell whether the signature is good.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from agent.errors import PolicyError

# Fields S3 accepts without a condition (AWS: sigv4-HTTPPOSTConstructPolicy, "Conditions").
_UNCONDITIONED = frozenset({"file", "policy", "x-amz-signature", "signature", "awsaccesskeyid"})

# Largest object a POST may create: S3 answers EntityTooLarge above it.
MAX_POST_SIZE = 5 * 1024**3
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class Condition:
    """One rule: `op` is "eq", "starts-with" or "content-length-range"; `field` is lower case."""

    op: str
    field: str
    value: str = ""
    low: int = 0
    high: int = 0

    def describe(self) -> str:
        if self.op == "content-length-range":
            return f"content-length-range {self.low}..{self.high}"
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Policy:
    expiration: dt.datetime
    conditions: tuple[Condition, ...]

    @property
    def key_prefix(self) -> Optional[str]:
        """The prefix every key must start with, or None when the policy names no such rule."""
        prefixes = [c.value for c in self._on("key") if c.op == "starts-with"]
        return max(prefixes, key=len) if prefixes else None

    @property
    def exact_key(self) -> Optional[str]:
        keys = [c.value for c in self._on("key") if c.op == "eq"]
        return keys[0] if keys else None

    @property
    def bucket(self) -> Optional[str]:
        values = [c.value for c in self._on("bucket") if c.op == "eq"]
        return values[0] if values else None

    @property
    def size_range(self) -> tuple[int, int]:
        """The sizes a body may have: the narrowest of the policy's ranges and S3's own limit."""
        low, high = 0, MAX_POST_SIZE
        for c in self.conditions:
            if c.op == "content-length-range":
                low, high = max(low, c.low), min(high, c.high)
        return low, high

    def _on(self, field: str) -> list[Condition]:
        return [c for c in self.conditions if c.field == field]


def decode_policy(encoded: str) -> Policy:
    """Read the base64 JSON policy of a grant's `policy` field."""
    try:
        document = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise PolicyError(f"the policy is not base64-encoded JSON ({exc})") from None
    if not isinstance(document, dict):
        raise PolicyError("the policy is not a JSON object")
    expiration = _parse_expiration(document.get("expiration"))
    raw = document.get("conditions")
    if not isinstance(raw, list):
        raise PolicyError("the policy has no list of conditions")
    return Policy(expiration, tuple(_parse_condition(item) for item in raw))


# The one form S3 reads: UTC, `T`, seconds, optional fraction, `Z` (2026-11-24T18:00:00.000Z).
_EXPIRATION = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")


def _parse_expiration(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise PolicyError("the policy has no expiration")
    found = _EXPIRATION.fullmatch(value)
    try:
        if found is None:
            raise ValueError(value)
        when = dt.datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise PolicyError(
            f"the policy's expiration {value!r} is not in the form S3 reads "
            "(UTC, like 2026-11-24T18:00:00Z or 2026-11-24T18:00:00.000Z)"
        ) from None
    fraction = found.group(2) or ""
    return when.replace(
        microsecond=int(fraction[:6].ljust(6, "0")) if fraction else 0, tzinfo=dt.timezone.utc
    )


def _parse_condition(item: Any) -> Condition:
    if isinstance(item, dict) and len(item) == 1:
        ((field, value),) = item.items()
        return Condition("eq", str(field).lower(), _as_text(value, field))
    if isinstance(item, list) and len(item) == 3:
        op = str(item[0]).lower()
        if op == "content-length-range":
            low, high = item[1], item[2]
            if not (_is_int(low) and _is_int(high)) or not 0 <= int(low) <= int(high):
                raise PolicyError(f"bad content-length-range in the policy: {item!r}")
            return Condition(op, "content-length", low=int(low), high=int(high))
        field = item[1]
        if op in ("eq", "starts-with") and isinstance(field, str) and field.startswith("$"):
            return Condition(op, field[1:].lower(), _as_text(item[2], field))
    raise PolicyError(f"unknown condition in the policy: {item!r}")


def _as_text(value: Any, field: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise PolicyError(f"the policy's condition on {field!r} has no text value")
    return str(value)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.isdigit()


def violations(
    policy: Policy,
    fields: Mapping[str, str],
    content_length: int,
    bucket: Optional[str] = None,
    now: Optional[dt.datetime] = None,
) -> list[str]:
    """Every rule the form would break, in words; empty when S3 should accept it.

    `fields` are the form fields that would be sent (without `file`); `bucket` is the bucket the
    URL names, when known; `now`, when given, is checked against the expiration. Field names
    compare case-insensitively, values exactly. The signature is not checked: only the store can.
    """
    form = {name.lower(): value for name, value in fields.items()}
    found: list[str] = []
    if now is not None and policy.expiration <= now:
        found.append(f"the policy expired at {policy.expiration:%Y-%m-%d %H:%M:%S} UTC")
    for c in policy.conditions:
        broken = _breaks(c, form, content_length, bucket)
        if broken:
            found.append(broken)
    found.extend(_uncovered(policy, form))
    if content_length > MAX_POST_SIZE:
        found.append(f"size {content_length} is over S3's POST limit of {MAX_POST_SIZE} bytes")
    found.extend(_key_rules(form.get("key")))
    return found


def _breaks(
    c: Condition, form: Mapping[str, str], content_length: int, bucket: Optional[str]
) -> str:
    """How the form breaks condition `c`, in words; '' when it keeps it. The bucket is the URL's
    when known (a form need not send a bucket field: S3 takes it from the URL)."""
    if c.op == "content-length-range":
        inside = c.low <= content_length <= c.high
        return "" if inside else f"size {content_length} is outside {c.low}..{c.high} bytes"
    actual = bucket if c.field == "bucket" and bucket is not None else form.get(c.field)
    if actual is None:
        return "" if c.field == "bucket" else f"field {c.field!r} required by the policy is missing"
    if c.op == "eq" and actual != c.value:
        return f"{c.field} {actual!r} is not {c.value!r}"
    if c.op == "starts-with" and not actual.startswith(c.value):
        return f"{c.field} {actual!r} does not start with {c.value!r}"
    return ""


def _key_rules(key: Optional[str]) -> list[str]:
    """Rules on the key beyond the policy's: S3's length limit and its `${filename}` variable."""
    if key is None:
        return []
    found = []
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        found.append(f"key is longer than {MAX_KEY_BYTES} bytes (S3: KeyTooLongError)")
    if "${filename}" in key:
        found.append("key contains ${filename}, which S3 replaces with the file's name")
    return found


def _uncovered(policy: Policy, form: Mapping[str, str]) -> list[str]:
    """S3 refuses a form field that no condition names (but for a few it exempts)."""
    covered = {c.field for c in policy.conditions}
    return [
        f"field {name!r} is not covered by any condition of the policy"
        for name in form
        if name not in covered and name not in _UNCONDITIONED and not name.startswith("x-ignore-")
    ]
