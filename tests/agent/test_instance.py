"""POSTBOX_KEY_PREFIX: this instance's own key segment, from the machine itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError, ExitCode
from agent.instance import identity, key_segment
from agent.settings import load_settings


@pytest.fixture
def instance_data(tmp_path: Path) -> Path:
    path = tmp_path / "instance-data.json"
    path.write_text(json.dumps({"v1": {"instance_id": "i-0abc123", "region": "eu-west-1"}}))
    return path


@pytest.fixture
def machine_id(tmp_path: Path) -> Path:
    path = tmp_path / "machine-id"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    return path


def test_each_placeholder_is_filled_from_the_machine(instance_data: Path, machine_id: Path) -> None:
    segment = key_segment(
        "{instance_id}/{hostname}/{machine_id}/",
        instance_data,
        machine_id=machine_id,
        hostname=lambda: "worker-7",
    )
    assert segment == "i-0abc123/worker-7/0123456789abcdef0123456789abcdef/"
    assert key_segment("fixed/", instance_data) == "fixed/"


def test_the_instance_is_named_by_its_instance_id_else_its_machine_id_else_its_host_name(
    tmp_path: Path, instance_data: Path, machine_id: Path
) -> None:
    """Never an error (a name it shares with others only puts it in step with them)."""
    missing = tmp_path / "missing"
    host = lambda: "worker-7"  # noqa: E731
    assert identity(instance_data, machine_id=machine_id, hostname=host) == "i-0abc123"
    mid = "0123456789abcdef0123456789abcdef"
    assert identity(missing, machine_id=machine_id, hostname=host) == mid
    assert identity(missing, machine_id=missing, hostname=host) == "worker-7"
    machine_id.write_text("")  # as an image leaves it, for systemd to fill at first boot
    assert identity(missing, machine_id=machine_id, hostname=host) == "worker-7"


@pytest.mark.parametrize(
    ("template", "data", "message"),
    [
        ("{instance_id}/", None, "instance data {data} cannot be read (No such file"),
        ("{instance_id}/", {"v1": {}}, "has no v1.instance_id, which POSTBOX_KEY_PREFIX's"),
        ("{instance_id}/", "not json", "has no v1.instance_id"),
        ("{instance_id}/", {"v1": {"instance_id": "a/b"}}, "{instance_id} is 'a/b', not 1 to 128"),
        ("{zone}/", {}, "{zone} is not a placeholder"),
        ("{instance_id!r}/", {}, "is not a placeholder"),
        ("{instance_id/", {}, "is not a template"),
        ("../{instance_id}/", {"v1": {"instance_id": "i-1"}}, "holds a '..' segment"),
        ("/{instance_id}/", {"v1": {"instance_id": "i-1"}}, "starts with '/'"),
        ("a\x1b[31m/", {}, "holds control characters"),
        ("x" * 257, {}, "is over 256 bytes"),
    ],
)
def test_a_placeholder_that_cannot_be_filled_is_a_clear_start_up_error(
    tmp_path: Path, template: str, data: object, message: str
) -> None:
    """Never an empty segment: that would put every instance's files under the same keys."""
    path = tmp_path / "instance-data.json"
    if data is not None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        key_segment(template, path, hostname=lambda: "h")
    assert message.replace("{data}", str(path)) in caught.value.message
    assert caught.value.exit_code == ExitCode.CONFIG and "\n" not in caught.value.message


def test_the_settings_carry_the_filled_segment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, instance_data: Path
) -> None:
    env = tmp_path / "agent.env"
    env.write_text("POSTBOX_KEY_PREFIX={instance_id}/\n")
    monkeypatch.setenv("POSTBOX_INSTANCE_DATA", str(instance_data))
    assert load_settings(env).key_prefix == "i-0abc123/"
