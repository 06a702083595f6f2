"""Render `#cloud-config` user-data that carries a grant, the agent's settings and its unit.

cloud-init writes the files (`write_files`, early in boot) and runs the installer (`runcmd`,
late in boot), which installs the agent into /opt/postbox and enables the service.
The unit file and the installer are the ones in `systemd/` and `cloud-init/`, shipped in the wheel.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal, Optional
from urllib.parse import urlsplit

import yaml

from agent.errors import ConfigError
from agent.instance import SAMPLE, fill
from agent.settings import DEFAULT_ENV_FILE, Settings, check_values
from issuer import __version__, packaged
from issuer.errors import InputError
from issuer.signer import ensure_private_transport


def _agent_default(name: str) -> Any:
    """The agent's own default for a setting: said once, in agent/settings.py."""
    return Settings.model_fields[name].default


GRANT_PATH = str(_agent_default("grant_file"))
ENV_PATH = str(DEFAULT_ENV_FILE)
UNIT_PATH = "/etc/systemd/system/postbox-agent.service"
DROP_IN_PATH = "/etc/systemd/system/postbox-agent.service.d/paths.conf"
RENEW_DROP_IN_PATH = "/etc/systemd/system/postbox-agent.service.d/renew.conf"
# A grant that renews itself is written by the agent over the grant file: its folder must be
# writable in the unit's read-only system (the installer makes it root:postbox 1770).
RENEW_DROP_IN = (
    "[Service]\n# The grant renews itself: the agent replaces it.\nReadWritePaths=/etc/postbox\n"
)
LEASE_DROP_IN_PATH = "/etc/systemd/system/postbox-agent.service.d/after-upload.conf"
# With after-upload delete or move, the agent asks the kernel whether a writer still holds a file
# before it removes it: a read lease, which Linux grants on another user's file (the batch
# jobs') only with CAP_LEASE. Only then does the unit get that one capability (README, Sending).
LEASE_DROP_IN = (
    "[Service]\n"
    "# POSTBOX_AFTER_UPLOAD=delete|move: a read lease proves no writer holds a file before it is\n"
    "# removed; on the batch jobs' files that needs CAP_LEASE, the agent's one capability.\n"
    "CapabilityBoundingSet=CAP_LEASE\n"
    "AmbientCapabilities=CAP_LEASE\n"
)
# A stop budget over the agent's default: the unit's TimeoutStopSec (120 s, 30 s beyond the
# default budget) is raised to match, so systemd does not kill the drain it was given time for.
STOP_DROP_IN_PATH = "/etc/systemd/system/postbox-agent.service.d/stop.conf"
STOP_GRACE_SECONDS = 30  # TimeoutStopSec beyond the budget: the uploads under way finish
INSTALLER_PATH = "/usr/local/lib/postbox/install-agent"
DEFAULT_WATCH_DIR = str(_agent_default("watch_dir"))
DEFAULT_STATE_DIR = str(_agent_default("state_dir"))
DEFAULT_METRICS_FILE = "/var/lib/prometheus/node-exporter/postbox.prom"
USER_DATA_LIMIT = 16384  # bytes EC2 accepts as user-data (before base64)
DEFAULT_REQUIREMENT = f"s3-postbox=={__version__}"


@dataclass(frozen=True)
class AgentOptions:
    """The agent's settings the operator chooses at launch time: the agent's own defaults, but
    for the two the user-data chooses otherwise (the key segment and the metrics file)."""

    watch_dir: str = DEFAULT_WATCH_DIR
    state_dir: str = DEFAULT_STATE_DIR
    after_upload: Literal["keep", "delete", "move"] = _agent_default("after_upload")
    # One user-data boots many instances: each writes under a segment of its own (README, Keys).
    key_prefix: str = "{instance_id}/"
    concurrency: int = _agent_default("concurrency")
    settle_seconds: float = _agent_default("settle_seconds")
    # After SIGTERM, how long the agent goes on sending what is complete (README, Batch jobs).
    stop_budget_seconds: float = _agent_default("stop_budget_seconds")
    # The cloud's notice that the machine is taken back: off, auto, ec2, gce, azure.
    preemption_watch: str = _agent_default("preemption_watch")
    # Where node_exporter's textfile collector reads (Debian's prometheus-node-exporter); "": off.
    metrics_file: str = DEFAULT_METRICS_FILE
    # Where the installer gets the agent: its arguments after the dirs (index_source,
    # wheelhouse_source).
    source: tuple[str, ...] = ("index", DEFAULT_REQUIREMENT)

    def __post_init__(self) -> None:
        """Refused here, before anything is signed or uploaded, what the agent would refuse at
        every boot."""
        paths = [("--watch-dir", self.watch_dir), ("--state-dir", self.state_dir)]
        if self.metrics_file:
            paths.append(("--metrics-file", self.metrics_file))
        for name, path in paths:
            if not PurePosixPath(path).is_absolute() or "\n" in path:
                raise InputError(f"{name} {path!r} is not an absolute path: give one like /data")
        _check_key_prefix(self.key_prefix)
        _check_settings(self)

    def env_file(self) -> str:
        lines = [
            "# s3-postbox agent settings; POSTBOX_* environment variables override them.",
            f"POSTBOX_GRANT_FILE={GRANT_PATH}",
            f"POSTBOX_WATCH_DIR={self.watch_dir}",
            f"POSTBOX_STATE_DIR={self.state_dir}",
            f"POSTBOX_AFTER_UPLOAD={self.after_upload}",
            f"POSTBOX_CONCURRENCY={self.concurrency}",
            f"POSTBOX_SETTLE_SECONDS={self.settle_seconds:g}",
        ]
        if self.key_prefix:
            lines.append(f"POSTBOX_KEY_PREFIX={self.key_prefix}")
        if self.metrics_file:
            lines.append(f"POSTBOX_METRICS_FILE={self.metrics_file}")
        if self.stop_budget_seconds != _agent_default("stop_budget_seconds"):
            lines.append(f"POSTBOX_STOP_BUDGET_SECONDS={self.stop_budget_seconds:g}")
        if self.preemption_watch != _agent_default("preemption_watch"):
            lines.append(f"POSTBOX_PREEMPTION_WATCH={self.preemption_watch}")
        return "\n".join(lines) + "\n"


def index_source(
    index_url: Optional[str] = None, agent_wheel: Optional[str] = None
) -> tuple[str, ...]:
    """pip installs the agent (this version, or the wheel at `agent_wheel`) from the package
    index, or from `index_url`. Both must be https (loopback aside): the VM runs what comes."""
    risk = "whoever is on the way could hand every VM code of their own to run as root"
    if agent_wheel is not None:
        ensure_private_transport(agent_wheel, "--agent-wheel", risk)
        if not urlsplit(agent_wheel).path.endswith(".whl"):
            raise InputError(f"--agent-wheel {agent_wheel} is not a wheel's URL (*.whl)")
    if index_url is not None:
        ensure_private_transport(index_url, "--index-url", risk)
    if agent_wheel is None and __version__ == "unknown":  # agent/__init__.py: never installed
        raise InputError(
            "this postbox-issuer runs from a source tree that was never installed, so it cannot "
            "pin the agent's version: pip install it, or give --agent-wheel or --wheelhouse"
        )
    source = ("index", agent_wheel or DEFAULT_REQUIREMENT)
    return source if index_url is None else (*source, index_url)


def wheelhouse_source(url: str, sha256: str) -> tuple[str, ...]:
    """The wheelhouse at `url` (issuer/wheelhouse.py), if its bytes' SHA-256 is `sha256`."""
    if urlsplit(url).scheme not in ("https", "http"):
        raise InputError(f"--wheelhouse-url {url!r} is not an http(s) URL")
    return ("wheelhouse", url, sha256)


def render(grant: dict[str, Any], options: AgentOptions, jobs: tuple[str, ...] = ()) -> str:
    """The user-data; `jobs`: shell commands runcmd runs, as root, once the agent is installed
    (a batch job, and its end: README, "Batch jobs on machines that go away")."""
    files = [
        _file(GRANT_PATH, json.dumps(grant, indent=2) + "\n", "0600"),
        _file(ENV_PATH, options.env_file(), "0644"),
        _file(UNIT_PATH, packaged("postbox-agent.service"), "0644"),
        _file(INSTALLER_PATH, packaged("install-agent.sh"), "0755"),
    ]
    drop_in = _paths_drop_in(options)
    if drop_in:
        files.append(_file(DROP_IN_PATH, drop_in, "0644"))
    if options.after_upload != "keep":
        files.append(_file(LEASE_DROP_IN_PATH, LEASE_DROP_IN, "0644"))
    if "renew" in grant:
        files.append(_file(RENEW_DROP_IN_PATH, RENEW_DROP_IN, "0644"))
    if options.stop_budget_seconds > _agent_default("stop_budget_seconds"):
        stop = math.ceil(options.stop_budget_seconds) + STOP_GRACE_SECONDS
        files.append(_file(STOP_DROP_IN_PATH, f"[Service]\nTimeoutStopSec={stop}s\n", "0644"))
    config = {
        "write_files": files,
        "runcmd": [
            [INSTALLER_PATH, options.watch_dir, options.state_dir, GRANT_PATH, *options.source],
            *(["sh", "-c", job] for job in jobs),
        ],
    }
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=False)
    header = (
        "#cloud-config\n"
        f"# s3-postbox {__version__}: uploads {options.watch_dir} to {grant.get('url', '?')}"
        f" under the grant in {GRANT_PATH}\n"
    )
    return header + body


def encode(text: str, *, compress: bool) -> bytes:
    """The bytes to hand to EC2: refuses more than its 16384-byte user-data limit."""
    data = text.encode("utf-8")
    if compress:
        data = gzip.compress(data, compresslevel=9, mtime=0)
    if len(data) > USER_DATA_LIMIT:
        hint = "" if compress else ": pass --gzip"
        raise InputError(f"user-data is {len(data)} bytes, over EC2's {USER_DATA_LIMIT}{hint}")
    return data


def _check_key_prefix(template: str) -> None:
    """The agent's own rules, with sample values: a template it would refuse at every boot is
    refused here, before it reaches a launch template."""
    try:
        fill(template, SAMPLE)
    except ConfigError as exc:
        raise InputError(f"--key-prefix: {exc.message}") from None


def _check_settings(options: AgentOptions) -> None:
    """Each setting the env file gives, checked by the agent's own settings model: what it would
    refuse at every boot (a --concurrency of 100, a negative --settle-seconds) is refused here."""
    for line in options.env_file().splitlines():
        name, _, value = line.partition("=")
        if line.startswith("#") or not value:
            continue
        try:
            check_values({name: value})
        except ConfigError as exc:
            option = "--" + name.removeprefix("POSTBOX_").lower().replace("_", "-")
            reason = exc.message.partition(": ")[2]
            raise InputError(f"{option} {value}: {reason}, the agent would refuse it") from None


def _file(path: str, content: str, permissions: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


def _paths_drop_in(options: AgentOptions) -> str:
    """The unit allows writes only under its default dirs; other dirs (and the metrics
    folder) need a drop-in."""
    lines = []
    if options.watch_dir != DEFAULT_WATCH_DIR:
        lines.append(f"ReadWritePaths=-{options.watch_dir}")
    if options.state_dir != DEFAULT_STATE_DIR:
        lines.append(f"ReadWritePaths={options.state_dir}")
    if options.metrics_file:  # the installer makes the folder writable for postbox
        lines.append(f"ReadWritePaths=-{PurePosixPath(options.metrics_file).parent}")
    return "[Service]\n" + "\n".join(lines) + "\n" if lines else ""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the grant and the unit stay readable in the console."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)
