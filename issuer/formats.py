"""A grant as operators hand it out: JSON for the agent, a curl command, a browser upload page.

All three carry the same signed fields. The curl command sets each key itself (the prefix and
the file's name); the page leaves it to S3's `${filename}` in the grant's `prefix${filename}`.
Both fill the fields the grant requires of each object as the agent does, from what their tool
knows of the file: the curl command its SHA-256 (sha256sum) and time (date -r, whole seconds),
and a Content-Type from $TYPE (default application/octet-stream); the page the browser's type
for it, its SHA-256 (Web Crypto) and time (lastModified, milliseconds).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from agent.policy import decode_policy
from issuer import packaged

FORMATS = ("json", "curl", "html")


def render(grant: dict[str, Any], form: str) -> str:
    if form == "curl":
        return as_curl(grant)
    if form == "html":
        return as_html(grant)
    return json.dumps(grant, indent=2) + "\n"


def as_curl(grant: dict[str, Any]) -> str:
    """A ready curl command for one file: set FILE, then run it.

    Fields go as --form-string, so a value is never read as `@file` or `<file`; the file is the
    last part, as S3 requires. The URL is regional, so no -L is needed. The key is set here
    (the prefix and the file's own name), not left to S3's `${filename}`, and the path is
    quoted for curl's own parser, in which `;` and `,` separate options and files: a file named
    `a;b,c.csv` lands as PREFIX/a;b,c.csv.
    """
    policy = decode_policy(grant["fields"]["policy"])
    low, high = policy.size_range
    prefix = policy.key_prefix or ""
    required = {c.field for c in policy.conditions if c.op == "starts-with"}
    typed = "content-type" in required
    lines = [
        f"# Upload one file to {grant['url']} as {prefix}<its name>, "
        f"{low} to {high} bytes, until {policy.expiration:%Y-%m-%d %H:%M} UTC.",
        "# Set FILE to its path"
        + (" (and TYPE to its Content-Type, default application/octet-stream)" if typed else "")
        + ", then run:",
        ': "${FILE:?set FILE to the path of the file to upload}"',
        "curl --fail-with-body --silent --show-error \\",
    ]
    for name, value in _PER_OBJECT.items():
        if name.lower() in required:
            lines.append(f'  --form-string "{name}={value}" \\')
    for name, value in grant["fields"].items():
        if name.lower() == "key":  # the prefix, then the file's own name
            named = shlex.quote(f"{name}={prefix}")
            lines.append(f'  --form-string {named}"$(basename -- "$FILE")" \\')
            continue
        lines.append(f"  --form-string {shlex.quote(f'{name}={value}')} \\")
    # curl reads `file=@"PATH"` with \\ and \" escaped inside the quotes.
    lines.append("""  --form "file=@\\"$(printf '%s' "$FILE" | sed 's/[\\\\"]/\\\\&/g')\\"" \\""")
    lines.append(f"  {shlex.quote(grant['url'])}")
    return "\n".join(lines) + "\n"


# What the curl command sends for each field the grant requires of an object, in the shell.
_PER_OBJECT = {
    "Content-Type": "${TYPE:-application/octet-stream}",
    "x-amz-meta-sha256": '$(sha256sum < "$FILE" | cut -d" " -f1)',
    "x-amz-meta-mtime": '$(date -r "$FILE" +%s)',
}


def as_html(grant: dict[str, Any]) -> str:
    """A self-contained upload page: one POST per chosen file, each file's outcome shown.

    The grant is embedded as JSON in a script element; `<` is escaped so no value can end it.
    """
    embedded = json.dumps(grant).replace("<", "\\u003c")
    return packaged("upload.html").replace("__GRANT_JSON__", embedded)
