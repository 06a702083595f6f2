"""`postbox-issuer`'s entry point: says in one line what to install where the issuer's extras are
missing (an agent-only install on a VM has no boto3), instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from issuer.errors import ExitCode  # the standard library alone: safe before the check

# The issuer's own dependencies (pyproject.toml, extra `issuer`) by the name they import as.
EXTRAS = {"boto3": "boto3", "botocore": "boto3", "yaml": "PyYAML", "cryptography": "cryptography"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        from issuer.cli import main as run  # noqa: PLC0415 (imports boto3: after the check)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS:
            raise
        print(
            f"postbox-issuer: {EXTRAS[missing]} is not installed (the issuer needs it; the agent "
            "does not): pip install 's3-postbox[issuer]'",
            file=sys.stderr,
        )
        return ExitCode.INPUT  # the command cannot run as asked
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
