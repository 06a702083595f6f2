"""Every command's --help: a description, an example or two, a help text for every option; the
agent's also lists every setting and every exit code, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import enum
import re
from pathlib import Path

import pytest

from agent.cli import _parser as agent_parser
from agent.errors import ExitCode
from agent.settings import Settings
from issuer.cli import _parser as issuer_parser
from issuer.errors import ExitCode as IssuerExitCode

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


ALL = [("postbox-issuer", n, p) for n, p in commands(issuer_parser()).items()]
ALL += [("postbox-agent", n, p) for n, p in commands(agent_parser()).items()]


@pytest.mark.parametrize(("program", "name", "parser"), ALL, ids=[f"{a} {b}" for a, b, _ in ALL])
def test_every_command_explains_itself_with_examples_and_every_option(
    program: str, name: str, parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert parser.description and len(parser.description) > 30
    assert re.search(rf"examples:\n  ({program}|\S+ .*{program}) ", text), text
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help != "%(default)s", (name, action.dest)


@pytest.mark.parametrize("name", ["run", "check", "upload", "status"])
def test_the_agents_help_lists_every_setting_and_exit_code(name: str) -> None:
    text = commands(agent_parser())[name].format_help()
    for setting in Settings.model_fields:
        assert f"POSTBOX_{setting.upper()}" in text
    flat = " ".join(text.split())
    for code in ExitCode:
        assert f"{int(code)} {code.meaning}" in flat, code


def test_the_issuers_help_lists_every_exit_code() -> None:
    for parser in commands(issuer_parser()).values():
        flat = " ".join(parser.format_help().split())
        for code in IssuerExitCode:
            assert f"{int(code)} {code.meaning}" in flat, code


@pytest.mark.parametrize(
    ("heading", "codes"), [("### Exit codes", ExitCode), ("Issuer exit codes:", IssuerExitCode)]
)
def test_the_readmes_exit_code_tables_hold_every_code_and_no_other(
    heading: str, codes: type[enum.IntEnum]
) -> None:
    table = README.read_text(encoding="utf-8").split(heading, 1)[1].split("\n\n", 2)[1]
    listed = [int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)]
    assert listed == [int(code) for code in codes]
