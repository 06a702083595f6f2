"""The agent's settings: environment variables `POSTBOX_*` first, then the env file.

Built once at start (`load_settings`) and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.bandwidth import MIN_RATE, RateError, parse_rate, parse_size
from agent.errors import ConfigError
from agent.filters import Filters, check
from agent.instance import key_segment

DEFAULT_ENV_FILE = Path("/etc/postbox/agent.env")
ENV_FILE_VARIABLE = "POSTBOX_ENV_FILE"
PART_SIZES = (5 * 1024**2, 5 * 1024**3)  # S3's smallest and largest part (agent/parts.py)


class Settings(BaseSettings):
    """Every setting, with the default used when neither the environment nor the file names it."""

    model_config = SettingsConfigDict(
        env_prefix="POSTBOX_", extra="ignore", frozen=True, validate_default=True
    )

    watch_dir: Path = Path("/var/spool/postbox")
    grant_file: Path = Path("/etc/postbox/grant.json")
    state_dir: Path = Path("/var/lib/postbox")
    concurrency: int = Field(8, ge=1, le=32)  # chosen by make bench: README, Settings
    settle_seconds: float = Field(5.0, gt=0, le=3600)
    after_upload: Literal["keep", "delete", "move"] = "keep"
    # Which files are sent (agent/filters.py): gitignore-style patterns on the path under the
    # watch dir, comma-separated; a file is sent when it matches `include` (empty: every file)
    # and not `exclude`.
    include: str = ""
    exclude: str = ""
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0)  # waiting for the store's answer, once all is sent
    # Sending the request: how long the store may take no byte of it (a stalled uplink) before
    # the attempt is given up and retried. urllib3 would time it by the connect timeout.
    send_timeout: float = Field(60.0, gt=0)
    # A file over the grant's largest size goes in parts (agent/parts.py); `split_bytes` sends
    # smaller files in parts too (0: only those that cannot go whole); `part_bytes`: each part.
    split_bytes: int = Field(0, ge=0)
    part_bytes: int = Field(64 * 1024**2, ge=PART_SIZES[0], le=PART_SIZES[1])
    part_streams: int = Field(4, ge=1, le=16)  # parts of one file sent at once
    # Bytes a second shared by every upload, parts and manifests too (agent/bandwidth.py);
    # written as a rate (`20MiB/s`); None: no limit.
    bandwidth_limit: Optional[int] = Field(None, ge=MIN_RATE)
    expiry_margin_seconds: float = Field(30.0, ge=0)
    # After SIGTERM: how long the agent goes on sending the files that are complete (oldest
    # first) before it stops; 0: only the uploads under way finish. The unit's TimeoutStopSec
    # (120 s) leaves 30 s beyond it for the last uploads (EXTEND_TIMEOUT_USEC asks for more).
    stop_budget_seconds: float = Field(90.0, ge=0)
    rescan_seconds: float = Field(300.0, ge=0)  # a full walk of the watch dir; 0: never
    ca_bundle: Optional[Path] = None
    renew_every_seconds: float = Field(60.0, gt=0, le=3600)  # asking for the next grant, when due
    renew_may_widen: bool = False  # a renewed grant may name a wider prefix (agent/renewal.py)
    # After the grant's prefix: this instance's own segment (agent/instance.py); load_settings
    # fills in its placeholders, so the rest of the agent sees the segment itself.
    key_prefix: str = ""
    instance_data: Path = Path("/run/cloud-init/instance-data.json")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # text: priority-prefixed when to the journal
    metrics_file: Optional[Path] = None  # Prometheus text format, for node_exporter's textfile
    # The cloud's notice that the machine is taken back (agent/notice.py): off, auto (the cloud
    # cloud-init names), ec2, gce or azure; and the metadata service's address (None: the cloud's).
    preemption_watch: Literal["off", "auto", "ec2", "gce", "azure"] = "off"
    metadata_url: Optional[str] = None
    # Where `postbox-agent wait` asks the agent how files stand (agent/asking.py): in the unit's
    # RuntimeDirectory, which a batch job in the group `postbox` may enter.
    wait_socket: Path = Path("/run/postbox/wait.sock")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        """`debug` means DEBUG: no other reading is possible."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("bandwidth_limit", mode="before")
    @classmethod
    def _rate(cls, value: object) -> object:
        """`20MiB/s` is 20 * 2**20 bytes a second; empty: no limit."""
        if not isinstance(value, str):
            return value
        try:
            return parse_rate(value)
        except RateError as exc:
            raise PydanticCustomError("rate", str(exc)) from None

    @field_validator("split_bytes", "part_bytes", mode="before")
    @classmethod
    def _size(cls, value: object, info: ValidationInfo) -> object:
        """`64MiB` is 64 * 2**20 bytes, `100MB` 10**8; a bare number is bytes; empty, the
        default. A part is of a size S3 takes (5MiB to 5GiB), said in those units."""
        given = value
        if isinstance(value, str) and not value.strip():  # empty: the default, as for the rate
            return cls.model_fields[str(info.field_name)].default
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except RateError as exc:
                raise PydanticCustomError("size", str(exc)) from None
        low, high = PART_SIZES
        if info.field_name == "part_bytes" and isinstance(value, int) and not low <= value <= high:
            why = f"{given!r} is not a size S3 takes for a part: give 5MiB to 5GiB, like 64MiB"
            raise PydanticCustomError("size", "{why}", {"why": why})
        return value

    @field_validator("after_upload", "log_format", "preemption_watch", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, value: str, info: ValidationInfo) -> str:
        """Each pattern one that can be meant (agent/filters.py: check)."""
        watch_dir = str(info.data.get("watch_dir") or "")
        try:
            check(value, include=info.field_name == "include", watch_dir=watch_dir)
        except ValueError as exc:  # the line as it stands, not "Value error, ..."
            raise PydanticCustomError("pattern", "{why}", {"why": str(exc)}) from None
        return value

    @property
    def filters(self) -> Filters:
        """POSTBOX_INCLUDE and POSTBOX_EXCLUDE, ready to judge a path."""
        return Filters(self.include, self.exclude)

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def status_path(self) -> Path:
        """What the daemon says of this run, for `postbox-agent status` (agent/status.py)."""
        return self.state_dir / "status.json"

    @property
    def socket_path(self) -> Path:
        """Where the agent listens for `wait`, and `wait` asks: POSTBOX_WAIT_SOCKET, or, where
        its folder does not exist (an agent started by hand or in a container: /run/postbox is
        the unit's RuntimeDirectory), wait.sock in the state dir. Looked at once by each side."""
        if self.wait_socket.parent.is_dir():
            return self.wait_socket
        return self.state_dir / "wait.sock"

    @property
    def uploaded_dir(self) -> Path:
        """Where `after_upload=move` puts files: inside the watch dir, hidden, so never re-sent."""
        return self.watch_dir / ".uploaded"


def load_settings(env_file: Optional[Path] = None) -> Settings:
    """Read the settings; a named env file must exist (/dev/null: none), the default one may be
    absent.

    The env file is `env_file`, else `$POSTBOX_ENV_FILE`, else /etc/postbox/agent.env. A `POSTBOX_`
    name that is not a setting is refused, so a misspelt setting never passes unnoticed.
    """
    named = env_file or (
        Path(os.environ[ENV_FILE_VARIABLE]) if os.environ.get(ENV_FILE_VARIABLE) else None
    )
    if named is not None and not named.is_file() and str(named) != os.devnull:
        why = "is not a regular file" if named.exists() else "does not exist"
        raise ConfigError(
            f"env file {named} {why}: give an existing file, or {os.devnull} for none"
        )
    path = named or DEFAULT_ENV_FILE
    present = path.is_file()
    names = list(os.environ) + (_names_in(path) if present else [])
    _refuse_unknown(names, path)
    try:
        settings = Settings(_env_file=path if present else None)  # type: ignore[call-arg]
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "POSTBOX_" + "_".join(str(p) for p in error["loc"]).upper()
        raise ConfigError(
            f"setting {name}: {error['msg']} (fix the environment or {path})"
        ) from None
    if not settings.key_prefix:
        return settings
    segment = key_segment(settings.key_prefix, settings.instance_data)
    return settings.model_copy(update={"key_prefix": segment})


class _Given(Settings):
    """The settings from the values given alone: never the environment or an env file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def check_values(values: Mapping[str, str]) -> None:
    """Refuse what the agent would refuse in these `POSTBOX_*` values alone (no environment, no
    file read): the issuer checks the env file it renders with it. ConfigError names the setting."""
    _refuse_unknown(values, Path("the env file"))
    try:
        _Given.model_validate({name[len("POSTBOX_") :].lower(): v for name, v in values.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "POSTBOX_" + "_".join(str(p) for p in error["loc"]).upper()
        raise ConfigError(f"setting {name}: {error['msg']}") from None


def _names_in(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"env file {path} cannot be read ({exc}): make it readable UTF-8"
        ) from None
    return [
        line.split("=", 1)[0].strip().removeprefix("export ").strip()
        for line in lines
        if "=" in line
    ]


def _refuse_unknown(names: Iterable[str], source: Path) -> None:
    known = {"POSTBOX_" + name.upper() for name in Settings.model_fields} | {ENV_FILE_VARIABLE}
    for name in names:
        if name.upper().startswith("POSTBOX_") and name.upper() not in known:
            raise ConfigError(
                f"setting {name} is not a setting of postbox-agent "
                f"(remove it from the environment or {source}; the README lists the settings)"
            )
