"""A file sent in parts, one version of it (agent/parts.py has the plan and the manifest): the
parts not stored yet, POSTBOX_PART_STREAMS at once, each journaled as it is stored; the SHA-256
of the whole file, read beside them; then the manifest, the commit point. The delivery step
(agent/delivery.py) turns what this gives or raises into the file's outcome.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

from agent.body import PartsSoFar, Sending
from agent.commits import Commits, Cut
from agent.errors import JournalError
from agent.files import anchor, whole_sha256
from agent.grant import Grant
from agent.journal import Journal
from agent.outcome import Job, Receipt
from agent.parts import MIN_PART, Part, Plan, manifest, plan
from agent.settings import Settings
from agent.shown import printable
from agent.uploader import Piece, Uploader
from agent.versions import FileVersion

logger = logging.getLogger(__name__)

# The grant's fields a joined object must keep, as the manifest records them: what encrypts
# it, never an SSE-C customer key (x-amz-server-side-encryption-customer-*), which is a secret
ENCRYPTION = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
)


def in_parts(grant: object, size: int, split: int, part: int) -> bool:
    """Over the grant's largest size (or `split`, POSTBOX_SPLIT_BYTES, when set, and more than
    one `part`, POSTBOX_PART_BYTES: a file of one part is sent whole, not as a part, a manifest
    and a join): in parts, if the grant can carry them. A PUT URL names one object; a grant
    whose largest size is under S3's smallest part cannot carry parts either: such a file is
    refused as before, by the preflight, which names the grant's range."""
    if not isinstance(grant, Grant) or grant.size_range[1] < MIN_PART:
        return False
    return size > grant.size_range[1] or (split > 0 and size > max(split, part))


class InParts:
    def __init__(
        self, settings: Settings, uploader: Uploader, journal: Journal, commits: Commits
    ) -> None:
        self.settings = settings
        self.uploader = uploader
        self.journal = journal
        self.commits = commits

    def send(self, job: Job, version: FileVersion) -> Receipt:
        """The parts not stored yet for this version (the journal keeps each), then the
        manifest: the receipt is the manifest's. Raises what the delivery turns into the
        outcome: PreflightError (no plan fits the grant: refused before any part), UploadError,
        JournalError (the parts stored so far could not be read: before any is sent), and Cut
        (the stop or a deadline: what is left goes at the next start)."""
        grant = job.grant
        assert isinstance(grant, Grant)
        base = job.key[: len(job.key) - len(job.relpath)]
        encryption = {k: v for k, v in grant.fields.items() if k.lower() in ENCRYPTION}
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
        try:
            sha256 = self._parts_and_hash(job, laid, version, done)
            body = manifest(laid, version, done, sha256, encryption, smallest=grant.size_range[0])
            with self.commits.commit(job.key):
                etag = self.uploader.upload_bytes(
                    grant, laid.manifest_key, body, mtime_ns=version.mtime_ns
                )
        except Cut:
            raise Cut(
                "no upload starts now (the stop, or a preemption deadline): "
                f"{printable(job.key)} has "
                f"{len(done)} of {len(laid.parts)} parts stored; what is left of it goes at the "
                "next start, its manifest last"
            ) from None
        logger.info(
            "uploaded %s (%d bytes, sha256 %s) in %s, then its manifest",
            printable(job.key),
            version.size,
            sha256,
            cut_of([part.size for part in laid.parts]),
        )
        return Receipt(job.key, version, "", f"manifest {etag}", 0)

    def _parts_and_hash(
        self, job: Job, laid: Plan, version: FileVersion, done: dict[int, str]
    ) -> str:
        """The parts, and the SHA-256 of the whole file read in order beside them as they go
        out in any order (and those a restart skips): ready when they are, not a pass after."""
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
            raise Cut()
        return sha256

    def _send_parts(self, job: Job, laid: Plan, version: FileVersion, done: dict[int, str]) -> None:
        """The parts not in `done` yet, POSTBOX_PART_STREAMS at once, each journaled as it is
        stored (and added to `done`). The first UploadError ends it: the parts not begun are
        not sent, those under way finish."""
        missing = [part for part in laid.parts if part.number not in done]
        streams = min(self.settings.part_streams, len(missing)) or 1
        stored = sum(p.size for p in laid.parts if p.number in done)
        progress = PartsSoFar(len(done), len(laid.parts), stored, version.size)  # status, metrics
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
                    progress.parts_done += 1
                    progress.bytes_done += laid.parts[number - 1].size
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                self.uploader.inflight.parts.pop(job.key, None)

    def _send_part(
        self, job: Job, laid: Plan, part: Part, version: FileVersion, whole: Sending
    ) -> tuple[int, str]:
        if self.uploader.stopping:  # the rest at the next start
            raise Cut()
        self.commits.check()
        piece = Piece(part.offset, part.size, version, whole)
        receipt = self.uploader.upload(job.grant, job.path, part.key, piece)
        try:
            self.journal.record_part(
                job.relpath, laid.version, part.number, receipt.md5, receipt.etag
            )
        except JournalError as exc:  # its row only spares sending it again after a crash
            logger.debug("%s", exc.message)
        return part.number, receipt.md5


def cut_of(sizes: list[int]) -> str:
    """How a file was cut, in words: `3 parts of 5242880 bytes, the last 1048576`."""
    said = f"{len(sizes)} part{'s' if len(sizes) > 1 else ''} of {sizes[0]} bytes"
    tail = sizes[1:]
    while tail and tail[0] == sizes[0]:
        tail = tail[1:]
    if len(tail) == 1:
        return f"{said}, the last {tail[0]}"
    if tail:
        return f"{said}, the last {len(tail)} {', '.join(map(str, tail))}"
    return said
