"""What the store's answer to one upload means: stored (with the ETag and key it says it kept),
worth another try, or refused for good. Pure: an `Answer` in, a `Stored` or one of our
exceptions out.
"""

from __future__ import annotations

import email.utils
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs

from agent.errors import RejectedUploadError, TransientUploadError

# Answers worth another try: the store is busy or failed, not the request wrong (AWS: "Retry
# behavior"); 400 RequestTimeout/IncompleteBody means the body arrived too slowly or cut short.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"RequestTimeout", "IncompleteBody", "SlowDown", "InternalError"})


@dataclass(frozen=True)
class Answer:
    """The store's answer to one POST, as far as the agent reads it."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Stored:
    """What a 2xx answer says was stored; empty where the answer does not say (200, 204)."""

    etag: str
    key: str = ""  # the key the store says it kept, where it says one


def classify(answer: Answer, redirect: Optional[str] = None) -> Stored:
    """What a 2xx answer says was stored; TransientUploadError or RejectedUploadError otherwise.

    A 201 carries the PostResponse XML (Location percent-encoded; the ETag quoted by AWS, bare
    by Ceph RGW); a 200 or 204 has no body, and the ETag, if any, is a header. A grant with a
    `redirect` (success_action_redirect) is answered 303 to that URL on success, with bucket, key
    and ETag in its query (moto leaves the ETag out).
    """
    status = answer.status
    location = answer.headers.get("Location", "")
    if status == 303 and redirect and location.startswith(redirect):
        rest = location[len(redirect) :]
        if rest[:1] in ("", "?", "&"):
            query = {k: v[0] for k, v in parse_qs(rest[1:]).items()}
            return Stored(query.get("etag", "").strip('"'), query.get("key", ""))
    if 200 <= status < 300:
        leaves = _xml_leaves(answer.body) if status == 201 else {}
        etag = leaves.get("ETag") or answer.headers.get("ETag", "")
        return Stored(etag.strip().strip('"'), leaves.get("Key", ""))
    leaves = _xml_leaves(answer.body)
    code = leaves.get("Code", "")
    message = leaves.get("Message") or answer.reason
    said = f"store answered {status} {code}: {message}".rstrip(": ")
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        raise TransientUploadError(said, retry_after=retry_after(answer.headers))
    if 300 <= status < 400:
        where = location or "elsewhere"
        said = (
            f"store redirected to {where}: the grant's URL must be the bucket's regional endpoint"
        )
    raise RejectedUploadError(said, code=code, status=status)


def retry_after(headers: Mapping[str, str]) -> Optional[float]:
    """The seconds a `Retry-After` header asks to wait (RFC 9110: a number of seconds, or an
    HTTP date, read against the answer's own `Date` so that no clock of this machine's enters);
    None when there is none or it cannot be read."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        until = email.utils.parsedate_to_datetime(value)
        now = email.utils.parsedate_to_datetime(headers.get("Date", ""))
    except (TypeError, ValueError):
        return None
    if until.tzinfo is None or now.tzinfo is None:
        return None
    return max(0.0, (until - now).total_seconds())


def _xml_leaves(document: bytes) -> dict[str, str]:
    """The text of each leaf element (first of each name, namespaces dropped).

    A document that is not well-formed is read leaf by leaf with a pattern: Ceph RGW 16.2 answers
    a 1024-byte key with a PostResponse whose Location holds stray bytes (`&#x00;`), while its Key
    and ETag are intact.
    """
    if not document.lstrip().startswith(b"<"):
        return {}
    try:
        root = ET.fromstring(document)  # noqa: S314  (bounded body; expat resolves no entities)
    except ET.ParseError:
        leaves: dict[str, str] = {}
        for name, text in re.findall(rb"<(?:\w+:)?(\w+)>([^<]*)</", document):
            leaves.setdefault(name.decode(), html.unescape(text.decode("utf-8", "replace")))
        return leaves
    found: dict[str, str] = {}
    for element in root.iter():
        if len(element) == 0:
            found.setdefault(element.tag.rsplit("}", 1)[-1], element.text or "")
    return found
