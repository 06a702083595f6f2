"""The issuer's exceptions and exit codes: the only place either is defined.

IssuerError              exit 1  unexpected
├── InputError           exit 2  a bad option or value: the message says which and how to fix it
├── CredentialsError     exit 3  no AWS credentials, or they expire before the grant would
├── StoreError           exit 4  AWS (or the endpoint) refused or did not answer
└── PartsError           exit 5  assemble: a manifest's parts are missing or differ (left as is)

The issuer's own dependencies missing (an agent-only install) is bad input too: exit 2, said by
`issuer/__main__.py` before anything imports them. Ctrl-C: 130.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of `postbox-issuer`; each one's `meaning` is what `--help` says (README: Issuer
    exit codes)."""

    OK = 0
    FAILURE = 1
    INPUT = 2
    CREDENTIALS = 3
    STORE = 4
    PARTS = 5
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.FAILURE: "a bug",
    ExitCode.INPUT: "bad input",
    ExitCode.CREDENTIALS: "credentials missing or expiring too soon",
    ExitCode.STORE: "AWS or the endpoint refused or did not answer",
    ExitCode.PARTS: "assemble: a manifest's parts are missing or differ, or versions tie",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class IssuerError(Exception):
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(IssuerError):
    exit_code = ExitCode.INPUT


class CredentialsError(IssuerError):
    exit_code = ExitCode.CREDENTIALS


class StoreError(IssuerError):
    exit_code = ExitCode.STORE


class PartsError(IssuerError):
    exit_code = ExitCode.PARTS
