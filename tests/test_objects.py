"""Issue 34's goal, end to end: what a reader of the bucket sees of a file is the same whether
the agent sent it whole or in parts that `postbox-issuer assemble` joined: its Content-Type,
its SHA-256 and time (x-amz-meta-sha256, x-amz-meta-mtime), its storage class and its tags;
and `rclone copy` of the prefix gives back each file's bytes and modification time.

moto keeps the Content-Type and metadata of a POST but drops its storage class and tagging
(moto/s3/responses.py, `_bucket_response_post`): there the whole file and the joined one are
both STANDARD and untagged, and equal; RGW keeps all five, and there they are checked against
the grant's values too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode as AgentExit
from demo.stores import Store
from issuer.cli import main as issuer_main
from tests.agent.test_parts import PARTS, manifests
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import RGW_CLASS, GrantMaker, objects, rclone_copy

MiB = 1024 * 1024
# A time with nanoseconds past the manifest's microseconds: rclone keeps them all.
MTIME_NS = 1_765_130_400_123_456_789
EXTENSIONS = {".html": "text/html", ".json": "application/json", ".png": "image/png",
              ".weird": "application/octet-stream"}  # fmt: skip
TAGS = {"team": "ml", "run": "42"}


def properties(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    head = s3.head_object(Bucket=bucket, Key=key)
    tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {
        "type": head["ContentType"],
        "metadata": head["Metadata"],
        "class": head.get("StorageClass", "STANDARD"),
        "tags": {t["Key"]: t["Value"] for t in tags},
    }


@pytest.mark.parametrize("versioning", ["none", "Enabled"])
def test_a_file_sent_whole_and_one_joined_from_parts_read_back_alike(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    versioning: str,
) -> None:
    """An .html, a .json, a .png and an unknown extension, each as a 1 KiB file (sent whole)
    and an 11 MiB one (three parts, joined by assemble), with a grant signed with a storage
    class and two tags: each pair has the same Content-Type, time, class and tags, and each
    object's x-amz-meta-sha256 is its file's. In a versioned bucket, nothing of the parts is
    left after assemble, not even a noncurrent version. rclone copies the prefix back with
    every file's bytes and time."""
    if versioning != "none":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": versioning})
    klass = RGW_CLASS if store.kind == "rgw" else "STANDARD_IA"
    tags = [arg for k, v in TAGS.items() for arg in ("--tag", f"{k}={v}")]
    grant = make_grant("runs/1/", "30m", "--storage-class", klass, *tags)
    a = agent(grant, **PARTS).start().ready()
    outside = tmp_path / "written"
    outside.mkdir()
    contents: dict[str, bytes] = {}
    for ext in EXTENSIONS:
        for name, size in ((f"small{ext}", 1024), (f"big{ext}", 11 * MiB)):
            contents[name] = os.urandom(size)
            path = outside / name
            path.write_bytes(contents[name])
            os.utime(path, ns=(MTIME_NS, MTIME_NS))
            path.rename(a.watch / name)  # a rename keeps the time

    def all_stored() -> bool:
        stored = objects(s3, bucket, "runs/1/small")
        return len(stored) == len(EXTENSIONS) and len(manifests(s3, bucket)) == len(EXTENSIONS)

    assert eventually(all_stored, 180), a.text()
    assert a.stop() == AgentExit.OK
    argv = ["assemble", "--bucket", bucket, "--prefix", "runs/"]
    argv += ["--endpoint-url", store.endpoint, "--region", store.region]
    assert issuer_main(argv) == 0

    mtime = "1765130400.123456789"
    for ext, content_type in EXTENSIONS.items():
        whole = properties(s3, bucket, f"runs/1/small{ext}")
        joined = properties(s3, bucket, f"runs/1/big{ext}")
        for name, seen in ((f"small{ext}", whole), (f"big{ext}", joined)):
            assert seen["type"] == content_type, (name, seen)
            assert seen["metadata"]["mtime"] == mtime, (name, seen)
            sha256 = hashlib.sha256(contents[name]).hexdigest()
            assert seen["metadata"]["sha256"] == sha256, (name, seen)
        assert {**whole, "metadata": {}} == {**joined, "metadata": {}}, ext
        if store.kind == "rgw":
            assert (joined["class"], joined["tags"]) == (RGW_CLASS, TAGS), joined
    left = s3.list_object_versions(Bucket=bucket, Prefix="runs/1/.postbox-parts/")
    assert (left.get("Versions", []), left.get("DeleteMarkers", [])) == ([], [])

    back = tmp_path / "back"
    rclone_copy(store, bucket, "runs/1", back, tmp_path)
    assert {p.name: p.read_bytes() for p in back.iterdir()} == contents
    for name in contents:
        assert os.stat(back / name).st_mtime_ns == MTIME_NS, name
