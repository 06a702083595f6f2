"""What the preemption watch (agent/notice.py) hears, pure: each cloud's answer read by a total
function of its bytes (`ec2_action`, `gce_preempted`, `azure_events`) into a `Notice`, or a
ValueError saying what is wrong with it, whatever the service sends; and the `Board`, which says
what to put on the agent's inbox: a notice new, or one the service gives no longer (`Withdrawn`:
each cloud's way of calling a stop off), a rebalance recommendation once a run. No thread,
socket or clock: the tests feed them bytes.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
from typing import Any, Optional, Union

from agent.messages import Notice, Withdrawn
from agent.rules import Once
from agent.shown import printable

_WORD = re.compile(r"[A-Za-z_-]{1,32}")  # EC2's action: hibernate, stop or terminate


Heard = Union[Notice, Withdrawn]


# What each answer means: total functions of its bytes, ValueError saying what is wrong.
def ec2_action(body: bytes) -> Notice:
    """EC2's `spot/instance-action`: {"action": "terminate", "time": "2026-11-24T18:02:00Z"}."""
    document = _json_object(body)
    action = document.get("action", "terminate")
    if not isinstance(action, str) or not _WORD.fullmatch(action):
        raise ValueError(f"names the action {shown(action)}, not a word such as terminate")
    return Notice("EC2", f"spot interruption ({action})", _iso(document.get("time")))


def gce_preempted(body: bytes) -> bool:
    """GCE's `instance/preempted`: TRUE or FALSE."""
    word = body.strip()
    if word not in (b"TRUE", b"FALSE"):
        raise ValueError(f"is {shown(word)}, not TRUE or FALSE")
    return word == b"TRUE"


def azure_events(body: bytes) -> list[Notice]:
    """Azure's Scheduled Events: {"Events": [{"EventType": "Preempt", "NotBefore": ...}, ...]};
    the events that end the machine (a `Freeze` or `Reboot` is a pause, not the end)."""
    events = _json_object(body).get("Events")
    if not isinstance(events, list):
        raise ValueError(f"holds Events that are {shown(events)}, not a list")
    if not all(isinstance(event, dict) for event in events):
        raise ValueError("holds an event that is not a JSON object")
    return [
        Notice("Azure", f"{event['EventType']} event", _rfc1123(event.get("NotBefore")))
        for event in events
        if event.get("EventType") in ("Preempt", "Terminate")
    ]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past Python's stack
        raise ValueError("is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError(f"is not a JSON object but {shown(document)}")
    return document


def shown(value: object) -> str:
    """What a value is, for a log line: short, printable, never the whole of a large answer."""
    if isinstance(value, (str, bytes)):
        text = value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")
        return repr(printable(text[:40]) + ("..." if len(text) > 40 else ""))
    kinds = {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _iso(text: object) -> Optional[float]:
    if not isinstance(text, str):
        return None
    try:
        at = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        return at.replace(tzinfo=dt.timezone.utc).timestamp()
    except (ValueError, OverflowError):
        return None


def _rfc1123(text: object) -> Optional[float]:
    if not isinstance(text, str) or not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


class Board:
    """What the watch has put: each kind of notice once; a final one withdrawn when the endpoint
    that gave it answers without it (how each cloud calls a stop off); a notice that is not final
    (a rebalance recommendation) said once a run. Pure: fed what each endpoint says."""

    def __init__(self) -> None:
        self._in_force: dict[str, dict[str, Notice]] = {}  # by endpoint, by what
        self._said = Once()  # the kinds put and not withdrawn

    def heard(self, endpoint: str, found: list[Notice]) -> list[Heard]:
        """What to put, now that `endpoint` gave `found`: the new notices, then those it gives
        no longer (so one kind replacing another never leaves the agent without a notice)."""
        in_force = self._in_force.setdefault(endpoint, {})
        new: list[Heard] = []
        for notice in found:
            if self._said.first(notice.what):
                if notice.final:
                    in_force[notice.what] = notice
                new.append(notice)
        now = {notice.what for notice in found}
        for what in [what for what in in_force if what not in now]:
            self._said.forget(what)
            new.append(Withdrawn(in_force.pop(what)))
        return new
