"""`postbox-agent`: run | check | status | wait [PATH...] | upload FILE...  (exit codes:
agent/errors.py, README)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any, Optional

from agent import __version__
from agent.check import check
from agent.clock import seconds_in
from agent.delivery import Delivery
from agent.errors import AgentError, ExitCode, UploadError
from agent.files import ignore_lease_breaks
from agent.grant import AnyGrant
from agent.inparts import in_parts
from agent.listing import WaitUsage
from agent.logs import configure
from agent.notify import Notifier
from agent.outcome import Job, Result
from agent.readout import status
from agent.settings import Settings, load_settings
from agent.shown import printable
from agent.usage import add_command
from agent.wait import wait
from agent.wiring import parts

logger = logging.getLogger("agent")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help and --version, or a bad command line
        return ExitCode.USAGE if exc.code else ExitCode.OK
    configure("INFO")
    ignore_lease_breaks()
    try:
        settings = load_settings(args.env_file)
        configure(settings.log_level, form=settings.log_format)
        code: int = args.command(settings, args)
    except AgentError as exc:
        logger.error("%s", exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception:  # a bug: said through the same logging (one line, redacted), exit 1
        logger.critical("unexpected error, a bug (please report it)", exc_info=True)
        return ExitCode.FAILURE
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
    _command(
        commands,
        "run",
        run_command,
        summary="watch the folder and upload (the systemd service)",
        description="Watch the folder and upload every file once it is complete, under the "
        "grant's prefix, until stopped (SIGTERM) or the grant expires: the systemd service.",
        examples=["postbox-agent run", "postbox-agent --env-file ./agent.env run"],
    )
    check_parser = _command(
        commands,
        "check",
        check_command,
        summary="check grant, store, bucket, watch dir and state dir; exit 0 if ready",
        description="Check the grant, the store, the bucket, the watch dir and the state dir, "
        "as the agent would find them at start: each line says what it found and, when it "
        "fails, the fix.",
        examples=["sudo -u postbox postbox-agent check", "postbox-agent check --json"],
    )
    check_parser.add_argument("--json", action="store_true", help="the same, as JSON")
    status_parser = _command(
        commands,
        "status",
        status_command,
        summary="what the agent is doing: pending, sending, refused and why, time left",
        description="Read from the state dir while the agent runs (never written): this run's "
        "counts, uploads under way with bytes sent, files refused or failed with the reason, "
        "the grant's time left and the last error; and from the journal, refusals kept across "
        "restarts.",
        examples=["sudo -u postbox postbox-agent status", "postbox-agent status --json"],
    )
    status_parser.add_argument("--json", action="store_true", help="the same, as JSON")
    waiter = _command(
        commands,
        "wait",
        wait_command,
        summary="return once every file in the watch dir (or PATHs) is stored",
        description="Return once every file in the watch dir when it is called (or under the "
        "PATHs) is stored, or can never be under the grant in force; files still being written "
        "are waited for. A file counts as stored once the agent's journal recorded the store's "
        "answer. Asks the running agent over POSTBOX_WAIT_SOCKET: a member of the group postbox "
        "needs no sudo. Progress on a terminal, else a line every 10 s.",
        examples=[
            "postbox-agent wait --timeout 10m; sudo systemctl poweroff",
            "postbox-agent wait /var/spool/postbox/run-42 --json",
        ],
    )
    waiter.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="files or folders in the watch dir"
    )
    waiter.add_argument(
        "--timeout",
        type=_duration,
        metavar="DURATION",
        help="give up after this long (90, 1.5, 90s, 10m; 0: never, as coreutils' timeout)",
    )
    waiter.add_argument("--json", action="store_true", help="the result as JSON")
    waiter.add_argument(
        "--every",
        type=_duration,
        default=10,
        metavar="DURATION",
        help="a progress line this often when not on a terminal (default 10s)",
    )
    waiter.add_argument(
        "--agent-grace",
        type=_duration,
        default=30,
        metavar="DURATION",
        help="how long the agent may not answer (a restart) before it counts as not running "
        "(default 30s)",
    )
    upload = _command(
        commands,
        "upload",
        upload_command,
        summary="upload the named files now, once each",
        description="Upload the named files now, once each, with the same rules, journal and "
        "keys as the service (a file already sent is not sent again).",
        examples=["postbox-agent upload /var/spool/postbox/results/part-0001.csv"],
    )
    upload.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="files to send, under the watch dir"
    )
    return parser


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[[Settings, argparse.Namespace], int],
    **docs: Any,
) -> argparse.ArgumentParser:
    """A command whose --help lists every setting with its default, and the exit codes."""
    settings = [
        f"  POSTBOX_{field.upper()}"
        + ("" if info.default in (None, "") else f" (default {info.default})")
        for field, info in Settings.model_fields.items()
    ]
    more = ["settings (environment, then the env file):", *settings]
    return add_command(commands, name, run, codes=ExitCode, more=more, **docs)


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    agent = parts(settings).agent(Notifier.from_environment(os.environ, os.getpid()))

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        agent.signal()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = agent.run()
    if agent.core.stop.aborted:  # the uploads under way are cut: their threads would hold the exit
        logging.shutdown()
        os._exit(code)
    return code


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    return check(settings, as_json=args.json)


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    return status(settings, as_json=args.json)


def wait_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return wait(
            settings,
            args.paths,
            timeout=args.timeout or None,  # 0: no limit, as coreutils' `timeout 0`
            as_json=args.json,
            every=args.every,
            grace=args.agent_grace,
        )
    except WaitUsage as exc:
        logger.error("%s", exc)
        return ExitCode.USAGE


def _duration(text: str) -> float:
    """A duration as operators write it (90s, 10m), or bare seconds as coreutils' `timeout`
    takes them (150, 1.5)."""
    try:
        seconds: Optional[float] = float(text) if _BARE.fullmatch(text.strip()) else None
    except ValueError:
        seconds = None
    if seconds is None:
        seconds = seconds_in(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write it like 90 (seconds), 90s or 10m"
        )
    return seconds


_BARE = re.compile(r"\d+(\.\d+)?")


def upload_command(settings: Settings, args: argparse.Namespace) -> int:
    wired = parts(settings)
    wired.uploader.probe(wired.grant)  # the store's Date, before expiry is judged
    wired.deadline.ensure_alive(wired.grant)
    journal = wired.journal()
    delivery = wired.delivery(journal)
    left = 0
    try:
        for path in args.files:
            left += not _upload_one(delivery, wired.grant, settings, path)
    finally:
        journal.close()
    return ExitCode.FILES_LEFT if left else ExitCode.OK


def _upload_one(delivery: Delivery, grant: AnyGrant, settings: Settings, path: Path) -> bool:
    """The daemon's delivery step for one named file. Inside the watch dir a file keeps its
    relative path; outside it, its name."""
    absolute = path.absolute()
    try:
        relpath = absolute.relative_to(settings.watch_dir.absolute()).as_posix()
    except ValueError:
        relpath = absolute.name
    try:
        key = grant.key_for(PurePosixPath(relpath), settings.key_prefix)
    except UploadError as exc:
        logger.error("not uploaded %s: %s", printable(str(path)), exc.message)
        return False
    outcome = delivery.deliver(Job(absolute, relpath, key, grant))
    if outcome.result is Result.KNOWN:
        print(f"already sent {printable(key)}")
    elif outcome.result is Result.SENT:
        size = outcome.version.size if outcome.version else outcome.size
        parted = in_parts(grant, size, settings.split_bytes, settings.part_bytes)
        joined = ", in parts: postbox-issuer assemble joins them" if parted else ""
        print(f"uploaded {printable(key)} ({outcome.size} bytes{joined})")
    elif outcome.result is Result.GONE:
        logger.error("not uploaded %s: it does not exist", printable(str(path)))
    elif outcome.reason:
        logger.log(outcome.level, "%s", outcome.reason)
    return outcome.result in (Result.SENT, Result.KNOWN)
