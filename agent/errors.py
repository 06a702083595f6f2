"""The agent's exceptions and exit codes: the only place either is defined.

    AgentError                     exit 1   (unexpected; systemd restarts the agent)
    ├── ConfigError                exit 78  bad settings or grant: fix them, then restart
    ├── GrantExpired               exit 79  the grant's policy has expired: issue a new one
    ├── PolicyError (ValueError)            a policy that cannot be read: the grant's ConfigError
    ├── RenewalError                        no next grant this time: the current one stays
    ├── MetadataError                       the metadata service's answer: said once, asked again
    ├── NoPermission               exit 77  this user may not look (`wait`, `status`): the fix named
    ├── JournalError               exit 1   the state dir cannot record what was sent
    │   ├── StateDirError          exit 73  the state dir cannot be opened at start
    │   └── JournalDamaged         exit 65  the journal is not a sound SQLite database (at start,
    │                                       or found by a read or write while the daemon runs)
    └── UploadError                         one file; the daemon logs it and goes on
        ├── TransientUploadError            retried until the grant's deadline
        ├── FileChangedError                changed while it was read: settles again, then is sent
        ├── FileGoneError                   deleted before it was sent: skipped
        ├── UnreadableError                 no permission to read: tried again when that changes
        └── RejectedUploadError             final under this grant: policy or store said no
            └── PreflightError              refused locally: not one byte was sent

Every exception carries the one line a user reads; `main()` prints it and returns `exit_code`.
Ctrl-C in a command that is not the daemon ends it with 130 (`ExitCode.INTERRUPTED`), as a
shell's own commands do.
"""

from __future__ import annotations

import enum
from typing import Optional


class ExitCode(enum.IntEnum):
    """Exit codes of `postbox-agent`; each one's `meaning` is what `--help` says, and the README's
    table says the same at length (tests/test_help.py holds the three together)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    FILES_LEFT = 3
    UNREACHABLE = 4
    NOT_READY = 5
    NOT_RUNNING = 6
    JOURNAL_DAMAGED = 65  # EX_DATAERR; the unit does not restart on it
    STATE_DIR = 73  # EX_CANTCREAT; the unit does not restart on it
    NO_PERMISSION = 77  # EX_NOPERM: this user may not see what it asks about (wait, status)
    CONFIG = 78  # EX_CONFIG; the unit does not restart on it
    EXPIRED = 79  # the unit does not restart on it
    TIMED_OUT = 124  # as coreutils' timeout
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "done or ready",
    ExitCode.FAILURE: "a bug (systemd restarts the service)",
    ExitCode.USAGE: "bad command line",
    ExitCode.FILES_LEFT: "files not uploaded (upload), refused (wait), left at a stop (run)",
    ExitCode.UNREACHABLE: "store unreachable (check)",
    ExitCode.NOT_READY: "bucket, watch dir or state dir missing or unusable (check)",
    ExitCode.NOT_RUNNING: "not running (status, wait)",
    ExitCode.JOURNAL_DAMAGED: "journal damaged",
    ExitCode.STATE_DIR: "state dir cannot hold the journal",
    ExitCode.NO_PERMISSION: "this user may not look (wait, status): the line names the fix",
    ExitCode.CONFIG: "bad settings or grant",
    ExitCode.EXPIRED: "grant expired (run; wait: with files left)",
    ExitCode.TIMED_OUT: "timed out with files left (wait)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class AgentError(Exception):
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError):
    exit_code = ExitCode.CONFIG


class GrantExpired(AgentError):
    exit_code = ExitCode.EXPIRED


class NoPermission(AgentError):
    """`wait` or `status` run by a user who may not see what it asks about: a line that names
    what it could not read and how to be let in."""

    exit_code = ExitCode.NO_PERMISSION


class PolicyError(AgentError, ValueError):
    """A POST policy that cannot be read (agent/policy.py); the grant's loader makes it a
    ConfigError that names the file."""


class RenewalError(AgentError):
    """No next grant this time; the message is the one log line. `refused`: a grant was there
    and failed a check (a warning); else none is there yet or the URL did not answer."""

    def __init__(self, message: str, *, refused: bool = False, reason: str = "") -> None:
        super().__init__(message)
        self.refused = refused
        # A word for the metrics' label (postbox_renewal_failing{reason}).
        self.reason = reason or ("refused" if refused else "other")


class MetadataError(AgentError):
    """An answer of the metadata service the preemption watch cannot read, or none (the message
    says what was wrong); `endpoint`: the URL asked. The watch says so once and asks again."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class JournalError(AgentError):
    pass


class StateDirError(JournalError):
    """Read-only, full, or not the agent's to write: a restart cannot change that."""

    exit_code = ExitCode.STATE_DIR


class JournalDamaged(JournalError):
    """The journal file is damaged (truncated, overwritten, not SQLite): the agent cannot tell
    what it sent, and a restart cannot change that."""

    exit_code = ExitCode.JOURNAL_DAMAGED


class UploadError(AgentError):
    """One file could not be uploaded; the message is what the log says about it."""


class TransientUploadError(UploadError):
    """Worth another try; `retry_after`: the seconds the store asked to wait (Retry-After)."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FileChangedError(UploadError):
    pass


class FileGoneError(UploadError):
    pass


class UnreadableError(UploadError):
    pass


class RejectedUploadError(UploadError):
    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class PreflightError(RejectedUploadError):
    pass
