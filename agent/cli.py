"""`postbox-agent`: run | check | upload FILE...  (exit codes: agent/errors.py, README)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Optional

import requests

from agent import __version__
from agent.errors import AgentError, ExitCode, UploadError
from agent.grant import AnyGrant, load_grant
from agent.journal import Journal, Signature
from agent.keys import printable
from agent.logs import configure
from agent.notify import Notifier
from agent.service import Agent, after_upload, describe_keys, ensure_key_free, format_left
from agent.settings import Settings, load_settings
from agent.uploader import Timeouts, Uploader, utc_now

logger = logging.getLogger("agent")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    configure("INFO")
    try:
        settings = load_settings(args.env_file)
        configure(settings.log_level)
        code: int = args.command(settings, args)
    except AgentError as exc:
        logger.error("%s", exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postbox-agent",
        description="Upload finished files from a watched folder through a pre-signed grant.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        help="settings file (default: $POSTBOX_ENV_FILE or /etc/postbox/agent.env)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="watch the folder and upload (the systemd service)")
    run.set_defaults(command=run_command)
    check = commands.add_parser("check", help="check settings, grant and store; exit 0 if ready")
    check.set_defaults(command=check_command)
    upload = commands.add_parser("upload", help="upload the named files now, once each")
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.set_defaults(command=upload_command)
    return parser


def _session(settings: Settings) -> requests.Session:
    session = requests.Session()
    session.verify = str(settings.ca_bundle) if settings.ca_bundle else True
    session.headers["User-Agent"] = f"s3-postbox-agent/{__version__}"
    return session


def _uploader(settings: Settings, grant: AnyGrant, stopping: threading.Event) -> Uploader:
    margin = settings.expiry_margin_seconds
    # The grant can be replaced while the agent runs (rotation): ask the uploader's own.
    uploader = Uploader(
        _session(settings),
        grant,
        seconds_left=lambda: uploader.grant.seconds_left(utc_now()) - margin,
        timeouts=Timeouts(settings.connect_timeout, settings.read_timeout),
        stopping=stopping,
        root=settings.watch_dir,
    )
    return uploader


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    grant = load_grant(settings.grant_file)
    stopping = threading.Event()

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent = Agent(
        settings,
        _uploader(settings, grant, stopping),
        Journal(settings.journal_path),
        notifier=Notifier(os.environ.get("NOTIFY_SOCKET")),
        stopping=stopping,
    )
    return agent.run()


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    grant = load_grant(settings.grant_file)
    low, high = grant.size_range
    left = grant.seconds_left(utc_now())
    rows = [
        ("grant", str(settings.grant_file)),
        ("store", f"{grant.endpoint} (bucket {grant.bucket or 'not named by the grant'})"),
        ("keys", describe_keys(grant)),
        ("sizes", f"{low} to {high} bytes"),
        ("expires", f"{grant.expiration:%Y-%m-%d %H:%M:%S} UTC (in {format_left(left)})"),
        ("watch dir", f"{settings.watch_dir}{'' if settings.watch_dir.is_dir() else ' (missing)'}"),
        ("state dir", str(settings.state_dir)),
    ]
    for name, value in rows:
        print(f"{name:<10} {value}")
    grant.ensure_alive(utc_now())
    try:
        answer = _session(settings).head(grant.url, timeout=settings.connect_timeout)
    except requests.RequestException as exc:
        print(f"{'reachable':<10} no ({exc.__class__.__name__})")
        return ExitCode.UNREACHABLE
    print(f"{'reachable':<10} yes (HTTP {answer.status_code} to an unsigned HEAD)")
    return ExitCode.OK


def upload_command(settings: Settings, args: argparse.Namespace) -> int:
    grant = load_grant(settings.grant_file)
    grant.ensure_alive(utc_now())
    uploader = _uploader(settings, grant, threading.Event())
    journal = Journal(settings.journal_path)
    left = 0
    try:
        for path in args.files:
            left += not _upload_one(uploader, journal, settings, path)
    finally:
        journal.close()
    return ExitCode.FILES_LEFT if left else ExitCode.OK


def _upload_one(uploader: Uploader, journal: Journal, settings: Settings, path: Path) -> bool:
    """Inside the watch dir a file keeps its relative path; outside it, its name."""
    absolute = path.absolute()
    try:
        relpath = absolute.relative_to(settings.watch_dir.absolute()).as_posix()
    except ValueError:
        relpath = absolute.name
    try:
        key = uploader.grant.key_for(PurePosixPath(relpath))
        if journal.is_sent(relpath, Signature.of(absolute.lstat())):
            print(f"already sent {printable(key)}")
            return True
        ensure_key_free(uploader.grant, journal, key, relpath)
        receipt = uploader.upload(absolute, key)
    except OSError as exc:
        logger.error("not uploaded %s: %s", printable(str(path)), exc.strerror)
        return False
    except UploadError as exc:
        logger.error("not uploaded %s: %s", printable(str(path)), exc.message)
        return False
    journal.record(relpath, receipt.signature, key, receipt.md5, receipt.etag)
    print(f"uploaded {printable(key)} ({receipt.signature.size} bytes, md5 {receipt.md5})")
    after_upload(settings, absolute, relpath, receipt)
    return True
