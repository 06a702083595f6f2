"""One user-data, many instances: the same grant, the same settings, the same relative paths.

Each agent here is started from the bytes one `postbox-issuer user-data` rendered (its grant and
its agent.env, as cloud-init would write them), with the instance data of a different instance.
Against both servers (RGW enforces the grant's prefix as S3 does): every object lands under its
instance's own segment, and none overwrites another's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.errors import ExitCode
from issuer.cli import main as issuer_main
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, objects

INSTANCES = ("i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3")
PATHS = ("results/part-0001.bin", "results/part-0002.bin", "summary.csv")


@pytest.fixture
def fleet(tmp_path: Path, make_grant: GrantMaker) -> Iterator[list[AgentProcess]]:
    user_data = tmp_path / "user-data"
    argv = ["user-data", "--grant", str(make_grant("fleet/")), "-o", str(user_data)]
    assert issuer_main(argv) == 0
    written = {
        f["path"]: f["content"] for f in yaml.safe_load(user_data.read_text())["write_files"]
    }
    agents = []
    for instance in INSTANCES:
        home = tmp_path / instance
        home.mkdir()
        grant = home / "grant.json"
        grant.write_text(written["/etc/postbox/grant.json"])
        grant.chmod(0o600)
        (home / "agent.env").write_text(written["/etc/postbox/agent.env"])
        data = home / "instance-data.json"
        data.write_text(json.dumps({"v1": {"instance_id": instance, "cloud_name": "aws"}}))
        agents.append(
            AgentProcess(home, grant, env_file=str(home / "agent.env"), instance_data=str(data))
        )
    yield agents
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()


def test_instances_from_one_user_data_never_overwrite_each_other(
    fleet: list[AgentProcess], s3: Any, bucket: str
) -> None:
    expected = {}
    for agent, instance in zip(fleet, INSTANCES):
        agent.start().ready()
        assert f"under prefix fleet/{instance}/" in agent.text()
    for agent, instance in zip(fleet, INSTANCES):
        for relpath in PATHS:
            body = os.urandom(64) + instance.encode()
            (agent.watch / relpath).parent.mkdir(parents=True, exist_ok=True)
            (agent.watch / relpath).write_bytes(body)
            expected[f"fleet/{instance}/{relpath}"] = body
    assert eventually(lambda: objects(s3, bucket) == expected, timeout=60), [
        a.text() for a in fleet
    ]
    for agent in fleet:
        assert agent.stop() == ExitCode.OK
