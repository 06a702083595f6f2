"""The wheels the tests build wheelhouses from, downloaded once by `make install`.

The tests never ask a package index (they talk to 127.0.0.1 alone): `postbox-issuer wheelhouse`
runs in them with PIP_NO_INDEX=1 and --find-links this folder, which holds the agent's declared
dependencies and pip for Python 3.9, 3.11 and the Python of /usr/bin/python3 (the first-boot
machine's), on x86_64 and aarch64.

    python -m tests.wheels FOLDER
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from issuer.wheelhouse import download, targets

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path(os.environ.get("POSTBOX_TEST_WHEELS", ROOT / ".venv" / "test-wheels"))
SYSTEM_PYTHON = "/usr/bin/python3"  # what the first-boot machine's installer finds


def system_python() -> str | None:
    """The version of /usr/bin/python3, as `--python` takes it (3.11), if there is one."""
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def requirements() -> list[str]:
    """The agent's own dependencies, as its installed metadata declares them (no extras)."""
    declared = metadata.requires("s3-postbox") or []
    return [r for r in declared if not re.search(r";.*\bextra\b", r)] + ["pip"]


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER
    pythons = sorted({"3.9", "3.11", system_python() or "3.11"})
    for target in targets(pythons, ("x86_64", "aarch64")):
        download(requirements(), target, folder)
        print(f"tests.wheels: {target.tag} in {folder}")


if __name__ == "__main__":
    main()
