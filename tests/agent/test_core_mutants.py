"""Each rule of the core (agent/core.py, agent/rules.py, agent/ledger.py) broken in turn, in a copy
of the agent: tests/agent/test_core.py must go red for every one. A rule its table test does not
hold would pass here unnoticed; this is the check that those tests can fail. Deterministic: the
core reads no clock, so a broken rule is red on every run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (the rule broken, the file, the line that holds it, what it becomes)
MUTANTS = [
    (
        "an expired grant wins over a damaged journal",
        "agent/core.py",
        "ExitCode.JOURNAL_DAMAGED if m.damaged else ExitCode.EXPIRED",
        "ExitCode.EXPIRED if m.expired else ExitCode.JOURNAL_DAMAGED",
    ),
    (
        "a damaged journal does not stop",
        "agent/core.py",
        "if m.damaged or m.expired:",
        "if m.expired:",
    ),
    (
        "the backlog is retried with nothing waiting",
        "agent/core.py",
        'if self.ledger.count(State.UNRECORDED) and due("record", t):',
        'if due("record", t):',
    ),
    (
        "status.json waits a period at start",
        "agent/rules.py",
        'return Chores(every, start, "scan", "record", "status")',
        'return Chores(every, start, "scan", "record", "status", "snapshot")',
    ),
    (
        "the barrier: any marker clears it",
        "agent/core.py",
        "if relpath == self.stop.barrier:  # every event before the signal is in",
        "if True:",
    ),
    (
        "the barrier: the drain ignores it",
        "agent/rules.py",
        "return now >= self.until or (self.barrier is None and scanned and not busy)",
        "return now >= self.until or (scanned and not busy)",
    ),
    (
        "the budget: the drain ignores its end",
        "agent/rules.py",
        "return now >= self.until or (self.barrier is None",
        "return (self.barrier is None",
    ),
    (
        "the deadline: uploads start past it",
        "agent/core.py",
        "if not self.stop.may_start(now.mono):",
        "if False:",
    ),
    (
        "the deadline: a drain ignores it",
        "agent/rules.py",
        "return min(self.began + self.budget, self.deadline)",
        "return self.began + self.budget",
    ),
    (
        "the deadline: past-deadline line said every tick",
        "agent/core.py",
        'if now.mono >= self.stop.deadline and self.said.first("past"):',
        "if now.mono >= self.stop.deadline:",
    ),
    (
        "a second signal does not halt",
        "agent/core.py",
        "            out.append(Halt())",
        "            pass",
    ),
    (
        "the settle wait: a changed file is due anyway",
        "agent/ledger.py",
        "        if version == entry.version:",
        "        if True:",
    ),
    (
        "the workers' bound ignored",
        "agent/core.py",
        "ledger.take(self.concurrency - sending)",
        "ledger.take(self.concurrency)",
    ),
    (
        "the room: events let in when full",
        "agent/core.py",
        "full = self.on_its_way + self.queued() >= self.room",
        "full = self.on_its_way >= self.room * 100",
    ),
    (
        "the room: walks' finds on the inbox not counted",
        "agent/core.py",
        "full = self.on_its_way + self.queued() >= self.room",
        "full = self.on_its_way >= self.room",
    ),
    (
        "the room: owed walks before half is free",
        "agent/rules.py",
        "if not self._folders or held > most // 2:",
        "if not self._folders:",
    ),
    (
        "the room: owed walks wait past half",
        "agent/rules.py",
        "if not self._folders or held > most // 2:",
        "if not self._folders or held > most // 4:",
    ),
    (
        "readiness: a covered walk counts",
        "agent/core.py",
        "if m.folder is None and not m.covered:",
        "if m.folder is None:",
    ),
    (
        "readiness: a walk that waits does not",
        "agent/core.py",
        "WalkWaits, now: Now, out: list[Action]) -> None:\n        self._now_ready(out)",
        "WalkWaits, now: Now, out: list[Action]) -> None:\n        pass",
    ),
    ("the walks' tally: asked not counted", "agent/core.py", "        self.walks.asked += 1\n", ""),
    (
        "wait is told nothing",
        "agent/core.py",
        "held = self.ledger.states_of(m.paths)",
        "held = {}",
    ),
    (
        "the filters: an excluded file is held",
        "agent/core.py",
        "        return kept\n",
        "        return False\n",
    ),
    (
        "the filters: a walk's excluded finds are held",
        "agent/core.py",
        "files = [f for f in files if not self._keeps_back(f[0], out)]",
        "files = list(files)",
    ),
    (
        "the filters: a walk's excluded refusals are held",
        "agent/core.py",
        "refused = [r for r in refused if not self._keeps_back(r[0], out)]",
        "refused = list(refused)",
    ),
    (
        "the filters: a file carried under an excluded name stays held",
        "agent/core.py",
        "                self.ledger.gone(source)\n",
        "                pass\n",
    ),
    (
        "the filters: wait is not told of an excluded file",
        "agent/core.py",
        "held[path] = (EXCLUDED, why)",
        "pass",
    ),
    (
        "the filters: an excluded file is counted and said each time",
        "agent/rules.py",
        'return bool(why), why if why and self.add(relpath) else ""',
        "return bool(why), why",
    ),
    (
        "a journal that cannot record does not pause uploads",
        "agent/core.py",
        "if not self._startable or self.ledger.count(State.UNRECORDED):",
        "if not self._startable:",
    ),
    (
        "the shell's no is not heeded",
        "agent/core.py",
        "if not self._startable or self.ledger.count(State.UNRECORDED):",
        "if self.ledger.count(State.UNRECORDED):",
    ),
    (
        "a notice does not hurry",
        "agent/ledger.py",
        "        if for_good:\n            self.settle_seconds = 0.0",
        "        if False:\n            self.settle_seconds = 0.0",
    ),
    (
        "a withdrawn notice keeps the deadline",
        "agent/rules.py",
        "        self._deadlines.pop(what, None)\n",
        "",
    ),
]


def _core_tests(
    tmp_path: Path, mutant: tuple[str, str, str, str] | None
) -> subprocess.CompletedProcess[str]:
    """tests/agent/test_core.py run against a copy of the agent, `mutant` applied to it."""
    shutil.copytree(
        ROOT / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "tests" / "agent" / "test_core.py", tmp_path / "test_core.py")
    if mutant is not None:
        _, path, old, new = mutant
        target = tmp_path / path
        source = target.read_text(encoding="utf-8")
        assert source.count(old) == 1, (
            f"{path} no longer holds the line this mutant breaks: {old!r}"
        )
        target.write_text(source.replace(old, new), encoding="utf-8")
    check = "import agent.core, sys; assert agent.core.__file__.startswith(sys.argv[1])"
    subprocess.run([sys.executable, "-c", check, str(tmp_path)], cwd=tmp_path, check=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
         "test_core.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_core_tests_pass_on_the_copy(tmp_path: Path) -> None:
    done = _core_tests(tmp_path, None)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_each_rule_broken_turns_the_core_tests_red(
    tmp_path: Path, mutant: tuple[str, str, str, str]
) -> None:
    done = _core_tests(tmp_path, mutant)
    assert done.returncode == 1 and "FAILED" in done.stdout, done.stdout
