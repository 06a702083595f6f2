"""The policy decoder and the preflight judge, as tables."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from agent.errors import PolicyError
from agent.policy import MAX_POST_SIZE, decode_policy, violations


def encode(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


POLICY = decode_policy(
    encode(
        {
            "expiration": "2026-11-23T18:00:00Z",
            "conditions": [
                {"bucket": "b"},
                ["starts-with", "$key", "runs/1/"],
                {"success_action_status": "201"},
                ["content-length-range", 1, 100],
                {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
            ],
        }
    )
)
FORM = {
    "key": "runs/1/a.txt",
    "success_action_status": "201",
    "x-amz-algorithm": "AWS4-HMAC-SHA256",
    "policy": "…",
    "x-amz-signature": "…",
}


def test_decoded_policy_names_its_prefix_sizes_bucket_and_expiry() -> None:
    assert POLICY.key_prefix == "runs/1/"
    assert POLICY.size_range == (1, 100)
    assert POLICY.bucket == "b"
    assert POLICY.expiration == dt.datetime(2026, 11, 23, 18, tzinfo=dt.timezone.utc)


def test_size_range_never_exceeds_s3s_post_limit() -> None:
    policy = decode_policy(
        encode(
            {
                "expiration": "2026-01-01T00:00:00Z",
                "conditions": [["content-length-range", 0, 10**12]],
            }
        )
    )
    assert policy.size_range == (0, MAX_POST_SIZE)


@pytest.mark.parametrize(
    ("change", "size", "expected"),
    [
        ({}, 10, []),
        ({}, 1, []),
        ({}, 100, []),
        ({}, 0, ["size 0 is outside 1..100 bytes"]),
        ({}, 101, ["size 101 is outside 1..100 bytes"]),
        ({"key": "runs/2/a.txt"}, 10, ["key 'runs/2/a.txt' does not start with 'runs/1/'"]),
        ({"KEY": "runs/1/a"}, 10, []),  # field names compare case-insensitively
        ({"success_action_status": "200"}, 10, ["success_action_status '200' is not '201'"]),
        (
            {"x-amz-meta-extra": "1"},
            10,
            ["field 'x-amz-meta-extra' is not covered by any condition of the policy"],
        ),
        ({"x-ignore-this": "1"}, 10, []),
        (
            {"key": "runs/1/" + "k" * 1018},
            10,
            ["key is longer than 1024 bytes (S3: KeyTooLongError)"],
        ),
        ({"key": "runs/1/" + "k" * 1017}, 10, []),
    ],
)
def test_form_is_judged_as_s3_would(change: dict[str, str], size: int, expected: list[str]) -> None:
    form = {**FORM, **change}
    if "KEY" in change:
        del form["key"]
    assert violations(POLICY, form, size, bucket="b") == expected


def test_missing_required_field_and_wrong_bucket_are_named() -> None:
    form = {k: v for k, v in FORM.items() if k != "success_action_status"}
    assert violations(POLICY, form, 10, bucket="other") == [
        "bucket 'other' is not 'b'",
        "field 'success_action_status' required by the policy is missing",
    ]


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("not base64!", "not base64-encoded JSON"),
        (encode([1, 2]), "not a JSON object"),
        (encode({"conditions": []}), "no expiration"),
        (encode({"expiration": "tomorrow", "conditions": []}), "not in the form S3 reads"),
        # ISO 8601, but not the form S3 reads (RGW answers 400 to the offset; S3 wants the Z).
        (encode({"expiration": "2026-01-01T00:00:00+00:00", "conditions": []}), "form S3 reads"),
        (encode({"expiration": "2026-01-01T00:00:00", "conditions": []}), "form S3 reads"),
        (encode({"expiration": "2026-01-01 00:00:00Z", "conditions": []}), "form S3 reads"),
        (encode({"expiration": "2026-01-01T00:00:00Z"}), "no list of conditions"),
        (
            encode({"expiration": "2026-01-01T00:00:00Z", "conditions": [["in", "$key", "x"]]}),
            "unknown condition",
        ),
        (
            encode(
                {
                    "expiration": "2026-01-01T00:00:00Z",
                    "conditions": [["content-length-range", 9, 1]],
                }
            ),
            "bad content-length-range",
        ),
    ],
)
def test_unreadable_policies_are_refused_with_the_reason(encoded: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        decode_policy(encoded)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T18:00:00Z", dt.datetime(2026, 11, 24, 18, tzinfo=dt.timezone.utc)),
        (
            "2026-11-24T18:00:00.250Z",
            dt.datetime(2026, 11, 24, 18, 0, 0, 250000, tzinfo=dt.timezone.utc),
        ),
    ],
)
def test_the_expiration_forms_s3_reads_are_read(text: str, expected: dt.datetime) -> None:
    assert decode_policy(encode({"expiration": text, "conditions": []})).expiration == expected


def test_expiry_and_filename_variable_are_part_of_the_verdict() -> None:
    after = POLICY.expiration + dt.timedelta(seconds=1)
    form = {**FORM, "key": "runs/1/${filename}"}
    assert violations(POLICY, form, 10, bucket="b", now=after) == [
        "the policy expired at 2026-11-23 18:00:00 UTC",
        "key contains ${filename}, which S3 replaces with the file's name",
    ]
