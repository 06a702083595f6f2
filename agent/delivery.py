"""One file, from due to done: the per-file step the daemon's workers and `postbox-agent upload`
share.

    journal (sent already?) → an earlier refusal under this grant → the key free (one-key
    grants) → time enough before expiry → upload → journal → after-upload action

A `Job` is decided once, before the step runs: the file, its key and the grant it goes under. The
step returns an `Outcome` (agent.outcome) and logs what happened to the file, but for the waiting
states (refused, failed, too long, unreadable, unrecorded): their `reason` is logged by the
caller, which knows whether it already said so for that file. A file is deleted or moved only
after the store said 2xx and the journal kept the record.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from agent.clock import format_left
from agent.commits import Commits, Cut
from agent.errors import (
    FileChangedError,
    FileGoneError,
    JournalDamaged,
    JournalError,
    PreflightError,
    RejectedUploadError,
    UnreadableError,
    UploadError,
)
from agent.files import anchor, open_for_writing
from agent.grant import AnyGrant
from agent.inparts import InParts, in_parts
from agent.journal import Journal
from agent.outcome import GONE_BEFORE, Job, Outcome, Result, Unrecorded
from agent.settings import Settings
from agent.shown import printable
from agent.uploader import Uploader
from agent.versions import FileVersion

logger = logging.getLogger(__name__)


class Delivery:
    def __init__(
        self,
        settings: Settings,
        uploader: Uploader,
        journal: Journal,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        may_start: Callable[[], bool] = lambda: True,
    ) -> None:
        """`may_start`: whether an upload may begin now (a file's, a part's, a manifest's): not
        past a preemption deadline, nor past the end of a stop's drain (agent/core.py)."""
        self.settings = settings
        self.uploader = uploader
        self.journal = journal
        self._monotonic = monotonic
        self.commits = Commits(monotonic, sleep, may_start)
        self.parts = InParts(settings, uploader, journal, self.commits)

    def deliver(self, job: Job) -> Outcome:
        """The whole step for one file. Raises nothing but bugs."""
        version = FileVersion.at(job.path)
        if version is None:
            logger.info("skipped %s: %s", printable(job.relpath), GONE_BEFORE)
            return Outcome(Result.GONE)
        before = self._before_sending(job, version)
        return before if before is not None else self._send(job, version)

    def _before_sending(self, job: Job, version: FileVersion) -> Optional[Outcome]:
        """Why not to send this file now, if there is a reason."""
        return self._decided(job, version) or self._not_yet(job, version)

    def _decided(self, job: Job, version: FileVersion) -> Optional[Outcome]:
        """What the journal says of this version already: sent, or refused under this grant."""
        grant_id = job.grant.identity
        try:
            if self.journal.is_sent(job.relpath, version):
                # Sent before (kept then: a writer held it, or a crash came first): its turn now.
                after_upload(self.settings, job, version)
                return Outcome(Result.KNOWN, version)
            earlier = self.journal.refusal(job.relpath, version, grant_id)
            if earlier is not None:
                return Outcome(
                    Result.REFUSED,
                    version,
                    grant_id,
                    reason=f"not sending {printable(job.relpath)}: it was refused under this "
                    f"grant ({earlier}); it waits for a new grant",
                    level=logging.WARNING,
                )
            ensure_key_free(job.grant, self.journal, job.key, job.relpath, busy=job.busy)
        except RejectedUploadError as exc:
            return self.refuse(job, version, exc)
        except JournalError as exc:
            return _unread(job, version, exc, exc.message)
        return None

    def _not_yet(self, job: Job, version: FileVersion) -> Optional[Outcome]:
        """A writer still holds a file moved into place, or it could not finish in time."""
        if job.moved_in and open_for_writing(anchor(job.path, self.settings.watch_dir), job.path):
            logger.info(
                "%s was moved into place while a writer still holds it: sent once it is closed",
                printable(job.relpath),
            )
            return Outcome(Result.HELD, version)
        too_long = self._too_long(job, version.size)
        if too_long:
            grant_id = job.grant.identity
            return Outcome(
                Result.TOO_LONG, version, grant_id, reason=too_long, level=logging.WARNING
            )
        return None

    def _send(self, job: Job, version: FileVersion) -> Outcome:
        """The file whole, or in parts (agent/inparts.py), and what came of it."""
        settings = self.settings
        parted = in_parts(job.grant, version.size, settings.split_bytes, settings.part_bytes)
        began = self._monotonic()
        try:
            if parted:
                receipt = self.parts.send(job, version)
            else:
                with self.commits.commit(job.key):
                    receipt = self.uploader.upload(job.grant, job.path, job.key)
        except Cut as cut:  # the stop or a deadline came first (a whole file: its commit gap)
            if str(cut):
                logger.info("%s", cut)
            return Outcome(Result.CUT, version)
        except UploadError as exc:
            return self._not_sent(job, version, exc)
        except JournalError as exc:  # the parts stored so far, read before any is sent
            reason = f"not uploaded {printable(job.key)}: {exc.message}; tried again later"
            return _unread(job, version, exc, reason)
        seconds = self._monotonic() - began
        if not parted:
            logger.info(
                "uploaded %s (%d bytes, md5 %s, %d)",
                printable(job.key),
                receipt.version.size,
                receipt.md5,
                receipt.status,
            )
        return self._stored(Unrecorded(job, receipt, in_parts=parted), seconds)

    def _stored(self, stored: Unrecorded, seconds: float) -> Outcome:
        """The store has the file (whole, or its manifest): journal it, then release it. When
        the journal cannot record it, UNRECORDED, whether it went whole or in parts: the
        dispatcher starts no new upload and records it again every 10 s."""
        job, receipt = stored.job, stored.receipt
        size = receipt.version.size
        try:
            self.record_then_release(stored)
        except JournalError as exc:
            return Outcome(
                Result.UNRECORDED,
                receipt.version,
                job.grant.identity,
                size=size,
                seconds=seconds,
                unrecorded=stored,
                reason=""  # damaged: the daemon says so once, and stops
                if isinstance(exc, JournalDamaged)
                else f"{exc.message}; new uploads pause until the state dir "
                f"{self.settings.state_dir} can record again",
            )
        return Outcome(Result.SENT, receipt.version, job.grant.identity, size=size, seconds=seconds)

    def _not_sent(self, job: Job, version: FileVersion, exc: UploadError) -> Outcome:
        """What an upload that did not succeed means for the file."""
        if isinstance(exc, FileGoneError):
            logger.info("skipped %s: %s", printable(job.key), GONE_BEFORE)
            outcome = Outcome(Result.GONE)
        elif isinstance(exc, UnreadableError):
            outcome = Outcome(
                Result.UNREADABLE,
                version,
                reason=f"cannot read {printable(job.relpath)}: {exc}; tried again when its "
                "permissions change",
            )
        elif isinstance(exc, FileChangedError):
            logger.info(
                "%s changed while it was sent (%s): will send it once it settles",
                printable(job.key),
                exc,
            )
            outcome = Outcome(Result.CHANGED)
        elif isinstance(exc, RejectedUploadError):
            now = FileVersion.at(job.path)
            outcome = Outcome(Result.GONE) if now is None else self.refuse(job, now, exc)
        else:
            outcome = Outcome(
                Result.FAILED,
                version,
                job.grant.identity,
                reason=f"not uploaded {printable(job.key)}: {exc}; left in place",
            )
        return outcome

    def record_then_release(self, stored: Unrecorded) -> None:
        """Journal a stored upload (a file in parts: and forget its parts), then (only then)
        delete or move the file. JournalError: not recorded, and the file is left as it is."""
        job, receipt = stored.job, stored.receipt
        record = self.journal.record_parts_done if stored.in_parts else self.journal.record
        record(job.relpath, receipt.version, receipt.key, receipt.md5, receipt.etag)
        after_upload(self.settings, job, receipt.version)

    def refuse(self, job: Job, version: FileVersion, exc: RejectedUploadError) -> Outcome:
        """Refused for good under this grant, by the store or before sending (the policy's own
        rules): kept in the journal, so a restart neither sends the file again under the same
        grant nor forgets why (postbox-agent status lists it)."""
        grant_id = job.grant.identity
        why = exc.message if exc.status else f"refused here, before sending: {exc.message}"
        try:
            self.journal.refuse(job.relpath, version, grant_id, why)
        except JournalError as error:
            logger.warning("%s", error.message)
        return Outcome(
            Result.REFUSED,
            version,
            grant_id,
            reason=f"refused {printable(job.relpath)}: {exc}; left in place",
        )

    def _too_long(self, job: Job, size: int) -> str:
        """Why no upload may start: the observed rate says it cannot finish before the expiry
        margin ('' when it can, or before any rate is known)."""
        if job.rate is None:
            return ""
        needed, left = size / job.rate, self.uploader.deadline.to_start(job.grant)
        if needed <= left:
            return ""
        return (
            f"not starting {printable(job.relpath)}: {size} bytes need about "
            f"{format_left(needed)} at the observed {job.rate:.0f} bytes/s, and the grant allows "
            f"{format_left(left)} more; it waits for a new grant"
        )


def _unread(job: Job, version: FileVersion, exc: JournalError, reason: str) -> Outcome:
    """The journal could not say whether this version was sent: it is not sent now. Damaged,
    the file is left, as at a stop (the daemon says why once, and stops; `upload` says it for
    the file); else it waits as a failed upload does."""
    if isinstance(exc, JournalDamaged):
        return Outcome(Result.CUT, version, reason=exc.message)
    return Outcome(Result.FAILED, version, job.grant.identity, reason=reason)


def refused_name(path: Path, relpath: str, grant: AnyGrant, exc: RejectedUploadError) -> Outcome:
    """A file whose name makes no key under `grant` (agent/keys.py): refused, left in place,
    before any delivery step (GONE if it is gone already)."""
    version = FileVersion.at(path)
    if version is None:
        return Outcome(Result.GONE)
    return Outcome(
        Result.REFUSED,
        version,
        grant.identity,
        reason=f"refused {printable(relpath)}: {exc}; left in place",
    )


def ensure_key_free(
    grant: AnyGrant, journal: Journal, key: str, relpath: str, *, busy: bool = False
) -> None:
    """A single-key grant (a PUT URL) takes one file: the first to settle, and only it.

    `busy`: another upload is under way, which may be taking the key right now."""
    if grant.single_key is None:
        return
    owner = journal.owner_of(key)
    if busy or (owner is not None and owner != relpath):
        raise PreflightError(
            f"the grant allows one object ({printable(key)}), taken by "
            f"{printable(owner or 'a file being sent')}: it waits for a new grant"
        )


def after_upload(settings: Settings, job: Job, version: FileVersion) -> None:
    """Keep, delete or move a file the store confirmed and the journal recorded (`version`).

    Only that version, and only once no writer can be left: a writer that still holds the file
    would go on writing to a deleted (or moved) file, and what it wrote after would be lost. The
    kernel's word (`open_for_writing`) decides; where it will not say, a close the agent saw does
    (a file found by a scan, e.g. after a restart, has none). A file kept for that reason is
    looked at again when its writer closes it: sent again if it changed, then deleted or moved."""
    action, path = settings.after_upload, job.path
    if action == "keep" or FileVersion.at(path) != version:
        return  # a newer version is there now: it will be sent in turn
    writing = open_for_writing(anchor(path, settings.watch_dir), path)
    if writing or (writing is None and not job.close_seen):
        why = (
            "a process still has it open for writing"
            if writing
            else "the agent did not see it closed, and the kernel cannot say whether a writer "
            "still holds it"
        )
        logger.info(
            "kept %s after its upload: %s; it is sent again if it changes, and %s once "
            "it is closed",
            printable(job.relpath),
            why,
            "deleted" if action == "delete" else "moved",
        )
        return
    try:
        if action == "delete":
            path.unlink()
        else:
            target = settings.uploaded_dir / job.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except OSError as exc:
        logger.warning(
            "uploaded %s but cannot %s it (%s)", printable(job.relpath), action, exc.strerror
        )
