"""The managed-file rows: lookup, the upload plan for a ref, adopting what the API returned, and
syncing desired metadata to the bucket. Shared by the producer and the worker's handlers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from ingest.api.client import AcrCloudClient
from ingest.api.errors import TransientError
from ingest.api.schemas import BucketFile
from ingest.jobs.context import JobContext
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.inputs import UploadFileJob, UploadUrlJob
from ingest.jobs.remote_refs import carried_ref
from ingest.settings import Settings
from ingest.store.leases import claim_file, kept_alive, release_file
from ingest.store.models import FileStatus, TrackFile, utcnow

UploadJob = UploadUrlJob | UploadFileJob
STATE_ERROR_REASON = "the API could not process the audio (state -1)"


# How many dependency waits a follow-up naming a ref not seen yet gets before the ref is "unknown": a
# producer in another system may send the upload and the update back to back to different workers.
UNKNOWN_REF_WAITS = 6


def unknown_ref(ref: str, bucket_id: int) -> InputError:
    return InputError({"ref": f"unknown ref {ref!r} in bucket {bucket_id}: upload it first, or check the id"})


def ref_may_still_arrive(asked_at: datetime, settings: Settings) -> bool:
    """Whether a follow-up asked for at ``asked_at`` should still wait for its ref's upload."""
    return utcnow() - asked_at < timedelta(seconds=settings.dependency_wait * UNKNOWN_REF_WAITS)


class UploadPlan(StrEnum):
    NEW = "new"  # no row for this ref: upload
    REUPLOAD = "reupload"  # the ref failed, was cancelled or deleted: upload again
    UPDATE = "update"  # same ref and source, other title/user_defined: update the metadata
    NOOP = "noop"  # same ref, source and metadata: nothing to do


def data_type_of(job: UploadJob) -> str:
    return job.data_type if isinstance(job, UploadFileJob) else "audio_url"


def source_of(job: UploadJob) -> str:
    return job.path if isinstance(job, UploadFileJob) else job.url


def by_ref(session: Session, bucket_id: int, ref: str) -> TrackFile | None:
    return session.exec(select(TrackFile).where(TrackFile.bucket_id == bucket_id, TrackFile.ref == ref)).first()


def plan_upload(existing: TrackFile | None, job: UploadJob) -> UploadPlan:
    if existing is None:
        return UploadPlan.NEW
    if not FileStatus(existing.status).is_active:
        return UploadPlan.REUPLOAD
    if existing.source != source_of(job) or existing.data_type != data_type_of(job):
        raise InputError(
            {
                "ref": (
                    f"{job.ref!r} is already used in bucket {job.bucket_id} for {existing.source!r}; "
                    "give this file another ref, or delete that one first"
                )
            }
        )
    if existing.title != job.title or existing.user_defined != job.user_defined:
        return UploadPlan.UPDATE
    return UploadPlan.NOOP


def prepare_upload_row(session: Session, existing: TrackFile | None, job: UploadJob) -> TrackFile:
    """Write the row an upload will fill in (a new one, or a failed/cancelled/deleted one reset)."""
    row = existing or TrackFile(
        ref=job.ref, bucket_id=job.bucket_id, data_type=data_type_of(job), title=job.title, source=source_of(job)
    )
    if row.status != FileStatus.FAILED or row.source != source_of(job):
        # A failed upload of the same source keeps its post mark: its POST may have created the
        # file, so the new attempt looks for it first. Deleted/cancelled ones start afresh.
        row.post_started_at = None
        row.verify_after = None
    row.data_type = data_type_of(job)
    row.source = source_of(job)
    row.title = job.title
    row.user_defined = dict(job.user_defined)
    row.status = FileStatus.QUEUED
    row.reason = None
    row.remote_id = None
    row.acr_id = None
    row.remote_state = None
    row.attempts = 0
    row.meta_version += 1
    row.synced_meta_version = 0
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def apply_meta(
    session: Session, file_id: int, title: str | None, user_defined: dict[str, Any] | None, seq: int
) -> None:
    """Merge an update (operation ``seq``) into the desired metadata, each field only if no later
    operation set it already. Conditional UPDATEs, so two workers merging at once cannot overwrite
    each other with what they read before."""
    bump = {"meta_version": TrackFile.meta_version + 1, "updated_at": utcnow()}
    if title is not None:
        session.execute(
            update(TrackFile)
            .where(col(TrackFile.id) == file_id, col(TrackFile.title_seq) < seq)
            .values(title=title, title_seq=seq, **bump)
        )
    if user_defined is not None:
        session.execute(
            update(TrackFile)
            .where(col(TrackFile.id) == file_id, col(TrackFile.user_defined_seq) < seq)
            .values(user_defined=dict(user_defined), user_defined_seq=seq, **bump)
        )


def adopt(row: TrackFile, remote: BucketFile, *, synced_version: int) -> None:
    """Record what the API holds for this row, at once, so no retry posts it again."""
    row.remote_id = remote.id
    row.acr_id = remote.acr_id
    row.bucket_id = remote.bucket_id or row.bucket_id
    set_remote_state(row, remote.state)
    row.synced_meta_version = max(row.synced_meta_version, synced_version)


def set_remote_state(row: TrackFile, state: int) -> None:
    row.remote_state = state
    row.status = FileStatus.of_remote_state(state)
    row.reason = STATE_ERROR_REASON if state == -1 else None
    row.updated_at = utcnow()


@contextmanager
def file_lease(session: Session, row: TrackFile, ctx: JobContext) -> Iterator[None]:
    """Hold the row's lease while changing its file in the bucket; wait (RetryLater) if another has it."""
    assert row.id is not None
    taken, remaining = claim_file(session, row.id, ctx.owner, ctx.settings.lease_seconds)
    if not taken:
        raise RetryLater(
            min(max(remaining, 1.0), ctx.settings.dependency_wait),
            f"ref {row.ref!r} is being changed by another worker",
        )
    try:
        with kept_alive(row.id, ctx.owner, ctx.settings.lease_seconds):
            yield
    finally:
        release_file(session, row.id, ctx.owner)


def files_with_ref(client: AcrCloudClient, row: TrackFile) -> list[BucketFile]:
    """The bucket's files carrying this row's ref in ``audio_id``. Search matches titles: look under
    the title and bucket the last POST used (an update or a move may have changed them since)."""
    bucket = row.posted_bucket_id or row.bucket_id
    return [f for f in client.iter_files(bucket, search=row.posted_title or row.title) if carried_ref(f) == row.ref]


def verify_later(session: Session, row: TrackFile, settings: Settings) -> None:
    """A request may still land after we gave up on it: have the poll check this file when it is due."""
    row.verify_after = utcnow() + timedelta(seconds=settings.late_request_seconds)
    session.add(row)
    session.commit()


@contextmanager
def verify_if_ambiguous(session: Session, row: TrackFile, settings: Settings) -> Iterator[None]:
    try:
        yield
    except TransientError as exc:
        if exc.maybe_applied:
            verify_later(session, row, settings)
        raise


def sync_meta(session: Session, row: TrackFile, client: AcrCloudClient, settings: Settings) -> bool:
    """Send the desired title/user_defined if the bucket may hold an older version (hold the lease)."""
    session.refresh(row)
    version = row.meta_version
    if row.remote_id is None or row.synced_meta_version >= version:
        return False
    with verify_if_ambiguous(session, row, settings):
        remote = client.update_file(row.bucket_id, row.remote_id, title=row.title, user_defined=row.user_defined)
    row.synced_meta_version = version
    if remote.state in (0, 1, -1):
        set_remote_state(row, remote.state)
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    return True
