"""The rules a published grant must pass to replace the current one, and when to ask. Pure."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from agent.errors import RenewalError
from agent.grant import parse_grant
from agent.renewal import due, judge
from tests.agent.test_grant import GOOD, SIGV4, policy

SIGNED = dt.datetime(2026, 11, 24, 18, 0, tzinfo=dt.timezone.utc)  # SIGV4's x-amz-date


def grant_doc(
    prefix: str = "p/", hours: int = 6, url: str = GOOD["url"], bucket: str = "b"
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


def test_the_next_grant_is_asked_for_from_half_way_through_the_life_of_the_current() -> None:
    assert not due(CURRENT, SIGNED + dt.timedelta(hours=2, minutes=59))
    assert due(CURRENT, SIGNED + dt.timedelta(hours=3))
    assert not due(parse_grant(GOOD), SIGNED + dt.timedelta(days=3650))  # no renewal URL


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
