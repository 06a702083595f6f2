"""The grant the agent uploads under, kept current: a grant file replaced on disk is taken as soon
as it is valid (rotation); from this instance's own moment in its life (agent/renewal.py: between
half and four fifths of it, by the instance's identity) the next grant is fetched from the grant's
renewal URL, on a thread of its own (fetch, judge, write), and asked for again after a jittered
wait until it comes; and a grant that expired is "expired for good" only when no renewal URL can
bring the next one. Each renewal or expiry line is logged once per grant, however often it is
retried; a renewal that fails by a bug is logged once with its traceback, and the current grant
stays.

Runs on the dispatcher (`check`, `renewed`), but for the fetch itself.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from agent import renewal
from agent.clock import format_left
from agent.deadline import Deadline
from agent.errors import ConfigError, ExitCode, RenewalError
from agent.grant import AnyGrant, describe_keys, load_grant
from agent.inbox import Put, Renewed
from agent.instance import identity as instance_identity
from agent.rules import Once
from agent.session import new_session
from agent.settings import Settings
from agent.versions import FileVersion

logger = logging.getLogger(__name__)


class GrantKeeper:
    def __init__(
        self,
        settings: Settings,
        grant: AnyGrant,
        deadline: Deadline,
        put: Put,
        *,
        taken: Callable[[], int],
        identity: Optional[str] = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.settings = settings
        self.grant = grant
        self.deadline = deadline
        self._put = put
        self._taken = taken  # a new grant is in: the files that waited for one are tried again
        self._file = FileVersion.at(settings.grant_file, follow=True)  # the one in force
        self._renewer = ThreadPoolExecutor(1, "renew")
        self._session = new_session(1, settings.ca_bundle)
        self._renewing = False
        self._next_renewal = 0.0
        # This instance's name in its fleet: when in the grant's life it asks (agent/renewal.py).
        self.identity = identity or instance_identity(settings.instance_data)
        self._uniform = uniform  # draws the jitter of the wait between questions
        self._said = Once()  # renewal and expiry lines already logged
        self._broken = False  # a renewal failed by a bug, and none has ended otherwise since
        self.renewed_at = 0.0  # when a renewal last brought a grant (Unix time; 0: not yet)
        self.failing = ""  # why the last renewal brought none (a word; "": it did, or none yet)

    def start(self) -> None:
        """At start, before the first upload: a renewal at once if one is due (the grant may have
        expired long ago); GrantExpired if it has and cannot renew."""
        if renewal.due(self.grant, self.deadline.now(), self.identity):
            asked: Future[AnyGrant] = Future()
            try:
                asked.set_result(self._renew(self.grant))
            except Exception as exc:  # judged as the renew thread's are, by `renewed`
                asked.set_exception(exc)
            self.renewed(asked)
        if not self.renewable():
            self.deadline.ensure_alive(self.grant)

    def describe(self) -> str:
        """Where uploads go and until when, for a log line."""
        keys = describe_keys(self.grant, self.settings.key_prefix)
        left = format_left(self.seconds_left())
        return f"uploads to {self.grant.endpoint} {keys}, grant expires in {left}"

    def seconds_left(self) -> float:
        """Until the grant expires, by the store's clock."""
        return self.deadline.left(self.grant)

    def check(self, now: float) -> None:
        """The grant file, and the renewal when it is due (`now`: monotonic)."""
        if self._renewing:
            return  # the renewal writes the file and takes the grant itself
        self._check_file()
        if now >= self._next_renewal and renewal.due(
            self.grant, self.deadline.now(), self.identity
        ):
            wait = renewal.retry_after(self.settings.renew_every_seconds, self._uniform)
            self._renewing, self._next_renewal = True, now + wait
            future = self._renewer.submit(self._renew, self.grant)
            future.add_done_callback(lambda done: self._put(Renewed(done)))

    def expired_for_good(self) -> bool:
        """The grant expired and no renewal URL can bring the next one."""
        if self.seconds_left() > 0:
            return False
        if not self.renewable():
            return True
        self.say(
            f"grant expired at {self.grant.expiration:%Y-%m-%d %H:%M:%S} UTC: no upload starts "
            "until the next grant comes from its renewal URL",
            logging.WARNING,
        )
        return False

    def say_expired(self, sending: int) -> None:
        """The line for a grant expired for good: no upload starts now."""
        logger.error(
            "grant expired at %s UTC: no upload starts now; %d under way go on, the store may "
            "still accept them",
            f"{self.grant.expiration:%Y-%m-%d %H:%M:%S}",
            sending,
        )

    def after_expiry(self, left: int, where: Path) -> ExitCode:
        """How a run that the grant's expiry ended ends, once the uploads under way have."""
        if not left:  # a grant that ran its course: not a failure of the unit
            logger.info("grant expired with every file uploaded: stopping (exit 0)")
            return ExitCode.OK
        logger.error(
            "grant expired: %d file(s) not uploaded, left in %s; %s",
            left,
            where,
            self.deadline.fix(self.grant),
        )
        return ExitCode.EXPIRED

    def renewable(self) -> bool:
        """The grant names a renewal URL that has not expired itself."""
        url = self.grant.renew_url
        return url is not None and self.deadline.url_alive(url)

    def renewed(self, future: Future[AnyGrant]) -> None:
        """A renewal ended (on the dispatcher, as its message is applied; or at start). One that
        failed by a bug is logged once, with its traceback; the current grant stays, and the
        next renewal is asked for as any other is."""
        self._renewing = False
        error = future.exception()
        if error is None:
            self.renewed_at, self.failing = self.deadline.now().timestamp(), ""
        else:
            self.failing = error.reason if isinstance(error, RenewalError) else "bug"
        if error is not None and not isinstance(error, RenewalError):
            if not self._broken:
                logger.error(
                    "renewal failed unexpectedly (a bug, please report it): the current grant "
                    "stays; asking again",
                    exc_info=error,
                )
            self._broken = True
            return
        self._broken = False
        if error is not None:
            self._not_renewed(error)
        else:
            self._take_renewed(future.result())

    def say(self, line: str, level: int = logging.INFO) -> None:
        """Log a line once (until the grant changes): a retried renewal does not flood the log."""
        if self._said.first(f"{level} {line}"):
            logger.log(level, "%s", line)

    def close(self) -> None:
        """Wait for a renewal under way: one fetch, bounded by the connect timeout."""
        self._renewer.shutdown(wait=True)

    def _check_file(self) -> None:
        seen = FileVersion.at(self.settings.grant_file, follow=True)
        if seen == self._file:
            return
        self._file = seen
        try:
            grant = load_grant(self.settings.grant_file)
            self.deadline.ensure_alive(grant)
        except ConfigError as exc:
            logger.error("new grant not taken, the current one stays: %s", exc.message)
            return
        self._take(grant, "new")

    def _renew(self, grant: AnyGrant) -> AnyGrant:
        """Fetch, judge and write the next grant (on the renew thread, or at start)."""
        assert grant.renew_url is not None
        document = renewal.fetch(self._session, grant.renew_url, self.settings.connect_timeout)
        new = renewal.judge(
            grant, document, self.settings.grant_file, self.settings.renew_may_widen
        )
        try:
            renewal.write(self.settings.grant_file, document)
        except OSError as exc:
            raise RenewalError(
                f"the next grant cannot be written to {self.settings.grant_file} "
                f"({exc.strerror}): make its folder writable by the agent's user",
                reason="not_writable",
            ) from None
        return new

    def _not_renewed(self, why: RenewalError) -> None:
        """Said once a reason at INFO while there is time; at WARNING once it matters (a
        refusal, or the grant past three quarters of its life: `journalctl -p warning` shows
        it before the expiry does)."""
        late = renewal.late(self.grant, self.deadline.now())
        level = logging.WARNING if why.refused or late else logging.INFO
        left = f" (the grant expires in {format_left(self.seconds_left())})" if late else ""
        self.say(f"next grant not taken, the current one stays: {why}{left}", level)

    def _take_renewed(self, grant: AnyGrant) -> None:
        # The renewal wrote the grant file itself: not a rotation for _check_file to take again.
        self._file = FileVersion.at(self.settings.grant_file, follow=True)
        self._take(grant, "renewed")

    def _take(self, grant: AnyGrant, how: str) -> None:
        """Upload under `grant` from now on; what waited for a new grant is tried again."""
        self.grant = grant
        self._said.clear()
        waiting = self._taken()
        logger.info(
            "%s grant taken: %s; %d waiting file(s) tried again", how, self.describe(), waiting
        )
