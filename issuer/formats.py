"""A grant as operators hand it out: JSON for the agent, a curl command, a browser upload page.

All three carry the same signed fields; the curl command and the page use the grant's
`prefix${filename}` key, so S3 names each object after the uploaded file.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from agent.policy import decode_policy
from issuer.userdata import packaged

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
    last part, as S3 requires. The URL is regional, so no -L is needed.
    """
    policy = decode_policy(grant["fields"]["policy"])
    low, high = policy.size_range
    lines = [
        f"# Upload one file to {grant['url']} as {policy.key_prefix}<its name>, "
        f"{low} to {high} bytes, until {policy.expiration:%Y-%m-%d %H:%M} UTC.",
        "# Set FILE to its path, then run:",
        "curl --fail-with-body --silent --show-error \\",
    ]
    for name, value in grant["fields"].items():
        lines.append(f"  --form-string {shlex.quote(f'{name}={value}')} \\")
    lines.append('  --form "file=@${FILE:?set FILE to the path of the file to upload}" \\')
    lines.append(f"  {shlex.quote(grant['url'])}")
    return "\n".join(lines) + "\n"


def as_html(grant: dict[str, Any]) -> str:
    """A self-contained upload page: one POST per chosen file, each file's outcome shown.

    The grant is embedded as JSON in a script element; `<` is escaped so no value can end it.
    """
    embedded = json.dumps(grant).replace("<", "\\u003c")
    return packaged("upload.html").replace("__GRANT_JSON__", embedded)
