"""Files sent in parts (agent/parts.py): 5 MiB parts of a 23 MiB file, on moto and RGW."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import ExitCode, PreflightError
from agent.grant import load_grant
from agent.inparts import cut_of, in_parts
from agent.parts import (
    MAX_MANIFEST,
    MAX_PART,
    MAX_PARTS,
    Plan,
    manifest,
    manifest_size,
    plan,
)
from agent.versions import FileVersion
from demo.stores import Store
from issuer.cli import main as issuer_main
from tests.agent.test_wait import wait
from tests.agentprocess import AGENT, AgentProcess, eventually
from tests.conftest import GrantMaker, fill_up, objects, with_url
from tests.faultproxy import HOLD, FaultProxy, fault_proxy

MiB = 1024**2
PARTS = {"split_bytes": str(5 * MiB), "part_bytes": str(5 * MiB)}


def sending_with_third_part_held(a: AgentProcess, proxy: FaultProxy) -> tuple[Path, bytes, Plan]:
    """A 23 MiB file in the watch dir of `a` (whose grant goes through `proxy`, prefix runs/1/,
    5 MiB parts), the agent started, and the plan it follows: its third part is held by the
    proxy until it is released (or 120 s), and has reached the proxy when this returns."""
    path = a.watch / "big.bin"
    content = os.urandom(23 * MiB)
    path.write_bytes(content)
    version = FileVersion.at(path)
    assert version is not None
    laid = plan("runs/1/", "big.bin", "runs/1/big.bin", version, part_bytes=5 * MiB,
                largest=5 * 1024**3)  # fmt: skip
    proxy.by_key = {laid.parts[2].key: [HOLD]}
    proxy.stall_seconds = 120
    a.start().ready()
    assert eventually(lambda: len(proxy.attempts(laid.parts[2].key)) == 1, 60), a.text()
    return path, content, laid


def journaled_parts(journal: Path) -> list[int]:
    """The part numbers the agent's journal holds (read beside it: SQLite's WAL allows it)."""
    with contextlib.closing(sqlite3.connect(journal)) as db:
        return sorted(n for (n,) in db.execute("SELECT number FROM parts"))


def manifests(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    found = objects(s3, bucket)
    return {k: json.loads(v) for k, v in found.items() if k.endswith("/manifest.json")}


def test_a_large_file_goes_in_parts_then_a_manifest_that_names_them_all(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """23 MiB in 5 MiB parts: five objects under the file's own namespace of parts, whose bytes
    in order are the file's, and a manifest with the size, each part's MD5 and the SHA-256;
    the file itself is journaled as sent (a restart sends nothing)."""
    a = agent(make_grant("runs/1/"), **PARTS).start().ready()
    content = os.urandom(23 * MiB)
    (a.watch / "big.bin").write_bytes(content)
    assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
    ((key, manifest),) = manifests(s3, bucket).items()
    assert key.startswith("runs/1/.postbox-parts/big.bin/") and key.endswith("/manifest.json")
    assert manifest["key"] == "runs/1/big.bin"
    assert manifest["size"] == len(content)
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest()
    assert [p["size"] for p in manifest["parts"]] == [5 * MiB] * 4 + [3 * MiB]
    stored = objects(s3, bucket)
    joined = b"".join(stored[p["key"]] for p in manifest["parts"])
    assert joined == content
    for part in manifest["parts"]:
        assert part["md5"] == hashlib.md5(stored[part["key"]]).hexdigest()
    assert "runs/1/big.bin" not in stored  # assemble makes it
    assert (
        f"uploaded runs/1/big.bin ({len(content)} bytes, sha256 {manifest['sha256']}) in 5 parts "
        "of 5242880 bytes, the last 3145728, then its manifest"
    ) in a.text()
    assert a.stop() == ExitCode.OK
    a.start().ready()
    assert "start-up scan: 0 file(s) to send, 1 already sent" in a.text()
    assert a.stop() == ExitCode.OK


def test_a_restart_sends_only_the_parts_not_stored_and_a_changed_file_starts_over(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    """Parts go four at once: the third is held by the proxy, and the four others are stored
    and journaled meanwhile (one stream would wait behind it). The agent is killed (SIGKILL):
    after the restart the store is asked for the third part and the manifest only. Then the
    file is rewritten: its new version goes whole from part one, under a namespace of its
    own."""
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant, **PARTS)
        _, content, laid = sending_with_third_part_held(a, proxy)
        journal = Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3"
        assert eventually(lambda: journaled_parts(journal) == [1, 2, 4, 5], 60), a.text()
        status = Path(a.env["POSTBOX_STATE_DIR"]) / "status.json"
        shown = {"key": "runs/1/big.bin", "parts_done": 4, "parts": 5,
                 "bytes_done": 18 * MiB, "bytes": 23 * MiB}  # fmt: skip
        assert eventually(lambda: json.loads(status.read_text())["in_parts"] == [shown])
        a.kill()  # four parts stored and journaled, the third under way
        first = [e.key for e in proxy.exchanges]
        assert sorted(first) == [p.key for p in laid.parts]
        proxy.by_key = {}
        proxy.released.set()
        a.start().ready()
        assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
        again = [e.key for e in proxy.exchanges][len(first) :]
        assert again == [laid.parts[2].key, laid.manifest_key]
        ((key, manifest),) = manifests(s3, bucket).items()
        assert b"".join(objects(s3, bucket)[p["key"]] for p in manifest["parts"]) == content
        rewritten = os.urandom(12 * MiB)
        (a.watch / "big.bin").write_bytes(rewritten)
        assert eventually(lambda: len(manifests(s3, bucket)) == 2, 120), a.text()
        assert a.stop() == ExitCode.OK
    newer = next(m for k, m in manifests(s3, bucket).items() if k != key)
    assert newer["size"] == len(rewritten)
    assert (
        newer["parts"][0]["key"].rsplit("/", 2)[1] != manifest["parts"][0]["key"].rsplit("/", 2)[1]
    )


def test_a_restart_that_cuts_the_file_otherwise_sends_every_part_of_the_new_cut(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    """Four 5 MiB parts journaled, then a restart with POSTBOX_PART_BYTES at 6 MiB: the journal's
    part 2 (bytes 5..10 MiB) is not the new cut's part 2 (6..12 MiB). Every part of the new cut
    is sent, and the manifest names only them: its bytes in order are the file's."""
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant, **PARTS)
        _, content, laid = sending_with_third_part_held(a, proxy)
        journal = Path(a.env["POSTBOX_STATE_DIR"]) / "journal.sqlite3"
        assert eventually(lambda: journaled_parts(journal) == [1, 2, 4, 5], 60), a.text()
        a.kill()
        proxy.by_key = {}
        proxy.released.set()
        a.env["POSTBOX_PART_BYTES"] = str(6 * MiB)
        a.start().ready()
        assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
        assert a.stop() == ExitCode.OK
    ((_, manifest),) = manifests(s3, bucket).items()
    assert [p["size"] for p in manifest["parts"]] == [6 * MiB] * 3 + [5 * MiB]
    assert not {p["key"] for p in manifest["parts"]} & {p.key for p in laid.parts}
    assert b"".join(objects(s3, bucket)[p["key"]] for p in manifest["parts"]) == content


def test_a_file_rewritten_while_its_parts_go_starts_over_and_old_parts_are_never_joined(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    """The file is rewritten while its third part is held: that version gets no manifest (its
    parts stay under their own namespace, never named by one), and the new version is sent
    from its first part under another; the one manifest names the new bytes only."""
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant, **PARTS)
        path, _, old = sending_with_third_part_held(a, proxy)
        rewritten = os.urandom(17 * MiB)
        path.write_bytes(rewritten)
        proxy.released.set()
        assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
        assert a.stop() == ExitCode.OK
    ((key, manifest),) = manifests(s3, bucket).items()
    assert old.version not in key and manifest["size"] == len(rewritten)
    assert b"".join(objects(s3, bucket)[p["key"]] for p in manifest["parts"]) == rewritten
    assert "changed while it was sent" in a.text() or "changed between its parts" in a.text()


def test_a_stop_starts_no_new_part_and_the_next_start_sends_the_rest(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    """One part at a time, the third held when SIGTERM comes with no stop budget: the part
    under way is stored and journaled, no other begins (a large file does not hold a stop past
    its budget), and the next start sends the parts left and the manifest."""
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant, part_streams="1", stop_budget_seconds="0", **PARTS)
        _, content, laid = sending_with_third_part_held(a, proxy)
        assert a.process is not None
        a.process.send_signal(signal.SIGTERM)
        # The stop has begun; the held part is still under way.
        assert eventually(lambda: "upload(s) in flight will finish" in a.text()), a.text()
        proxy.released.set()  # the held part goes on to the store, and is stored
        assert a.wait(60) == ExitCode.FILES_LEFT, a.text()
        assert [e.key for e in proxy.exchanges] == [p.key for p in laid.parts[:3]]
        proxy.by_key = {}
        a.start().ready()
        assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
        assert a.stop() == ExitCode.OK
    keys = [e.key for e in proxy.exchanges][3:]
    assert keys == [p.key for p in laid.parts[3:]] + [laid.manifest_key]
    ((_, manifest),) = manifests(s3, bucket).items()
    assert b"".join(objects(s3, bucket)[p["key"]] for p in manifest["parts"]) == content


def test_a_file_in_parts_the_journal_cannot_record_waits_as_a_whole_file_does(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    tmpfs: Any,
) -> None:
    """The state dir (a 2 MiB tmpfs) fills up while the third part is held: that part's row
    cannot be written, nor the file's once its manifest is stored. The store has the file, so
    the agent goes on as for a whole file: the file waits to be recorded, no new upload starts
    (never "failed", waiting for a new grant), and once there is room it is recorded: a
    restart sends nothing again."""
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/")
        a = agent(grant, **PARTS)
        state = tmpfs(Path(a.env["POSTBOX_STATE_DIR"]), "2m")
        _, content, laid = sending_with_third_part_held(a, proxy)
        assert eventually(lambda: journaled_parts(state / "journal.sqlite3") == [1, 2, 4, 5])
        filler = fill_up(state)
        proxy.by_key = {}
        proxy.released.set()
        assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
        assert eventually(lambda: "new uploads pause until the state dir" in a.text()), a.text()
        (a.watch / "small.txt").write_bytes(b"waits")
        assert a.turns(12)  # two housekeeping rounds: small.txt is due, and not sent
        assert "runs/1/small.txt" not in [e.key for e in proxy.exchanges]
        assert "failed" not in a.text() and "new grant" not in a.text(), a.text()
        filler.unlink()
        assert eventually(lambda: "the journal records again (1 recorded)" in a.text(), 30)
        assert eventually(lambda: a.uploaded("runs/1/small.txt") == 1), a.text()
        assert a.stop() == ExitCode.OK
        a.start().ready()
        assert "start-up scan: 0 file(s) to send, 2 already sent" in a.text(), a.text()
        assert a.stop() == ExitCode.OK
    keys = [e.key for e in proxy.exchanges]
    assert sorted(keys) == sorted(
        [p.key for p in laid.parts] + [laid.manifest_key, "runs/1/small.txt"]
    )
    ((_, manifest),) = manifests(s3, bucket).items()
    assert b"".join(objects(s3, bucket)[p["key"]] for p in manifest["parts"]) == content
    assert journaled_parts(state / "journal.sqlite3") == []  # forgotten once the file is recorded


def test_the_parts_and_the_manifest_keep_within_the_grants_smallest_size() -> None:
    """A grant's --min-size binds every POST: the last 3 MiB part of a 23 MiB file joins the
    one before; where that would be over the grant's largest size, it takes what it lacks from
    it (every part but the last stays 5 MiB at least); the manifest is padded with spaces. A
    cut no part size can make is refused in one line; a new cut gets a new name, so parts of
    the old cut are never mixed in."""
    version = FileVersion(23 * MiB, 1, 2, 3)
    laid = plan("p/", "f", "p/f", version, part_bytes=5 * MiB, largest=5 * 1024**3,
                smallest=4 * MiB)  # fmt: skip
    assert [p.size for p in laid.parts] == [5 * MiB] * 3 + [8 * MiB]
    assert [p.offset for p in laid.parts] == [0, 5 * MiB, 10 * MiB, 15 * MiB]
    shifted = plan("p/", "f", "p/f", version, part_bytes=7 * MiB, largest=7 * MiB,
                   smallest=4 * MiB)  # fmt: skip
    assert [p.size for p in shifted.parts] == [7 * MiB, 7 * MiB, 5 * MiB, 4 * MiB]
    assert [p.offset for p in shifted.parts] == [0, 7 * MiB, 14 * MiB, 19 * MiB]
    plain = plan("p/", "f", "p/f", version, part_bytes=5 * MiB, largest=5 * 1024**3)
    assert plain.version != laid.version
    assert plan("p/", "f", "p/f", version, part_bytes=6 * MiB, largest=5 * 1024**3).version not in (
        plain.version,
        laid.version,
    )
    body = manifest(laid, version, {p.number: "0" * 32 for p in laid.parts}, "", smallest=4 * MiB)
    assert len(body) == 4 * MiB and json.loads(body)["size"] == 23 * MiB
    with pytest.raises(PreflightError, match=r"within the grant's size range 5242880\.\.5242880"):
        plan("p/", "f", "p/f", version, part_bytes=5 * MiB, largest=5 * MiB, smallest=5 * MiB)


def test_a_grant_with_a_smallest_size_carries_a_file_in_parts_to_its_assembled_object(
    agent: Callable[..., AgentProcess],
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
) -> None:
    """--min-size 4MiB: before, the 3 MiB last part and the manifest were refused (by the
    agent's own check of the grant's range, and by RGW as by S3; moto does not enforce a POST's
    content-length-range), after the other parts were sent."""
    a = agent(make_grant("runs/1/", "30m", "--min-size", "4MiB"), **PARTS).start().ready()
    content = os.urandom(23 * MiB)
    (a.watch / "big.bin").write_bytes(content)
    assert eventually(lambda: len(manifests(s3, bucket)) == 1, 120), a.text()
    assert a.stop() == ExitCode.OK
    argv = ["assemble", "--bucket", bucket, "--prefix", "runs/"]
    assert issuer_main([*argv, "--endpoint-url", store.endpoint, "--region", store.region]) == 0
    assert objects(s3, bucket) == {"runs/1/big.bin": content}


def stored_manifest(laid: Plan, version: FileVersion, **options: Any) -> bytes:
    """`laid`'s manifest as delivery writes it, once its parts are stored (MD5s of 32 digits)."""
    md5s = {p.number: hashlib.md5(str(p.number).encode()).hexdigest() for p in laid.parts}
    return manifest(laid, version, md5s, hashlib.sha256(b"").hexdigest(), **options)


@pytest.mark.parametrize(
    ("relpath", "size", "sizes", "encryption"),
    [
        ("f", 10, dict(part_bytes=5 * MiB, largest=5 * MiB), None),
        ("a/b.bin", 23 * MiB, dict(part_bytes=5 * MiB, largest=5 * 1024**3), None),
        ("d/x.bin", 23 * MiB, dict(part_bytes=7 * MiB, largest=7 * MiB, smallest=4 * MiB), None),
        ('q"u\\o/t e\'s.bin', 9_999 * 5 * MiB, dict(part_bytes=5 * MiB, largest=5 * MiB), None),
        ("été/日本/😀.bin", 9_998 * 5 * MiB + 1, dict(part_bytes=5 * MiB, largest=5 * MiB),
         {"x-amz-server-side-encryption": "aws:kms",
          "x-amz-server-side-encryption-aws-kms-key-id": 'arn:"k\\é'}),
        ("old.bin", 23 * MiB, dict(part_bytes=6 * MiB, largest=6 * MiB, smallest=5 * MiB),
         {"x-amz-server-side-encryption": "AES256"}),
    ],
)  # fmt: skip
def test_the_manifests_size_is_known_from_the_plan_before_any_part_is_sent(
    relpath: str, size: int, sizes: dict[str, int], encryption: dict[str, str] | None
) -> None:
    """One part, five, 9,999; names with quotes and backslashes (escaped: two bytes), with
    accents, CJK and an emoji (written as UTF-8, once); encryption fields; a last part joined or
    topped up, a manifest padded to the grant's smallest size: the size computed from the plan
    is the manifest's, and the manifest reads back as the same names."""
    version = FileVersion(size, 1_700_000_000_123_456_789, 2, 3)
    laid = plan("runs/1/", relpath, f"runs/1/{relpath}", version, encryption=encryption,
                **sizes)  # fmt: skip
    smallest = sizes.get("smallest", 0)
    body = stored_manifest(laid, version, encryption=encryption, smallest=smallest)
    assert manifest_size(laid, version, encryption, smallest=smallest) == len(body)
    document = json.loads(body)
    assert document["key"] == f"runs/1/{relpath}" and document["encryption"] == (encryption or {})
    assert [p["key"] for p in document["parts"]] == [p.key for p in laid.parts]
    assert len(body) <= sizes["largest"]


def long_path(quoted: int) -> str:
    """A path whose every byte but a few is `"` (two bytes of JSON each), `quoted` bytes long:
    folders of 250 bytes (a name is at most 255) and a file."""
    folders, rest = divmod(quoted - 4, 251)
    return "/".join(['"' * 250] * folders + ['"' * rest + ".bin"])


def test_a_manifest_too_large_for_the_grant_takes_larger_parts_or_refuses_the_file() -> None:
    """A path of ~960 bytes of quotes: 5,000 parts of 5 MiB would need a manifest of about
    10 MiB. Under a grant of 8 MiB at most, the plan takes parts just large enough for the
    manifest to fit (one part more and it would not); under one of 5 MiB no cut fits, and the
    file is refused in one line naming its size, the manifest's, the grant's and the fix."""
    relpath = long_path(955)
    key = f"runs/1/{relpath}"
    version = FileVersion(5_000 * 5 * MiB, 1_700_000_000_000_000_000, 2, 3)
    fewest = plan("runs/1/", relpath, key, version, part_bytes=5 * MiB, largest=5 * 1024**3)
    assert len(fewest.parts) == 5_000 and manifest_size(fewest, version) > 9 * MiB
    laid = plan("runs/1/", relpath, key, version, part_bytes=5 * MiB, largest=8 * MiB)
    assert 5 * MiB < laid.part_size < 8 * MiB
    assert len(stored_manifest(laid, version)) == manifest_size(laid, version) <= 8 * MiB
    one_more = math.ceil(version.size / (len(laid.parts) + 1))
    denser = plan("runs/1/", relpath, key, version, part_bytes=one_more, largest=5 * 1024**3)
    assert len(denser.parts) == len(laid.parts) + 1 and manifest_size(denser, version) > 8 * MiB
    with pytest.raises(PreflightError) as refused:
        plan("runs/1/", relpath, key, version, part_bytes=5 * MiB, largest=5 * MiB)
    assert refused.value.message == (
        f"size {version.size} needs a manifest of {manifest_size(fewest, version)} bytes (in 5000 "
        "parts of the grant's largest size), over the grant's largest size 5242880: shorten the "
        "file's path, or issue a grant with a larger --max-size"
    )


def test_no_plan_makes_a_manifest_over_max_manifest_and_the_largest_is_that_size() -> None:
    """The largest manifest: 10,000 parts of 5 GiB, a key as long as the manifest's own key
    allows (1024 bytes), every byte a quote (two bytes of JSON: a non-ASCII character's bytes
    are written once, an emoji's four as four), a date of year 9999, encryption fields filling
    ENCRYPTION_ROOM (a KMS key's longest ARN fits). It is MAX_MANIFEST bytes; a key one byte
    longer has no manifest key, encryption one byte longer is refused by name, and a grant
    whose smallest size is over MAX_MANIFEST cannot carry parts (padded, the manifest would be
    over what assemble reads)."""
    version = FileVersion(MAX_PARTS * MAX_PART, 253_402_300_799 * 10**9, 2, 3)
    longest = 1024 - len(".postbox-parts//0123456789abcdef/manifest.json")
    relpath = '"' * longest
    sizes = dict(part_bytes=MAX_PART, largest=MAX_PART)
    one = FileVersion(1, version.mtime_ns, 2, 3)
    emoji = "😀" * (longest // 4) + '"' * (longest % 4)
    quoted = stored_manifest(plan("", relpath, relpath, one, **sizes), one)
    assert len(stored_manifest(plan("", emoji, emoji, one, **sizes), one)) <= len(quoted)
    field = "x-amz-server-side-encryption-aws-kms-key-id"
    probe = plan("", relpath, relpath, version, **sizes)
    kms = {"x-amz-server-side-encryption": "aws:kms", field: "k" * 2048}
    assert manifest_size(probe, version, kms) <= MAX_MANIFEST
    room = MAX_MANIFEST - manifest_size(probe, version, {field: ""})
    encryption = {field: "k" * room}
    laid = plan("", relpath, relpath, version, encryption=encryption, **sizes)
    assert len(stored_manifest(laid, version, encryption=encryption)) == MAX_MANIFEST
    with pytest.raises(PreflightError, match=r"key for .* over S3's 1024"):
        plan("", relpath + '"', relpath + '"', version, **sizes)
    with pytest.raises(PreflightError) as refused:
        plan("", relpath, relpath, version, encryption={field: "k" * (room + 1)}, **sizes)
    assert refused.value.message.endswith(
        f"over the {MAX_MANIFEST} bytes postbox-issuer assemble reads: issue a grant with fewer "
        "encryption fields"
    )
    small = FileVersion(30 * MiB, 0, 1, 0)
    with pytest.raises(PreflightError, match=f"--min-size of {MAX_MANIFEST} bytes or less"):
        plan("p/", "f", "p/f", small, part_bytes=MAX_MANIFEST + 1, largest=MAX_PART,
             smallest=MAX_MANIFEST + 1)  # fmt: skip


def test_a_file_dated_past_year_9999_is_refused_before_its_parts_not_after() -> None:
    """The manifest records the file's time: one no date can hold is refused in one line by the
    plan, before any part (it ended the daemon once every part was sent)."""
    version = FileVersion(23 * MiB, 300_000_000_000 * 10**9, 2, 3)
    with pytest.raises(PreflightError, match=r"outside the years 1 to 9999 .*: set it with touch"):
        plan("p/", "f", "p/f", version, part_bytes=5 * MiB, largest=5 * 1024**3)


def test_a_file_whose_manifest_would_not_fit_the_grant_is_refused_before_its_first_part(
    agent: Callable[..., AgentProcess], make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """A grant of 5 MiB at most, a path of ~960 bytes of quotes, a 12.7 GiB file (sparse): its
    2,600 parts of 5 MiB would need a manifest of over 5 MiB, which the grant refuses. Before,
    the agent sent the parts (about 12 GiB) and the manifest was refused after them; now the
    file is refused before its first part: nothing of it in the store, `wait` exits 3 naming it
    and why, status keeps the refusal, and the file beside it is stored."""
    a = agent(make_grant("runs/1/", "30m", "--max-size", "5MiB"))
    relpath = long_path(955)
    path = a.watch / relpath
    path.parent.mkdir(parents=True)
    with path.open("wb") as sparse:
        sparse.truncate(2_600 * 5 * MiB)
    (a.watch / "small.txt").write_bytes(b"fits")
    version = FileVersion.at(path)
    assert version is not None
    fewest = plan("runs/1/", relpath, f"runs/1/{relpath}", version, part_bytes=5 * MiB,
                  largest=5 * 1024**3)  # fmt: skip
    needed = manifest_size(fewest, version)
    assert len(fewest.parts) == 2_600 and needed > 5 * MiB
    a.start().ready()
    done = wait(a, timeout=60)
    assert done.returncode == ExitCode.FILES_LEFT, (done, a.text())
    why = (
        f"size {version.size} needs a manifest of {needed} bytes (in 2600 parts of the grant's "
        "largest size), over the grant's largest size 5242880: shorten the file's path, or "
        "issue a grant with a larger --max-size"
    )
    assert f"not stored {relpath}: " in done.stdout and why in done.stdout, done.stdout
    assert f"refused {relpath}: {why}; left in place" in a.text()
    assert objects(s3, bucket) == {"runs/1/small.txt": b"fits"}  # no part, no manifest
    assert a.stop() == ExitCode.FILES_LEFT  # the refused file stays unsent
    shown = subprocess.run([*AGENT, "status"], env=a.env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert f"{relpath}: refused here, before sending: {why}" in shown.stdout, shown.stdout


@pytest.mark.parametrize(
    ("sizes", "said"),
    [
        ([5, 5, 5], "3 parts of 5 bytes"),
        ([5, 5, 1], "3 parts of 5 bytes, the last 1"),
        ([5, 5, 4, 3], "4 parts of 5 bytes, the last 2 4, 3"),
        ([7], "1 part of 7 bytes"),
    ],
)
def test_the_log_says_how_a_file_was_cut_the_last_parts_as_they_are(
    sizes: list[int], said: str
) -> None:
    assert cut_of(sizes) == said


def test_a_file_of_one_part_goes_whole_whatever_the_split(make_grant: GrantMaker) -> None:
    """POSTBOX_SPLIT_BYTES=1MiB with 5 MiB parts sent a 2 MB file as one part, a manifest and a
    join for assemble; it goes whole, as it would without the setting."""
    grant = load_grant(make_grant("runs/1/"))
    assert not in_parts(grant, 2_000_000, 1 * MiB, 5 * MiB)
    assert not in_parts(grant, 5 * MiB, 1 * MiB, 5 * MiB)
    assert in_parts(grant, 5 * MiB + 1, 1 * MiB, 5 * MiB)
    assert not in_parts(grant, 6 * MiB, 0, 5 * MiB)  # no split: only over the grant's largest
