"""The managed-file rows: lookup, the upload plan for a ref, adopting what the API returned, and
syncing desired metadata to the bucket. Shared by the producer and the worker's handlers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ingest.api.client import AcrCloudClient
from ingest.api.errors import TransientError
from ingest.api.schemas import BucketFile
from ingest.jobs import events
from ingest.jobs.context import JobContext
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.identity import carries_ref, tagged
from ingest.jobs.inputs import UploadFileJob, UploadUrlJob, job_args
from ingest.settings import Settings
from ingest.store.bulk import insert_one
from ingest.store.enqueue import FILE_ID_BY_REF
from ingest.store.leases import claim_file, kept_alive, release_file
from ingest.store.models import FileStatus, Operation, OpKind, OpStatus, TrackFile, utcnow
from ingest.store.values import storable_json

UploadJob = UploadUrlJob | UploadFileJob
STATE_ERROR_REASON = "the API could not process the audio (state -1)"


def state_reason(state: int | str) -> str | None:
    """Why a file in this remote state is an error (None when it is not): -1, or a state we do not know."""
    if state == -1:
        return STATE_ERROR_REASON
    if state in (0, 1):
        return None
    return (
        f"the API reports state {state!r}, none of 0 processing, 1 ready, -1 error "
        "(the vendor CLI calls such a file inactive): check it in the ACRCloud console"
    )


def unknown_ref(ref: str, bucket_id: int) -> InputError:
    return InputError({"ref": f"unknown ref {ref!r} in bucket {bucket_id}: upload it first, or check the id"})


class UploadPlan(StrEnum):
    NEW = "new"  # no row for this ref: upload
    REUPLOAD = "reupload"  # the ref failed, was cancelled or deleted: upload again
    UPDATE = "update"  # same ref and source, other title/user_defined: update the metadata
    NOOP = "noop"  # same ref, source and metadata: nothing to do


def data_type_of(job: UploadJob) -> str:
    return job.data_type if isinstance(job, UploadFileJob) else "audio_url"


def send_as_of(job: UploadJob) -> str:
    """What the upload posts: a URL as audio_url, a file as itself or (audio) as its fingerprint."""
    return job.send_as if isinstance(job, UploadFileJob) else "audio_url"


def source_of(job: UploadJob) -> str:
    return job.path if isinstance(job, UploadFileJob) else job.url


def op_values(kind: OpKind, args: dict[str, Any], file_id: int | None, now: Any) -> dict[str, Any]:
    return {
        "kind": kind.value,
        "args": args,
        "task_id": str(uuid.uuid4()),
        "file_id": file_id,
        "bucket_id": args.get("bucket_id"),
        "status": OpStatus.QUEUED.value,
        "attempts": 0,
        "throttled": 0,
        "applied": False,
        "created_at": now,
        "updated_at": now,
    }


def new_row_values(job: UploadJob, now: Any) -> dict[str, Any]:
    return {
        "ref": job.ref,
        "bucket_id": job.bucket_id,
        "data_type": data_type_of(job),
        "send_as": send_as_of(job),
        "title": job.title,
        "user_defined": dict(job.user_defined),
        "source": source_of(job),
        "status": FileStatus.QUEUED.value,
        "attempts": 0,
        "meta_version": 1,
        "synced_meta_version": 0,
        "title_seq": 0,
        "user_defined_seq": 0,
        "created_at": now,
        "updated_at": now,
    }


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
    # A different send_as for a file already in the bucket is not a reason to send it again: it applies to
    # the ref's next upload (switching ACR_INGEST_UPLOAD_AS must not re-upload a whole synced catalog).
    if existing.title != job.title or existing.user_defined != job.user_defined:
        return UploadPlan.UPDATE
    return UploadPlan.NOOP


def prepare_upload_row(session: Session, existing: TrackFile | None, job: UploadJob) -> TrackFile:
    """Write the row an upload will fill in (a new one, or a failed/cancelled/deleted one reset)."""
    row = existing or TrackFile(
        ref=job.ref,
        bucket_id=job.bucket_id,
        data_type=data_type_of(job),
        send_as=send_as_of(job),
        title=job.title,
        source=source_of(job),
    )
    if existing is not None:
        row.generation += 1  # another file under this ref: updates asked for the old one no longer apply
    if row.status != FileStatus.FAILED or row.source != source_of(job):
        # A failed upload of the same source keeps its post mark: its POST may have created the
        # file, so the new attempt looks for it first. Deleted/cancelled ones start afresh.
        row.post_started_at = None
        row.verify_after = None
    row.data_type = data_type_of(job)
    row.send_as = send_as_of(job)
    row.fingerprint_bytes = None
    row.duration_ms = None
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


def record_sent_by_name(session: Session, kind: str, job: UploadJob, task_id: str) -> int | None:
    """For an upload another system sent by name (no row of our producer): the file row and the running
    operation our producer would have written, in one commit, so the job then runs as one of the producer's
    does. Returns the operation's id, or None to leave the message to the general path (which creates the
    operation first and plans after): anything but a new upload or a re-upload (the same ref already here, a
    ref taken for another source), or a twin (this task id or this ref written meanwhile), rolled back."""
    conn = session.connection()
    if conn.execute(FILE_ID_BY_REF, {"bucket_id": job.bucket_id, "ref": job.ref}).first() is None:
        # A new ref (the common case): the rows by Core statements, as the producer writes them (no ORM flush).
        now = utcnow()
        operation = {
            **op_values(OpKind(kind), storable_json(job_args(job)), None, now),
            "task_id": task_id,
            "status": OpStatus.RUNNING.value,
        }
        try:
            operation["file_id"] = insert_one(conn, TrackFile, new_row_values(job, now))
            op_id = insert_one(conn, Operation, operation)
            session.commit()
        except IntegrityError:  # a twin: this task id or this ref written meanwhile
            session.rollback()
            return None
        return op_id
    existing = by_ref(session, job.bucket_id, job.ref)
    try:
        plan = plan_upload(existing, job)
    except InputError:
        return None
    if plan not in (UploadPlan.NEW, UploadPlan.REUPLOAD):
        return None
    try:
        row = prepare_upload_row(session, existing, job)
        op = Operation(
            kind=kind,
            args=storable_json(job_args(job)),
            task_id=task_id,
            bucket_id=job.bucket_id,
            file_id=row.id,
            status=OpStatus.RUNNING,
        )
        session.add(op)
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    return op.id


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


def set_remote_state(row: TrackFile, state: int | str) -> None:
    previous = row.status
    row.remote_state = state if isinstance(state, int) else None  # a named state is kept in the reason
    row.status = FileStatus.of_remote_state(state)
    row.reason = state_reason(state)
    row.updated_at = utcnow()
    events.file_changed_here(row, previous)  # in the transaction its caller commits


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
    """The bucket's files carrying this row's ref (in ``audio_id`` or user_defined, see identity.py).
    Search matches titles: look under the title and bucket the last POST used (an update or a move may
    have changed them since)."""
    bucket = row.posted_bucket_id or row.bucket_id
    return [f for f in client.iter_files(bucket, search=row.posted_title or row.title) if carries_ref(f, row.ref)]


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
        # The ref travels with every update: a PUT replaces user_defined, and the key must stay on the file.
        remote = client.update_file(
            row.bucket_id, row.remote_id, title=row.title, user_defined=tagged(row.user_defined, row.ref)
        )
    row.synced_meta_version = version
    if remote.state in (0, 1, -1):
        set_remote_state(row, remote.state)
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    return True
