"""`postbox-issuer assemble`: the parts an agent sent (5 MiB parts of a 23 MiB file) joined
server-side into the file's own key, on moto and RGW."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import mimetypes
import os
import re
import threading
import tracemalloc
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import quote, quote_plus

import botocore.exceptions
import pytest

from agent.errors import ExitCode as AgentExit
from agent.errors import PreflightError
from agent.grant import load_grant
from agent.parts import MAX_MANIFEST, manifest, plan
from agent.versions import FileVersion
from demo.stores import Store
from issuer.assemble import assemble
from issuer.cli import main
from issuer.errors import ExitCode
from tests.agent.test_parts import PARTS, manifests, sending_with_third_part_held
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import fault_proxy

MiB = 1024**2
LAMBDA = Path(__file__).resolve().parents[2] / "examples" / "assemble_lambda.py"


def run(store: Store, bucket: str, *options: str) -> int:
    argv = ["assemble", "--bucket", bucket, "--prefix", "runs/"]  # a later --prefix wins
    return main([*argv, "--endpoint-url", store.endpoint, "--region", store.region, *options])


def sent_in_parts(a: AgentProcess, s3: Any, bucket: str, name: str = "big.bin") -> bytes:
    """A 23 MiB file sent by the agent `a` in 5 MiB parts: started, its manifest stored, and
    stopped (exit 0); the file's bytes."""
    a.start().ready()
    content = os.urandom(23 * MiB)
    (a.watch / name).write_bytes(content)
    assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
    assert a.stop() == AgentExit.OK
    return content


def test_assemble_joins_the_parts_into_the_files_key_then_removes_them_and_runs_again_clean(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    content = sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket)
    assert run(store, bucket, "--dry-run") == 0
    assert "would assemble s3://" in capsys.readouterr().out
    assert run(store, bucket) == 0
    assert f"assembled s3://{bucket}/runs/1/big.bin" in capsys.readouterr().out
    stored = objects(s3, bucket)
    assert list(stored) == ["runs/1/big.bin"]  # the parts and the manifest are gone
    assert hashlib.md5(stored["runs/1/big.bin"]).digest() == hashlib.md5(content).digest()
    head = s3.head_object(Bucket=bucket, Key="runs/1/big.bin")
    assert head["ETag"].strip('"').endswith("-5")  # one object of five parts
    assert run(store, bucket) == 0
    assert "nothing to assemble under" in capsys.readouterr().out


def test_a_run_that_stopped_half_way_is_finished_by_the_next(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Joined, but its parts left (--keep-parts stands for a run killed before the deletes):
    the next run sees the object is the manifest's, copies nothing again, and tidies."""
    content = sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket)
    assert run(store, bucket, "--keep-parts") == 0
    assert len(objects(s3, bucket)) == 1 + 5 + 1
    capsys.readouterr()
    assert run(store, bucket) == 0
    assert "already assembled" in capsys.readouterr().out
    assert objects(s3, bucket) == {"runs/1/big.bin": content}


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_manifest_whose_parts_are_missing_or_differ_is_reported_and_left_untouched(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket)
    ((manifest_key, manifest),) = manifests(s3, bucket).items()
    third = manifest["parts"][2]["key"]
    if damage == "missing":
        s3.delete_object(Bucket=bucket, Key=third)
    else:
        s3.put_object(Bucket=bucket, Key=third, Body=os.urandom(5 * MiB))
    before = objects(s3, bucket)
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    assert f"NOT assembled s3://{bucket}/{manifest_key}: part 3" in out
    assert ("is missing" if damage == "missing" else "is not the MD5") in out
    assert objects(s3, bucket) == before  # nothing joined, nothing deleted
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_the_store_copies_several_parts_at_once_and_a_failed_copy_leaves_no_upload_behind(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    s3: Any,
    bucket: str,
) -> None:
    """Copies one after another would take a 5 GiB file's 80 copies of 64 MiB end to end; the
    store copies `copies` at once. Shown without a clock: the first two copies wait for each
    other (a barrier), which only copies made at once can pass. Then a copy the store fails:
    assemble says which part, waits for the copies under way, and aborts the upload, so no
    incomplete upload is left to bill for and the parts stay for the next run."""
    content = sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket)
    met = threading.Barrier(2, timeout=60)
    calls: list[int] = []

    def before_copy(params: dict[str, Any], **_: Any) -> None:
        calls.append(params["PartNumber"])
        if len(calls) <= 2:
            met.wait()  # raises BrokenBarrierError after 60 s if no second copy comes

    s3.meta.events.register("provide-client-params.s3.UploadPartCopy", before_copy)
    report = assemble(s3, bucket, "runs/", copies=4)
    assert report.assembled == ["runs/1/big.bin"] and sorted(calls) == [1, 2, 3, 4, 5]
    assert objects(s3, bucket) == {"runs/1/big.bin": content}

    sent_in_parts(agent(make_grant("runs/2/"), **PARTS), s3, bucket)
    before = objects(s3, bucket)
    s3.meta.events.unregister("provide-client-params.s3.UploadPartCopy", before_copy)

    def fail_third(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 3:
            error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
            raise botocore.exceptions.ClientError(error, "UploadPartCopy")

    s3.meta.events.register("provide-client-params.s3.UploadPartCopy", fail_third)
    report = assemble(s3, bucket, "runs/2/", copies=4)
    ((manifest_key, why, _),) = report.broken
    assert manifest_key.startswith("runs/2/.postbox-parts/") and report.exit_code == 4
    assert re.fullmatch(r"copying part 3 into s3://.*runs/2/big\.bin: .*SlowDown.*", why)
    assert objects(s3, bucket) == before  # the parts and the manifest stay for the next run
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("copies", ["0", "65", "four"])
def test_copies_out_of_range_is_refused_in_one_line_naming_the_option(
    copies: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["assemble", "--bucket", "b", "--prefix", "p/", "--copies", copies]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--copies" in err and "from 1 to 64" in err


def test_assemble_beside_an_agent_still_sending_parts_touches_nothing_and_the_file_stays(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The third part is held by the proxy: the four others are stored, no manifest. assemble finds
    nothing to do, and (after-upload delete) the file is not deleted before its manifest is
    stored; once released, the manifest lands, the file goes, and assemble joins it."""
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant, after_upload="delete", **PARTS)
        path, content, laid = sending_with_third_part_held(a, proxy)
        others = [p.key for p in laid.parts if p.number != 3]
        assert eventually(lambda: sorted(objects(s3, bucket)) == others, 60), a.text()
        assert run(store, bucket) == 0
        assert "nothing to assemble" in capsys.readouterr().out
        assert sorted(objects(s3, bucket)) == others
        assert path.exists()
        proxy.released.set()
        assert eventually(lambda: not path.exists(), 120), a.text()
        assert laid.manifest_key in objects(s3, bucket)
        assert a.stop() == AgentExit.OK
    assert run(store, bucket) == 0
    assert objects(s3, bucket) == {"runs/1/big.bin": content}


def test_the_agent_refuses_no_file_for_its_size_any_more_that_parts_can_carry(
    tmp_path: Path,
) -> None:
    """Up to 10,000 parts of the grant's largest size: over that, one line names the limit."""
    version = FileVersion(10_001 * 5 * MiB, 0, 1, 0)
    with pytest.raises(Exception, match="over 10000 parts of the grant's largest size"):
        plan("p/", "f", "p/f", version, part_bytes=5 * MiB, largest=5 * MiB)
    small = FileVersion(9_999 * 5 * MiB, 0, 1, 0)
    assert len(plan("p/", "f", "p/f", small, part_bytes=5 * MiB, largest=5 * MiB).parts) == 9_999


def test_the_s3_event_function_joins_the_file_its_manifest_names(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/assemble_lambda.py, called with the event S3 sends when an object is created
    (its key URL-encoded, as S3 does; on RGW the parts of `%41` go through the function): the
    file is joined and its parts gone; the same event again (S3 delivers at least once)
    changes nothing; an event for another key is ignored."""
    spec = importlib.util.spec_from_file_location("assemble_lambda", LAMBDA)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint)  # boto3.client("s3") goes there
    monkeypatch.setenv("AWS_DEFAULT_REGION", store.region)
    content = sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket, "a b+c%41.bin")
    ((manifest_key, _),) = manifests(s3, bucket).items()

    def event(key: str) -> dict[str, Any]:
        where = {"bucket": {"name": bucket}, "object": {"key": quote_plus(key)}}
        return {"Records": [{"eventName": "ObjectCreated:Post", "s3": where}]}

    nothing: dict[str, list[str]] = {"assembled": [], "finished": [], "superseded": []}
    assert example.handler(event("runs/1/other.csv")) == nothing
    assert example.handler(event(manifest_key)) == nothing | {"assembled": ["runs/1/a b+c%41.bin"]}
    assert objects(s3, bucket) == {"runs/1/a b+c%41.bin": content}
    assert example.handler(event(manifest_key)) == nothing


@pytest.mark.parametrize("forged", ["key elsewhere", "part elsewhere"])
def test_a_forged_manifest_can_neither_copy_another_object_nor_write_outside_its_place(
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    forged: str,
) -> None:
    """Whoever holds a grant may write a manifest; assemble runs with the operator's
    credentials. A manifest naming a key other than its place's, or a part that is not beside
    it (here another object of the bucket: a secret it would copy into its own prefix), is
    reported and nothing is joined or deleted."""
    secret = os.urandom(5 * MiB)
    s3.put_object(Bucket=bucket, Key="private/db.dump", Body=secret)
    folder = "runs/1/.postbox-parts/x.bin/0123456789abcdef/"
    part = os.urandom(5 * MiB)
    s3.put_object(Bucket=bucket, Key=f"{folder}00001", Body=part)
    key, part_key = "runs/1/x.bin", f"{folder}00001"
    if forged == "key elsewhere":
        key = "private/overwritten.bin"
    else:
        part_key, part = "private/db.dump", secret
    manifest = {
        "postbox_manifest": 1, "key": key, "size": len(part), "sha256": "0" * 64, "mtime": "",
        "part_size": len(part), "encryption": {},
        "parts": [{"key": part_key, "offset": 0, "size": len(part),
                   "md5": hashlib.md5(part).hexdigest()}],
    }  # fmt: skip
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest.json", Body=json.dumps(manifest))
    before = objects(s3, bucket)
    assert run(store, bucket, "--prefix", "") == ExitCode.PARTS
    out = capsys.readouterr().out
    assert ("is not the one its place names" if forged == "key elsewhere" else
            "is not beside the manifest") in out  # fmt: skip
    assert objects(s3, bucket) == before


def test_a_manifest_cannot_choose_the_key_the_operators_credentials_encrypt_with(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    s3: Any,
    bucket: str,
) -> None:
    """A manifest rewritten to ask for SSE-KMS under a key of another account: assemble joins
    with the encryption the parts are stored with (here none: the grant required none), as
    the store reports it, and never asks the store to encrypt with the manifest's key (nor
    gives the object any property but the parts' Content-Type and the manifest's time and
    SHA-256)."""
    content = sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket)
    ((manifest_key, manifest),) = manifests(s3, bucket).items()
    manifest["encryption"] = {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:us-east-1:999999999999:key/x",
    }
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest))
    asked: list[dict[str, Any]] = []
    s3.meta.events.register(
        "provide-client-params.s3.CreateMultipartUpload",
        lambda params, **_: asked.append(dict(params)),
    )
    assert assemble(s3, bucket, "runs/").assembled == ["runs/1/big.bin"]
    assert [sorted(p) for p in asked] == [["Bucket", "ContentType", "Key", "Metadata"]]
    assert objects(s3, bucket) == {"runs/1/big.bin": content}


def test_no_file_of_the_watch_dir_can_take_a_key_among_the_parts(make_grant: GrantMaker) -> None:
    grant = load_grant(make_grant("runs/1/"))
    with pytest.raises(PreflightError, match="would fall among the parts of files sent in"):
        grant.key_for(PurePosixPath(".postbox-parts/x.bin/0123456789abcdef/manifest.json"))
    assert grant.key_for(PurePosixPath("a.postbox-parts/b")) == "runs/1/a.postbox-parts/b"


def forge(
    s3: Any,
    bucket: str,
    prefix: str,
    sizes: list[int],
    **fields: Any,
) -> tuple[str, str, bytes]:
    """Parts of these sizes stored under `prefix` (a grant's) and a manifest naming them, as an
    agent would write them, but for `fields` (the manifest's own, or its body as `body`): the
    manifest's key, the file's key and its bytes."""
    folder = f"{prefix}.postbox-parts/x.bin/0123456789abcdef/"
    content, parts = b"", []
    for number, size in enumerate(sizes, 1):
        data = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=f"{folder}{number:05d}", Body=data)
        md5 = hashlib.md5(data).hexdigest()
        parts.append({"key": f"{folder}{number:05d}", "offset": len(content), "size": size,
                      "md5": md5})  # fmt: skip
        content += data
    manifest = {
        "postbox_manifest": 1, "key": f"{prefix}x.bin", "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(), "mtime": "", "part_size": 5 * MiB,
        "encryption": {}, "parts": parts,
    }  # fmt: skip
    body = fields.pop("body", None) or json.dumps(manifest | fields)
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest.json", Body=body)
    return f"{folder}manifest.json", f"{prefix}x.bin", content


def many_parts(s3: Any, bucket: str) -> str:
    folder = "runs/0/.postbox-parts/x.bin/0123456789abcdef/"
    parts = [{"key": f"{folder}{n:05d}", "offset": (n - 1) * 5 * MiB, "size": 5 * MiB,
              "md5": "0" * 32} for n in range(1, 10_002)]  # fmt: skip
    return json.dumps({
        "postbox_manifest": 1, "key": "runs/0/x.bin", "size": 10_001 * 5 * MiB, "sha256": "0" * 64,
        "mtime": "", "part_size": 5 * MiB, "encryption": {}, "parts": parts,
    })  # fmt: skip


@pytest.mark.parametrize("hostile", ["1-byte parts", "nested", "10,001 parts", "not an object"])
def test_a_hostile_manifest_listed_first_is_named_and_every_other_is_still_joined(
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    hostile: str,
) -> None:
    """One manifest that cannot be joined (its parts too small for the store, JSON nested too
    deep to read, more parts than a multipart upload holds, JSON that is not an object) sorts
    first: it is named with its key (exit 5), checked before any part is looked at, and the
    file after it is joined and listed with its size and SHA-256."""
    if hostile == "1-byte parts":
        bad, _, _ = forge(s3, bucket, "runs/0/", [1, 1])
    elif hostile == "nested":
        bad, _, _ = forge(s3, bucket, "runs/0/", [1], body="[" * 100_000 + "]" * 100_000)
    elif hostile == "10,001 parts":
        bad, _, _ = forge(s3, bucket, "runs/0/", [1], body=many_parts(s3, bucket))
    else:
        bad, _, _ = forge(s3, bucket, "runs/0/", [1], body="[1]")
    _, key, content = forge(s3, bucket, "runs/1/", [5 * MiB, 5 * MiB, 3])
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    sha256 = hashlib.sha256(content).hexdigest()
    said = f"({len(content)} bytes, SHA-256 by its manifest {sha256})"
    assert f"assembled s3://{bucket}/{key} {said}" in out
    assert f"NOT assembled s3://{bucket}/{bad}: " in out
    assert objects(s3, bucket)[key] == content
    reason = {
        "1-byte parts": "part 1 is 1 bytes",
        "nested": "nested too deep",
        "10,001 parts": "it has 10001 parts, over the store's 10000",
        "not an object": "not a manifest of format 1",
    }[hostile]
    assert reason in out


def test_the_worst_failure_of_a_run_is_its_exit_code_and_every_file_joined_is_listed(
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The store refuses to copy the parts of the manifest listed first, and one listed last
    names a key its place does not: each is named with its manifest's key, the file between
    is joined and listed, and the run's exit code is the store's (4), worse than a broken
    manifest's (5)."""
    forge(s3, bucket, "runs/0/", [5 * MiB, 3])
    forge(s3, bucket, "runs/2/", [3], key="elsewhere")
    _, key, content = forge(s3, bucket, "runs/1/", [5 * MiB, 3])
    refused = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}

    def deny(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].startswith("runs/0/"):
            raise botocore.exceptions.ClientError(refused, "UploadPartCopy")

    s3.meta.events.register("provide-client-params.s3.UploadPartCopy", deny)
    report = assemble(s3, bucket, "runs/")
    assert report.assembled == [key] and report.exit_code == ExitCode.STORE
    assert [k.split("/")[1] for k, _, _ in report.broken] == ["0", "2"]
    assert "AccessDenied" in report.broken[0][1]
    assert objects(s3, bucket)[key] == content


@pytest.mark.parametrize("claim", [{}, {"x-amz-server-side-encryption": "aws:kms"}])
def test_a_manifest_claiming_sse_kms_does_not_turn_the_md5_checks_off(
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    claim: dict[str, str],
) -> None:
    """Parts stored without encryption, the manifest's MD5s wrong: refused (exit 5) whether or
    not the manifest says aws:kms (the store's word on encryption counts, never the manifest's),
    and nothing joined."""
    manifest_key, key, _ = forge(s3, bucket, "runs/1/", [5 * MiB, 3])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    for part in manifest["parts"]:
        part["md5"] = "0" * 32
    manifest["encryption"] = claim
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest))
    assert run(store, bucket) == ExitCode.PARTS
    assert "part 1's ETag" in capsys.readouterr().out
    assert key not in objects(s3, bucket)


def test_assemble_under_a_folder_of_the_grants_prefix_joins_the_files_there_only(
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The parts of runs/1/r0/x.bin lie under runs/1/.postbox-parts/r0/..., beside the grant's
    prefix, not under runs/1/r0/: --prefix runs/1/r0/ finds them, and leaves runs/1/r1/ be."""
    folder = "runs/1/.postbox-parts/{}/x.bin/0123456789abcdef/"
    wanted = forge_at(s3, bucket, folder.format("r0"))
    forge_at(s3, bucket, folder.format("r1"))
    assert run(store, bucket, "--prefix", "runs/1/r0/") == 0
    assert f"assembled s3://{bucket}/runs/1/r0/x.bin" in capsys.readouterr().out
    stored = objects(s3, bucket)
    assert stored["runs/1/r0/x.bin"] == wanted and "runs/1/r1/x.bin" not in stored
    assert f"{folder.format('r1')}manifest.json" in stored


def forge_at(s3: Any, bucket: str, folder: str) -> bytes:
    """One part and its manifest in `folder` (PREFIX.postbox-parts/RELPATH/VERSION/): the
    file's bytes."""
    data = os.urandom(3)
    s3.put_object(Bucket=bucket, Key=f"{folder}00001", Body=data)
    key = folder.replace(".postbox-parts/", "", 1).rsplit("/", 2)[0]
    manifest = {
        "postbox_manifest": 1, "key": key, "size": 3, "sha256": hashlib.sha256(data).hexdigest(),
        "mtime": "", "part_size": 5 * MiB, "encryption": {},
        "parts": [{"key": f"{folder}00001", "offset": 0, "size": 3,
                   "md5": hashlib.md5(data).hexdigest()}],
    }  # fmt: skip
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest.json", Body=json.dumps(manifest))
    return data


def test_a_store_refusal_without_a_message_reads_as_its_code_alone(s3: Any, bucket: str) -> None:
    forge_at(s3, bucket, "runs/1/.postbox-parts/x.bin/0123456789abcdef/")
    refused = {"Error": {"Code": "AccessDenied", "Message": None}}

    def deny(**_: Any) -> None:
        raise botocore.exceptions.ClientError(refused, "UploadPartCopy")  # type: ignore[arg-type]

    s3.meta.events.register("provide-client-params.s3.UploadPartCopy", deny)
    ((_, why, _),) = assemble(s3, bucket, "runs/").broken
    assert why.endswith("AWS answered AccessDenied") and "None" not in why


def test_a_manifest_whose_reading_fails_unexpectedly_is_named_and_the_run_goes_on(
    s3: Any, bucket: str
) -> None:
    """Whatever goes wrong with one manifest (here reading it raises an error no code expects)
    is named with its key, the file after it is joined, and the run's exit code is 1."""
    forge_at(s3, bucket, "runs/0/.postbox-parts/x.bin/0123456789abcdef/")
    wanted = forge_at(s3, bucket, "runs/1/.postbox-parts/x.bin/0123456789abcdef/")

    def crash(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].startswith("runs/0/"):
            raise RuntimeError("a reader that broke")

    s3.meta.events.register("provide-client-params.s3.GetObject", crash)
    report = assemble(s3, bucket, "runs/")
    assert report.assembled == ["runs/1/x.bin"] and report.exit_code == ExitCode.FAILURE
    ((manifest_key, why, _),) = report.broken
    assert manifest_key.startswith("runs/0/") and "RuntimeError: a reader that broke" in why
    s3.meta.events.unregister("provide-client-params.s3.GetObject", crash)
    assert objects(s3, bucket)["runs/1/x.bin"] == wanted


@pytest.mark.parametrize("over", [0, 1])
def test_assemble_reads_a_manifest_as_large_as_an_agent_writes_and_refuses_one_byte_more(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str], over: int
) -> None:
    """The largest manifest an agent writes is MAX_MANIFEST bytes, about 20 MiB (10,000 parts,
    keys of 1024 bytes of quotes: agent/parts.py); assemble read 4 MiB at most, and left the
    files of larger ones unjoined. A manifest of exactly MAX_MANIFEST bytes (a one-part
    file's, padded with spaces as under a grant's smallest size) is joined; one byte more is
    named and left as it is, exit 5."""
    content = os.urandom(1000)
    version = FileVersion(len(content), 1_700_000_000_000_000_000, 2, 3)
    laid = plan("runs/1/", "x.bin", "runs/1/x.bin", version, part_bytes=5 * MiB, largest=5 * MiB)
    md5s = {1: hashlib.md5(content).hexdigest()}
    sha256 = hashlib.sha256(content).hexdigest()
    body = manifest(laid, version, md5s, sha256, smallest=MAX_MANIFEST + over)
    assert len(body) == MAX_MANIFEST + over
    s3.put_object(Bucket=bucket, Key=laid.parts[0].key, Body=content)
    s3.put_object(Bucket=bucket, Key=laid.manifest_key, Body=body)
    if over:
        assert run(store, bucket) == ExitCode.PARTS
        out = capsys.readouterr().out
        assert (
            f"NOT assembled s3://{bucket}/{laid.manifest_key}: it is over {MAX_MANIFEST} bytes"
            in out
        )
        assert sorted(objects(s3, bucket)) == sorted([laid.parts[0].key, laid.manifest_key])
    else:
        assert run(store, bucket) == 0
        assert objects(s3, bucket) == {"runs/1/x.bin": content}


@pytest.mark.parametrize("name", ["a%41 b+100%25.bin", "100% done.csv"], ids=["escapes", "bare"])
def test_a_file_whose_name_holds_a_percent_sign_is_joined_byte_for_byte(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    """RGW 16 URL-decodes UploadPartCopy's source a second time: for `a%41…` it looks for
    `aA…` and answers NoSuchKey (CopyObject decodes once, as S3 does), and for `100% done`
    (a `%` that starts no escape) the gateway aborts. Either way each part goes through this
    machine (a GET streamed into UploadPart), a line on stderr says so, and the file is
    joined byte for byte, its parts removed. moto copies `a%41…` itself, as S3 does; a bare
    `%` goes through this machine on every store, since trying the copy would kill RGW."""
    content = sent_in_parts(agent(make_grant("runs/1/"), **PARTS), s3, bucket, name)
    assert run(store, bucket, "--copies", "2") == 0
    out, err = capsys.readouterr()
    assert "Connection pool is full" not in err  # a part sent through here holds two at once
    key = f"runs/1/{name}"
    assert f"assembled s3://{bucket}/{key} ({len(content)} bytes" in out
    assert objects(s3, bucket) == {key: content}
    through = [n for n in range(1, 6) if f"part {n} of s3://{bucket}/{key} goes through" in err]
    copied_by_the_store = store.kind == "moto" and name.startswith("a%41")
    assert through == ([] if copied_by_the_store else [1, 2, 3, 4, 5]), err


def refuse_copies(s3: Any) -> None:
    """The store answers NoSuchKey to every UploadPartCopy, as RGW does to one of a key
    holding `%41`."""

    def refuse(**_: Any) -> None:
        error = {"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."}}
        raise botocore.exceptions.ClientError(error, "UploadPartCopy")

    s3.meta.events.register("provide-client-params.s3.UploadPartCopy", refuse)


def test_a_part_the_store_will_not_copy_goes_through_this_machine_never_held_whole(
    s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each part is read from the store and sent back into the upload, named in a line; the
    file is joined byte for byte and its parts removed. While two parts of 32 MiB go at once,
    this process's memory grows by under half of one (7 MiB measured): a part is streamed,
    never held whole."""
    _, key, content = forge(s3, bucket, "runs/1/", [32 * MiB, 32 * MiB, 3])
    refuse_copies(s3)
    tracemalloc.start()
    try:
        report = assemble(s3, bucket, "runs/", copies=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.assembled == [key] and report.exit_code == 0
    lines = [
        r.getMessage() for r in caplog.records if "goes through this machine" in r.getMessage()
    ]
    assert sorted(line.split(" of ")[0] for line in lines) == ["part 1", "part 2", "part 3"]
    assert objects(s3, bucket) == {key: content}
    assert peak < 16 * MiB, peak


@pytest.mark.parametrize("change", ["altered", "shortened"])
def test_a_part_that_changed_before_it_goes_through_this_machine_is_refused(
    s3: Any, bucket: str, change: str
) -> None:
    """The second part is rewritten once its copy is refused, before it is read: sent with
    the MD5 the manifest names, its other bytes are refused (RGW answers BadDigest; moto
    takes them, and its ETag gives them away); read short, it is never sent with fewer.
    Either way the manifest is named (exit 5), nothing is joined, no upload is left."""
    manifest_key, key, _ = forge(s3, bucket, "runs/1/", [5 * MiB, 5 * MiB, 3])
    second = f"{manifest_key.rsplit('/', 1)[0]}/00002"
    refuse_copies(s3)
    other = os.urandom(5 * MiB if change == "altered" else 5 * MiB - 1)

    def rewrite(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 2:
            s3.put_object(Bucket=bucket, Key=second, Body=other)

    s3.meta.events.register("provide-client-params.s3.UploadPart", rewrite)
    report = assemble(s3, bucket, "runs/")
    ((broken, why, _),) = report.broken
    assert broken == manifest_key and report.exit_code == ExitCode.PARTS
    if change == "altered":
        md5 = json.loads(objects(s3, bucket)[manifest_key])["parts"][1]["md5"]
        assert why.startswith(f"part 2 read from the store is not the MD5 {md5}")
    else:
        assert why == f"s3://{bucket}/{second} ended before its {5 * MiB} bytes"
    assert key not in objects(s3, bucket)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def rclone_time(ns: int) -> str:
    """A time as rclone writes it in x-amz-meta-mtime (CONTRACT: seconds, up to 9 decimals,
    no trailing zeros)."""
    seconds, rest = divmod(ns, 10**9)
    return f"{seconds}.{rest:09d}".rstrip("0").rstrip(".")


def content_type(name: str) -> str:
    return mimetypes.MimeTypes().guess_type(name)[0] or "application/octet-stream"


MTIME_NS = 1_765_130_400_123_456_789  # 2025-12-07T18:00:00.123456789Z
TAGS = {"job": "42", "owner": "a b=c+d", "path": "x/y:z@w"}  # escaped in the Tagging header


def stored_as_the_agent_stores(
    s3: Any,
    bucket: str,
    name: str,
    *,
    size: int = 10 * MiB + 3,
    storage_class: str | None = None,
    tags: dict[str, str] | None = None,
    per_part: bool = True,
    each: Callable[[int, dict[str, Any]], dict[str, Any]] = lambda _, put: put,
) -> tuple[str, bytes]:
    """A file of `size` bytes sent in 5 MiB parts as the agent sends it under a grant that
    signs the contract's fields (CONTRACT-34: Content-Type from the name, x-amz-meta-sha256 of
    each object's bytes, x-amz-meta-mtime in rclone's format, the grant's storage class and
    tags), put with boto3 where moto's POST would drop the class and the tags; the manifest
    (the agent's own, agent/parts.py) last, as application/json. `per_part=False`: the parts
    carry none of it (an older agent, a grant without the conditions). `each(number, put)`:
    the arguments part `number` is put with. The manifest's key and the file's bytes."""
    content = os.urandom(size)
    version = FileVersion(size, MTIME_NS, 7, MTIME_NS)
    laid = plan("runs/1/", name, f"runs/1/{name}", version, part_bytes=5 * MiB, largest=5 * MiB)
    common: dict[str, Any] = {}
    if storage_class:
        common["StorageClass"] = storage_class
    if tags:
        common["Tagging"] = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                                     for k, v in tags.items())  # fmt: skip
    md5s = {}
    for part in laid.parts:
        data = content[part.offset : part.offset + part.size]
        md5s[part.number] = hashlib.md5(data).hexdigest()
        put: dict[str, Any] = {}
        if per_part:
            sha256 = hashlib.sha256(data).hexdigest()
            put = {"ContentType": content_type(name), **common,
                   "Metadata": {"sha256": sha256, "mtime": rclone_time(MTIME_NS)}}  # fmt: skip
        s3.put_object(Bucket=bucket, Key=part.key, Body=data, **each(part.number, put))
    body = manifest(laid, version, md5s, hashlib.sha256(content).hexdigest())
    own = {"sha256": hashlib.sha256(body).hexdigest(), "mtime": rclone_time(MTIME_NS)}
    extra = {"ContentType": "application/json", **common, "Metadata": own} if per_part else {}
    s3.put_object(Bucket=bucket, Key=laid.manifest_key, Body=body, **extra)
    return laid.manifest_key, content


def tags_of(s3: Any, bucket: str, key: str) -> dict[str, str]:
    return {
        t["Key"]: t["Value"]
        for t in s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    }


def test_the_joined_object_has_the_type_time_class_tags_and_sha256_its_parts_were_stored_with(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An .html, a .json, a .png and a file of no known type, each sent in three parts carrying
    the contract's properties: the joined object has its parts' Content-Type, storage class
    and tags, the file's time (x-amz-meta-mtime, rclone's format) and the file's SHA-256
    (x-amz-meta-sha256, the manifest's), never the manifest's own application/json; `--json`
    lists each with its size and SHA-256. It used to have none of them (CreateMultipartUpload
    was given only the encryption). A storage class other than STANDARD on moto only: RGW 16
    knows no other unless its zone is given one (and answers InvalidArgument). RGW 16 drops
    the Tagging of CreateMultipartUpload: assemble puts the tags once the object is joined."""
    storage_class = "STANDARD_IA" if store.kind == "moto" else None
    names = ["report.html", "data.json", "plot.png", "results.unknownext"]
    contents = {}
    for name in names:
        _, contents[f"runs/1/{name}"] = stored_as_the_agent_stores(
            s3, bucket, name, storage_class=storage_class, tags=TAGS
        )
    assert run(store, bucket, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert objects(s3, bucket) == contents
    listed = {f["key"]: f for f in document["assembled"]}
    for key, content in contents.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        sha256 = hashlib.sha256(content).hexdigest()
        assert head["ContentType"] == content_type(key)
        assert head["Metadata"]["sha256"] == sha256
        assert head["Metadata"]["mtime"] == "1765130400.123456789"
        assert head.get("StorageClass", "STANDARD") == (storage_class or "STANDARD")
        assert tags_of(s3, bucket, key) == TAGS
        assert (listed[key]["size"], listed[key]["sha256"]) == (len(content), sha256)
        assert listed[key]["manifest_sha256"] == sha256  # as before: the shape only grows
    assert content_type("results.unknownext") == "application/octet-stream"


def test_parts_without_the_properties_give_an_object_without_them_but_the_manifests_time(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parts an older agent sent (no Content-Type, no metadata, no tags): the object gets none
    of them, but the file's SHA-256 and time from its manifest (the time in rclone's format,
    to the microsecond the manifest records)."""
    _, content = stored_as_the_agent_stores(s3, bucket, "report.html", per_part=False)
    assert run(store, bucket) == 0
    assert f"assembled s3://{bucket}/runs/1/report.html" in capsys.readouterr().out
    head = s3.head_object(Bucket=bucket, Key="runs/1/report.html")
    assert head["ContentType"] != "text/html"
    assert head["Metadata"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert head["Metadata"]["mtime"] == "1765130400.123457"
    assert tags_of(s3, bucket, "runs/1/report.html") == {}
