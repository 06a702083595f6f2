"""Property tests: whatever a grant file, a file name or the metadata service's answer holds, the
agent answers with a value or its own clean refusal, never an exception that would end the daemon
(or one of its threads)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import unicodedata
from pathlib import PurePosixPath

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import PolicyError, PreflightError
from agent.heard import azure_events, ec2_action, gce_preempted
from agent.keys import object_key
from agent.policy import MAX_KEY_BYTES, decode_policy, violations
from agent.shown import printable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
conditions = st.lists(
    st.one_of(
        json_values,
        st.tuples(st.sampled_from(["eq", "starts-with"]), st.text(), st.text()).map(list),
        st.tuples(st.just("content-length-range"), json_values, json_values).map(list),
        st.dictionaries(st.text(), st.text() | st.integers(), min_size=1, max_size=1),
    ),
    max_size=6,
)
documents = st.fixed_dictionaries(
    {"expiration": st.one_of(st.text(), st.just("2026-11-23T18:00:00Z"), json_values)},
    optional={"conditions": conditions},
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_policy_or_a_policy_error(raw: bytes) -> None:
    with contextlib.suppress(PolicyError):
        decode_policy(base64.b64encode(raw).decode())


@settings(max_examples=300, deadline=None)
@given(documents, st.dictionaries(st.text(), st.text(), max_size=5), st.integers(-10, 10**12))
def test_any_policy_document_is_judged_or_refused(
    document: dict[str, object], form: dict[str, str], size: int
) -> None:
    try:
        policy = decode_policy(base64.b64encode(json.dumps(document).encode()).decode())
    except PolicyError:
        return
    found = violations(policy, form, size)
    assert all(isinstance(line, str) and "\n" not in line for line in found) or found == []


name_parts = st.one_of(
    st.text(min_size=1, max_size=40),
    st.binary(min_size=1, max_size=40).map(os.fsdecode),  # undecodable bytes, as the OS hands them
).filter(lambda part: "/" not in part and part not in (".", ".."))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30), st.lists(name_parts, min_size=1, max_size=8))
def test_any_path_maps_to_a_valid_key_or_a_clean_refusal(prefix: str, parts: list[str]) -> None:
    try:
        key = object_key(prefix, PurePosixPath(*parts))
    except PreflightError as refusal:
        assert "\n" not in refusal.message  # noqa: PT017  (a property, not one expected raise)
        return
    encoded = key.encode("utf-8")  # a key is valid UTF-8...
    assert len(encoded) <= MAX_KEY_BYTES  # ...of at most 1024 bytes...
    assert not any(unicodedata.category(ch) == "Cc" for ch in key)  # ...with no control chars
    assert key == prefix + "/".join(parts)  # ...and is the path itself, never rewritten


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary().map(os.fsdecode))
def test_printable_never_lets_a_control_character_through(text: str) -> None:
    shown = printable(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in shown)
    shown.encode("utf-8")  # and it can be written to any log


metadata_answers = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(
        st.sampled_from(["action", "time", "Events", "EventType", "NotBefore"]),
        json_values
        | st.lists(st.dictionaries(st.sampled_from(["EventType", "NotBefore"]), json_values)),
    ).map(lambda value: json.dumps(value).encode()),
)


@settings(max_examples=300, deadline=None)
@given(metadata_answers)
def test_any_metadata_answer_is_read_or_refused_in_one_line(body: bytes) -> None:
    for read in (ec2_action, gce_preempted, azure_events):
        try:
            read(body)
        except ValueError as refusal:
            assert "\n" not in str(refusal) and len(str(refusal)) < 120  # noqa: PT017
