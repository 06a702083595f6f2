"""Metrics in Prometheus' text format, for node_exporter's textfile collector.

With POSTBOX_METRICS_FILE set, the agent writes every metric there every 10 s and when it stops:
written beside it, synced and renamed over it, so the collector never reads half a file. The
format is written here rather than with prometheus-client: a dozen lines of code against one more
package (and its registry) on every VM; the tests parse the file with prometheus-client's own
parser.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from agent.body import PartsSoFar
from agent.files import replace_file
from agent.ledger import Ledger
from agent.outcome import Result
from agent.states import PENDING, WAITING_FOR_GRANT, State

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    @classmethod
    def one(cls, name: str, kind: str, help: str, value: float) -> Metric:
        return cls(name, kind, help, {(): value})


STATES = ("running", "waiting_for_grant", "stopping", "stopped")  # postbox_state's values


@dataclass(frozen=True)
class Renewal:
    """The renewal's facts: when its URL dies and when it last brought a grant (Unix times; 0:
    none), and why the last one brought none ("": it did)."""

    url_expires: float = 0.0
    renewed_at: float = 0.0
    failing: str = ""


def collect(
    ledger: Ledger,
    retries: int,
    last_success: float,
    seconds_left: float,
    *,
    parts: Sequence[PartsSoFar] = (),
    bandwidth_limit: Optional[int] = None,
    excluded: int = 0,
    state: str = "running",
    stalled: bool = False,
    left: int = 0,
    expires: float = 0.0,
    renewal: Renewal = Renewal(),
) -> list[Metric]:
    """Every metric the file holds, from the ledger's counts (each since this start), the retries
    the uploader counted, when a file was last stored, the grant's time left and its expiry
    (Unix time), the files going in parts, the bandwidth limit (None: none), the files
    POSTBOX_INCLUDE and POSTBOX_EXCLUDE kept back, the agent's `state` (STATES) and the files
    its stop `left`. While no upload may start under the grant in force (`stalled`: running,
    that is `waiting_for_grant`; or stopped by the expiry), the files on their way wait for a
    grant too, and none is pending."""
    not_sent: dict[tuple[tuple[str, str], ...], float] = {
        (("result", _label(result.value)),): float(ledger.not_sent[result.value])
        for result in (Result.REFUSED, Result.FAILED, Result.TOO_LONG, Result.UNREADABLE)
    }
    pending = 0 if stalled else ledger.count(*PENDING)
    waiting = ledger.count(*WAITING_FOR_GRANT) + (ledger.count(*PENDING) if stalled else 0)
    return [
        Metric("postbox_state", "gauge",
               "What the agent is doing: 1 for its state (running, waiting_for_grant: no upload "
               "may start under the grant in force, stopping, stopped), 0 for the others",
               {(("state", name),): float(name == state) for name in STATES}),
        Metric.one("postbox_left_files", "gauge",
                   "Files the stop left unsent (0 until the agent has stopped)", left),
        Metric.one("postbox_grant_expiry_timestamp_seconds", "gauge",
                   "When the grant in force expires (Unix time)", expires),
        Metric.one("postbox_renewal_url_expiry_timestamp_seconds", "gauge",
                   "When the grant's renewal URL stops working (Unix time; 0: none)",
                   renewal.url_expires),
        Metric.one("postbox_last_renewal_timestamp_seconds", "gauge",
                   "When a renewal last brought a grant (Unix time; 0: none since start)",
                   renewal.renewed_at),
        Metric("postbox_renewal_failing", "gauge",
               "1, with why, while the last renewal brought no grant (no sample: it did)",
               {(("reason", _label(renewal.failing)),): 1.0} if renewal.failing else {}),
        Metric.one("postbox_uploaded_files_total", "counter", "Files the store stored",
                   ledger.sent),
        Metric.one("postbox_uploaded_bytes_total", "counter", "Bytes of the files stored",
                   ledger.sent_bytes),
        Metric("postbox_not_uploaded_files_total", "counter",
               "Files refused or failed, by result (each time a file is)", not_sent),
        Metric.one("postbox_excluded_files_total", "counter",
                   "Files not sent because POSTBOX_INCLUDE or POSTBOX_EXCLUDE exclude them "
                   "(each once)", excluded),
        Metric.one("postbox_retries_total", "counter",
                   "Upload attempts made again after a transient fault", retries),
        Metric.one("postbox_pending_files", "gauge", "Files waiting to be sent", pending),
        Metric.one("postbox_pending_bytes", "gauge",
                   "Bytes of the waiting files whose size is known",
                   0 if stalled else ledger.size_of(*PENDING)),
        Metric.one("postbox_waiting_for_grant_files", "gauge",
                   "Files refused, failed or too long under this grant, and every file on its "
                   "way once no upload may start under it: sent under the next", waiting),
        Metric.one("postbox_inflight_files", "gauge", "Uploads under way",
                   ledger.count(State.SENDING)),
        Metric.one("postbox_inflight_bytes", "gauge",
                   "Bytes of the uploads under way whose size is known",
                   ledger.size_of(State.SENDING)),
        Metric.one("postbox_parts_stored", "gauge",
                   "Parts stored of the files going in parts now",
                   sum(p.parts_done for p in parts)),
        Metric.one("postbox_parts", "gauge",
                   "Parts of the files going in parts now", sum(p.parts for p in parts)),
        Metric.one("postbox_grant_seconds_left", "gauge",
                   "Seconds until the grant expires, by the store's clock",
                   round(seconds_left, 1)),
        Metric.one("postbox_last_success_timestamp_seconds", "gauge",
                   "When a file was last stored (Unix time; 0: none since start)", last_success),
        Metric.one("postbox_bandwidth_limit_bytes_per_second", "gauge",
                   "Bytes a second every upload shares (POSTBOX_BANDWIDTH_LIMIT; 0: no limit)",
                   bandwidth_limit or 0),
    ]  # fmt: skip


def render(metrics: list[Metric]) -> str:
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in sorted(metric.samples.items()):
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            shown = _number(value)
            lines.append(f"{metric.name}{{{text}}} {shown}" if text else f"{metric.name} {shown}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Every digit: `:g` kept six, so 67108864 bytes read back as 67108900."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    """A label value as PromQL matchers are written by hand: `too_long`, not `too long`."""
    return value.replace(" ", "_")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsFile:
    """Writes the metrics to `path`, atomically; says once, and goes on, when it cannot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False

    def write(self, metrics: list[Metric]) -> None:
        try:  # 0644: the collector runs as another user; the temporary name is not *.prom
            replace_file(self.path, render(metrics).encode(), 0o644)
        except OSError as exc:
            if not self._failing:
                logger.warning(
                    "cannot write metrics to %s (%s): fix the folder or POSTBOX_METRICS_FILE",
                    self.path,
                    exc.strerror,
                )
            self._failing = True
            return
        if self._failing:
            logger.info("metrics written to %s again", self.path)
        self._failing = False
