"""Read a grant file. Two kinds:

- a POST grant, `{"url": ..., "fields": {...}}` as `generate_presigned_post` returns it: any
  number of files under a key prefix. Everything the agent enforces comes from the signed policy
  in `fields["policy"]`; the unsigned copies (`fields["key"]`, a `bucket` beside them) are never
  trusted over it.
- a PUT grant, `{"url": "<presigned PUT URL>", "headers": {...}}`: one file, one key. Its expiry
  comes from the URL's signed `X-Amz-Date` and `X-Amz-Expires`; `headers` are the ones the URL
  was signed with (a Content-Type, say), which the upload must send as they are.

Both offer the same surface to the rest of the agent: `key_for`, `size_range`, `expiration`.
What S3 checks of a grant before its signature (the signature fields, the bucket, a presigned
URL's expiry), the agent checks in agent/signed.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union
from urllib.parse import parse_qs, unquote, urlsplit

from agent.errors import ConfigError, PolicyError, PreflightError
from agent.files import kind_of
from agent.keys import PARTS_NAMESPACE, object_key
from agent.policy import MAX_POST_SIZE, Policy, decode_policy
from agent.shown import printable
from agent.signed import presigned_expiry, signature_fields, wrong_bucket


class _Lifetime:
    """Expiry arithmetic shared by both kinds of grant."""

    url: str
    source: Path
    renew_url: Optional[str] = None

    @property
    def expiration(self) -> dt.datetime:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        """Scheme and host of the URL: safe to log."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def seconds_left(self, now: dt.datetime) -> float:
        return (self.expiration - now).total_seconds()

    @property
    def identity(self) -> str:
        """A digest of what was signed: tells one grant from another, reveals nothing."""
        return hashlib.sha256(self._signed().encode("utf-8")).hexdigest()[:32]

    def _signed(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Grant(_Lifetime):
    url: str
    fields: Mapping[str, str] = field(repr=False)  # holds the policy and its signature
    policy: Policy = field(repr=False)
    source: Path = Path("-")
    # Where the operator publishes the next grant (a signed GET URL: agent/renewal.py).
    renew_url: Optional[str] = field(default=None, repr=False)

    @property
    def prefix(self) -> str:
        prefix = self.policy.key_prefix
        assert prefix is not None, "load_grant refuses grants without a key prefix"
        return prefix

    single_key = None  # any number of keys under the prefix

    @property
    def bucket(self) -> Optional[str]:
        return self.policy.bucket

    @property
    def expiration(self) -> dt.datetime:
        return self.policy.expiration

    @property
    def size_range(self) -> tuple[int, int]:
        return self.policy.size_range

    def key_for(self, relpath: PurePosixPath, segment: str = "") -> str:
        """The key: the signed prefix, this instance's `segment` (POSTBOX_KEY_PREFIX), the path.
        Never among the parts of files sent in parts (agent/parts.py): that name is refused."""
        if PARTS_NAMESPACE in relpath.parts:
            raise PreflightError(
                f"path {printable(str(relpath))} would fall among the parts of files sent in "
                f"parts ({PARTS_NAMESPACE}/): rename it"
            )
        return object_key(self.prefix + segment, relpath)

    def _signed(self) -> str:
        return next(v for k, v in self.fields.items() if k.lower() == "policy")

    @property
    def redirect(self) -> Optional[str]:
        """Where the store sends its answer on success (303), if the grant asks for that:
        `success_action_redirect`, or the older `redirect`."""
        for name in ("success_action_redirect", "redirect"):
            value = next((v for k, v in self.fields.items() if k.lower() == name), None)
            if value:
                return value
        return None

    def form(self, key: str) -> dict[str, str]:
        """The form fields for one object, in the grant's order, with its key in place."""
        return {
            name: (key if name.lower() == "key" else value) for name, value in self.fields.items()
        }


@dataclass(frozen=True)
class PutGrant(_Lifetime):
    """A presigned PUT URL: one object, whichever file settles first."""

    url: str = field(repr=False)  # the query holds the signature
    key: str
    expires_at: dt.datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    source: Path = Path("-")

    prefix = ""
    bucket = None

    def _signed(self) -> str:
        return self.url

    @property
    def single_key(self) -> str:
        return self.key

    @property
    def expiration(self) -> dt.datetime:
        return self.expires_at

    @property
    def size_range(self) -> tuple[int, int]:
        return 0, MAX_POST_SIZE  # a single PUT is capped at 5 GiB too

    def key_for(self, relpath: PurePosixPath, segment: str = "") -> str:
        """The one key, whatever the path (a PUT URL names it; `segment` has no place in it)."""
        object_key("", relpath)  # the same refusals for a name that cannot be sent faithfully
        return self.key


AnyGrant = Union[Grant, PutGrant]


def load_grant(path: Path) -> AnyGrant:
    """Read and check a grant file; ConfigError names the file and what to fix.

    A grant is a bearer token: the file must be private to the agent's user (mode 0600 or 0400,
    owned by it), or the agent refuses it rather than trust what others could read or rewrite.
    """
    try:
        # Never blocks (a FIFO opens at once with O_NONBLOCK) and is read only once fstat says
        # it is a regular file, as watched files are (agent.files).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(
                    f"grant file {path} is a {kind_of(st.st_mode)}, not a regular file: "
                    "write the grant as a file with postbox-issuer grant"
                )
            _ensure_private(path, st)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as stream:
            text = stream.read().decode("utf-8")
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


def _ensure_private(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"grant file {path} belongs to user {st.st_uid}, not to the agent's user "
            f"{os.geteuid()}: chown it to the agent's user"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"grant file {path} has mode {stat.S_IMODE(st.st_mode):04o}, readable by others: "
            f"chmod 600 {path}"
        )


def parse_grant(document: Any, source: Path = Path("-")) -> AnyGrant:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"grant file {source} {why}: write it with postbox-issuer grant")

    if not isinstance(document, dict):
        raise bad("is not a JSON object")
    url = document.get("url")
    if not isinstance(url, str) or not _is_http_url(url):
        raise bad('has no "url" with http(s) scheme')
    if document.get("fields") is None and "X-Amz-Signature" in parse_qs(urlsplit(url).query):
        return _parse_put_grant(url, document.get("headers", {}), document.get("key"), source)
    fields, wrong = _form_fields(document.get("fields"))
    if wrong:
        raise bad(wrong)
    encoded = next(v for k, v in fields.items() if k.lower() == "policy")
    try:
        policy = decode_policy(encoded)
    except PolicyError as exc:
        raise bad(f"has an unreadable policy ({exc})") from None
    if policy.key_prefix is None:
        exact = f" (it allows only the key {policy.exact_key!r})" if policy.exact_key else ""
        raise bad(f'has no ["starts-with", "$key", prefix] condition{exact}')
    refused = signature_fields(fields, policy) or wrong_bucket(url, policy)
    if refused:
        raise bad(f"would be refused by S3: {refused}")
    renew_url = document.get("renew")
    if renew_url is not None and not (isinstance(renew_url, str) and _is_http_url(renew_url)):
        raise bad('has a "renew" that is not an http(s) URL')
    return Grant(url=url, fields=fields, policy=policy, source=source, renew_url=renew_url)


def _is_http_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


def _form_fields(value: object) -> tuple[dict[str, str], str]:
    """A POST grant's "fields" as a form, and what is wrong with them ('' if nothing): strings
    only, a key and a policy among them, and no "file" (the upload itself, which the agent adds)."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return {}, 'has no "fields" object of strings'
    fields: dict[str, str] = dict(value)
    lowered = {name.lower() for name in fields}
    missing = [name for name in ("key", "policy") if name not in lowered]
    if missing:
        return fields, f'has no "{missing[0]}" in its fields'
    return fields, 'has a "file" field, which is the upload itself' if "file" in lowered else ""


def _parse_put_grant(url: str, headers: Any, named: Any, source: Path) -> PutGrant:
    """The object is the URL's path (signed); a `key` beside it names it, if the path ends with it
    (a path-style URL's path also holds the bucket)."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"grant file {source} {why}: write it with postbox-issuer url put")

    expires_at = presigned_expiry(url)
    if expires_at is None:
        raise bad("has a URL without a valid X-Amz-Date and X-Amz-Expires")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise bad('has "headers" that are not an object of strings')
    key = unquote(urlsplit(url).path).lstrip("/")
    if isinstance(named, str) and named and key.endswith("/" + named):
        key = named
    if not key:
        raise bad("has a URL that names no object")
    return PutGrant(url=url, key=key, expires_at=expires_at, headers=dict(headers), source=source)


def describe_keys(grant: AnyGrant, segment: str = "") -> str:
    """Where the grant lets this agent write, in words (`segment`: POSTBOX_KEY_PREFIX, filled)."""
    if grant.single_key is not None:
        unused = " (POSTBOX_KEY_PREFIX does not apply to it)" if segment else ""
        return f"as the one object {printable(grant.single_key)}{unused}"
    return f"under prefix {printable(grant.prefix + segment)}"
