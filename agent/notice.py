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

A notice the service gives no longer (EC2's item 404 again, GCE's FALSE again, Azure's event gone
from the list: each cloud's way of calling a stop off) is put as `Withdrawn`, and the agent goes
back to uploading as before; a rebalance recommendation is said once a run. Each answer is read by
a total function of its bytes (agent/heard.py, beside the `Board` that says what is new):
whatever the service sends, an answer that cannot be read is said once (until one can be again),
changes nothing, and the watch asks again; a bug in the watch is logged once with its traceback,
and the watch goes on.

`auto` takes the cloud from cloud-init's instance data (`v1.cloud_name`). The metadata service's
address can be set (`POSTBOX_METADATA_URL`), which the tests point at a stand-in on 127.0.0.1.
The metadata service is asked directly, never through a proxy. A service that cannot be reached
is said once, and asked again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TypeVar

import requests

from agent.errors import MetadataError
from agent.heard import (
    Board,
    Heard,
    azure_events,
    ec2_action,
    gce_preempted,
    shown,
)
from agent.messages import Notice, Withdrawn

# Notice and Withdrawn live in agent/messages.py, Heard in agent/heard.py.
__all__ = ["Heard", "Notice", "PreemptionWatch", "Withdrawn", "cloud_of"]

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
MAX_ANSWER_BYTES = 64 * 1024  # a notice is a few hundred bytes; more is not one

SESSION = "/latest/api/token"  # IMDSv2's
ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
PREEMPTED = "/computeMetadata/v1/instance/preempted"
EVENTS = "/metadata/scheduledevents"
EVENTS_VERSION = {"api-version": "2020-07-01"}

_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,1024}")  # a token or an ETag, sent back as it came
_Read = TypeVar("_Read")


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
    """Asks the metadata service until the stop; puts what `Board` says is new."""

    def __init__(
        self,
        cloud: str,
        base_url: Optional[str],
        put: Callable[[Heard], None],
        stopping: threading.Event,
        *,
        clock: Callable[[], float] = time.time,
        wait: Optional[Callable[[float], object]] = None,
    ) -> None:
        self.cloud = cloud
        self.base = (base_url or DEFAULT_URLS[cloud]).rstrip("/")
        self.every = EVERY_SECONDS[cloud]
        self._put, self._stopping, self._clock = put, stopping, clock
        self._wait = wait or stopping.wait  # between questions: the tests pass their own
        self._session = requests.Session()
        self._session.trust_env = False  # never through a proxy: the service is link-local
        self._token: Optional[tuple[str, float]] = None  # EC2's, and when it is renewed
        self._board = Board()
        self._unread: dict[str, str] = {}  # endpoint: the URL that could not be read, said once
        self._broken = False  # a bug was logged, and no question has gone right since
        self._gce_etag = ""

    def start(self) -> None:
        logger.info("watching for a preemption notice from %s at %s", self.cloud, self.base)
        threading.Thread(target=self.run, name="preemption", daemon=True).start()

    def run(self) -> None:
        """Ask until the stop (`start` runs this on a thread of its own)."""
        while not self._stopping.is_set():
            try:
                self.poll()
            except Exception:  # a bug: said once, with its traceback; the watch goes on
                if not self._broken:
                    logger.exception(
                        "the preemption watch failed unexpectedly (a bug, please report it): "
                        "it asks again every %g s",
                        self.every,
                    )
                self._broken = True
            else:
                self._broken = False
            self._wait(self.every)

    def poll(self) -> None:
        """Ask each endpoint once and put what is new. An answer that cannot be read is said
        once (until that endpoint is read again) and changes nothing: it withdraws no notice."""
        for endpoint, read in self._endpoints():
            try:
                found = read()
            except MetadataError as exc:
                if exc.endpoint not in self._unread.values():
                    logger.warning(
                        "cannot read %s's preemption notice at %s (%s): asking again every %g s",
                        self.cloud,
                        exc.endpoint,
                        exc.message,
                        self.every,
                    )
                self._unread[endpoint] = exc.endpoint
                continue
            self._unread.pop(endpoint, None)
            for heard in self._board.heard(endpoint, found):
                self._put(heard)

    def ask(self) -> list[Notice]:
        """What the metadata service says now; MetadataError if an answer cannot be read."""
        return [notice for _, read in self._endpoints() for notice in read()]

    def _endpoints(self) -> list[tuple[str, Callable[[], list[Notice]]]]:
        return {
            "ec2": [(ACTION, self._ec2_action), (REBALANCE, self._ec2_rebalance)],
            "gce": [(PREEMPTED, self._gce)],
            "azure": [(EVENTS, self._azure)],
        }[self.cloud]

    def _ec2_action(self) -> list[Notice]:
        body = self._ec2_item(ACTION)
        return [] if body is None else [self._read(ACTION, ec2_action, body)]

    def _ec2_rebalance(self) -> list[Notice]:
        if self._ec2_item(REBALANCE) is None:  # its body (a time) changes nothing
            return []
        return [Notice("EC2", "rebalance recommendation", None, final=False)]

    def _ec2_item(self, path: str) -> Optional[bytes]:
        """An item of EC2's metadata; None if EC2 has none now (404)."""
        status, body, _ = self._ask(path, {"X-aws-ec2-metadata-token": self._ec2_token()})
        if status == 404:
            return None
        if status == 401:  # the token is no longer taken: ask for a new one next time
            self._token = None
        self._expect_200(path, status)
        return body

    def _ec2_token(self) -> str:
        now = self._clock()
        if self._token is None or now >= self._token[1]:
            headers = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)}
            status, body, _ = self._ask(SESSION, headers, method="PUT")
            self._expect_200(SESSION, status)
            token = body.decode("ascii", "replace")
            if not _HEADER_VALUE.fullmatch(token):
                raise MetadataError(self.base + SESSION, f"the token is {shown(body)}")
            self._token = (token, now + TOKEN_TTL_SECONDS - 60)
        return self._token[0]

    def _gce(self) -> list[Notice]:
        params = {"wait_for_change": "true", "timeout_sec": str(GCE_WAIT_SECONDS)}
        if self._gce_etag:
            params["last_etag"] = self._gce_etag
        status, body, etag = self._ask(
            PREEMPTED,
            {"Metadata-Flavor": "Google"},
            params=params if self._gce_etag else None,
            timeout=(TIMEOUT[0], GCE_WAIT_SECONDS + 10),
        )
        self._expect_200(PREEMPTED, status)
        preempted = self._read(PREEMPTED, gce_preempted, body)
        self._gce_etag = etag if _HEADER_VALUE.fullmatch(etag) else ""  # none: asked each 1 s
        if not preempted:
            return []
        return [Notice("GCE", "preemption", self._clock() + GCE_NOTICE_SECONDS)]

    def _azure(self) -> list[Notice]:
        status, body, _ = self._ask(EVENTS, {"Metadata": "true"}, params=EVENTS_VERSION)
        self._expect_200(EVENTS, status)
        return self._read(EVENTS, azure_events, body)

    def _ask(
        self,
        path: str,
        headers: dict[str, str],
        *,
        method: str = "GET",
        params: Optional[dict[str, str]] = None,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> tuple[int, bytes, str]:
        """The status, body (at most MAX_ANSWER_BYTES) and ETag at `path`: the one place the
        metadata service's answers, and requests' exceptions, come in."""
        url = self.base + path
        try:
            with self._session.request(
                method,
                url,
                headers=headers,
                params=params,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
            ) as answer:
                body = b""
                for chunk in answer.iter_content(16384):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise MetadataError(url, f"the answer is over {MAX_ANSWER_BYTES} bytes")
                return answer.status_code, body, answer.headers.get("ETag", "")
        except requests.RequestException as exc:
            raise MetadataError(url, f"no answer: {exc.__class__.__name__}") from None

    def _expect_200(self, path: str, status: int) -> None:
        if status != 200:
            raise MetadataError(self.base + path, f"it answered {status}")

    def _read(self, path: str, reader: Callable[[bytes], _Read], body: bytes) -> _Read:
        try:
            return reader(body)
        except ValueError as exc:
            raise MetadataError(self.base + path, f"the answer {exc}") from None
