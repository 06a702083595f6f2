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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from agent.body import Sending
from agent.clock import format_left
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
from agent.files import anchor, open_for_writing, whole_sha256
from agent.grant import AnyGrant, Grant
from agent.journal import Journal
from agent.logs import printable
from agent.outcome import Job, Outcome, Receipt, Result, Unrecorded
from agent.parts import MIN_PART, Part, Plan, manifest, plan
from agent.settings import Settings
from agent.uploader import Piece, Uploader
from agent.versions import FileVersion

logger = logging.getLogger(__name__)

# The grant's fields a joined object must keep, as the manifest records them: what encrypts
# it, never an SSE-C customer key (x-amz-server-side-encryption-customer-*), which is a secret
_ENCRYPTION = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
# Seconds between two versions of one file reaching the store (the whole file, or the
# manifest of its parts): S3 dates an object to the second, and `assemble` takes a file's
# newest version by that date (issuer/assemble.py), so no two may share a second.
COMMIT_GAP = 1.1


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
        self._sleep = sleep
        self._may_start = may_start
        self._commits: OrderedDict[str, float] = OrderedDict()  # key: when its last one ended
        self._commits_lock = threading.Lock()

    def deliver(self, job: Job) -> Outcome:
        """The whole step for one file. Raises nothing but bugs."""
        version = FileVersion.at(job.path)
        if version is None:
            logger.info("skipped %s: deleted before it was sent", printable(job.relpath))
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
        if self._in_parts(job.grant, version.size):
            return self._send_in_parts(job, version)
        began = self._monotonic()
        try:
            with self._commit(job.key):
                receipt = self.uploader.upload(job.grant, job.path, job.key)
        except UploadError as exc:
            return self._not_sent(job, version, exc)
        except _Cut:  # its version a second after the last took it past the time to start
            return Outcome(Result.CUT, version)
        seconds = self._monotonic() - began
        logger.info(
            "uploaded %s (%d bytes, md5 %s, %d)",
            printable(job.key),
            receipt.version.size,
            receipt.md5,
            receipt.status,
        )
        return self._stored(Unrecorded(job, receipt), seconds)

    @contextmanager
    def _commit(self, key: str) -> Iterator[None]:
        """The request that stores a version of the file at `key` (whole, or its manifest):
        begun COMMIT_GAP after the last one for that key ended, whatever it answered."""
        with self._commits_lock:
            last = self._commits.get(key)
        if last is not None and last + COMMIT_GAP > self._monotonic():
            self._sleep(last + COMMIT_GAP - self._monotonic())
        if not self._may_start():
            raise _Cut()
        try:
            yield
        finally:
            now = self._monotonic()
            with self._commits_lock:
                self._commits[key] = now
                self._commits.move_to_end(key)
                while next(iter(self._commits.values())) + COMMIT_GAP <= now:
                    self._commits.popitem(last=False)  # past the gap: forgotten (not the last)

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

    def _in_parts(self, grant: AnyGrant, size: int) -> bool:
        """Over the grant's largest size (or POSTBOX_SPLIT_BYTES): in parts, if the grant can
        carry them. A PUT URL names one object; a grant whose largest size is under S3's
        smallest part cannot carry parts either: such a file is refused as before, by the
        preflight, which names the grant's range."""
        if not isinstance(grant, Grant) or grant.size_range[1] < MIN_PART:
            return False
        split = self.settings.split_bytes
        return size > grant.size_range[1] or (split > 0 and size > split)

    def _send_in_parts(self, job: Job, version: FileVersion) -> Outcome:
        """The parts not stored yet for this version (the journal keeps each), then the
        manifest, the commit point: only then is the file journaled as sent (agent/parts.py)."""
        grant = job.grant
        assert isinstance(grant, Grant)
        began = self._monotonic()
        try:
            base = job.key[: len(job.key) - len(job.relpath)]
            encryption = {k: v for k, v in grant.fields.items() if k.lower() in _ENCRYPTION}
            laid = plan(  # refused here, before any part, when its manifest would not fit
                base,
                job.relpath,
                job.key,
                version,
                part_bytes=self.settings.part_bytes,
                largest=grant.size_range[1],
                smallest=grant.size_range[0],
                encryption=encryption,
            )
            done = self.journal.parts_of(job.relpath, laid.version)
            # The SHA-256 of the whole file, read in order beside the parts going out in any
            # order (and those a restart skips): ready when they are, not a pass after them.
            with ThreadPoolExecutor(1, f"sha256-{laid.version}") as hashing:
                root = anchor(job.path, self.settings.watch_dir)
                failed = threading.Event()  # a part failed: the read is of no use
                stop = lambda: self.uploader.stopping or failed.is_set()  # noqa: E731
                digest = hashing.submit(whole_sha256, root, job.path, version, stop)
                try:
                    self._send_parts(job, laid, version, done)
                except BaseException:
                    failed.set()  # the pool's exit would wait for the whole file's read
                    raise
                sha256 = digest.result()
                if sha256 is None:
                    raise _Cut()
            body = manifest(laid, version, done, sha256, encryption, smallest=grant.size_range[0])
            with self._commit(job.key):
                etag = self.uploader.upload_bytes(grant, laid.manifest_key, body)
        except _Cut:
            logger.info(
                "no upload starts now (the stop, or a preemption deadline): %s has %d of %d "
                "parts stored; what is left of it goes at the next start, its manifest last",
                printable(job.key),
                len(done),
                len(laid.parts),
            )
            return Outcome(Result.CUT, version)
        except UploadError as exc:
            return self._not_sent(job, version, exc)
        except JournalError as exc:  # the parts stored so far, read before any is sent
            reason = f"not uploaded {printable(job.key)}: {exc.message}; tried again later"
            return _unread(job, version, exc, reason)
        seconds = self._monotonic() - began
        logger.info(
            "uploaded %s in %d parts of %d bytes and a manifest (%d bytes, sha256 %s)",
            printable(job.key),
            len(laid.parts),
            laid.part_size,
            version.size,
            sha256,
        )
        receipt = Receipt(job.key, version, "", f"manifest {etag}", 0)
        return self._stored(Unrecorded(job, receipt, in_parts=True), seconds)

    def _send_parts(self, job: Job, laid: Plan, version: FileVersion, done: dict[int, str]) -> None:
        """The parts not in `done` yet, POSTBOX_PART_STREAMS at once, each journaled as it is
        stored (and added to `done`). The first UploadError ends it: the parts not begun are
        not sent, those under way finish."""
        missing = [part for part in laid.parts if part.number not in done]
        streams = min(self.settings.part_streams, len(missing)) or 1
        stored = sum(p.size for p in laid.parts if p.number in done)
        progress = [len(done), len(laid.parts), stored, version.size]  # status, metrics
        self.uploader.inflight.parts[job.key] = progress
        detail = f" in {len(laid.parts)} parts" + (f", {len(done)} stored" if done else "")
        whole = self.uploader.progress(job.key, version.size, done=stored, detail=detail)
        with ThreadPoolExecutor(streams, f"parts-{laid.version}") as pool:
            send = self._send_part
            futures = [pool.submit(send, job, laid, part, version, whole) for part in missing]
            try:
                for future in as_completed(futures):
                    number, md5 = future.result()
                    done[number] = md5
                    progress[0] += 1
                    progress[2] += laid.parts[number - 1].size
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                self.uploader.inflight.parts.pop(job.key, None)

    def _send_part(
        self, job: Job, laid: Plan, part: Part, version: FileVersion, whole: Sending
    ) -> tuple[int, str]:
        if self.uploader.stopping or not self._may_start():  # the rest at the next start
            raise _Cut()
        piece = Piece(part.offset, part.size, version, whole)
        receipt = self.uploader.upload(job.grant, job.path, part.key, piece)
        try:
            self.journal.record_part(
                job.relpath, laid.version, part.number, receipt.md5, receipt.etag
            )
        except JournalError as exc:  # its row only spares sending it again after a crash
            logger.debug("%s", exc.message)
        return part.number, receipt.md5

    def _not_sent(self, job: Job, version: FileVersion, exc: UploadError) -> Outcome:
        """What an upload that did not succeed means for the file."""
        if isinstance(exc, FileGoneError):
            logger.info("skipped %s: deleted before it was sent", printable(job.key))
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


class _Cut(Exception):
    """The stop (or a preemption deadline) came before an upload began: the file is left for
    the next start."""


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
