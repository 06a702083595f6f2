"""What a wheel built from this checkout carries, and what the agent may import."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.metadata import metadata, version
from pathlib import Path

import pytest

import agent
import issuer
from agent.cli import main as agent_main
from issuer.cli import main as issuer_main
from issuer.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]


def project_version() -> str:
    """The version, where it is written: pyproject.toml (tomllib is 3.11's, the suite runs 3.9)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE)
    assert found is not None
    return found.group(1)


def test_one_version_written_in_pyproject_and_read_from_the_installed_metadata(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert agent.__version__ == issuer.__version__ == version("s3-postbox") == project_version()
    for main, prog in ((agent_main, "postbox-agent"), (issuer_main, "postbox-issuer")):
        assert main(["--version"]) == 0
        assert capsys.readouterr().out == f"{prog} {project_version()}\n"
    literal = re.compile(r"""__version__\s*=\s*["']\d""")
    written = [p for p in ROOT.glob("[ai]*/*.py") if literal.search(p.read_text(encoding="utf-8"))]
    assert written == [], "the version is pyproject.toml's alone"


def test_wheel_carries_the_product_and_nothing_else(tmp_path: Path) -> None:
    """The agent, the issuer and their data (the unit, the installer, the upload page): no demo,
    no local stores, no tests."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "-o",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("s3_postbox-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        unit = archive.read("issuer/data/postbox-agent.service")
        installer = archive.read("issuer/data/install-agent.sh")
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
    assert unit == (ROOT / "systemd/postbox-agent.service").read_bytes()
    assert installer == (ROOT / "cloud-init/install-agent.sh").read_bytes()
    assert b"postbox-agent = agent.cli:main" in entry_points
    assert b"postbox-issuer = issuer.__main__:main" in entry_points
    metadata = {n for n in names if n.startswith("s3_postbox-") and ".dist-info/" in n}
    packages = {n.split("/")[0] for n in names - metadata}
    assert packages == {"agent", "issuer"}, sorted(names - metadata)
    assert {n for n in names if n.startswith("issuer/data/")} == {
        "issuer/data/postbox-agent.service",
        "issuer/data/install-agent.sh",
        "issuer/data/upload.html",
    }
    modules = {Path(n).stem for n in names if n.endswith(".py")}
    assert not modules & {"demo", "localstore", "stores", "conftest"}, modules


def test_the_agent_never_imports_boto3() -> None:
    """The VM installs the agent without boto3: importing every agent module must not need it."""
    code = (
        "import sys, importlib, pkgutil, agent\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('boto3', 'botocore'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "for m in pkgutil.iter_modules(agent.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('agent.' + m.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(("blocked", "named"), [("boto3", "boto3"), ("yaml", "PyYAML")])
def test_the_issuer_without_its_extras_says_what_to_install_in_one_line(
    blocked: str, named: str
) -> None:
    """The agent-only install on a VM has postbox-issuer too, but not boto3 or PyYAML (the
    first-boot test runs it there for real)."""
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None  # as if not installed: ModuleNotFoundError\n"
        "from issuer.__main__ import main\n"
        "sys.exit(main(['--version']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == ExitCode.INPUT
    assert result.stderr == (
        f"postbox-issuer: {named} is not installed (the issuer needs it; the agent does not): "
        "pip install 's3-postbox[issuer]'\n"
    )


def test_each_tool_the_readme_runs_with_python_m_is_installed_by_a_pip_install_before_it() -> None:
    """A reader who follows the README from the top has installed each `python -m TOOL` it
    shows on a `pip install` line before, by name or through an extra (`'.[issuer]'`)."""
    requires = metadata("s3-postbox").get_all("Requires-Dist") or []

    def extra(name: str) -> set[str]:
        return {
            re.split(r"[\[<>=!; ]", line, maxsplit=1)[0].lower()
            for line in requires
            if line.endswith(f"extra == '{name}'") or line.endswith(f'extra == "{name}"')
        }

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    installed: set[str] = set()
    ran = []
    for line in "".join(re.findall(r"```sh\n(.*?)```", readme, re.DOTALL)).splitlines():
        command = line.split("#", 1)[0]
        if command.startswith("pip install "):
            for word in (w.strip("'\"") for w in command.split()[2:]):
                extras = re.fullmatch(r"\.\[([a-z,]+)\]", word)
                if extras:
                    installed |= {n for e in extras[1].split(",") for n in extra(e)}
                elif not word.startswith("-"):
                    installed.add(word.lower())
        for tool in re.findall(r"python3? -m ([\w.]+)", command):
            assert tool in installed | {"pip", "venv"}, f"README runs python -m {tool}: {line}"
            ran.append(tool)
    assert "build" in ran
