"""examples/: what the README tells operators to copy must work as it is."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import hcl2
import pytest
import yaml

from demo.stores import Store
from issuer.cli import _parser
from tests.conftest import GrantMaker, require_tool
from tests.issuer.test_userdata import cloud_init_schema

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
README = EXAMPLES.parent / "README.md"


def test_the_renewal_timer_and_service_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    issuer = shutil.which("postbox-issuer", path=str(Path(sys.executable).parent))
    assert issuer is not None
    for name in ("postbox-renew.service", "postbox-renew.timer"):
        text = (EXAMPLES / name).read_text().replace("/usr/local/bin/postbox-issuer", issuer)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [tool, "verify", str(tmp_path / "postbox-renew.timer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_renewal_timer_sets_only_what_systemd_applies_to_it() -> None:
    """`Persistent=` applies to `OnCalendar=` timers only (systemd.timer(5)); the example set it
    beside `OnBootSec=`/`OnUnitActiveSec=`, where it did nothing (issue 35); `verify` is silent
    about it. A missed renewal at boot is what `OnBootSec=` is for."""
    timer = dict(
        line.split("=", 1)
        for line in (EXAMPLES / "postbox-renew.timer").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert "Persistent" not in timer or "OnCalendar" in timer, timer
    assert "OnBootSec" in timer and "OnUnitActiveSec" in timer


def test_the_renewal_service_runs_renew_then_assemble_as_the_issuer_accepts_them() -> None:
    service = (EXAMPLES / "postbox-renew.service").read_text().replace("\\\n", " ")
    lines = [x for x in service.splitlines() if x.startswith("ExecStart=")]
    parsed = [_parser().parse_args(line.split("=", 1)[1].split()[1:]) for line in lines]
    assert [args.command.__name__ for args in parsed] == ["renew_command", "assemble_command"]
    assert parsed[0].publish.startswith("s3://")
    assert (parsed[1].bucket, parsed[1].prefix) == (parsed[0].bucket, parsed[0].prefix)


def test_the_iam_policy_names_what_renew_does() -> None:
    policy = json.loads((EXAMPLES / "renew-policy.json").read_text())
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {"s3:PutObject", "s3:GetObject"} <= actions
    # the published grant's bucket listed for its one key: S3 then says 404, not 403, for a
    # next grant not published yet (a first run, a revocation); no region lookup needs more
    published = [s for s in policy["Statement"] if s["Resource"] == "arn:aws:s3:::ops-bucket"]
    assert [s["Action"] for s in published] == ["s3:ListBucket"]
    assert "s3:GetBucketLocation" not in actions  # never called: HeadBucket names the region
    # assemble: manifests found and read, parts copied (PutObject) then deleted, left uploads
    assert {"s3:ListBucket", "s3:DeleteObject", "s3:AbortMultipartUpload"} <= actions
    assert "s3:ListBucketMultipartUploads" in actions
    # the parts' tags read, the object's given (RGW keeps no Tagging of CreateMultipartUpload);
    # in a versioned bucket, the versions checked read, copied, tagged and deleted
    assert {"s3:GetObjectTagging", "s3:PutObjectTagging", "s3:GetBucketVersioning"} <= actions
    assert {"s3:GetObjectVersion", "s3:GetObjectVersionTagging", "s3:PutObjectVersionTagging",
            "s3:DeleteObjectVersion"} <= actions  # fmt: skip


@pytest.fixture
def store(moto_store: Store) -> Store:
    """moto's server answers EC2 and Auto Scaling on the same endpoint as S3."""
    return moto_store


def test_the_launch_template_script_makes_a_template_and_group_from_one_user_data(
    store: Store, make_grant: GrantMaker, tmp_path: Path, wheelhouse: Path
) -> None:
    """The real AWS CLI, pointed at moto by AWS_ENDPOINT_URL, as the script would run it; the
    user-data installs from a wheelhouse."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "aws").exists(), "the AWS CLI (awscli, a test dependency) is missing"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AWS_ENDPOINT_URL": store.endpoint,
        "AWS_ACCESS_KEY_ID": store.access_key,
        "AWS_SECRET_ACCESS_KEY": store.secret_key,
        "AWS_DEFAULT_REGION": store.region,
    }
    ec2 = boto3.client("ec2", endpoint_url=store.endpoint, region_name=store.region)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    grant = make_grant("fleet/")
    result = subprocess.run(
        [
            *["sh", str(EXAMPLES / "launch-template.sh"), "fleet-1", "ami-12345678", subnet],
            *[str(grant), "--wheelhouse", str(wheelhouse)],
            *["--endpoint-url", store.endpoint, "--region", store.region],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = ec2.describe_launch_template_versions(LaunchTemplateName="fleet-1")[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    user_data = tmp_path / "user-data.yaml"
    user_data.write_bytes(gzip.decompress(base64.b64decode(data["UserData"])))
    assert json.loads(grant.read_text())["fields"]["policy"] in user_data.read_text()
    sha256 = hashlib.sha256(wheelhouse.read_bytes()).hexdigest()
    assert yaml.safe_load(user_data.read_text())["runcmd"][0][-1] == sha256
    checked = cloud_init_schema(user_data)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    groups = boto3.client(
        "autoscaling", endpoint_url=store.endpoint, region_name=store.region
    ).describe_auto_scaling_groups(AutoScalingGroupNames=["fleet-1"])["AutoScalingGroups"]
    assert groups[0]["LaunchTemplate"]["LaunchTemplateName"] == "fleet-1"
    assert groups[0]["DesiredCapacity"] == 2


def test_the_batch_job_script_renders_user_data_that_runs_the_job_then_wait_then_poweroff(
    store: Store, make_grant: GrantMaker, tmp_path: Path
) -> None:
    """The script's user-data passes cloud-init's schema and shellcheck, runs the job after the
    installer, then `wait`, then the power-off whatever wait says, as the README shows it, and
    watches for a preemption notice. (That a job, wait and a power-off really leave every file
    stored is tests/cloud_init/test_power_off.py, in a booted machine.)"""
    shellcheck = require_tool("shellcheck")
    assert subprocess.run([shellcheck, str(EXAMPLES / "batch-job.sh")]).returncode == 0
    bin_dir = Path(sys.executable).parent
    out = tmp_path / "user-data.yaml"
    job = "/opt/job/run --out /var/spool/postbox/run-42"
    wheel = "https://example.com/s3_postbox-1-py3-none-any.whl"
    script = [str(EXAMPLES / "batch-job.sh"), str(make_grant("runs/")), str(out), job]
    result = subprocess.run(
        ["sh", *script, "--agent-wheel", wheel],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    checked = cloud_init_schema(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(out.read_text())
    installer, then = config["runcmd"]
    assert installer[0] == "/usr/local/lib/postbox/install-agent"
    assert then == [
        "sh",
        "-c",
        f"{job}; /opt/postbox/bin/postbox-agent wait --timeout 1h; systemctl poweroff",
    ]
    env = next(f for f in config["write_files"] if f["path"] == "/etc/postbox/agent.env")
    assert "POSTBOX_PREEMPTION_WATCH=auto\n" in env["content"]
    after = README.read_text(encoding="utf-8").split("`examples/batch-job.sh` renders it", 1)[1]
    shown = re.search(r"```\n(.*?)```", after, re.DOTALL)
    assert shown and "; ".join(shown[1].splitlines()) == then[2]


def unquoted(value: Any) -> Any:
    """python-hcl2 8 keeps HCL's quotes on names and strings; drop them."""
    if isinstance(value, dict):
        return {unquoted(k): unquoted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unquoted(v) for v in value]
    return value.strip('"') if isinstance(value, str) else value


def test_the_terraform_module_takes_the_issuers_output_and_no_credentials() -> None:
    """Parsed, not applied (Debian packages no terraform): the launch template's user-data is
    the file the issuer wrote, the instance metadata needs IMDSv2 with a hop limit of 1, and
    nothing in the module names an AWS credential or runs the issuer (whose credentials would
    then land in the state)."""
    text = (EXAMPLES / "terraform" / "main.tf").read_text()
    module = unquoted(hcl2.loads(text))
    resources = {k: v for block in module["resource"] for k, v in block.items()}
    template = resources["aws_launch_template"]["postbox"]
    assert "filebase64(var.user_data_file)" in template["user_data"]
    options = template["metadata_options"][0]
    assert options["http_tokens"] == "required" and options["http_put_response_hop_limit"] == 1
    assert "aws_autoscaling_group" in resources
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for forbidden in (
        "access_key",
        "secret_key",
        "session_token",
        '"external"',  # a data source that would run the issuer, and keep what it printed
        "provisioner",
    ):
        assert forbidden not in body, forbidden
