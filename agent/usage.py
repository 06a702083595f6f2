"""How both programs' commands explain themselves in --help: a description, examples, what else
the command wants said (the agent's settings), and every exit code with its meaning. Written once
for `postbox-agent` and `postbox-issuer` (tests/test_help.py holds them to it).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Iterable
from typing import Any, Protocol


class Coded(Protocol):
    """An exit code that says what it means (agent.errors.ExitCode, issuer.errors.ExitCode)."""

    @property
    def meaning(self) -> str: ...

    def __int__(self) -> int: ...


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[..., Any],
    *,
    summary: str,
    description: str,
    examples: list[str],
    codes: Iterable[Coded],
    more: Iterable[str] = (),
) -> argparse.ArgumentParser:
    """A command's parser: `summary` in the program's list, `description` and the epilog (the
    examples, `more` lines, the exit codes) in its own --help; `run` is what it does."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog(examples, codes, more),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=run)
    return parser


def epilog(examples: list[str], codes: Iterable[Coded], more: Iterable[str] = ()) -> str:
    lines = ["examples:", *(f"  {line}" for line in examples)]
    extra = list(more)
    if extra:
        lines += ["", *extra]
    said = ", ".join(f"{int(code)} {code.meaning}" for code in codes)
    return "\n".join([*lines, "", textwrap.fill(f"exit codes: {said}", 79)])
