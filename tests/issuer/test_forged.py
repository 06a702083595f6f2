"""What a grant holder's forged manifests and names cannot make `postbox-issuer assemble` do,
and two runs at once, on moto and RGW: found by trying it as the operator and as a hostile
grant holder would, with the README alone."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from demo.stores import Store, s3_client
from issuer.assemble import assemble
from issuer.cli import main
from issuer.errors import ExitCode
from tests.conftest import objects
from tests.issuer.test_assemble import stored_as_the_agent_stores
from tests.issuer.test_versions import NEW, OLD, MiB, next_second, run, version


def test_an_older_manifest_with_a_forged_md5_is_named_and_the_newest_version_is_joined(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A forged manifest of the same file whose MD5s are not hex: it used to end the file's
    judgement with "unexpected error (ValueError ...)", exit 1, named under the real
    manifest's key, on every run. Now it is no manifest (named, exit 5, under its own key)
    and the agent's version is joined."""
    forged, _ = version(s3, bucket, OLD, [5 * MiB, 2])
    document = json.loads(s3.get_object(Bucket=bucket, Key=forged)["Body"].read())
    document["parts"][0]["md5"] = "zz"
    s3.put_object(Bucket=bucket, Key=forged, Body=json.dumps(document))
    next_second(s3, bucket, forged)
    _, content = version(s3, bucket, NEW, [5 * MiB, 3])
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    assert f"NOT assembled s3://{bucket}/{forged}: not a manifest (part 1's md5 is not 32 " in out
    assert f"assembled s3://{bucket}/runs/1/x.bin" in out and "unexpected" not in out
    assert objects(s3, bucket, "runs/1/x.bin") == {"runs/1/x.bin": content}


def test_a_manifest_whose_file_lies_among_the_parts_is_refused(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """runs/1/.postbox-parts/x/.postbox-parts/y.bin/V/manifest.json naming the file
    runs/1/.postbox-parts/x/y.bin: its place allows that key, but no agent sends a file whose
    path holds `.postbox-parts` (a dot name), and a multipart object made there could stand
    over another file's part or manifest. It was joined; now it is named, and nothing made."""
    key = "runs/1/.postbox-parts/x/y.bin"
    manifest_key, _ = version(s3, bucket, NEW, [5 * MiB, 3], key=key)
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    assert f"NOT assembled s3://{bucket}/{manifest_key}: its key {key} lies among the parts" in out
    assert key not in objects(s3, bucket)


def test_names_and_claims_reach_the_terminal_escaped_and_a_hash_must_be_a_hash(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest's key (S3 takes control characters in a key: RGW's policy let `\\r` and
    `\\n` through) and its claims are printed escaped, so no line can be forged or hidden on
    the operator's terminal; a SHA-256 holding a line of its own is no SHA-256."""
    fake = "\rassembled s3://b/payroll.csv (1 bytes)\x1b[2K"
    forged, _ = version(s3, bucket, NEW, [3], key=f"runs/1/x{fake}.bin")
    document = json.loads(s3.get_object(Bucket=bucket, Key=forged)["Body"].read())
    document["sha256"] = "0" * 64 + f"\n{fake}"
    s3.put_object(Bucket=bucket, Key=forged, Body=json.dumps(document))
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    assert "its sha256 is not 64 hex digits" in out
    assert not re.search(r"[\r\x1b]", out) and out.count("\n") == 1  # one line, escaped


def test_a_manifest_naming_parts_that_are_not_there_costs_few_requests(
    store: Store, s3: Any, bucket: str
) -> None:
    """A forged manifest of 10,000 parts of which none is stored: the last is looked at first,
    and its absence ends the look (it took 10,000 HEADs, 49 s a run on moto, and Ctrl-C
    waited for them)."""
    manifest_key, _ = version(s3, bucket, NEW, [5 * MiB, 3])
    document = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    folder = manifest_key.rsplit("/", 1)[0]
    document["parts"] = [
        {"key": f"{folder}/{n:05d}", "offset": (n - 1) * 5 * MiB, "size": 5 * MiB, "md5": "0" * 32}
        for n in range(1, 10_001)
    ]
    document["size"] = 10_000 * 5 * MiB
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(document))
    heads: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.HeadObject", lambda params, **_: heads.append(params["Key"])
    )
    report = assemble(s3, bucket, "runs/", copies=8)
    ((_, why, code),) = report.broken
    assert code == ExitCode.PARTS and why.startswith("part 10000 (")
    # the key, the last part, the manifest (is it still there?), and the key again (is it
    # already joined from this version, by another run now removing its parts?)
    assert len(heads) <= 4


def test_two_runs_at_once_both_end_well_and_leave_the_newest_joined(
    store: Store, s3: Any, bucket: str
) -> None:
    """Two runs over four files, each with an older and a newer version in parts (a timer's
    run and an S3 event's, say): each run joins, finds joined, says gone, or supersedes;
    neither fails (each used to abort the other's upload as one a dead run left: NoSuchUpload,
    exit 4), and the keys hold the newest versions."""
    newest = {}
    for name in "abcd":
        older, _ = version(s3, bucket, OLD, [5 * MiB, 2], key=f"runs/1/{name}.bin")
    next_second(s3, bucket, older)
    for name in "abcd":
        _, newest[f"runs/1/{name}.bin"] = version(s3, bucket, NEW, [5 * MiB, 3],
                                                  key=f"runs/1/{name}.bin")  # fmt: skip
    clients = [s3_client(store), s3_client(store)]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda c: assemble(c, bucket, "runs/", copies=2), clients))
    assert [r.broken for r in reports] == [[], []]
    assert {r.exit_code for r in reports} == {ExitCode.OK}
    assert objects(s3, bucket) == newest
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_upload_of_the_key_another_run_began_is_left_alone(
    store: Store, s3: Any, bucket: str
) -> None:
    """Another run's upload of the same key is its own: never aborted (each of two runs at
    once used to abort the other's, as one a dead run left; moto dates every upload
    2010-11-10, so no age tells a dead run's from a live one). An upload a run that died left
    is the bucket's lifecycle rule's to abort (README)."""
    version(s3, bucket, NEW, [5 * MiB, 3])
    other = s3.create_multipart_upload(Bucket=bucket, Key="runs/1/x.bin")["UploadId"]
    assert assemble(s3, bucket, "runs/").assembled == ["runs/1/x.bin"]
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [other]
    s3.abort_multipart_upload(Bucket=bucket, Key="runs/1/x.bin", UploadId=other)


def test_a_version_another_run_joins_a_newer_version_over_is_superseded_not_failed(
    store: Store, s3: Any, bucket: str
) -> None:
    """This run chose v1, the newest it listed; another run, listing later, joins v2 over the
    key while this one copies v1's parts. This run's join is refused (the key changed) and it
    finds a newer version there: v1 is superseded, its leftovers removed, exit 0 (it was exit
    4, "a newer version sent whole? run assemble again", which sent the operator looking for
    the wrong cause)."""
    v1, _ = version(s3, bucket, OLD, [5 * MiB, 2])
    other = s3_client(store)

    def the_other_run_joins_a_newer_one(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 1 and not ran:
            ran.append(True)
            next_second(other, bucket, v1)
            version(other, bucket, NEW, [5 * MiB, 3])
            ran.append(assemble(other, bucket, "runs/1/.postbox-parts/x.bin/" + NEW + "/"))

    ran: list[Any] = []
    s3.meta.events.register(
        "provide-client-params.s3.UploadPartCopy", the_other_run_joins_a_newer_one
    )
    report = assemble(s3, bucket, "runs/1/.postbox-parts/x.bin/" + OLD + "/", copies=1)
    assert ran[1].assembled == ["runs/1/x.bin"]
    assert report.broken == [] and report.exit_code == ExitCode.OK
    assert report.superseded == [(v1, "runs/1/x.bin")]
    assert sorted(objects(s3, bucket)) == ["runs/1/x.bin"]


def test_a_missing_bucket_is_named_without_an_option_assemble_does_not_have(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["assemble", "--bucket", "no-such-bucket-here", "--prefix", "runs/"]
    code = main([*argv, "--endpoint-url", store.endpoint, "--region", store.region])
    err = capsys.readouterr().err
    assert code == ExitCode.STORE and "no-such-bucket-here does not exist" in err
    assert "--no-check" not in err


@pytest.mark.parametrize("differs", ["Content-Type", "tags", "x-amz-meta-mtime"])
def test_parts_that_disagree_on_a_property_are_refused_by_name_and_the_others_joined(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str], differs: str
) -> None:
    """A grant holder rewrites part 2 of a file with another Content-Type (a page served as a
    script), other tags, or another time: which the joined object should have the store cannot
    say, so the file is named (its key, the property, the two values, the parts), exit 5, and
    left as it is; the file beside it is joined."""

    def hostile(number: int, put: dict[str, Any]) -> dict[str, Any]:
        if number != 2:
            return put
        if differs == "Content-Type":
            return put | {"ContentType": "application/x-sh"}
        if differs == "tags":
            return put | {"Tagging": "job=43"}
        return put | {"Metadata": put["Metadata"] | {"mtime": "1765130401"}}

    bad, _ = stored_as_the_agent_stores(s3, bucket, "page.html", tags={"job": "42"}, each=hostile)
    _, good = stored_as_the_agent_stores(s3, bucket, "other.html", tags={"job": "42"})
    before = objects(s3, bucket, "runs/1/.postbox-parts/page.html/")
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    shown = {
        "Content-Type": "Content-Type: part 1 has 'text/html', part 2 'application/x-sh'",
        "tags": "tags: part 1 has 'job=42', part 2 'job=43'",
        "x-amz-meta-mtime": "x-amz-meta-mtime: part 1 has '1765130400.123456789', part 2 "
        "'1765130401'",
    }[differs]
    said = f"NOT assembled s3://{bucket}/{bad}: the parts of runs/1/page.html disagree on their"
    assert f"{said} {shown}" in out, out
    assert objects(s3, bucket, "runs/1/.postbox-parts/page.html/") == before
    assert "runs/1/page.html" not in objects(s3, bucket)
    assert objects(s3, bucket, "runs/1/other.html") == {"runs/1/other.html": good}


def test_parts_whose_time_is_not_their_manifests_are_refused_by_name(
    store: Store, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every part says one time and the manifest another (beyond the microsecond it records):
    the file is named, exit 5, and nothing joined."""

    def later(number: int, put: dict[str, Any]) -> dict[str, Any]:
        return put | {"Metadata": put["Metadata"] | {"mtime": "1765130400.1234587"}}

    bad, _ = stored_as_the_agent_stores(s3, bucket, "page.html", each=later)
    assert run(store, bucket) == ExitCode.PARTS
    out = capsys.readouterr().out
    assert (
        f"NOT assembled s3://{bucket}/{bad}: the x-amz-meta-mtime of the parts of "
        "runs/1/page.html, '1765130400.1234587', is not its manifest's time "
        "2025-12-07T18:00:00.123457Z" in out
    ), out
    assert "runs/1/page.html" not in objects(s3, bucket)
