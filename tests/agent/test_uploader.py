"""One streaming POST against moto's server over HTTP, and through a proxy that injects faults."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.answer import Answer, Stored, classify
from agent.body import CHUNK_SIZE, READ_AHEAD_BYTES, HashingBody
from agent.deadline import Deadline
from agent.errors import PreflightError, RejectedUploadError, TransientUploadError
from agent.grant import load_grant
from agent.outcome import Receipt
from agent.session import new_session
from agent.uploader import Timeouts, Uploader
from demo.stores import KMS_KEY_ID, Store
from tests.conftest import GrantMaker, objects, with_url
from tests.faultproxy import fault_proxy


class Sender:
    """An uploader and the grant its uploads go under."""

    def __init__(self, grant: Path, waits: list[float]) -> None:
        self.grant = load_grant(grant)  # valid for far longer than any test's backoff
        self.uploader = Uploader(requests.Session(), sleep=waits.append)

    def upload(self, path: Path, key: str) -> Receipt:
        return self.uploader.upload(self.grant, path, key)


def uploader(grant: Path, waits: list[float]) -> Sender:
    return Sender(grant, waits)


def test_file_lands_byte_for_byte_with_its_md5(
    tmp_path: Path, make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """moto's 201 carries neither the PostResponse XML nor an ETag header (S3 sends both), so
    the MD5 the agent computed while streaming is checked against the stored object's ETag."""
    content = os.urandom(5 * 1024 * 1024 + 3)  # several chunks
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    receipt = uploader(make_grant("runs/1/"), []).upload(path, "runs/1/big.bin")
    assert objects(s3, bucket) == {"runs/1/big.bin": content}
    stored = s3.head_object(Bucket=bucket, Key="runs/1/big.bin")["ETag"].strip('"')
    assert receipt.md5 == hashlib.md5(content).hexdigest() == stored
    assert receipt.status == 201


def test_503_slowdown_is_retried_with_growing_backoff(
    tmp_path: Path, make_grant: GrantMaker, store: Store, s3: Any, bucket: str
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    slow = (503, "SlowDown", "Please reduce your request rate.")
    with fault_proxy(store.endpoint, slow, slow, slow) as proxy:
        grant = with_url(make_grant(), f"{proxy.url}/{bucket}/")
        waits: list[float] = []
        uploader(grant, waits).upload(path, "runs/1/a.txt")
    assert proxy.posts == 4
    assert len(waits) == 3
    # Full jitter: a random wait within a window of 1, 2, 4 seconds.
    for wait, window in zip(waits, (1, 2, 4)):
        assert 0 <= wait <= window
    assert objects(s3, bucket) == {"runs/1/a.txt": b"hello"}


def test_403_policy_refusal_is_final_and_reports_s3s_code(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    denied = (403, "AccessDenied", "Invalid according to Policy: Policy Condition failed")
    with fault_proxy(store.endpoint, default=denied) as proxy:
        grant = with_url(make_grant(), f"{proxy.url}/{bucket}/")
        waits: list[float] = []
        with pytest.raises(RejectedUploadError) as caught:
            uploader(grant, waits).upload(path, "runs/1/a.txt")
    assert proxy.posts == 1 and waits == []
    assert caught.value.code == "AccessDenied" and caught.value.status == 403
    assert "Invalid according to Policy" in caught.value.message
    assert path.read_bytes() == b"hello"


def test_transient_faults_stop_being_retried_at_the_deadline(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    with fault_proxy(store.endpoint, default=(500, "InternalError", "oops")) as proxy:
        grant = with_url(make_grant(), f"{proxy.url}/{bucket}/")
        waits: list[float] = []
        # 2.5 s left on a clock that only the backoff moves: attempts go on while the waits
        # fit, and none starts after the deadline (a retry with no deadline would never stop).
        taken = load_grant(grant)
        moved = lambda: taken.expiration - dt.timedelta(seconds=2.5 - sum(waits))  # noqa: E731
        up = Uploader(requests.Session(), deadline=Deadline(moved), sleep=waits.append)
        with pytest.raises(TransientUploadError, match="500 InternalError"):
            up.upload(taken, path, "runs/1/a.txt")
    assert sum(waits) <= 2.5 and proxy.posts == len(waits) + 1


def test_shutdown_ends_the_retries(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """A shutdown during a backoff ends it, and no attempt starts after it."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    stopping = threading.Event()
    with fault_proxy(store.endpoint, default=(503, "SlowDown", "slow")) as proxy:
        grant = with_url(make_grant(), f"{proxy.url}/{bucket}/")
        up = Uploader(requests.Session(), sleep=lambda _: stopping.set(), stopping=stopping)
        with pytest.raises(TransientUploadError):
            up.upload(load_grant(grant), path, "runs/1/a.txt")
    assert proxy.posts == 1


@pytest.mark.parametrize(
    ("size", "reason"),
    [(2048, "size 2048 is outside 0..1024 bytes"), (6 * 1024**3, "over S3's POST limit")],
)
def test_preflight_refuses_a_file_the_policy_forbids_without_sending_a_byte(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str, size: int, reason: str
) -> None:
    """moto accepts any size whatever the policy says, so this checks the agent's own preflight:
    the proxy sees no request at all."""
    path = tmp_path / "big.bin"
    with path.open("wb") as sparse:
        sparse.truncate(size)
    with fault_proxy(store.endpoint) as proxy:
        grant = with_url(
            make_grant("runs/1/", "30m", "--max-size", "1KiB"), f"{proxy.url}/{bucket}/"
        )
        with pytest.raises(PreflightError, match=reason):
            uploader(grant, []).upload(path, "runs/1/big.bin")
    assert proxy.requests == []


def test_symlinks_and_fifos_are_never_read(tmp_path: Path, make_grant: GrantMaker) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t")
    (tmp_path / "link").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo")
    up = uploader(make_grant(), [])
    with pytest.raises(PreflightError, match="symlink"):
        up.upload(tmp_path / "link", "runs/1/link")
    with pytest.raises(PreflightError, match="is a FIFO, which is never read"):
        up.upload(tmp_path / "fifo", "runs/1/fifo")


POST_RESPONSE = b"""<?xml version="1.0" encoding="UTF-8"?>
<PostResponse><Location>https://b.s3.amazonaws.com/runs%2F1%2Fa%20b.txt</Location>
<Bucket>b</Bucket><Key>runs/1/a b.txt</Key><ETag>"5d41402abc4b2a76b9719d911017c592"</ETag>
</PostResponse>"""


RGW_POST_RESPONSE = (  # Ceph RGW: the ETag bare, the Location's path percent-encoded
    b"<PostResponse><Location>http://h/b/ok%2F%C3%A9t%C3%A9%2B%25</Location><Bucket>b</Bucket>"
    b"<Key>ok/\xc3\xa9t\xc3\xa9+%</Key><ETag>abc</ETag></PostResponse>"
)


GARBLED_POST_RESPONSE = (  # as Ceph RGW 16.2 answers a 1024-byte key: not well-formed XML
    b"<PostResponse><Location>http://h/b/ok%2Fa&#x00;\xa0&#x7f;</Location><Bucket>b</Bucket>"
    b"<Key>ok/a&amp;b</Key><ETag>abc</ETag></PostResponse>"
)


def error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (
            Answer(201, "Created", {}, POST_RESPONSE),
            Stored("5d41402abc4b2a76b9719d911017c592", "runs/1/a b.txt"),
        ),
        (
            Answer(201, "Created", {}, RGW_POST_RESPONSE),
            Stored("abc", "ok/été+%"),
        ),
        (Answer(201, "Created", {}, GARBLED_POST_RESPONSE), Stored("abc", "ok/a&b")),
        (Answer(204, "No Content", {"ETag": '"abc"'}, b""), Stored("abc")),
        (Answer(200, "OK", {"ETag": "abc"}, b""), Stored("abc")),
        (Answer(201, "Created", {"ETag": '"abc"'}, b""), Stored("abc")),  # moto: no body
        (Answer(503, "Slow Down", {}, error("SlowDown")), TransientUploadError),
        (Answer(500, "Internal", {}, b""), TransientUploadError),
        (Answer(400, "Bad Request", {}, error("RequestTimeout")), TransientUploadError),
        (Answer(400, "Bad Request", {}, error("EntityTooLarge")), RejectedUploadError),
        (Answer(403, "Forbidden", {}, error("AccessDenied")), RejectedUploadError),
        (
            Answer(307, "Redirect", {"Location": "https://b.s3.eu-west-1.amazonaws.com/"}, b""),
            RejectedUploadError,
        ),
    ],
)
def test_the_stores_answer_is_read_as_s3_sends_it(answer: Answer, outcome: Any) -> None:
    if isinstance(outcome, Stored):
        assert classify(answer) == outcome
    else:
        with pytest.raises(outcome):
            classify(answer)


@pytest.mark.parametrize(
    "sse", [("AES256",), ("aws:kms", "--kms-key-id", KMS_KEY_ID)], ids=["sse-s3", "sse-kms"]
)
def test_a_grant_that_requires_encryption_sends_it_as_signed(
    tmp_path: Path, make_grant: GrantMaker, store: Store, s3: Any, bucket: str, sse: tuple[str]
) -> None:
    """The grant's signed x-amz-server-side-encryption field goes with the file (and, for
    SSE-KMS, the key's id), and the store keeps the object so: RGW reports SSE-KMS with its
    key (the test RGW has a key in its configuration, the "testing" KMS backend). moto takes a
    POST's encryption fields and ignores them, and neither server shows SSE-S3 (AES256): there
    this checks what the agent sends."""
    path = tmp_path / "secret.csv"
    path.write_bytes(b"classified")
    with fault_proxy(store.endpoint) as proxy:
        made = make_grant("runs/1/", "30m", "--sse", *sse)
        grant = with_url(made, f"{proxy.url}/{bucket}/")
        uploader(grant, []).upload(path, "runs/1/secret.csv")
    (body,) = proxy.bodies
    assert f'name="x-amz-server-side-encryption"\r\n\r\n{sse[0]}\r\n'.encode() in body
    if sse[0] == "aws:kms" and store.kind == "rgw":
        head = s3.head_object(Bucket=bucket, Key="runs/1/secret.csv")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith(KMS_KEY_ID)


def test_a_rotation_during_a_backoff_does_not_mix_two_grants_in_one_upload(
    tmp_path: Path, make_grant: GrantMaker, store: Store, bucket: str
) -> None:
    """The key was made under the first grant's prefix; a new grant (another prefix) taken while
    the upload waits to retry must not lend the retry its form and policy: each attempt of one
    upload sends the same grant's fields."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    slow = (503, "SlowDown", "slow")
    with fault_proxy(store.endpoint, slow) as proxy:
        first = load_grant(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        second = load_grant(with_url(make_grant("runs/2/"), f"{proxy.url}/{bucket}/"))
        current = [first]  # what the agent holds: a rotation replaces it during the backoff
        up = Uploader(requests.Session(), sleep=lambda _: current.append(second))
        up.upload(current[-1], path, "runs/1/a.txt")
    assert proxy.posts == 2
    policies = [re.search(rb'name="policy"\r\n\r\n([^\r]*)', body) for body in proxy.bodies]
    assert all(policies) and len({m.group(1) for m in policies if m}) == 1


def test_a_large_file_read_ahead_on_its_own_thread_keeps_its_md5(
    tmp_path: Path, make_grant: GrantMaker, s3: Any, bucket: str
) -> None:
    """From READ_AHEAD_BYTES on, the file is read and hashed on a thread of its own."""
    content = os.urandom(READ_AHEAD_BYTES + 3 * 1024 * 1024 + 7)
    path = tmp_path / "large.bin"
    path.write_bytes(content)
    receipt = uploader(make_grant("runs/1/"), []).upload(path, "runs/1/large.bin")
    assert objects(s3, bucket) == {"runs/1/large.bin": content}
    assert receipt.md5 == hashlib.md5(content).hexdigest()
    assert all(t.name != "read-ahead" for t in threading.enumerate())  # closed


def test_the_session_keeps_a_connection_per_upload_and_writes_1_mib_blocks() -> None:
    """requests' default pool keeps 10 connections (an 11th upload at once made and dropped a
    connection each time) and urllib3 writes 16 KiB at a time (a system call and a poll each)."""
    adapter = new_session(16).get_adapter("https://bucket.s3.eu-west-1.amazonaws.com/")
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 16
    assert adapter.poolmanager.connection_pool_kw["blocksize"] == CHUNK_SIZE == 1024 * 1024


@pytest.mark.parametrize(
    ("error", "said"),
    [(OSError(5, "Input/output error"), "Input/output error"), (ValueError(), "ValueError")],
)
def test_a_read_ahead_that_fails_tells_the_sender_instead_of_leaving_it_waiting(
    error: Exception, said: str
) -> None:
    class Failing(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            raise error

    body = HashingBody(Failing(), READ_AHEAD_BYTES)
    with pytest.raises(TransientUploadError, match=f"cannot be read \\({said}\\)"):
        body.read(CHUNK_SIZE)
    body.close()
    assert all(t.name != "read-ahead" for t in threading.enumerate())


def test_a_large_upload_says_when_it_starts_and_how_it_goes_at_most_every_10_s(
    tmp_path: Path, make_grant: GrantMaker, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Time is a parameter: each look at the clock moves it 4 s, so the lines' spacing is the
    agent's rule, not this machine's speed."""
    looks: list[float] = []

    def monotonic() -> float:
        looks.append(4.0 * len(looks))
        return looks[-1]

    content = os.urandom(8 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    grant = load_grant(make_grant("runs/1/"))  # the issuer's logging setup runs here
    up = Uploader(requests.Session(), monotonic=monotonic, large_bytes=1024 * 1024)
    caplog.set_level(logging.INFO, logger="agent.body")
    logging.getLogger().addHandler(caplog.handler)
    up.upload(grant, path, "runs/1/big.bin")
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.body"]
    assert lines[0] == "sending runs/1/big.bin (8.0 MiB)"
    progress = lines[1:]
    pattern = r"sending runs/1/big\.bin: \d+\.\d MiB of 8\.0 MiB \(\d+%\), "
    pattern += r"\d+\.\d MiB/s, about \d+m\d\ds left"
    assert progress and all(re.fullmatch(pattern, line) for line in progress), lines
    assert len(progress) <= looks[-1] / 10  # never two lines within 10 s of the clock
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1024)
    caplog.clear()
    up.upload(grant, small, "runs/1/small.bin")
    assert not [r for r in caplog.records if r.name == "agent.body"]  # small: silent


@pytest.mark.parametrize(("send_timeout", "attempts"), [(30.0, 1), (0.5, 2)])
def test_a_stall_while_the_body_is_sent_is_timed_by_the_send_timeout(
    tmp_path: Path,
    make_grant: GrantMaker,
    store: Store,
    s3: Any,
    bucket: str,
    send_timeout: float,
    attempts: int,
) -> None:
    """The proxy takes no byte of the body for 3 s (a congested uplink): once the socket
    buffers are full the agent's send blocks. urllib3 times that by the connect timeout (here
    1 s), which cut the attempt; it is timed by POSTBOX_SEND_TIMEOUT, so 30 s lets it finish and
    0.5 s gives it up (and the retry, not held, lands)."""
    content = os.urandom(32 * 1024 * 1024)  # far more than loopback's socket buffers
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    with fault_proxy(store.endpoint) as proxy:
        proxy.by_key = {"runs/1/big.bin": ["hold"]}
        proxy.stall_seconds = 3
        proxy.keep_bodies = False
        grant = load_grant(with_url(make_grant("runs/1/"), f"{proxy.url}/{bucket}/"))
        up = Uploader(
            new_session(1, send_timeout=send_timeout),
            timeouts=Timeouts(connect=1.0, read=60.0),
            sleep=lambda _: None,
        )
        up.upload(grant, path, "runs/1/big.bin")
    assert len(proxy.attempts("runs/1/big.bin")) == attempts
    assert objects(s3, bucket) == {"runs/1/big.bin": content}
