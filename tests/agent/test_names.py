"""Any bytes a writer puts in a name, through the whole path: scan and events, journal, key, log.

A name that is not valid UTF-8 cannot be an S3 key (S3 keys are UTF-8) and mapping it (say,
percent-escaping) would collide with a real file of the escaped name, so it is refused: one
escaped log line, and every other file keeps flowing. The agent runs in this process
(tests/inprocess.py), on real inotify, a real journal and moto over HTTP, so hypothesis can try
many sets of names quickly.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ExitCode
from agent.grant import load_grant
from agent.shown import printable
from demo.stores import Store
from tests.agentprocess import eventually
from tests.conftest import GrantMaker, objects
from tests.inprocess import running


@pytest.fixture
def store(moto_store: Store) -> Store:
    return moto_store


def _fits(name: bytes) -> bool:
    return b"/" not in name and b"\0" not in name and name not in (b".", b"..") and len(name) < 200


names = st.one_of(
    st.text(min_size=1, max_size=30).map(os.fsencode),
    st.binary(min_size=1, max_size=30),
    st.sampled_from([b"bad\xff.bin", b"caf\xe9", b"\xc3(", b"ok\n.txt", b"a\x1b[31m"]),
).filter(_fits)
# (folder or None, name, written before the agent starts)
files = st.lists(
    st.tuples(st.none() | names, names, st.booleans()),
    min_size=1,
    max_size=6,
    unique_by=lambda f: (f[0], f[1]),
).filter(lambda fs: not {f[1] for f in fs if f[0] is None} & {f[0] for f in fs})


def sendable(relpath: bytes) -> bool:
    """The rule, stated apart from the agent's code: UTF-8, no control characters, no S3
    substitution, at most 1024 bytes with the prefix; temporary names are not sent at all."""
    try:
        text = relpath.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return (
        not any(unicodedata.category(ch) == "Cc" for ch in text)
        and "${filename}" not in text
        and len(relpath) + len(PREFIX) <= 1024
    )


def temporary(relpath: bytes) -> bool:
    return any(p.startswith(b".") or p.endswith((b".tmp", b".part")) for p in relpath.split(b"/"))


PREFIX = "names/"


def lay(watch: Path, planned: list[tuple[bytes | None, bytes, bool]], before: bool) -> None:
    for folder, name, early in planned:
        if early != before:
            continue
        base = os.fsencode(watch) + (b"/" + folder if folder else b"")
        os.makedirs(base, exist_ok=True)
        with open(base + b"/" + name, "wb") as out:
            out.write(b"content of " + (folder or b"") + b"/" + name)


@settings(
    max_examples=int(os.environ.get("NAME_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(planned=files)
def test_any_bytes_in_names_are_sent_exactly_or_refused_in_one_line_and_nothing_stops(
    planned: list[tuple[bytes | None, bytes, bool]], store: Store, s3: Any, make_grant: GrantMaker
) -> None:
    grant = make_grant(PREFIX)
    bucket = load_grant(grant).bucket
    assert bucket is not None
    with tempfile.TemporaryDirectory() as tmp:
        watch = Path(tmp) / "watch"
        watch.mkdir()
        lay(watch, planned, before=True)
        with running(watch, Path(tmp) / "state", grant, concurrency=2) as agent:
            agent.ready()
            lay(watch, planned, before=False)
            relpaths = [(f + b"/" if f else b"") + n for f, n, _ in planned]
            expected = {
                PREFIX + r.decode(): b"content of " + (f or b"") + b"/" + n
                for (f, n, _), r in zip(planned, relpaths)
                if sendable(r) and not temporary(r)
            }
            refused = [r for r in relpaths if not sendable(r) and not temporary(r)]

            def settled() -> bool:
                text = agent.text()
                return all(f"uploaded {printable(k)} (" in text for k in expected) and all(
                    f"refused {printable(os.fsdecode(r))}:" in text for r in refused
                )

            assert eventually(settled, timeout=20), agent.text()
        code = ExitCode.FILES_LEFT if refused else ExitCode.OK  # a refused name stays unsent
        assert agent.wait() == code, agent.text()
        stored = objects(s3, bucket, PREFIX)
        assert stored == expected  # each sendable name under its own key, nothing else
        lines = agent.text().splitlines()
        for r in refused:  # one line each, escaped
            shown = printable(os.fsdecode(r))
            assert sum(1 for line in lines if f"refused {shown}:" in line) == 1, lines
        for line in lines:
            assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in line), line
        s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stored] or [{"Key": "x"}]}
        )
