"""The cloud's notice that this machine is about to be taken back (`POSTBOX_PREEMPTION_WATCH`).

A spot or preemptible instance gets a short notice before it goes: two minutes on EC2, 30 s on
GCE and Azure. The watch asks the instance metadata service, on a thread of its own, and puts a
`Notice` on the agent's inbox (agent/service.py then sends what is complete at once, smallest
first, without the settle wait, and starts nothing past the deadline):

- EC2 (IMDSv2: a session token first): `spot/instance-action` (the interruption, with its time)
  and `events/recommendations/rebalance` (a raised risk: no deadline), every 5 s as AWS advises;
- GCE: `instance/preempted`, TRUE once preempted, asked with `wait_for_change` (GCE answers when
  it changes); the machine has 30 s from then;
- Azure: Scheduled Events, a `Preempt` or `Terminate` event, with its `NotBefore`.

`auto` takes the cloud from cloud-init's instance data (`v1.cloud_name`). The metadata service's
address can be set (`POSTBOX_METADATA_URL`), which the tests point at a stand-in on 127.0.0.1.
The metadata service is asked directly, never through a proxy. A service that cannot be reached
is said once, and asked again.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests

logger = logging.getLogger(__name__)

DEFAULT_URLS = {
    "ec2": "http://169.254.169.254",
    "gce": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
CLOUD_NAMES = {"aws": "ec2", "gce": "gce", "azure": "azure"}  # cloud-init's v1.cloud_name
EVERY_SECONDS = {"ec2": 5.0, "gce": 1.0, "azure": 2.0}  # between questions (GCE: after an answer)
GCE_NOTICE_SECONDS = 30.0  # a preempted GCE machine is stopped this long after the notice
TOKEN_TTL_SECONDS = 21600  # the IMDSv2 session token's lifetime asked for (the longest allowed)
TIMEOUT = (2.0, 5.0)  # connect, read: the service is on the machine's own link
GCE_WAIT_SECONDS = 60  # how long GCE may hold a wait_for_change question


@dataclass(frozen=True)
class Notice:
    """The machine will go (`final`), at `deadline` (Unix time) if the cloud says when; or, not
    final, may go soon (EC2's rebalance recommendation)."""

    cloud: str
    what: str
    deadline: Optional[float]
    final: bool = True

    def describe(self, now: float) -> str:
        if self.deadline is None:
            return f"{self.cloud} {self.what}"
        at = dt.datetime.fromtimestamp(self.deadline, dt.timezone.utc)
        return f"{self.cloud} {self.what}, the machine goes at {at:%H:%M:%S} UTC (in " + (
            f"{max(0.0, self.deadline - now):.0f} s)"
        )


def cloud_of(setting: str, instance_data: Path) -> Optional[str]:
    """The cloud to watch: the setting, or with `auto` cloud-init's word (None: off, or unknown)."""
    if setting != "auto":
        return None if setting == "off" else setting
    try:
        name = json.loads(instance_data.read_text(encoding="utf-8"))["v1"]["cloud_name"]
    except (OSError, ValueError, KeyError, TypeError):
        name = None
    cloud = CLOUD_NAMES.get(str(name).lower()) if name else None
    if cloud is None:
        logger.warning(
            "POSTBOX_PREEMPTION_WATCH=auto: cloud-init's instance data %s names no cloud with a "
            "preemption notice (%s): no watch; set ec2, gce or azure",
            instance_data,
            name or "none",
        )
    return cloud


class PreemptionWatch:
    """Asks the metadata service until the stop; each kind of notice is put once."""

    def __init__(
        self,
        cloud: str,
        base_url: Optional[str],
        put: Callable[[Notice], None],
        stopping: threading.Event,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cloud = cloud
        self.base = (base_url or DEFAULT_URLS[cloud]).rstrip("/")
        self._put, self._stopping, self._clock = put, stopping, clock
        self._session = requests.Session()
        self._session.trust_env = False  # never through a proxy: the service is link-local
        self._token: Optional[tuple[str, float]] = None  # EC2's, and when it is renewed
        self._said: set[str] = set()  # the kinds of notice put
        self._failing = False
        self._gce_etag = ""

    def start(self) -> None:
        logger.info("watching for a preemption notice from %s at %s", self.cloud, self.base)
        threading.Thread(target=self._run, name="preemption", daemon=True).start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                notices = self.ask()
            except (requests.RequestException, ValueError) as exc:
                if not self._failing:
                    logger.warning(
                        "cannot ask %s's metadata service at %s for a preemption notice (%s): "
                        "asking again",
                        self.cloud,
                        self.base,
                        exc.__class__.__name__,
                    )
                self._failing = True
                notices = []
            else:
                self._failing = False
            for notice in notices:
                if notice.what not in self._said:
                    self._said.add(notice.what)
                    self._put(notice)
            self._stopping.wait(EVERY_SECONDS[self.cloud])

    def ask(self) -> list[Notice]:
        """What the metadata service says now; RequestException or ValueError if it cannot."""
        return {"ec2": self._ec2, "gce": self._gce, "azure": self._azure}[self.cloud]()

    def _ec2(self) -> list[Notice]:
        headers = {"X-aws-ec2-metadata-token": self._ec2_token()}
        found = []
        action = self._get("/latest/meta-data/spot/instance-action", headers)
        if action is not None:
            document = json.loads(action)
            what = f"spot interruption ({document.get('action', 'terminate')})"
            found.append(Notice("EC2", what, _iso(document.get("time"))))
        if self._get("/latest/meta-data/events/recommendations/rebalance", headers) is not None:
            found.append(Notice("EC2", "rebalance recommendation", None, final=False))
        return found

    def _ec2_token(self) -> str:
        now = self._clock()
        if self._token is None or now >= self._token[1]:
            answer = self._session.put(
                f"{self.base}/latest/api/token",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
                timeout=TIMEOUT,
            )
            answer.raise_for_status()
            self._token = (answer.text, now + TOKEN_TTL_SECONDS - 60)
        return self._token[0]

    def _gce(self) -> list[Notice]:
        params = {"wait_for_change": "true", "timeout_sec": str(GCE_WAIT_SECONDS)}
        if self._gce_etag:
            params["last_etag"] = self._gce_etag
        answer = self._session.get(
            f"{self.base}/computeMetadata/v1/instance/preempted",
            headers={"Metadata-Flavor": "Google"},
            params=params if self._gce_etag else None,
            timeout=(TIMEOUT[0], GCE_WAIT_SECONDS + 10),
        )
        answer.raise_for_status()
        self._gce_etag = answer.headers.get("ETag", "")
        if answer.text.strip().upper() == "TRUE":
            return [Notice("GCE", "preemption", self._clock() + GCE_NOTICE_SECONDS)]
        return []

    def _azure(self) -> list[Notice]:
        text = self._get("/metadata/scheduledevents?api-version=2020-07-01", {"Metadata": "true"})
        events = json.loads(text or "{}").get("Events", [])
        return [
            Notice("Azure", f"{e['EventType']} event", _rfc1123(e.get("NotBefore")))
            for e in events
            if isinstance(e, dict) and e.get("EventType") in ("Preempt", "Terminate")
        ]

    def _get(self, path: str, headers: dict[str, str]) -> Optional[str]:
        """The body at `path`; None if the service says there is none (404)."""
        answer = self._session.get(f"{self.base}{path}", headers=headers, timeout=TIMEOUT)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.text


def _iso(text: object) -> Optional[float]:
    try:
        return (
            dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=dt.timezone.utc)
            .timestamp()
        )
    except ValueError:
        return None


def _rfc1123(text: object) -> Optional[float]:
    try:
        return email.utils.parsedate_to_datetime(str(text)).timestamp() if text else None
    except (TypeError, ValueError):
        return None
