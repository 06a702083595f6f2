"""`postbox-issuer inspect GRANT`: any grant in plain words, offline, judged by the agent's rules.

What a holder of the grant can do, until when, and what signed it, read from the signed policy
and the URL's signed query (never from the unsigned copies beside them). The signature, the
policy and a session token are never printed: the output may be pasted into a ticket.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from agent.clock import format_left
from agent.grant import AnyGrant, Grant, describe_keys
from agent.parts import MAX_PARTS, MIN_PART
from agent.policy import Condition
from agent.properties import describe_tags, exact, tags_of
from agent.shown import printable
from agent.signed import presigned_expiry
from issuer.units import format_size


def facts(document: dict[str, Any], grant: AnyGrant, now: dt.datetime) -> dict[str, Any]:
    """What the grant allows, as JSON-able values (`--format json`)."""
    low, high = grant.size_range
    left = grant.seconds_left(now)
    signer = _signer(document, grant)
    policy = grant.policy if isinstance(grant, Grant) else None
    result: dict[str, Any] = {
        "kind": "post" if isinstance(grant, Grant) else "put",
        "endpoint": grant.endpoint,
        "bucket": grant.bucket or document.get("bucket"),
        "prefix": None if grant.single_key is not None else grant.prefix,
        "key": grant.single_key,
        "min_size": low,
        "max_size": high,
        # The largest file the agent sends through it in parts (agent/parts.py); None: none.
        "max_size_in_parts": (
            MAX_PARTS * high if isinstance(grant, Grant) and high >= MIN_PART else None
        ),
        "expires": f"{grant.expiration:%Y-%m-%dT%H:%M:%SZ}",
        "seconds_left": int(left),
        "expired": left <= 0,
        "encryption": _encryption(grant),
        # What each object gets: the uploader's Content-Type and x-amz-meta-* (what the grant
        # lets it send: "any", "starts with ...", or the one value; None: not sent), the class
        # and tags the grant fixes (None, {}: the bucket's default, none).
        "content_type": _rule(grant, "content-type"),
        "metadata": _metadata(grant),
        "storage_class": exact(policy, "x-amz-storage-class") if policy else None,
        "tags": tags_of(exact(policy, "tagging")) if policy else {},
        "access_key_id": signer.get("access_key_id"),
        "region": signer.get("region"),
        "temporary_credentials": signer["temporary"],
        "renews": grant.renew_url is not None,  # a PUT grant never renews: None
        "renewal_url_expires": _renewal_expiry(grant),
        "note": document.get("note"),
    }
    return result


def text(name: str, document: dict[str, Any], grant: AnyGrant, now: dt.datetime) -> str:
    """The same facts, for a person at a shell."""
    f = facts(document, grant, now)
    left = f["seconds_left"]
    when = f"expired {format_left(-left)} ago" if f["expired"] else f"in {format_left(left)}"
    kind = "a POST grant (postbox-agent)" if f["kind"] == "post" else "a presigned PUT URL"
    rows = [
        ("grant", f"{name}: {kind}"),
        ("store", f"{f['endpoint']} (bucket {f['bucket'] or 'not named'})"),
        ("keys", describe_keys(grant)),
        ("sizes", f"{format_size(f['min_size'])} to {format_size(f['max_size'])} per file"),
        ("in parts", _in_parts(f)),
        ("expires", f"{f['expires']} ({when})"),
        ("encryption", f"{f['encryption']} required" if f["encryption"] else "none required"),
        ("type", _type(f["content_type"])),
        ("metadata", _meta(f["metadata"])),
        ("class", f["storage_class"] or "the store's default (none signed)"),
        ("tags", describe_tags(f["tags"])),
        ("signed by", _signed_by(f)),
    ]
    if f["kind"] == "post":
        renewal = f["renewal_url_expires"]
        rows.append(
            ("renews", f"from a URL that works until {renewal or 'its own expiry'}")
            if f["renews"]
            else ("renews", "no")
        )
    if f["note"]:
        rows.append(("note", printable(str(f["note"]))))  # a terminal escape stays text
    if f["expired"]:
        allows = "nothing any more: S3 refuses every upload with it"
    else:
        allows = (
            f"whoever holds it may upload files of {format_size(f['min_size'])} to "
            f"{format_size(f['max_size'])} {describe_keys(grant)}, overwriting what is there, "
            f"until {f['expires']}; not read, list or delete"
        )
    rows.append(("allows", allows))
    return "".join(f"{label:<11}{value}\n" for label, value in rows)


def _in_parts(f: dict[str, Any]) -> str:
    largest = f["max_size_in_parts"]
    if largest is not None:
        return (
            f"files up to {_about(largest)} ({MAX_PARTS:,} parts), joined by postbox-issuer "
            "assemble"
        )
    if f["kind"] == "put":
        return "no: a PUT URL names one object"
    return f"no: its largest size is under {format_size(MIN_PART)}, S3's smallest part"


def _about(size: int) -> str:
    """A size of a thousand units or more in the next: `about 97.7 GiB`, not `100000MiB`."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if size >= scale and size % scale:
            return f"about {size / scale:.1f} {unit}"
        if size >= scale:
            return f"{size // scale} {unit}"
    return format_size(size)


def _signer(document: dict[str, Any], grant: AnyGrant) -> dict[str, Any]:
    """The credential scope the signature names: access key ID and region, and whether a
    session token came with it (the grant then dies with that token)."""
    if isinstance(grant, Grant):
        fields = {k.lower(): v for k, v in grant.fields.items()}
        scope = fields.get("x-amz-credential") or ""
        temporary = "x-amz-security-token" in fields
        if not scope and "awsaccesskeyid" in fields:  # SigV2: the key, no region
            return {"access_key_id": fields["awsaccesskeyid"], "temporary": temporary}
    else:
        query = {k: v[0] for k, v in parse_qs(urlsplit(grant.url).query).items()}
        scope = query.get("X-Amz-Credential", "")
        temporary = "X-Amz-Security-Token" in query
    parts = scope.split("/")
    return {
        "access_key_id": parts[0] or None,
        "region": parts[2] if len(parts) > 2 else None,
        "temporary": temporary,
    }


def _signed_by(f: dict[str, Any]) -> str:
    key = f["access_key_id"] or "an unnamed key"
    where = f" for region {f['region']}" if f["region"] else ""
    token = (
        "; temporary credentials: it stops working when their session token expires, "
        "whatever its own expiry says"
        if f["temporary_credentials"]
        else ""
    )
    return f"access key {key}{where}{token}"


def _encryption(grant: AnyGrant) -> Optional[str]:
    if not isinstance(grant, Grant):
        return None
    for condition in grant.policy.conditions:
        if condition.field == "x-amz-server-side-encryption" and condition.op == "eq":
            return condition.value
    return None


def _conditions(grant: AnyGrant, field: str) -> list[Condition]:
    if not isinstance(grant, Grant):
        return []
    return [
        c for c in grant.policy.conditions if c.field == field and c.op != "content-length-range"
    ]


def _rule(grant: AnyGrant, field: str) -> Optional[str]:
    """What the grant lets the uploader send in `field`, in words; None: the field is not
    allowed (the store's default)."""
    found = _conditions(grant, field)
    if not found:
        return None
    c = found[0]
    if c.op == "eq":
        return c.value
    return "any" if c.value == "" else f"starts with {c.value!r}"


def _metadata(grant: AnyGrant) -> dict[str, str]:
    if not isinstance(grant, Grant):
        return {}
    names = sorted({c.field for c in grant.policy.conditions if c.field.startswith("x-amz-meta-")})
    return {name: _rule(grant, name) or "" for name in names}


def _type(rule: Optional[str]) -> str:
    if rule is None:
        return "not sent: the store's default (binary/octet-stream on S3)"
    if rule == "any":
        return "each file's own (the uploader's guess from its name)"
    return f"the uploader's, {rule}" if rule.startswith("starts with") else rule


def _meta(metadata: dict[str, str]) -> str:
    if not metadata:
        return "none"
    return ", ".join(
        f"{name} ({'any value' if rule == 'any' else rule})" for name, rule in metadata.items()
    )


def _renewal_expiry(grant: AnyGrant) -> Optional[str]:
    if not isinstance(grant, Grant) or grant.renew_url is None:
        return None
    expiry = presigned_expiry(grant.renew_url)
    return f"{expiry:%Y-%m-%dT%H:%M:%SZ}" if expiry else None
