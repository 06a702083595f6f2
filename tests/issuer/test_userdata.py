"""`postbox-issuer user-data`: valid for cloud-init's own schema, within EC2's size limit."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.settings import Settings, load_settings
from demo.stores import Store
from issuer import userdata
from issuer.cli import _parser, main
from issuer.errors import ExitCode, InputError
from issuer.userdata import AgentOptions
from tests.conftest import GrantMaker, require_tool
from tests.systemd.test_unit import UNIT, verify
from tests.test_packaging import project_version

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@pytest.fixture
def store(moto_store: Store) -> Store:
    """User-data only needs a grant signed; which server signs it makes no difference."""
    return moto_store


def render(tmp_path: Path, grant: Path, *options: str) -> Path:
    out = tmp_path / "user-data"
    assert main(["user-data", "--grant", str(grant), "-o", str(out), *options]) == 0
    return out


def files(user_data: Path) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(user_data.read_text())
    return {entry["path"]: entry for entry in config["write_files"]}


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("cloud-init")
    return subprocess.run(
        [tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )


def test_user_data_is_valid_for_cloud_inits_schema(tmp_path: Path, make_grant: GrantMaker) -> None:
    out = render(tmp_path, make_grant(), "--watch-dir", "/data/out", "--after-upload", "move")
    result = cloud_init_schema(out)
    print(result.stdout, result.stderr)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout
    assert out.read_text().startswith("#cloud-config\n")


def test_cloud_inits_schema_check_does_refuse_a_broken_file(tmp_path: Path) -> None:
    """The validator is real: a `permissions` given as a number is an error it reports."""
    broken = tmp_path / "broken"
    broken.write_text("#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 600\n")
    result = cloud_init_schema(broken)
    assert result.returncode != 0 and "permissions" in result.stdout + result.stderr


def test_user_data_carries_grant_settings_unit_and_installer(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    grant = make_grant()
    out = render(tmp_path, grant, "--agent-wheel", "https://example.invalid/s3_postbox.whl")
    written = files(out)
    assert json.loads(written["/etc/postbox/grant.json"]["content"]) == json.loads(
        grant.read_text()
    )
    assert written["/etc/postbox/grant.json"]["permissions"] == "0600"
    assert "POSTBOX_WATCH_DIR=/var/spool/postbox" in written["/etc/postbox/agent.env"]["content"]
    assert "POSTBOX_KEY_PREFIX={instance_id}/\n" in written["/etc/postbox/agent.env"]["content"]
    unit = (ROOT / "systemd/postbox-agent.service").read_text()
    assert written["/etc/systemd/system/postbox-agent.service"]["content"] == unit
    installer = (ROOT / "cloud-init/install-agent.sh").read_text()
    assert written["/usr/local/lib/postbox/install-agent"]["content"] == installer
    runcmd = yaml.safe_load(out.read_text())["runcmd"]
    assert runcmd == [
        [
            "/usr/local/lib/postbox/install-agent",
            "/var/spool/postbox",
            "/var/lib/postbox",
            "/etc/postbox/grant.json",
            "index",
            "https://example.invalid/s3_postbox.whl",
        ]
    ]
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.stat().st_size < 16384


def test_default_install_is_this_version_from_the_package_index(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    pinned = f"s3-postbox=={project_version()}"
    out = render(tmp_path, make_grant())
    assert yaml.safe_load(out.read_text())["runcmd"][0][4:] == ["index", pinned]
    assert out.read_text().startswith(f"#cloud-config\n# s3-postbox {project_version()}: ")
    out = render(tmp_path, make_grant(), "--index-url", "https://pypi.example.com/simple")
    assert yaml.safe_load(out.read_text())["runcmd"][0][4:] == [
        "index",
        pinned,
        "https://pypi.example.com/simple",
    ]


def test_an_issuer_that_was_never_installed_does_not_pin_an_unknown_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run from a bare source tree, the version is unknown: every VM would fail at boot on
    `pip install s3-postbox==unknown`, so the user-data is refused now, naming the way out."""
    monkeypatch.setattr(userdata, "__version__", "unknown")
    with pytest.raises(InputError, match=r"never installed.*--agent-wheel or --wheelhouse"):
        userdata.index_source()
    wheel = "https://example.com/s3_postbox-1-py3-none-any.whl"
    assert userdata.index_source(agent_wheel=wheel) == ("index", wheel)


def test_a_watch_dir_elsewhere_gets_a_drop_in_that_lets_the_unit_write_there(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    paths = "/etc/systemd/system/postbox-agent.service.d/paths.conf"
    written = files(render(tmp_path, make_grant(), "--watch-dir", "/data/out"))
    assert written[paths]["content"] == (
        "[Service]\nReadWritePaths=-/data/out\nReadWritePaths=-/var/lib/prometheus/node-exporter\n"
    )
    written = files(render(tmp_path, make_grant(), "--metrics-file", ""))
    assert paths not in written
    assert "POSTBOX_METRICS_FILE" not in written["/etc/postbox/agent.env"]["content"]


def test_metrics_go_to_node_exporters_textfile_folder_unless_turned_off(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    written = files(render(tmp_path, make_grant()))
    env = written["/etc/postbox/agent.env"]["content"]
    assert "POSTBOX_METRICS_FILE=/var/lib/prometheus/node-exporter/postbox.prom\n" in env
    written = files(render(tmp_path, make_grant(), "--metrics-file", "/srv/prom/postbox.prom"))
    drop_in = written["/etc/systemd/system/postbox-agent.service.d/paths.conf"]["content"]
    assert drop_in == "[Service]\nReadWritePaths=-/srv/prom\n"


def test_delete_or_move_after_upload_gives_the_unit_cap_lease_and_only_then(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    """The agent proves no writer holds a file before it removes it (a read lease on the batch
    job's file needs CAP_LEASE); keeping files needs no capability at all."""
    path = "/etc/systemd/system/postbox-agent.service.d/after-upload.conf"
    for action in ("delete", "move"):
        drop_in = files(render(tmp_path, make_grant(), "--after-upload", action))[path]["content"]
        assert "CapabilityBoundingSet=CAP_LEASE\nAmbientCapabilities=CAP_LEASE\n" in drop_in
    assert path not in files(render(tmp_path, make_grant()))


def test_the_key_segment_can_be_changed_or_turned_off_and_a_bad_one_is_refused_at_once(
    tmp_path: Path, make_grant: GrantMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    env = "/etc/postbox/agent.env"
    changed = files(render(tmp_path, make_grant(), "--key-prefix", "{hostname}/"))[env]
    assert "POSTBOX_KEY_PREFIX={hostname}/\n" in changed["content"]
    off = files(render(tmp_path, make_grant(), "--key-prefix", ""))[env]
    assert "POSTBOX_KEY_PREFIX" not in off["content"]
    argv = ["user-data", "--grant", str(make_grant()), "--key-prefix", "{zone}/"]
    assert main(argv) == 2
    assert "--key-prefix: setting POSTBOX_KEY_PREFIX: {zone} is not a placeholder" in (
        capsys.readouterr().err
    )


def test_a_grant_that_renews_itself_gets_a_writable_grant_folder_and_only_then(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    """The agent writes the renewed grant over /etc/postbox/grant.json; the unit's system is
    read-only, so a drop-in opens that folder (the installer makes it root:postbox 1770)."""
    path = "/etc/systemd/system/postbox-agent.service.d/renew.conf"
    grant = make_grant()
    assert path not in files(render(tmp_path, grant))
    document = json.loads(grant.read_text())
    document["renew"] = "https://b.s3.eu-west-1.amazonaws.com/grants/next.json?X-Amz-Expires=60"
    grant.write_text(json.dumps(document))
    drop_in = files(render(tmp_path, grant))[path]["content"]
    assert drop_in.endswith("ReadWritePaths=/etc/postbox\n")
    result = verify(UNIT.read_text() + "\n" + drop_in, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_a_longer_stop_budget_raises_the_units_stop_timeout_to_match(
    tmp_path: Path, make_grant: GrantMaker
) -> None:
    """systemd kills a unit TimeoutStopSec after SIGTERM: a budget the unit's 120 s could not
    hold gets a drop-in that gives the drain its time and 30 s for the last uploads; the
    default (90 s) and a shorter one need none. The unit with it passes systemd's own check."""
    path = "/etc/systemd/system/postbox-agent.service.d/stop.conf"
    assert path not in files(render(tmp_path, make_grant()))
    assert path not in files(render(tmp_path, make_grant(), "--stop-budget-seconds", "20"))
    written = files(render(tmp_path, make_grant(), "--stop-budget-seconds", "300.5"))
    assert written[path]["content"] == "[Service]\nTimeoutStopSec=331s\n"
    env = written["/etc/postbox/agent.env"]["content"]
    assert "POSTBOX_STOP_BUDGET_SECONDS=300.5\n" in env
    result = verify(UNIT.read_text() + "\n" + written[path]["content"], tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    watched = files(render(tmp_path, make_grant(), "--preemption-watch", "auto"))
    assert "POSTBOX_PREEMPTION_WATCH=auto\n" in watched["/etc/postbox/agent.env"]["content"]
    assert main(["user-data", "--grant", str(make_grant()), "--stop-budget-seconds", "-1"]) == 2


def test_user_data_over_ec2s_limit_is_refused_unless_gzipped(
    tmp_path: Path, make_grant: GrantMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = make_grant("runs/1/", "30m", "--note", "n" * 12000)
    out = tmp_path / "user-data"
    argv = ["user-data", "--grant", str(grant), "-o", str(out)]
    assert main(argv) == ExitCode.INPUT
    assert "over EC2's 16384: pass --gzip" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--gzip"]) == 0
    assert out.stat().st_size <= 16384
    unpacked = tmp_path / "unpacked"
    unpacked.write_bytes(gzip.decompress(out.read_bytes()))
    assert cloud_init_schema(unpacked).returncode == 0


def test_user_data_can_sign_its_own_grant(
    tmp_path: Path, store: Store, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["user-data", "--bucket", bucket, "--prefix", "vm/1/", "--expires", "1h"]
    assert main([*argv, "--endpoint-url", store.endpoint, "--region", "us-east-1"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    grant = json.loads(config["write_files"][0]["content"])
    assert grant["fields"]["key"] == "vm/1/${filename}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["user-data"], "user-data needs --grant FILE, or --bucket, --prefix and --expires"),
        (["user-data", "--grant", "/nonexistent.json"], "--grant /nonexistent.json cannot be read"),
    ],
)
def test_user_data_input_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == ExitCode.INPUT
    assert message in capsys.readouterr().err


def test_relative_watch_dir_is_refused(
    tmp_path: Path, make_grant: GrantMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["user-data", "--grant", str(make_grant()), "--watch-dir", "out"]
    assert main(argv) == ExitCode.INPUT
    assert "--watch-dir 'out' is not an absolute path" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--concurrency", "100"],
            "--concurrency 100: Input should be less than or equal to 32, the agent would refuse",
        ),
        (
            ["--settle-seconds", "-5"],
            "--settle-seconds -5: Input should be greater than 0, the agent would refuse it",
        ),
        (["--key-prefix", "{nope}/"], "--key-prefix: setting POSTBOX_KEY_PREFIX: {nope} is not"),
    ],
)
def test_settings_the_agent_would_refuse_are_refused_before_anything_is_signed(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked by the agent's own settings model, before the grant is signed: the bucket here
    does not exist and no endpoint answers, yet the error is the setting's."""
    argv = ["user-data", "--bucket", "no-such-bucket", "--prefix", "p/", "--expires", "1h"]
    argv += ["--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1", *options]
    assert main(argv) == ExitCode.INPUT
    error = capsys.readouterr().err
    assert message in error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--bucket", "b"], "--bucket would be ignored with --grant"),
        (["--max-size", "1GiB", "--note", "n"], "--max-size --note would be ignored with --grant"),
        (["--agent-wheel", ""], "--agent-wheel '' is not an http(s) URL"),
        (["--agent-wheel", "dist/s3_postbox-0.1.0-py3-none-any.whl"], "is not an http(s) URL"),
        (["--agent-wheel", "http://example.com/a.whl"], "is plain http to example.com"),
        (["--agent-wheel", "https://example.com/a.tar.gz"], "is not a wheel's URL (*.whl)"),
        (["--index-url", "http://pypi.example.com/simple"], "code of their own to run as root"),
    ],
)
def test_options_that_would_be_ignored_or_unsafe_are_refused(
    options: list[str], message: str, make_grant: GrantMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["user-data", "--grant", str(make_grant()), *options]
    assert main(argv) == ExitCode.INPUT
    assert message in capsys.readouterr().err


def test_a_wheel_on_loopback_may_be_plain_http(tmp_path: Path, make_grant: GrantMaker) -> None:
    wheel = "http://127.0.0.1:8000/s3_postbox-0.1.0-py3-none-any.whl"
    out = render(tmp_path, make_grant(), "--agent-wheel", wheel)
    assert yaml.safe_load(out.read_text())["runcmd"][0][4:] == ["index", wheel]


def _env_file_of(user_data: Path, root: Path) -> Path:
    env = root / "agent.env"
    env.write_text(files(user_data)["/etc/postbox/agent.env"]["content"])
    return env


def test_every_agent_option_reaches_the_agent_through_its_own_settings_loader(
    tmp_path: Path, make_grant: GrantMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each user-data option, set away from its default, is what the agent's `load_settings`
    reads back from the env file the user-data writes: no option is lost, misspelt or turned."""
    chosen = {
        "watch_dir": "/data/results",
        "state_dir": "/data/state",
        "after_upload": "move",
        "key_prefix": "{instance_id}/{hostname}/",
        "concurrency": 3,
        "settle_seconds": 2.5,
        "metrics_file": "/srv/metrics/postbox.prom",
        "stop_budget_seconds": 150.0,
        "preemption_watch": "auto",
    }
    options = {f.name for f in dataclasses.fields(AgentOptions)} - {"source"}  # how, not what
    assert set(chosen) == options, "a new user-data option needs a row here"
    given = [f"--{name.replace('_', '-')}={value}" for name, value in chosen.items()]
    out = render(tmp_path, make_grant(), *given)
    instance = tmp_path / "instance-data.json"
    instance.write_text('{"v1": {"instance_id": "i-0abc"}}')
    monkeypatch.setenv("POSTBOX_INSTANCE_DATA", str(instance))
    settings = load_settings(_env_file_of(out, tmp_path))
    read = {name: getattr(settings, name) for name in chosen}
    assert read == {
        **chosen,
        "watch_dir": Path("/data/results"),
        "state_dir": Path("/data/state"),
        "key_prefix": f"i-0abc/{socket.gethostname()}/",  # filled in at start, on each instance
        "metrics_file": Path("/srv/metrics/postbox.prom"),
    }
    assert settings.grant_file == Path(yaml.safe_load(out.read_text())["runcmd"][0][3])


def test_what_the_user_data_does_not_choose_is_the_agents_own_default(
    tmp_path: Path, make_grant: GrantMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default user-data gives the agent its own defaults but for the two it chooses on purpose:
    a key segment per instance and node_exporter's metrics file."""
    instance = tmp_path / "instance-data.json"
    instance.write_text('{"v1": {"instance_id": "i-0abc"}}')
    monkeypatch.setenv("POSTBOX_INSTANCE_DATA", str(instance))
    settings = load_settings(_env_file_of(render(tmp_path, make_grant()), tmp_path))
    defaults = Settings(instance_data=instance)
    differ = {n for n in Settings.model_fields if getattr(settings, n) != getattr(defaults, n)}
    assert differ == {"key_prefix", "metrics_file"}
    assert settings.key_prefix == "i-0abc/"
    assert settings.metrics_file == Path("/var/lib/prometheus/node-exporter/postbox.prom")


def _readme_on_user_data() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("### What the user-data does\n", 1)[1].split("\n## ", 1)[0]


def _user_data_options() -> set[str]:
    (sub,) = (a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name for a in sub.choices["user-data"]._actions for name in a.option_strings}


def test_the_readmes_account_of_the_user_data_is_what_it_writes(
    tmp_path: Path, make_grant: GrantMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "What the user-data does", read as a reader would and held to the user-data
    rendered: every file it may write with its mode, and those written only on a condition;
    the options agent.env carries; the stop budget's numbers; EC2's limit; the sizes it gives.
    A file or option the README leaves out fails, and so does a number that drifts."""
    section = _readme_on_user_data()
    rows = re.findall(r"^\| `(/[^`]+)` \| (\d{4}) \| (.+) \|$", section, re.MULTILINE)
    table = {path: (mode, what) for path, mode, what in rows}
    assert "writes `#cloud-config` with:" in section
    out = render(tmp_path, make_grant())
    text, default = out.read_text(), files(out)
    assert text.startswith("#cloud-config\n")
    renewing = make_grant()
    document = json.loads(renewing.read_text())
    document["renew"] = "https://b.s3.eu-west-1.amazonaws.com/grants/next.json?X-Amz-Expires=60"
    renewing.write_text(json.dumps(document))
    away = ["--watch-dir", "/data/out", "--state-dir", "/data/state", "--after-upload", "move"]
    everything = files(render(tmp_path, renewing, *away, "--stop-budget-seconds", "300"))
    written = {**everything, **default}
    assert {path: entry["permissions"] for path, entry in written.items()} == {
        path: mode for path, (mode, _) in table.items()
    }
    only = {path for path, (_, what) in table.items() if what.startswith("only with")}
    assert only == set(written) - set(default)
    paths = "/etc/systemd/system/postbox-agent.service.d/paths.conf"
    assert paths not in files(render(tmp_path, make_grant(), "--metrics-file", ""))
    named = set(re.findall(r"`(--[a-z-]+)", section))
    assert named <= _user_data_options()
    env_row = table["/etc/postbox/agent.env"][1]  # every option the agent's settings take
    carried = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(AgentOptions)}
    assert set(re.findall(r"`(--[a-z-]+)`", env_row)) == carried - {"--source"}

    stop = "/etc/systemd/system/postbox-agent.service.d/stop.conf"
    said = re.search(r"over (\d+): .* \+ (\d+) s", table[stop][1])
    assert said, table[stop]
    over, grace = int(said[1]), int(said[2])
    assert stop not in files(render(tmp_path, make_grant(), "--stop-budget-seconds", str(over)))
    longer = files(render(tmp_path, make_grant(), "--stop-budget-seconds", str(over + 10)))
    assert longer[stop]["content"] == f"[Service]\nTimeoutStopSec={over + 10 + grace}s\n"

    flat = " ".join(section.split())
    limits = {int(n) for n in re.findall(r"(\d{5}) bytes", flat)}
    assert limits == {userdata.USER_DATA_LIMIT}
    # "about": within 10% of the default user-data, as it is and gzipped
    said = re.search(r"about (\d+) KB,.* about (\d+) KB gzipped", flat)
    assert said, section
    typical, zipped = int(said[1]), int(said[2])
    for stated, size in [
        (typical, len(text.encode())),
        (zipped, len(userdata.encode(text, compress=True))),
    ]:
        assert abs(size - stated * 1000) <= stated * 100, (stated, size)
    # An assumed role's session token (commonly 700 to 1100 characters) takes it over the limit.
    monkeypatch.setenv("AWS_SESSION_TOKEN", "F" * 800)
    argv = ["user-data", "--grant", str(make_grant()), "-o", str(tmp_path / "ud")]
    assert main(argv) == ExitCode.INPUT
    assert main([*argv, "--gzip"]) == 0
