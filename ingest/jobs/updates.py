"""The update_meta handler. An update is merged once into the file's desired metadata (a new version);
what is sent is always the latest desired state, under the file's lease, so replays and reordering
never put an older title back."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, select

from ingest.jobs.context import JobContext
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.inputs import UpdateMetaJob
from ingest.jobs.managed_files import apply_meta, by_ref, file_lease, sync_meta, unknown_ref
from ingest.jobs.parked_followups import RefWait, park, ref_wait
from ingest.settings import Settings
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, TrackFile

log = logging.getLogger("ingest.jobs.updates")


def find_managed(
    session: Session, bucket_id: int, *, ref: str | None = None, file_id: int | None = None, acr_id: str | None = None
) -> TrackFile | None:
    if ref is not None:
        return by_ref(session, bucket_id, ref)
    query = select(TrackFile).where(TrackFile.bucket_id == bucket_id)
    query = (
        query.where(TrackFile.remote_id == file_id) if file_id is not None else query.where(TrackFile.acr_id == acr_id)
    )
    return session.exec(query).first()


def wait_for_unknown_ref(session: Session, op_id: int, bucket_id: int, ref: str, settings: Settings) -> dict[str, Any]:
    """A ref whose upload may still be on its way: retry a while, then park the update until the upload
    lands (``parked_followups``); past the horizon it is bad input."""
    op = session.get(Operation, op_id)
    assert op is not None
    wait = ref_wait(op.created_at, settings)
    if wait is RefWait.RETRY:
        raise RetryLater(
            settings.dependency_wait, f"ref {ref!r} not known yet in bucket {bucket_id}: waiting for its upload"
        )
    if wait is RefWait.PARK:
        return park(session, op, bucket_id, [ref], settings)
    raise unknown_ref(ref, bucket_id)


def handle_update(job: UpdateMetaJob, op_id: int, ctx: JobContext) -> dict[str, Any]:
    with session_scope() as s:
        row = find_managed(s, job.bucket_id, ref=job.ref, file_id=job.file_id, acr_id=job.acr_id)
        if row is None:
            if job.ref is not None:
                return wait_for_unknown_ref(s, op_id, job.bucket_id, job.ref, ctx.settings)
            # A file this tool does not manage: update it as asked.
            target = job.file_id if job.file_id is not None else job.acr_id
            assert target is not None
            remote = ctx.client.update_file(job.bucket_id, target, title=job.title, user_defined=job.user_defined)
            return {"id": remote.id, "acr_id": remote.acr_id, "managed": False}
        file_id = row.id
    assert file_id is not None
    return update_row_meta(file_id, op_id, job.title, job.user_defined, ctx)


def update_row_meta(
    file_id: int, op_id: int, title: str | None, user_defined: dict[str, Any] | None, ctx: JobContext
) -> dict[str, Any]:
    with session_scope() as s:
        row = s.get(TrackFile, file_id)
        op = s.get(Operation, op_id)
        assert row is not None and op is not None
        if op.file_generation is None:  # a message sent by name: it names the file its ref has now
            op.file_generation = row.generation
        elif op.file_generation != row.generation:
            reason = (
                f"skipped: ref {row.ref!r} was uploaded again since this update was asked for; "
                "it applied to the earlier file, not to this one"
            )
            log.info("update %s: %s", op_id, reason)
            return {"file_id": row.id, "skipped": reason}
        if not op.applied:  # merge this update into the desired state exactly once, in enqueue order
            assert op.id is not None
            apply_meta(s, file_id, title, user_defined, op.id)
            op.applied = True
            op.file_id = file_id
            s.add(op)
            s.commit()
            s.refresh(row)
        if row.status in (FileStatus.DELETED, FileStatus.CANCELLED):
            raise InputError({"ref": f"{row.ref!r} was deleted from bucket {row.bucket_id}; nothing to update"})
        if row.status == FileStatus.FAILED:
            raise InputError(
                {
                    "ref": (
                        f"the upload of {row.ref!r} failed ({row.reason}); the new metadata is kept and is sent "
                        "when the upload is retried (acr-ingest retry-failed)"
                    )
                }
            )
        if row.remote_id is None:
            raise RetryLater(ctx.settings.dependency_wait, f"waiting for the upload of ref {row.ref!r}")
        with file_lease(s, row, ctx):
            sent = sync_meta(s, row, ctx.client, ctx.settings)
        return {"file_id": row.id, "id": row.remote_id, "acr_id": row.acr_id, "sent": sent}
