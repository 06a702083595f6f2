"""Read a grant file: `{"url": ..., "fields": {...}}` as `generate_presigned_post` returns it.

Everything the agent enforces comes from the signed policy in `fields["policy"]`; the unsigned
copies (`fields["key"]`, the optional `bucket` beside them) are never trusted over it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from agent.errors import ConfigError, GrantExpired
from agent.policy import Policy, PolicyError, decode_policy


@dataclass(frozen=True)
class Grant:
    url: str
    fields: Mapping[str, str] = field(repr=False)  # holds the policy and its signature
    policy: Policy = field(repr=False)
    source: Path = Path("-")

    @property
    def prefix(self) -> str:
        prefix = self.policy.key_prefix
        assert prefix is not None, "load_grant refuses grants without a key prefix"
        return prefix

    @property
    def bucket(self) -> Optional[str]:
        return self.policy.bucket

    @property
    def endpoint(self) -> str:
        """Scheme and host of the URL: safe to log."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def form(self, key: str) -> dict[str, str]:
        """The form fields for one object, in the grant's order, with its key in place."""
        return {
            name: (key if name.lower() == "key" else value) for name, value in self.fields.items()
        }

    def ensure_alive(self, now: dt.datetime) -> None:
        if self.policy.seconds_left(now) <= 0:
            raise GrantExpired(
                f"grant {self.source} expired at {self.policy.expiration:%Y-%m-%d %H:%M:%S} UTC: "
                "issue a new one with postbox-issuer grant"
            )


def load_grant(path: Path) -> Grant:
    """Read and check a grant file; ConfigError names the file and what to fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"grant file {path} does not exist: write one with postbox-issuer grant"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"grant file {path} cannot be read: {exc.__class__.__name__}") from None
    try:
        document: Any = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"grant file {path} is not JSON (line {getattr(exc, 'lineno', '?')})"
        ) from None
    return parse_grant(document, path)


def parse_grant(document: Any, source: Path = Path("-")) -> Grant:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"grant file {source} {why}: write it with postbox-issuer grant")

    if not isinstance(document, dict):
        raise bad("is not a JSON object")
    url, fields = document.get("url"), document.get("fields")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise bad('has no "url" with http(s) scheme')
    if not isinstance(fields, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
    ):
        raise bad('has no "fields" object of strings')
    lowered = {name.lower() for name in fields}
    for required in ("key", "policy"):
        if required not in lowered:
            raise bad(f'has no "{required}" in its fields')
    if "file" in lowered:
        raise bad('has a "file" field, which is the upload itself')
    encoded = next(v for k, v in fields.items() if k.lower() == "policy")
    try:
        policy = decode_policy(encoded)
    except PolicyError as exc:
        raise bad(f"has an unreadable policy ({exc})") from None
    if policy.key_prefix is None:
        exact = f" (it allows only the key {policy.exact_key!r})" if policy.exact_key else ""
        raise bad(f'has no ["starts-with", "$key", prefix] condition{exact}')
    return Grant(url=url, fields=dict(fields), policy=policy, source=source)
