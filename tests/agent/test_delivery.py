"""One file's delivery, and the retry rules, against a store the test scripts (the fast tier:
tests/mocktransport.py, no server). The same rules are held against moto and Ceph RGW in
test_service.py, test_faults.py and test_uploader.py; here each is one table row, in
milliseconds, with time a parameter (`sleep=waits.append`, a clock the test moves)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import pytest
import requests

from agent.commits import COMMIT_GAP
from agent.deadline import Deadline
from agent.delivery import Delivery
from agent.grant import AnyGrant, parse_grant
from agent.journal import Journal
from agent.outcome import Job, Outcome, Result
from agent.settings import Settings
from agent.uploader import Piece, Uploader
from agent.versions import FileVersion
from tests.mocktransport import Answer, Handler, MockTransport, Sent, error, post_response, session
from tests.signing import expiration, sign_v4

URL = "http://127.0.0.1:9/fast/"  # never dialled: the transport answers
SLOW = error(503, "SlowDown", "Please reduce your request rate.")
DENIED = error(403, "AccessDenied", "Invalid according to Policy: Policy Condition failed")
RESET = requests.ConnectionError("reset by peer")


def grant(minutes: float = 30, max_size: int = 1024**2) -> AnyGrant:
    document = {
        "expiration": expiration(minutes),
        "conditions": [
            {"bucket": "fast"},
            ["starts-with", "$key", "runs/1/"],
            {"success_action_status": "201"},
            ["content-length-range", 0, max_size],
        ],
    }
    store = SimpleNamespace(access_key="AKIDFAST", secret_key="secret", region="us-east-1")
    fields = {"key": "runs/1/${filename}", "success_action_status": "201"}
    return parse_grant({"url": URL, "fields": {**fields, **sign_v4(store, document)}})


def stored(sent: Sent) -> Answer:
    """What a good store answers: the key it kept and the MD5 of what it received."""
    return post_response(sent.field("key") or "", hashlib.md5(sent.file()).hexdigest())


def script(*answers: Answer | Exception) -> Handler:
    """Answer the requests in turn; then store every one after them."""
    left = list(answers)
    return lambda sent: left.pop(0) if left else stored(sent)


class Fixture:
    def __init__(
        self,
        tmp_path: Path,
        handler: Handler,
        uploading: Optional[dict[str, Any]] = None,
        **settings: object,
    ) -> None:
        self.watch = tmp_path / "watch"
        self.watch.mkdir(parents=True)
        self.settings = Settings(
            watch_dir=self.watch,
            state_dir=tmp_path / "state",
            **settings,
        )
        self.transport = MockTransport(handler)
        self.waits: list[float] = []
        self.grant = grant()
        self.left: Optional[Callable[[], float]] = None  # seconds to expiry, if the test moves it
        clock = lambda: self.grant.expiration - dt.timedelta(seconds=self._left())  # noqa: E731
        self.uploader = Uploader(
            session(self.transport), deadline=Deadline(clock), sleep=self.waits.append,
            root=self.watch, **(uploading or {}),
        )  # fmt: skip
        self.journal = Journal(self.settings.journal_path)
        self.delivery = Delivery(self.settings, self.uploader, self.journal)

    def _left(self) -> float:
        return self.left() if self.left is not None else 1800.0

    def deliver(self, name: str, content: bytes, **job: object) -> Outcome:
        path = self.watch / name
        path.write_bytes(content)
        return self.delivery.deliver(Job(path, name, f"runs/1/{name}", self.grant, **job))


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Fixture]:
    made: list[Fixture] = []

    def build(
        handler: Handler, uploading: Optional[dict[str, Any]] = None, **settings: object
    ) -> Fixture:
        made.append(Fixture(tmp_path / str(len(made)), handler, uploading, **settings))
        return made[-1]

    yield build
    for fixture in made:
        fixture.journal.close()


@pytest.mark.parametrize(
    ("answers", "result", "posts"),
    [
        ((), Result.SENT, 1),
        ((SLOW, SLOW), Result.SENT, 3),
        ((RESET,), Result.SENT, 2),
        ((error(500, "InternalError", "oops"),), Result.SENT, 2),
        ((error(400, "RequestTimeout", "too slow"),), Result.SENT, 2),
        ((DENIED,), Result.REFUSED, 1),
        ((error(400, "EntityTooLarge", "too large"),), Result.REFUSED, 1),
        ((error(307, "TemporaryRedirect", "elsewhere"),), Result.REFUSED, 1),
    ],
    ids=["stored", "slowdown-twice", "reset", "500", "request-timeout", "403", "400", "307"],
)
def test_what_the_store_answers_decides_the_files_outcome(
    make: Callable[..., Fixture],
    answers: tuple[Answer | Exception, ...],
    result: Result,
    posts: int,
) -> None:
    f = make(script(*answers))
    outcome = f.deliver("a.csv", b"1,2\n")
    assert outcome.result is result, outcome.reason
    assert len(f.transport.sent) == posts
    assert f.journal.is_sent("a.csv", outcome.version) is (result is Result.SENT)
    assert (f.watch / "a.csv").read_bytes() == b"1,2\n"  # keep: left in place either way


def test_retries_wait_a_random_time_within_a_doubling_window(
    make: Callable[..., Fixture],
) -> None:
    f = make(script(SLOW, SLOW, SLOW))
    assert f.deliver("a.csv", b"x").result is Result.SENT
    assert len(f.waits) == 3
    for wait, window in zip(f.waits, (1, 2, 4)):  # full jitter
        assert 0 <= wait <= window


@pytest.mark.parametrize(
    ("headers", "waited"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "Fri, 04 Dec 2026 12:00:05 GMT", "Date": "Fri, 04 Dec 2026 12:00:00 GMT"},
         5.0),
    ],
    ids=["seconds", "http-date"],
)  # fmt: skip
def test_a_retry_after_is_waited_for(
    make: Callable[..., Fixture], headers: dict[str, str], waited: float
) -> None:
    """The store's own word, in seconds or as a date read against the answer's Date (no clock
    of this machine's enters): the wait is at least that long, jitter or not."""
    status, base, body = SLOW
    f = make(script((status, {**base, **headers}, body)))
    assert f.deliver("a.csv", b"x").result is Result.SENT
    assert f.waits == [waited]


def test_a_retry_after_beyond_the_grants_time_ends_the_retries(
    make: Callable[..., Fixture],
) -> None:
    status, base, body = SLOW
    f = make(script((status, {**base, "Retry-After": "3600"}, body)))  # 1800 s left
    outcome = f.deliver("a.csv", b"x")
    assert outcome.result is Result.FAILED and len(f.transport.sent) == 1 and f.waits == []


def test_no_attempt_starts_that_would_begin_after_the_deadline(
    make: Callable[..., Fixture],
) -> None:
    """2.5 s left on a clock only the backoff moves, a store that never recovers: attempts go on
    while the waits fit, none starts after the deadline, and the file waits for a new grant,
    failed under this one."""
    f = make(lambda sent: SLOW)
    f.left = lambda: 2.5 - sum(f.waits)
    outcome = f.deliver("a.csv", b"x")
    assert outcome.result is Result.FAILED
    assert sum(f.waits) <= 2.5 and len(f.transport.sent) == len(f.waits) + 1
    assert "503 SlowDown" in outcome.reason and "left in place" in outcome.reason


def test_an_etag_that_is_not_the_md5_sent_is_retried_not_recorded(
    make: Callable[..., Fixture],
) -> None:
    """A store that kept other bytes than those sent (a proxy that altered the body): the
    upload is not recorded as done, and is sent again."""
    f = make(script(post_response("runs/1/a.csv", "0" * 32)))
    outcome = f.deliver("a.csv", b"x")
    assert outcome.result is Result.SENT and len(f.transport.sent) == 2
    assert outcome.version is not None
    assert f.journal.is_sent("a.csv", outcome.version)


def test_a_refusal_is_kept_and_not_tried_again_under_the_same_grant(
    make: Callable[..., Fixture],
) -> None:
    f = make(script(DENIED))
    assert f.deliver("a.csv", b"x").result is Result.REFUSED
    path = f.watch / "a.csv"
    again = f.delivery.deliver(Job(path, "a.csv", "runs/1/a.csv", f.grant))
    assert again.result is Result.REFUSED and "refused under this grant" in again.reason
    assert len(f.transport.sent) == 1  # the second delivery asked nobody


def test_a_file_is_deleted_only_once_stored_and_journaled(
    make: Callable[..., Fixture],
) -> None:
    f = make(script(SLOW), after_upload="delete")
    outcome = f.deliver("a.csv", b"x", close_seen=True)
    assert outcome.result is Result.SENT
    assert not (f.watch / "a.csv").exists()
    assert outcome.version is not None and f.journal.is_sent("a.csv", outcome.version)
    refused = make(script(DENIED), after_upload="delete")
    assert refused.deliver("b.csv", b"y", close_seen=True).result is Result.REFUSED
    assert (refused.watch / "b.csv").read_bytes() == b"y"


def test_a_file_over_the_grants_size_is_refused_before_a_byte_is_sent(
    make: Callable[..., Fixture],
) -> None:
    f = make(script())
    f.grant = grant(max_size=10)
    outcome = f.deliver("big.bin", b"x" * 11)
    assert outcome.result is Result.REFUSED
    assert "size 11 is outside 0..10 bytes" in outcome.reason
    assert f.transport.sent == []


def test_a_file_moved_in_while_a_writer_holds_it_waits_for_its_close(
    make: Callable[..., Fixture],
) -> None:
    """The kernel's read lease says whether any process holds it open for writing (this test
    owns the file, so the kernel tells it; the unit gives the agent CAP_LEASE for others')."""
    f = make(script())
    path = f.watch / "live.log"
    with path.open("wb") as writer:
        writer.write(b"half")
        writer.flush()
        held = f.delivery.deliver(Job(path, "live.log", "runs/1/live.log", f.grant, moved_in=True))
        assert held.result is Result.HELD and f.transport.sent == []
    done = f.delivery.deliver(Job(path, "live.log", "runs/1/live.log", f.grant, moved_in=True))
    assert done.result is Result.SENT and f.transport.sent[0].file() == b"half"


MiB = 1024**2
IN_PARTS = {"split_bytes": 5 * MiB, "part_bytes": 5 * MiB}


def test_a_large_file_sent_in_parts_says_when_it_starts_and_how_it_goes_as_a_whole(
    make: Callable[..., Fixture], caplog: pytest.LogCaptureFixture
) -> None:
    """As a large file sent whole does: a line as it starts (key, size, parts), then at most
    every 10 s how much of the whole file is sent, its rate and the time left. Its parts, four
    at once, are each an upload of its own: they say nothing of themselves. Time is a
    parameter: each look at the clock moves it 4 s."""
    looks: list[float] = []

    def monotonic() -> float:
        looks.append(4.0 * len(looks))
        return looks[-1]

    uploading = {"monotonic": monotonic, "large_bytes": MiB}
    f = make(script(), uploading, **IN_PARTS)
    f.grant = grant(max_size=64 * MiB)
    caplog.set_level(logging.INFO, logger="agent.body")
    assert f.deliver("big.bin", bytes(23 * MiB)).result is Result.SENT
    assert len(f.transport.sent) == 6  # five parts and the manifest
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.body"]
    assert lines[0] == "sending runs/1/big.bin (23.0 MiB in 5 parts)"
    progress = lines[1:]
    pattern = r"sending runs/1/big\.bin: \d+\.\d MiB of 23\.0 MiB \(\d+%\), "
    pattern += r"\d+\.\d MiB/s, about \d+m\d\ds left"
    assert progress and all(re.fullmatch(pattern, line) for line in progress), lines
    assert len(progress) <= looks[-1] / 10  # never two lines within 10 s of the clock


def test_a_part_sent_again_counts_once_in_its_files_progress(
    make: Callable[..., Fixture],
) -> None:
    """The connection drops once the part is sent; the retry sends it again. The file's lines
    count its bytes once, not once per attempt (they would say it was done while its last
    part was still going)."""
    f = make(script(RESET))
    f.grant = grant(max_size=64 * MiB)
    path = f.watch / "big.bin"
    path.write_bytes(bytes(2 * MiB))
    version = FileVersion.at(path)
    assert version is not None
    whole = f.uploader.progress("runs/1/big.bin", 4 * MiB)
    piece = Piece(0, 2 * MiB, version, whole)
    f.uploader.upload(f.grant, path, "runs/1/.postbox-parts/big.bin/v/00001", piece)
    assert len(f.transport.sent) == 2 and f.transport.sent[0].file() == bytes(2 * MiB)
    assert whole.done == 2 * MiB


@pytest.mark.parametrize(("left", "posts"), [(29.0, 0), (31.0, 1)])
def test_no_upload_starts_within_the_expiry_margin_a_first_one_neither(
    make: Callable[..., Fixture], left: float, posts: int
) -> None:
    """POSTBOX_EXPIRY_MARGIN_SECONDS (30 s): an upload begun later could not finish in time,
    first attempt or retry; the file waits for a new grant."""
    f = make(script())
    f.uploader.deadline.margin = Settings.model_fields["expiry_margin_seconds"].default
    f.left = lambda: left
    outcome = f.deliver("a.csv", b"x")
    assert len(f.transport.sent) == posts
    assert outcome.result is (Result.FAILED if posts == 0 else Result.SENT), outcome.reason


def test_two_versions_of_one_file_reach_the_store_a_second_apart_and_other_files_never_wait(
    make: Callable[..., Fixture],
) -> None:
    """S3 dates an object to the second and `assemble` keeps the version of a file the store
    took last, so the agent never stores two versions of one file within COMMIT_GAP of each
    other (here the clock stands still: the rewrite waits the whole gap; another file, and the
    same file once the clock has moved on, do not wait)."""
    f = make(script())
    now = [100.0]
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    f.delivery = Delivery(f.settings, f.uploader, f.journal, monotonic=lambda: now[0], sleep=sleep)
    assert f.deliver("a.csv", b"1\n").result is Result.SENT
    assert f.deliver("b.csv", b"1\n").result is Result.SENT
    assert waited == []
    assert f.deliver("a.csv", b"2,2\n").result is Result.SENT  # rewritten at once
    assert waited == [pytest.approx(COMMIT_GAP)] and COMMIT_GAP > 1
    now[0] += COMMIT_GAP
    assert f.deliver("a.csv", b"3,3,3\n").result is Result.SENT
    assert len(waited) == 1 and len(f.transport.sent) == 4


def test_the_manifest_keeps_what_encrypts_the_file_and_never_an_sse_c_customer_key(
    make: Callable[..., Fixture],
) -> None:
    """A hand-written grant with SSE-C fields (the customer's key is a secret) and SSE-KMS's:
    the manifest, stored in the bucket for anyone who may read it, records the KMS fields a
    joined object must keep, and neither the customer key nor its MD5."""
    secret = base64.b64encode(bytes(range(32))).decode()
    sse = {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "alias/results",
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
        "x-amz-server-side-encryption-customer-key": secret,
        "x-amz-server-side-encryption-customer-key-md5": "bWQ1",
    }
    document = {
        "expiration": expiration(30),
        "conditions": [
            {"bucket": "fast"}, ["starts-with", "$key", "runs/1/"],
            {"success_action_status": "201"}, ["content-length-range", 0, 64 * MiB],
            *({name: value} for name, value in sse.items()),
        ],
    }  # fmt: skip
    store = SimpleNamespace(access_key="AKIDFAST", secret_key="secret", region="us-east-1")
    fields = {"key": "runs/1/${filename}", "success_action_status": "201", **sse}
    f = make(script(), **IN_PARTS)
    f.grant = parse_grant({"url": URL, "fields": {**fields, **sign_v4(store, document)}})
    assert f.deliver("big.bin", bytes(12 * MiB)).result is Result.SENT
    manifest = json.loads(f.transport.sent[-1].file())
    assert manifest["encryption"] == {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "alias/results",
    }
    assert secret not in f.transport.sent[-1].file().decode()


@pytest.mark.parametrize("open_for", [2, 5])
def test_no_part_and_no_manifest_starts_once_the_time_to_start_is_past(
    make: Callable[..., Fixture], caplog: pytest.LogCaptureFixture, open_for: int
) -> None:
    """A preemption deadline (or the end of a stop's drain) comes while a file goes in parts:
    the parts under way finish, no other part begins, nor the manifest; the file is left for
    the next start with what it has stored (parts 4 to 10 and the manifest used to begin after
    "preemption deadline passed"). Time is whatever `may_start` says: here, open for the
    first `open_for` asks (5: every part, then the manifest is refused)."""
    f = make(script(), part_streams=1, **IN_PARTS)
    f.grant = grant(max_size=64 * MiB)
    asked: list[bool] = []

    def may_start() -> bool:
        asked.append(len(asked) < open_for)
        return asked[-1]

    f.delivery = Delivery(f.settings, f.uploader, f.journal, may_start=may_start)
    caplog.set_level(logging.INFO, logger="agent.delivery")
    outcome = f.deliver("big.bin", bytes(23 * MiB))
    assert outcome.result is Result.CUT
    forms = [sent.field("key") or "" for sent in f.transport.sent]
    assert len(forms) == open_for and not any(k.endswith("manifest.json") for k in forms)
    assert f"big.bin has {open_for} of 5 parts stored; what is left of it goes at the next " \
        "start, its manifest last" in caplog.text  # fmt: skip
    assert not f.journal.is_sent("big.bin", outcome.version)
