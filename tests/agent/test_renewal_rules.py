"""The rules a published grant must pass to replace the current one, and when to ask. Pure."""

from __future__ import annotations

import datetime as dt
import random
import statistics
from pathlib import Path
from typing import Any

import pytest

from agent.errors import RenewalError
from agent.grant import parse_grant
from agent.renewal import MARGIN_SECONDS, due, judge, moment, retry_after, share
from tests.agent.test_grant import GOOD, SIGV4, policy

SIGNED = dt.datetime(2026, 11, 24, 18, 0, tzinfo=dt.timezone.utc)  # SIGV4's x-amz-date


def grant_doc(
    prefix: str = "p/", hours: float = 6, url: str = GOOD["url"], bucket: str = "b"
) -> dict[str, Any]:
    expiration = (SIGNED + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"bucket": bucket}, ["starts-with", "$key", prefix]]
    return {
        "url": url,
        "renew": "https://ops.s3.eu-west-1.amazonaws.com/next.json?X-Amz-Expires=600",
        "fields": {
            "key": prefix + "${filename}",
            **SIGV4,
            "policy": policy(conditions, expiration),
        },
    }


CURRENT = parse_grant(grant_doc())


FLEET = [f"i-{n:017x}" for n in range(2000)]  # instance ids, as EC2 gives them


def hours(at: dt.datetime | None, since: dt.datetime = SIGNED) -> float:
    assert at is not None
    return (at - since).total_seconds() / 3600


def test_one_instance_asks_at_the_same_moment_each_time_and_two_at_different_ones() -> None:
    first = moment(CURRENT, "i-0123456789abcdef0")
    assert first == moment(CURRENT, "i-0123456789abcdef0") == moment(CURRENT, "i-0123456789abcdef0")
    assert first != moment(CURRENT, "i-0123456789abcdef1")
    assert moment(parse_grant(GOOD), FLEET[0]) is None  # no renewal URL: never
    assert not due(parse_grant(GOOD), SIGNED + dt.timedelta(days=3650), FLEET[0])


def test_an_instance_asks_from_its_own_moment_on() -> None:
    at = moment(CURRENT, FLEET[0])
    assert at is not None
    assert not due(CURRENT, at - dt.timedelta(seconds=1), FLEET[0])
    assert due(CURRENT, at, FLEET[0]) and due(CURRENT, at + dt.timedelta(days=1), FLEET[0])


@pytest.mark.parametrize(
    ("life_hours", "window"),
    [
        (6, (3.0, 4.8)),  # half to four fifths of the life
        (0.25, (0.125, 0.25 - MARGIN_SECONDS / 3600)),  # ... ending 5 min before the expiry
        (1 / 6, (1 / 12, 1 / 12)),  # too short for both: half-way, as before
        (24 * 7, (84.0, 134.4)),
    ],
)
def test_a_fleets_moments_are_spread_over_the_window_of_the_grants_life(
    life_hours: float, window: tuple[float, float]
) -> None:
    """2000 instances on one grant: every moment in the window, and none of its tenths holds
    more than 1.5 times its share of them (a lockstep would put them all in one)."""
    grant = parse_grant(grant_doc(hours=life_hours))
    moments = [hours(moment(grant, name)) for name in FLEET]
    low, high = window
    assert all(low - 1e-6 <= at <= high + 1e-6 for at in moments)
    if high > low:
        tenths = [min(9, int(10 * (at - low) / (high - low))) for at in moments]
        assert max(tenths.count(t) for t in range(10)) < 1.5 * len(FLEET) / 10
        assert min(tenths.count(t) for t in range(10)) > 0.5 * len(FLEET) / 10


def test_a_grant_that_says_no_signing_time_is_asked_for_from_an_hour_before_its_expiry() -> None:
    document = grant_doc()
    for name in SIGV4:  # a SigV2 form: no x-amz-date
        del document["fields"][name]
    document["fields"].update(AWSAccessKeyId="AKIAEXAMPLE", signature="c2lnbmF0dXJl")
    grant = parse_grant(document)
    left = [hours(grant.expiration, moment(grant, name)) * 60 for name in FLEET[:200]]
    assert all(24 - 1e-6 <= minutes <= 60 + 1e-6 for minutes in left)


def test_the_share_of_an_identity_is_stable_and_evenly_spread() -> None:
    assert share("i-0123456789abcdef0") == share("i-0123456789abcdef0")
    shares = [share(name) for name in FLEET]
    assert all(0 <= x < 1 for x in shares) and len(set(shares)) == len(FLEET)
    assert abs(statistics.mean(shares) - 0.5) < 0.03
    assert 0 <= share("") < 1 and 0 <= share("\udcff") < 1  # any name, even undecodable


def test_the_wait_between_questions_is_drawn_anew_between_half_and_one_and_a_half() -> None:
    draw = random.Random(31).uniform
    waits = [retry_after(60, draw) for _ in range(1000)]
    assert all(30 <= wait <= 90 for wait in waits)
    assert min(waits) < 35 and max(waits) > 85  # spread over the whole range...
    assert len({round(wait, 3) for wait in waits}) > 900  # ... not a few fixed steps
    assert retry_after(60, lambda low, high: low) == 30
    assert retry_after(60, lambda low, high: high) == 90
    assert retry_after(60, lambda low, high: 7.0) == 90  # a source out of bounds is bounded


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (grant_doc(), "no newer grant is published yet (the same one)"),
        (grant_doc(hours=5), "no later than the current one: not newer"),
        (grant_doc("q/", 12), "prefix 'q/' is not within 'p/': refused"),
        (grant_doc("", 12), "prefix '' is not within 'p/': refused"),  # the whole bucket
        (
            grant_doc(hours=12, url="https://b.s3.example.net/"),
            "is for https://b.s3.example.net bucket 'b', not https://b.s3.eu-west-1",
        ),
        (
            grant_doc(hours=12, url="https://c.s3.eu-west-1.amazonaws.com/", bucket="c"),
            "bucket 'c'",
        ),
        ({"url": "x"}, "the published grant is refused: grant file"),
    ],
)
def test_a_published_grant_that_may_not_replace_the_current_is_refused(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(RenewalError) as caught:
        judge(CURRENT, document, Path("grant.json"))
    assert message in str(caught.value)


def test_a_narrower_prefix_is_taken_and_a_wider_one_only_when_allowed() -> None:
    assert judge(CURRENT, grant_doc("p/q/", 12), Path("g")).prefix == "p/q/"
    assert judge(CURRENT, grant_doc("other/", 12), Path("g"), may_widen=True).prefix == "other/"
