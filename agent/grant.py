"""Read a grant file. Two kinds:

- a POST grant, `{"url": ..., "fields": {...}}` as `generate_presigned_post` returns it: any
  number of files under a key prefix. Everything the agent enforces comes from the signed policy
  in `fields["policy"]`; the unsigned copies (`fields["key"]`, a `bucket` beside them) are never
  trusted over it.
- a PUT grant, `{"url": "<presigned PUT URL>", "headers": {...}}`: one file, one key. Its expiry
  comes from the URL's signed `X-Amz-Date` and `X-Amz-Expires`; `headers` are the ones the URL
  was signed with (a Content-Type, say), which the upload must send as they are.

Both offer the same surface to the rest of the agent: `key_for`, `size_range`, `expiration`.
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
from agent.logs import printable
from agent.policy import MAX_POST_SIZE, Policy, decode_policy


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
    refused = _signature_fields(fields, policy) or _bucket(url, policy)
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


# What S3 checks of a POST form before it can check the signature, and the agent can too.
_SIGV4 = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature")
_SIGV2 = ("awsaccesskeyid", "signature")
_SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"


def _signature_fields(fields: Mapping[str, str], policy: Policy) -> str:
    """Why S3 would refuse the grant's signature fields, before checking the signature: one of
    the fields its algorithm needs is missing or malformed, or breaks the policy's own condition
    on it. '' if none. SigV4 when any SigV4 field is there, else SigV2 (S3 answers a form without
    x-amz-algorithm as SigV2)."""
    form = {name.lower(): value for name, value in fields.items()}
    v4 = any(name in form for name in _SIGV4)
    needed = _SIGV4 if v4 else _SIGV2
    missing = [name for name in needed if not form.get(name)]
    if missing:
        kind = "SigV4" if v4 else "SigV2 (no x-amz-algorithm)"
        return f"its {kind} form has no {', '.join(missing)} field"
    broken = [
        c
        for c in policy.conditions
        if c.field in needed
        and (
            (c.op == "eq" and form[c.field] != c.value)
            or (c.op == "starts-with" and not form[c.field].startswith(c.value))
        )
    ]
    if broken:
        first = broken[0]
        return f"its {first.field} field breaks the policy's own condition ({first.describe()})"
    return _sigv4_form(*(form[n] for n in _SIGV4[:3])) if v4 else ""


def _sigv4_form(algorithm: str, credential: str, date: str) -> str:
    if algorithm != _SIGV4_ALGORITHM:
        return f"x-amz-algorithm is {algorithm!r}, not {_SIGV4_ALGORITHM!r}"
    scope = credential.split("/")
    if len(scope) != 5 or scope[3:] != ["s3", "aws4_request"] or not scope[1].isdigit():
        return "x-amz-credential is not KEY/YYYYMMDD/REGION/s3/aws4_request"
    try:
        dt.datetime.strptime(date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return f"x-amz-date {date!r} is not YYYYMMDDTHHMMSSZ"
    if date[:8] != scope[1]:
        return f"x-amz-date {date!r} is not the day of x-amz-credential's scope ({scope[1]})"
    return ""


def _bucket(url: str, policy: Policy) -> str:
    """Why the policy's bucket is not the one the URL points at; '' if it is. Path style names the
    bucket as the path's first segment (any endpoint); virtual-hosted, as the host's first labels
    (bucket.s3.eu-west-1.amazonaws.com, bucket.storage.example.com), with an empty path."""
    bucket = policy.bucket
    if bucket is None:
        return 'its policy has no {"bucket": ...} condition, which S3 requires'
    parts = urlsplit(url)
    segment = unquote(parts.path).strip("/").split("/")[0]
    host = (parts.hostname or "").lower()
    if segment == bucket or (not segment and (host == bucket or host.startswith(bucket + "."))):
        return ""
    where = f"bucket {segment!r}" if segment else f"host {host!r}"
    return f"its policy allows bucket {bucket!r}, but its URL points at {where}"


def presigned_expiry(url: str) -> Optional[dt.datetime]:
    """When a SigV4 presigned URL stops working (its signed X-Amz-Date + X-Amz-Expires); None if
    it does not say (a CloudFront signed URL says it in its own policy)."""
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    try:
        signed = dt.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        lifetime = int(query["X-Amz-Expires"])
    except (KeyError, ValueError):
        return None
    return signed.replace(tzinfo=dt.timezone.utc) + dt.timedelta(seconds=lifetime)


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
