"""What an object carries of its file (agent/properties.py): its Content-Type, its SHA-256 and
the file's time, sent where the grant signs them, read back from the store (moto, RGW) and
through rclone."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from agent import uploader as uploading
from agent.errors import ExitCode, FileChangedError, PreflightError
from agent.grant import load_grant
from agent.policy import Condition, Policy
from agent.properties import content_type, needs_sha256, object_fields, rclone_time
from agent.uploader import Uploader
from demo.stores import Store
from tests.agentprocess import AgentProcess, eventually
from tests.conftest import GrantMaker, objects, rclone_copy, with_url
from tests.faultproxy import fault_proxy
from tests.signing import resigned

MiB = 1024**2
PROPERTIES = ("content-type", "x-amz-meta-sha256", "x-amz-meta-mtime", "x-amz-checksum-sha256")
SIGNED = [["starts-with", f"${name}", ""] for name in ("Content-Type", *PROPERTIES[1:3])]
FILES = {  # name: the Content-Type its object gets
    "report.html": "text/html",
    "data.json": "application/json",
    "plot.png": "image/png",
    "results.unknownext": "application/octet-stream",
}
MOTO = pytest.mark.parametrize("store", ["moto"], indirect=True)  # the agent's side: one store
MTIME_NS = 1765130400_123456789  # 2025-12-07T18:00:00.123456789Z


def signing(grant: Path, store: Store, *conditions: Any) -> Path:
    """The grant, signed again with `conditions` as the only ones on the objects' properties."""
    return resigned(grant, store, *conditions, drop=PROPERTIES)


def policy(*fields: str) -> Policy:
    conditions = tuple(Condition("starts-with", name, "") for name in ("key", *fields))
    return Policy(dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), conditions)


def field_names(body: bytes) -> list[str]:
    """The names of a multipart form's fields, in order, the file's last."""
    return [
        m.decode() for m in re.findall(rb'Content-Disposition: form-data; name="([^"]+)"', body)
    ]


@pytest.mark.parametrize(
    ("name", "kind"),
    [*FILES.items(), ("REPORT.HTML", "text/html"), ("table.csv.gz", "text/csv"),
     ("archive.tar.gz", "application/x-tar"), ("noextension", "application/octet-stream"),
     ("data:,x.html", "text/html"), (".hidden.txt", "text/plain")],
)  # fmt: skip
def test_the_type_is_guessed_from_the_name_by_the_builtin_table(name: str, kind: str) -> None:
    """As the AWS CLI guesses it: the suffix, case aside, an encoding (.gz) not a type; a name
    that reads as a data: URL is still a name."""
    assert content_type(name) == kind


@pytest.mark.parametrize(
    ("mtime_ns", "shown"),
    [(MTIME_NS, "1765130400.123456789"), (1765130400_500000000, "1765130400.5"),
     (1765130400_000000000, "1765130400"), (1765130400_000001000, "1765130400.000001"),
     (0, "0"), (-1_500000000, "-1.5")],
)  # fmt: skip
def test_the_time_is_written_as_rclone_writes_it(mtime_ns: int, shown: str) -> None:
    assert rclone_time(mtime_ns) == shown


@given(st.integers(-(10**19), 10**19))
def test_any_time_reads_back_to_the_nanosecond(mtime_ns: int) -> None:
    shown = rclone_time(mtime_ns)
    assert decimal.Decimal(shown) * 10**9 == mtime_ns
    assert not shown.endswith((".", "0")) or "." not in shown


def test_only_the_fields_the_policy_signs_are_sent_and_never_over_the_grants_own() -> None:
    digest = hashlib.sha256(b"x").digest()
    every = object_fields(
        policy(*PROPERTIES), {}, kind="text/html", mtime_ns=MTIME_NS, sha256=digest
    )
    assert every == {
        "Content-Type": "text/html",
        "x-amz-meta-sha256": digest.hex(),
        "x-amz-meta-mtime": "1765130400.123456789",
        "x-amz-checksum-sha256": base64.b64encode(digest).decode(),
    }
    assert object_fields(policy(), {}, kind="text/html", mtime_ns=1, sha256=digest) == {}
    only_time = object_fields(
        policy("x-amz-meta-mtime"), {}, kind="text/html", mtime_ns=1, sha256=None
    )
    assert only_time == {"x-amz-meta-mtime": "0.000000001"}
    held = {"content-type": "text/csv"}  # the operator's, signed as it is
    assert (
        object_fields(policy("content-type"), held, kind="text/html", mtime_ns=1, sha256=None) == {}
    )
    assert not needs_sha256(policy("content-type", "x-amz-meta-mtime"))
    assert needs_sha256(policy("x-amz-checksum-sha256"))


def unread(stream: Any, size: int) -> bytes:
    """In place of the read for the SHA-256, where none may happen."""
    raise AssertionError(f"{size} bytes read for a SHA-256 nobody asked for")


def upload_all(grant: Path, folder: Path, prefix: str = "runs/1/") -> dict[str, bytes]:
    """Each of FILES, written into `folder` with the time MTIME_NS, sent under `grant`."""
    sender, taken = Uploader(requests.Session()), load_grant(grant)
    contents = {}
    for name in FILES:
        path = folder / name
        contents[name] = os.urandom(1000) + name.encode()
        path.write_bytes(contents[name])
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
        sender.upload(taken, path, prefix + name)
    return contents


def test_each_object_carries_the_type_sha256_and_time_its_grant_signs(
    tmp_path: Path, make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    """On moto and on RGW (which enforces the policy): .html, .json, .png and an unknown
    suffix each land with their type, their SHA-256 and the file's time."""
    grant = signing(make_grant("runs/1/"), store, *SIGNED)
    contents = upload_all(grant, tmp_path)
    for name, kind in FILES.items():
        head = s3.head_object(Bucket=bucket, Key=f"runs/1/{name}")
        assert head["ContentType"] == kind
        assert head["Metadata"] == {
            "sha256": hashlib.sha256(contents[name]).hexdigest(),
            "mtime": "1765130400.123456789",
        }


@MOTO
def test_a_grant_without_those_conditions_sends_the_same_form_as_before(
    tmp_path: Path,
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No condition, no field: the form holds the grant's fields and the file, nothing more,
    and no byte is read before the body (moto keeps its default type)."""
    grant = signing(make_grant("runs/1/"), store)
    monkeypatch.setattr(uploading, "read_sha256", unread)
    with fault_proxy(store.endpoint) as proxy:
        upload_all(with_url(grant, f"{proxy.url}/{bucket}/"), tmp_path)
    fields = list(json.loads(grant.read_text())["fields"])
    assert [field_names(body) for body in proxy.bodies] == [[*fields, "file"]] * len(FILES)
    head = s3.head_object(Bucket=bucket, Key="runs/1/report.html")
    assert head["Metadata"] == {} and head["ContentType"] != "text/html"


@MOTO
def test_a_grant_that_signs_s3s_checksum_gets_the_digest_in_base64(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    checksum = ["starts-with", "$x-amz-checksum-sha256", ""]
    grant = signing(make_grant("runs/1/"), store, checksum)
    with fault_proxy(store.endpoint) as proxy:
        contents = upload_all(with_url(grant, f"{proxy.url}/{bucket}/"), tmp_path)
    digest = hashlib.sha256(contents["report.html"]).digest()
    sent = f'name="x-amz-checksum-sha256"\r\n\r\n{base64.b64encode(digest).decode()}\r\n'
    assert sent.encode() in proxy.bodies[0]
    assert all(field_names(b).count("x-amz-checksum-sha256") == 1 for b in proxy.bodies)
    assert not any("x-amz-meta-sha256" in field_names(b) for b in proxy.bodies)


@MOTO
def test_a_type_the_grant_does_not_allow_is_refused_before_a_byte_is_read_or_sent(
    tmp_path: Path,
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A grant for images only: report.html is refused by the preflight in words, plot.png
    goes."""
    images = ["starts-with", "$Content-Type", "image/"]
    grant = signing(make_grant("runs/1/"), store, images, *SIGNED[1:])
    html, png = tmp_path / "report.html", tmp_path / "plot.png"
    html.write_bytes(b"<p>hi</p>")
    png.write_bytes(b"\x89PNG")
    with fault_proxy(store.endpoint) as proxy:
        taken = load_grant(with_url(grant, f"{proxy.url}/{bucket}/"))
        with monkeypatch.context() as patch:
            patch.setattr(uploading, "read_sha256", unread)
            with pytest.raises(PreflightError) as refused:
                Uploader(requests.Session()).send_once(taken, html, "runs/1/report.html")
        assert proxy.posts == 0
        Uploader(requests.Session()).send_once(taken, png, "runs/1/plot.png")
    assert refused.value.message == "content-type 'text/html' does not start with 'image/'"
    assert list(objects(s3, bucket)) == ["runs/1/plot.png"]


@MOTO
def test_a_rewrite_between_the_hash_and_the_send_that_keeps_its_times_is_not_taken_as_sent(
    tmp_path: Path,
    make_grant: GrantMaker,
    store: Store,
    bucket: str,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file is read for its SHA-256, then rewritten (same size, its mtime put back) before
    its bytes go: the attempt fails as a change does, and the next sends the new bytes with
    their own SHA-256."""
    path = tmp_path / "report.html"
    path.write_bytes(b"old bytes")
    first = os.stat(path)
    hashed = uploading.read_sha256

    def then_rewritten(stream: Any, size: int) -> bytes:
        digest = hashed(stream, size)
        for _ in range(100_000):  # until the kernel's clock has moved past the first ctime
            path.write_bytes(b"new bytes")
            os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
            if os.stat(path).st_ctime_ns != first.st_ctime_ns:
                break
        monkeypatch.setattr(uploading, "read_sha256", hashed)  # once
        return digest

    monkeypatch.setattr(uploading, "read_sha256", then_rewritten)
    grant = load_grant(signing(make_grant("runs/1/"), store, *SIGNED))
    with pytest.raises(FileChangedError, match="the file changed while it was sent"):
        Uploader(requests.Session()).send_once(grant, path, "runs/1/report.html")
    Uploader(requests.Session()).send_once(grant, path, "runs/1/report.html")
    head = s3.head_object(Bucket=bucket, Key="runs/1/report.html")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"new bytes").hexdigest()
    assert objects(s3, bucket) == {"runs/1/report.html": b"new bytes"}


@MOTO
def test_parts_and_their_manifest_carry_their_own_sha256_and_the_files_type_and_time(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store, s3: Any,
    bucket: str,
) -> None:  # fmt: skip
    """12 MiB of report.html in 5 MiB parts: each part is text/html with its own SHA-256, the
    manifest application/json with its own, all with the file's time."""
    grant = signing(make_grant("runs/1/"), store, *SIGNED)
    a = agent(grant, split_bytes=str(5 * MiB), part_bytes=str(5 * MiB))
    content = os.urandom(12 * MiB)
    staged = a.watch.parent / "report.html"
    staged.write_bytes(content)
    os.utime(staged, ns=(MTIME_NS, MTIME_NS))
    a.start().ready()
    staged.rename(a.watch / "report.html")
    manifest = lambda: [k for k in objects(s3, bucket) if k.endswith("/manifest.json")]  # noqa: E731
    assert eventually(lambda: len(manifest()) == 1, 120), a.text()
    assert a.stop() == ExitCode.OK
    stored = objects(s3, bucket)
    assert len(stored) == 4
    for key, data in stored.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        kind = "application/json" if key.endswith("/manifest.json") else "text/html"
        assert head["ContentType"] == kind, key
        assert head["Metadata"] == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "mtime": "1765130400.123456789",
        }
    assert json.loads(stored[manifest()[0]])["sha256"] == hashlib.sha256(content).hexdigest()


@MOTO
def test_rclone_copy_from_the_bucket_restores_each_files_time(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """rclone (Debian's), configured by its environment only, copies the prefix back: each
    file has its bytes and its modification time, to the nanosecond rclone keeps."""
    sent = tmp_path / "sent"
    sent.mkdir()
    grant = signing(make_grant("runs/1/"), store, *SIGNED)
    contents = upload_all(grant, sent)
    back = tmp_path / "back"
    rclone_copy(store, bucket, "runs/1", back, tmp_path)
    assert {p.name: p.read_bytes() for p in back.iterdir()} == contents
    for name in FILES:
        assert os.stat(back / name).st_mtime_ns == MTIME_NS, name


@MOTO
def test_check_says_which_of_them_the_grant_signs(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, store: Store
) -> None:
    signed = agent(signing(make_grant("runs/1/"), store, *SIGNED)).start("check")
    assert signed.wait() == ExitCode.OK
    line = (
        "objects    carry Content-Type, x-amz-meta-sha256, x-amz-meta-mtime (signed by the grant)"
    )
    assert line in signed.text()
    unsigned = agent(signing(make_grant("runs/1/"), store)).start("check", "--json")
    assert unsigned.wait() == ExitCode.OK
    shown = unsigned.text()
    assert json.loads(shown[shown.index("{") :])["properties"] == [], shown


@MOTO
def test_check_shows_the_class_tags_filters_and_limit_objects_get(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker
) -> None:
    """What `check` says is what the agent will do with the files: each row from the grant or
    the settings in force."""
    grant = make_grant("runs/1/", "1h", "--storage-class", "STANDARD_IA", "--tag", "team=ml")
    a = agent(grant, include="*.csv", exclude="logs/", bandwidth_limit="20MiB/s").start("check")
    assert a.wait() == ExitCode.OK
    for line in (
        "class      STANDARD_IA\n",
        "tags       team=ml\n",
        "files      only the files matching POSTBOX_INCLUDE (*.csv) and not matching "
        "POSTBOX_EXCLUDE (logs/)\n",
        "bandwidth  20MiB/s, shared by every upload\n",
    ):
        assert line in a.text(), a.text()
    plain = agent(make_grant("runs/1/")).start("check", "--json")
    assert plain.wait() == ExitCode.OK
    shown = plain.text()
    facts = json.loads(shown[shown.index("{") :])
    assert (facts["storage_class"], facts["tags"], facts["bandwidth_limit"]) == (None, {}, None)
