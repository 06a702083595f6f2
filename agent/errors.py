"""The agent's exceptions and exit codes: the only place either is defined.

    AgentError                     exit 1   (unexpected; systemd restarts the agent)
    ├── ConfigError                exit 78  bad settings or grant: fix them, then restart
    ├── GrantExpired               exit 79  the grant's policy has expired: issue a new one
    ├── JournalError               exit 1   the state dir cannot record what was sent
    │   └── StateDirError          exit 73  the state dir cannot be opened at start
    └── UploadError                         one file; the daemon logs it and goes on
        ├── TransientUploadError            retried until the grant's deadline
        ├── FileChangedError                changed while it was read: settles again, then is sent
        ├── FileGoneError                   deleted before it was sent: skipped
        ├── UnreadableError                 no permission to read: tried again when that changes
        └── RejectedUploadError             final under this grant: policy or store said no
            └── PreflightError              refused locally: not one byte was sent

Every exception carries the one line a user reads; `main()` prints it and returns `exit_code`.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of `postbox-agent`, as documented in the README."""

    OK = 0
    FAILURE = 1  # unexpected error; systemd restarts the service
    USAGE = 2  # bad command line
    FILES_LEFT = 3  # `upload`: one or more files were not uploaded
    UNREACHABLE = 4  # `check`: the store did not answer
    NOT_READY = 5  # `check`: the bucket, the watch dir or the state dir is missing or unusable
    NOT_RUNNING = 6  # `status`: the agent is not running (what it said last is shown)
    STATE_DIR = 73  # the state dir cannot be opened (EX_CANTCREAT); the unit does not restart
    CONFIG = 78  # bad settings or grant (EX_CONFIG); the unit does not restart
    EXPIRED = 79  # the grant has expired; the unit does not restart


class AgentError(Exception):
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError):
    exit_code = ExitCode.CONFIG


class GrantExpired(AgentError):
    exit_code = ExitCode.EXPIRED


class JournalError(AgentError):
    pass


class StateDirError(JournalError):
    """Read-only, full, or not the agent's to write: a restart cannot change that."""

    exit_code = ExitCode.STATE_DIR


class UploadError(AgentError):
    """One file could not be uploaded; the message is what the log says about it."""


class TransientUploadError(UploadError):
    pass


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
