"""How the code is laid out (README, "How the code is laid out"): each module in a layer, and
imports go down only. Read from the source with `ast`, every import counted (in functions and
under TYPE_CHECKING too). Strictly lower layers alone means no cycle can form."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower layers first. A module imports only modules of lower layers.
LAYERS: dict[str, list[set[str]]] = {
    "agent": [
        # no agent import: the version, the exceptions, --help, a text shown in one line
        {"agent", "errors", "usage", "shown"},
        # a line per event; time; systemd; the rules of time and a file's version, pure (their
        # purity is test_the_core_imports_nothing_that_acts); when an upload may begin; the
        # bandwidth limit's bucket
        {"logs", "clock", "notify", "policy", "rules", "versions", "commits", "bandwidth"},
        # a file's version and safe opening; key rules; the journal's file; a preemption notice;
        # what a grant's signature rests on; the folders the agent cannot list
        # what the threads tell the core, pure; what an object carries of its file, pure
        {"files", "keys", "instance", "database", "signed", "unlisted", "messages", "properties"},
        {"filters"},  # which files are sent (POSTBOX_INCLUDE, POSTBOX_EXCLUDE), pure
        {  # one concern each
            "settings",
            "grant",
            "journal",
            "changes",  # watchdog's events
            "walk",  # the files under a folder
            "question",  # what `wait` asks the agent, and is told
            "body",
            "answer",
            "retry",
            "access",  # what wait and status may read as the job's user
            "heard",  # what a cloud's metadata service said
        },
        # a delivery's values; the judge of expiry; the renewal; what wait asks the agent; the
        # cloud's preemption notice; a POST's body
        # what `wait` lists
        {"outcome", "deadline", "renewal", "asking", "notice", "parts", "form", "listing"},
        # a watched file's states and the ledger's entry; the watch dir, followed; the HTTP session
        # what the core and its shell say to each other (Now, the actions)
        {"states", "watcher", "session", "actions"},
        {"ledger", "uploader", "inbox"},
        {"preempted"},  # what a preemption notice asks of the daemon, pure
        # a file in parts; the metrics; the grant kept; the daemon's decisions, pure
        {"inparts", "metrics", "keeper", "core"},
        # one file from due to done; what the daemon reports; `postbox-agent wait` and `status`;
        # the walks
        {"delivery", "status", "wait", "readout", "scanner"},
        {"workers"},  # the uploads under way
        {"threads"},  # the parts that act, built once; the chores between messages
        {"service"},  # the shell around the core: the dispatcher and the lifecycle
        {"wiring"},  # an agent put together from its settings
        {"check"},  # the readiness check
        {"cli"},
        {"__main__"},
    ],
    "issuer": [
        {"issuer", "errors"},
        {"units", "aws", "cloudfront", "formats"},  # aws: the one seam to boto3
        {"signer"},  # the signing context every artefact is made in
        {"grant", "urls", "userdata"},
        {"renew", "wheelhouse", "inspection", "assemble"},
        {"cli"},
        {"__main__"},
    ],
}
# The issuer may use the agent's rules and data (the policy, the grant, the settings), never
# the parts that run: what the agent does, the issuer only checks against.
ISSUER_MAY_IMPORT_AGENT_UP_TO = 5
OURS = ("agent", "issuer", "demo", "tests", "benchmarks")


def _module(package: str, path: Path) -> str:
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def _imports(path: Path) -> set[str]:
    """The project's modules `path` imports (`from agent import x` names agent.x if a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module in ("agent", "issuer"):
                names = [
                    f"{node.module}.{a.name}"
                    if (ROOT / node.module / f"{a.name}.py").exists()
                    else node.module
                    for a in node.names
                ]
        found |= {n for n in names if n.split(".")[0] in OURS}
    return found


def _layer(module: str) -> tuple[str, int]:
    package, _, name = module.partition(".")
    for level, members in enumerate(LAYERS[package]):
        if (name or package) in members:
            return package, level
    raise AssertionError(f"{module} has no layer: give it one here and a line in the README")


def _modules() -> list[tuple[str, Path]]:
    return [(_module(p, f), f) for p in LAYERS for f in sorted((ROOT / p).glob("*.py"))]


def _wrong(module: str, imports: set[str]) -> list[str]:
    """Each import of `module` that is not strictly downward, in words."""
    package, level = _layer(module)
    wrong = []
    for imported in sorted(imports - {module}):
        if imported.split(".")[0] not in ("agent", "issuer"):
            wrong.append(f"{module} imports {imported}, which is not shipped")
            continue
        their_package, their_level = _layer(imported)
        if their_package == package and their_level >= level:
            wrong.append(f"{module} (layer {level}) imports {imported} (layer {their_level})")
        elif their_package != package and package == "agent":
            wrong.append(f"the agent imports the issuer: {module} -> {imported}")
        elif their_package != package and their_level > ISSUER_MAY_IMPORT_AGENT_UP_TO:
            wrong.append(f"{module} imports the agent's running part {imported}")
    return wrong


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_go_down_only(module: str, path: Path) -> None:
    assert _wrong(module, _imports(path)) == []


def test_every_module_is_in_the_readme_layout() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    for module, _ in _modules():
        if "." in module and not module.endswith("__main__"):
            assert f"{module.split('.')[1]}.py" in section, f"{module} is not in the README"


def test_the_layout_check_does_catch_what_it_forbids(tmp_path: Path) -> None:
    """The checker is real: upward, sideways, agent-to-issuer and demo imports are reported."""
    fake = tmp_path / "policy.py"
    fake.write_text(
        "from agent.service import Agent\nfrom agent import logs\nimport demo.stores\n"
        "def later():\n    from agent.keys import object_key\n"
    )
    assert _imports(fake) == {"agent.service", "agent.logs", "demo.stores", "agent.keys"}
    assert _wrong("agent.policy", _imports(fake)) == [
        "agent.policy (layer 1) imports agent.keys (layer 2)",
        "agent.policy (layer 1) imports agent.logs (layer 1)",
        f"agent.policy (layer 1) imports agent.service (layer {_layer('agent.service')[1]})",
        "agent.policy imports demo.stores, which is not shipped",
    ]
    assert _wrong("agent.keys", {"issuer.grant"}) == [
        "the agent imports the issuer: agent.keys -> issuer.grant"
    ]
    assert _wrong("issuer.grant", {"agent.service", "agent.policy"}) == [
        "issuer.grant imports the agent's running part agent.service"
    ]


# What acts on the world, or waits on it: the pure core imports none of these, directly or
# through what it imports (issue 33; README, "How the code is laid out").
ACTING = ("threading", "socket", "time", "os", "requests", "watchdog", "sqlite3", "logging",
          "subprocess", "select", "signal", "asyncio", "concurrent", "queue")  # fmt: skip


def _brought_in(module: str) -> set[str]:
    """The modules that importing `module` brings into a fresh interpreter (`-I -S`), beyond
    those the interpreter holds at its start, and those the project's own files among them
    import by name. `os` counts only so: the interpreter holds it at every start but this
    one's, and half the standard library (typing, through contextlib) imports it."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); before = set(sys.modules); "
        f"import importlib; importlib.import_module({module!r}); "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    brought = set(out.split()) - {"os", "os.path"}
    for name in [m for m in brought if m.split(".")[0] in OURS]:
        path = ROOT / Path(*name.split(".")).with_suffix(".py")
        if not path.exists():  # a package
            path = ROOT / Path(*name.split(".")) / "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # what runs: an `if TYPE_CHECKING:` block never does
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                brought |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                brought.add(node.module)
    return {m for m in brought if m.split(".")[0] in ACTING}


@pytest.mark.parametrize(
    "module", ["agent.core", "agent.rules", "agent.messages", "agent.ledger", "agent.versions"]
)
def test_the_core_imports_nothing_that_acts(module: str) -> None:
    assert _brought_in(module) == set()


def test_the_purity_check_does_catch_what_acts() -> None:
    assert {"threading", "logging"} <= _brought_in("agent.logs")  # logging brings threading
    assert "os" in _brought_in("agent.files")  # held at start, and imported by name
