"""How the code is laid out (README, "How the code is laid out"): each module in a layer, and
imports go down only. Read from the source with `ast`, every import counted (in functions and
under TYPE_CHECKING too). Strictly lower layers alone means no cycle can form."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower layers first. A module imports only modules of lower layers.
LAYERS: dict[str, list[set[str]]] = {
    "agent": [
        {"agent", "errors", "logs", "clock", "notify", "policy"},  # no agent import at all
        {"files", "keys", "instance"},  # file identity and safe opening; key rules
        {"settings", "grant", "journal", "ledger", "metrics", "watcher"},  # one concern each
        {"renewal", "uploader", "status"},
        {"delivery", "check"},  # one file from due to done; the readiness check
        {"service"},  # the threads and the lifecycle
        {"cli"},
        {"__main__"},
    ],
    "issuer": [
        {"issuer", "errors"},
        {"units", "aws", "cloudfront", "formats"},  # aws: the one seam to boto3
        {"signer"},  # the signing context every artefact is made in
        {"grant", "urls", "userdata"},
        {"renew", "wheelhouse", "inspection"},
        {"cli"},
        {"__main__"},
    ],
}
# The issuer may use the agent's rules and data (the policy, the grant, the settings), never
# the parts that run: what the agent does, the issuer only checks against.
ISSUER_MAY_IMPORT_AGENT_UP_TO = 3
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


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_go_down_only(module: str, path: Path) -> None:
    package, level = _layer(module)
    for imported in _imports(path) - {module}:
        assert imported.split(".")[0] in ("agent", "issuer"), f"{module} imports {imported}"
        their_package, their_level = _layer(imported)
        if their_package == package:
            assert their_level < level, (
                f"{module} (layer {level}) imports {imported} ({their_level})"
            )
        else:
            assert package == "issuer", f"the agent imports the issuer: {module} -> {imported}"
            assert their_level <= ISSUER_MAY_IMPORT_AGENT_UP_TO, f"{module} imports {imported}"


def test_every_module_is_in_the_readme_layout() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    for module, _ in _modules():
        if "." in module and not module.endswith("__main__"):
            assert f"{module.split('.')[1]}.py" in section, f"{module} is not in the README"


def test_the_layout_check_does_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker is real: an import of the service from the policy is reported."""
    fake = tmp_path / "policy.py"
    fake.write_text("from agent.service import Agent\nfrom agent import logs\n")
    assert _imports(fake) == {"agent.service", "agent.logs"}
    assert _layer("agent.service")[1] > _layer("agent.policy")[1]
