"""Sign a POST grant from a `GrantRequest`: one key prefix, a size range, an expiry no later
than the credentials', and the properties every object gets: its Content-Type and metadata (the
uploader's, each file's own: `starts-with` conditions), a storage class and tags (exact fields).

The grant is what `generate_presigned_post` returns, with the URL made regional, plus
human-facing keys (`bucket`, `issued_at`, `note`) that the agent never trusts.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from xml.sax.saxutils import escape

from agent.errors import ConfigError
from agent.grant import AnyGrant, parse_grant
from agent.keys import PARTS_NAMESPACE
from agent.policy import Condition, Policy, decode_policy
from issuer.aws import aws_errors, regional_endpoint
from issuer.errors import InputError
from issuer.signer import Signer, Signing

# S3 answers with the PostResponse XML (Location, Bucket, Key, ETag) only for 201.
SUCCESS_STATUS = "201"

# The fields the uploader fills for each object (the agent: the file's type, SHA-256 and time),
# signed as `starts-with ""`: any value, but a form without them is refused (README: The issuer).
CONTENT_TYPE = "Content-Type"
METADATA = ("x-amz-meta-sha256", "x-amz-meta-mtime")

# Amazon S3's storage classes for a general purpose bucket (the API's StorageClass, but those of
# Outposts, Snow, FSx and AWS Backup, which a bucket's POST never takes) and a directory bucket's.
AWS_CLASSES = (
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
    "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR",
)  # fmt: skip
DIRECTORY_CLASSES = ("EXPRESS_ONEZONE", "ONEZONE_IA")
DIRECTORY_BUCKET_SUFFIX = "--x-s3"
# S3's limits on an object's tags (userguide/object-tagging.html).
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 10, 128, 256
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
# The conditions that name what signed the grant and where it goes, not what it allows: left
# out when two grants are compared (renew).
_SIGNING = frozenset(
    {"key", "bucket", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-security-token"}
)


@dataclass(frozen=True)
class GrantRequest:
    """What a grant allows: where (`prefix`, expanded already: see `expand_prefix`), how big,
    for how long, with which encryption."""

    bucket: str
    prefix: str
    expires_in: int
    min_size: int = 0
    max_size: int = 5 * 1024**3
    note: Optional[str] = None
    sse: Optional[str] = None  # "AES256" or "aws:kms": server-side encryption, a signed condition
    kms_key_id: Optional[str] = None
    content_type: bool = True  # the uploader sends each object's Content-Type
    metadata: bool = True  # ... and its x-amz-meta-sha256 and x-amz-meta-mtime
    storage_class: Optional[str] = None  # exact: every object is stored in it
    tags: tuple[tuple[str, str], ...] = ()  # exact: every object gets them
    # Amazon S3 (None) takes its own storage classes only; another store names its own.
    endpoint_url: Optional[str] = None

    def __post_init__(self) -> None:
        """Refused at once, before the store or the credentials are asked anything."""
        if not self.prefix:
            raise InputError("--prefix is empty: a grant for the whole bucket is never issued")
        if self.min_size > self.max_size:
            raise InputError("--min-size is larger than --max-size: swap them")
        _encryption(self)
        if self.storage_class is not None:
            check_storage_class(self.storage_class, self.bucket, aws=not self.endpoint_url)
        check_tags(self.tags)


def expand_prefix(template: str, *, force: bool = False, renewed: bool = False) -> str:
    """The prefix a grant is signed for: `{uuid}` becomes a fresh random UUID (one per launch).

    Refused: an empty prefix or `/` (the whole bucket), one without a trailing `/` unless
    forced, since `runs/1` also matches `runs/10/...` and `runs/1-other`, and `{uuid}` in a
    grant that is `renewed`: the next grant must keep the prefix.
    """
    if renewed and "{uuid}" in template:
        raise InputError(
            "--prefix with {uuid} would change at every renewal: give a fixed prefix (each "
            "instance's own segment comes from the agent's POSTBOX_KEY_PREFIX)"
        )
    prefix = template.replace("{uuid}", str(uuid.uuid4()))
    if "{" in prefix or "}" in prefix:
        raise InputError(f"--prefix {template!r} has a placeholder other than {{uuid}}")
    if prefix.strip("/") == "":
        raise InputError(f"--prefix {template!r} names the whole bucket: give one like runs/42/")
    if not prefix.endswith("/") and not force:
        raise InputError(
            f"--prefix {template!r} has no trailing /, so it also matches {prefix}0/ and "
            f"{prefix}-other: add the / or pass --force-prefix"
        )
    marker = f"{PARTS_NAMESPACE}/"
    if marker in prefix or any(marker.startswith(prefix[i:]) for i in range(len(prefix))):
        raise InputError(
            f"--prefix {template!r} holds {marker} (or its start), where agents put the parts "
            f"of files sent in parts: assemble would join a holder's manifest there into a "
            f"key outside the prefix; choose a prefix without it"
        )
    return prefix


def regional_url(bucket: str, region: str, endpoint_url: Optional[str] = None) -> str:
    """The URL a POST must go to so that S3 never redirects it (307) or refuses it (400).

    A custom endpoint gets path style; a bucket name with dots too, since a virtual host name
    with dots fails TLS against S3's wildcard certificate.
    """
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/"
    endpoint = regional_endpoint(region)
    if "." in bucket:
        return f"{endpoint}/{bucket}/"
    return endpoint.replace("://", f"://{bucket}.", 1) + "/"


def sign_grant(request: GrantRequest, signer: Signer, now: dt.datetime) -> dict[str, Any]:
    """The grant for `request`, signed by `signer`'s credentials for the bucket's region."""
    return make_grant(signer.open(request.bucket, request.expires_in, now), request, now)


def make_grant(signing: Signing, request: GrantRequest, now: dt.datetime) -> dict[str, Any]:
    """The grant, in a signing context opened for the request's bucket (its lifetime is the
    context's: the credentials' may have capped it)."""
    # Every field the form sends must be a condition too; botocore copies neither way.
    fields = _fields(request)
    with aws_errors(f"signing a POST policy for bucket {request.bucket}"):
        post = signing.s3.generate_presigned_post(
            Bucket=request.bucket,
            # With ${filename} at its end, botocore writes ["starts-with", "$key", prefix].
            Key=request.prefix + "${filename}",
            Fields=fields,
            Conditions=[
                *({name: value} for name, value in fields.items()),
                *(["starts-with", f"${name}", ""] for name in per_object_fields(request)),
                ["content-length-range", request.min_size, request.max_size],
            ],
            ExpiresIn=signing.expires_in,
        )
    policy = decode_policy(post["fields"]["policy"])
    if policy.key_prefix != request.prefix:  # guard against a change in botocore's behaviour
        raise AssertionError(f"botocore signed key prefix {policy.key_prefix!r}")
    grant: dict[str, Any] = {
        "url": regional_url(request.bucket, signing.region, signing.endpoint_url),
        "fields": post["fields"],
        "bucket": request.bucket,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if request.note:
        grant["note"] = request.note
    return grant


def per_object_fields(request: GrantRequest) -> tuple[str, ...]:
    """The fields the uploader fills for each object, which the grant requires (any value)."""
    return (CONTENT_TYPE,) * request.content_type + METADATA * request.metadata


def rules(request: GrantRequest) -> frozenset[Condition]:
    """What a grant signed for `request` allows, as its policy's conditions (but the prefix, the
    bucket and the signature's own): a grant whose `policy_rules` differ allows something else."""
    return frozenset(
        {
            *(Condition("eq", name.lower(), value) for name, value in _fields(request).items()),
            *(Condition("starts-with", name.lower()) for name in per_object_fields(request)),
            Condition(
                "content-length-range",
                "content-length",
                low=request.min_size,
                high=request.max_size,
            ),
        }
    )


def policy_rules(policy: Policy) -> frozenset[Condition]:
    return frozenset(c for c in policy.conditions if c.field not in _SIGNING)


def tagging_xml(tags: tuple[tuple[str, str], ...]) -> str:
    """S3's Tagging document, the value of a POST's `tagging` field."""
    quotes = {'"': "&quot;", "'": "&apos;"}
    body = "".join(
        f"<Tag><Key>{escape(key, quotes)}</Key><Value>{escape(value, quotes)}</Value></Tag>"
        for key, value in tags
    )
    return f"<Tagging><TagSet>{body}</TagSet></Tagging>"


def parse_tag(text: str) -> tuple[str, str]:
    """`--tag KEY=VALUE` (the value may be empty, and hold `=`)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise InputError(
            f"--tag {text!r} is not KEY=VALUE: give a key, then =, then the value (it may be empty)"
        )
    return key, value


def check_tags(tags: tuple[tuple[str, str], ...]) -> None:
    """S3's rules for an object's tags: at most 10, unique keys of 1 to 128 characters, values up
    to 256, letters, digits, spaces and _ . : / = + - @ only, no key in aws: (S3's own)."""
    if len(tags) > MAX_TAGS:
        raise InputError(f"--tag given {len(tags)} times: S3 keeps at most {MAX_TAGS} per object")
    seen: set[str] = set()
    for key, value in tags:
        if key in seen:
            raise InputError(f"--tag {key!r} is given twice: a key may appear once")
        seen.add(key)
        if len(key) > MAX_TAG_KEY:
            raise InputError(
                f"--tag key {key[:20]!r}... has {len(key)} characters: S3 allows {MAX_TAG_KEY}"
            )
        if len(value) > MAX_TAG_VALUE:
            raise InputError(
                f"--tag {key}=... has a value of {len(value)} characters: S3 allows {MAX_TAG_VALUE}"
            )
        if key.lower().startswith("aws:"):
            raise InputError(f"--tag {key!r}: keys starting with aws: are AWS's own; rename it")
        for part in (key, value):
            bad = sorted({c for c in part if not _tag_character(c)})
            if bad:
                raise InputError(
                    f"--tag {key}={value}: S3 refuses {''.join(bad)!r} in a tag; use letters, "
                    "digits, spaces and _ . : / = + - @"
                )


def _tag_character(c: str) -> bool:
    """S3's pattern for tags: Unicode letters, separators and numbers (its p{L}, p{Z} and p{N})
    and _ . : / = + - @."""
    return unicodedata.category(c)[0] in "LZN" or c in _TAG_PUNCTUATION


def check_storage_class(name: str, bucket: str, *, aws: bool) -> None:
    """Amazon S3's own classes for AWS (a directory bucket's for one); for another store (RGW
    names its own), any name of S3's shape: upper-case letters, digits and _."""
    shape = name[:1].isalpha() and all(c.isdigit() or c == "_" or "A" <= c <= "Z" for c in name)
    if not shape or not name.isascii():
        raise InputError(
            f"--storage-class {name!r} is not a storage class name: upper-case letters, digits "
            "and _ (like STANDARD_IA)"
        )
    if not aws:
        return
    directory = bucket.endswith(DIRECTORY_BUCKET_SUFFIX)
    known = DIRECTORY_CLASSES if directory else AWS_CLASSES
    if name not in known:
        kind = "a directory bucket" if directory else "an S3 bucket"
        other = "" if directory else (
            f" (a directory bucket, NAME{DIRECTORY_BUCKET_SUFFIX}, takes "
            f"{' or '.join(DIRECTORY_CLASSES)})"
        )  # fmt: skip
        raise InputError(
            f"--storage-class {name} is not a storage class of {kind}: give one of "
            f"{', '.join(known)}{other}"
        )


def _fields(request: GrantRequest) -> dict[str, str]:
    """The exact fields every form of the grant sends (each one signed as an exact condition)."""
    fields = {"success_action_status": SUCCESS_STATUS, **_encryption(request)}
    if request.storage_class is not None:
        fields["x-amz-storage-class"] = request.storage_class
    if request.tags:
        fields["tagging"] = tagging_xml(request.tags)
    return fields


def _encryption(request: GrantRequest) -> dict[str, str]:
    if request.sse is None:
        if request.kms_key_id:
            raise InputError("--kms-key-id needs --sse aws:kms")
        return {}
    if request.sse not in ("AES256", "aws:kms"):
        raise InputError(f"--sse {request.sse!r} is not AES256 or aws:kms")
    fields = {"x-amz-server-side-encryption": request.sse}
    if request.kms_key_id:
        if request.sse != "aws:kms":
            raise InputError("--kms-key-id needs --sse aws:kms")
        fields["x-amz-server-side-encryption-aws-kms-key-id"] = request.kms_key_id
    return fields


def read_grant(path: Path, named: str = "--grant ") -> tuple[dict[str, Any], AnyGrant]:
    """A grant file's JSON (`-`: stdin), and the grant the agent reads from it: InputError where
    the agent would refuse it. `named`: how the command line gave the file (an option, or ""
    for an argument), in the error."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        document = json.loads(text)
        grant = parse_grant(document, path)
    except (OSError, ValueError) as exc:
        where = "the grant on stdin" if str(path) == "-" else f"{named}{path}"
        raise InputError(f"{where} cannot be read ({exc}): give a grant file") from None
    except ConfigError as exc:
        raise InputError(exc.message) from None
    return dict(document), grant
