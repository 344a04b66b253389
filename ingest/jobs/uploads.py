"""The upload handler: exactly one file in the bucket per (bucket, ref), whatever fails on the way.

Before a POST the row is marked ``post_started_at`` and committed; an attempt that finds that mark
(a timeout or 5xx after the server created the file, or a worker killed after the POST) first searches
the bucket for a file whose ``audio_id`` is our ref and adopts it instead of posting again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from ingest.api.client import AcrCloudClient
from ingest.api.errors import ApiError, TransientError
from ingest.api.schemas import BucketFile
from ingest.fingerprints import Fingerprint, NotDecodable, extract_in_pool, unavailable_reason
from ingest.jobs.context import JobContext, continues_start, first_transaction
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.identity import REF_KEY, same_meta, tagged
from ingest.jobs.inputs import resolve_media_path
from ingest.jobs.managed_files import (
    UploadJob,
    UploadPlan,
    adopt,
    by_ref,
    files_with_ref,
    plan_upload,
    prepare_upload_row,
    sync_meta,
    verify_if_ambiguous,
    verify_later,
)
from ingest.jobs.updates import update_row_meta
from ingest.settings import Settings
from ingest.store.db import session_scope
from ingest.store.leases import claim_file, claim_file_of_operation, kept_alive, release_file
from ingest.store.models import FileStatus, Operation, TrackFile, utcnow
from ingest.store.row_writes import write_changes

log = logging.getLogger("ingest.jobs.uploads")


def find_in_bucket(client: AcrCloudClient, row: TrackFile) -> BucketFile | None:
    """The file an earlier attempt may have created (the lowest id, if several)."""
    matches = files_with_ref(client, row)
    if len(matches) > 1:
        log.warning(
            "ref %r has %d files (%s); adopting the first, the poll removes the rest",
            row.ref,
            len(matches),
            ", ".join(str(m.id) for m in matches),
        )
    return min(matches, key=lambda f: f.id) if matches else None


def _post(client: AcrCloudClient, row: TrackFile, ctx: JobContext) -> BucketFile:
    if row.data_type == "audio_url":
        return client.upload_url(
            row.bucket_id, row.source, title=row.title, user_defined=tagged(row.user_defined, row.ref), audio_id=row.ref
        )
    resolved = resolve_media_path(row.source, ctx.settings)
    assert resolved is not None
    if row.send_as == "fingerprint" and row.data_type == "audio":
        fingerprint = _fingerprint(row, resolved[0], ctx.settings)
        return client.upload_bytes(
            row.bucket_id,
            fingerprint.data,
            name=f"{resolved[0].stem}.fp",
            title=row.title,
            data_type="fingerprint",
            user_defined=tagged(row.user_defined, row.ref),
            audio_id=row.ref,
        )
    return client.upload_file(
        row.bucket_id,
        resolved[0],
        title=row.title,
        data_type=row.data_type,
        user_defined=tagged(row.user_defined, row.ref),
        audio_id=row.ref,
    )


def _fingerprint(row: TrackFile, path: Path, settings: Settings) -> Fingerprint:
    """The audio's fingerprint, made here from the source each time it is posted (never stored: a re-upload
    reads the file as it is now), by the process's low-priority extraction threads (fingerprints/pool.py).
    Audio the library cannot read is bad input, before the API sees it."""
    if why := unavailable_reason():
        raise InputError({"send_as": f"fingerprint: {why}"})
    try:
        fingerprint = extract_in_pool(path, nice=settings.fingerprint_nice)
    except NotDecodable:
        raise InputError(
            {"path": f"not decodable audio: {row.source!r} is no audio the fingerprint library reads"}
        ) from None
    row.fingerprint_bytes, row.duration_ms = len(fingerprint.data), fingerprint.duration_ms
    return fingerprint


def _own_row(job: UploadJob, op_id: int) -> tuple[int | None, dict[str, Any]]:
    """The row this operation uploads, planning it first for a message another system sent."""
    with session_scope() as s:
        op = s.get(Operation, op_id)
        assert op is not None
        if op.file_id is not None:
            return op.file_id, {}
        existing = by_ref(s, job.bucket_id, job.ref)
        plan = plan_upload(existing, job)
        if plan in (UploadPlan.NEW, UploadPlan.REUPLOAD):
            try:
                row = prepare_upload_row(s, existing, job)
                op.file_id = row.id
                s.add(op)
                s.commit()
            except IntegrityError:  # a twin message created the row in between: plan again
                s.rollback()
                return _own_row(job, op_id)
            return op.file_id, {}
        assert existing is not None
        op.file_id = existing.id
        s.add(op)
        s.commit()
        return None, {"plan": str(plan), "file_id": existing.id}


def _wait_for_earlier_post(row: TrackFile, settings: Settings) -> None:
    """An earlier POST may still be on its way (its worker was killed, or we timed out on it): look
    for its file only once it must have ended, or we would post a twin."""
    since = (utcnow() - row.post_started_at).total_seconds() if row.post_started_at else 0.0
    in_flight = settings.connect_timeout + settings.read_timeout - since
    if in_flight > 0:
        raise RetryLater(
            in_flight + 0.1,
            f"ref {row.ref!r}: an earlier upload may still be in flight; looking for its file once it has ended",
        )


def _adopt_earlier(s: Session, row: TrackFile, client: AcrCloudClient) -> bool:
    found = find_in_bucket(client, row)
    if found is None:
        return False
    log.info("ref %r: adopting file %d created by an earlier attempt", row.ref, found.id)
    # The key may be missing from a file an older version uploaded: sync_meta then sends it.
    synced = same_meta(found, row.title, row.user_defined) and carries_ref_key(found, row.ref)
    adopt(row, found, synced_version=row.meta_version if synced else 0)
    s.add(row)
    s.commit()
    return True


def carries_ref_key(remote: BucketFile, ref: str) -> bool:
    return remote.user_defined.get(REF_KEY) == ref


def _may_have_created(exc: Exception) -> bool:
    """Whether a failed POST may still have created the file. Answers (4xx, 429, 401), refusals before
    sending (connection refused, our rate limit, bad input) did not; timeouts, resets, 5xx and the
    unexpected may have."""
    if isinstance(exc, RetryLater | InputError):
        return False
    if isinstance(exc, ApiError):
        return isinstance(exc, TransientError) and exc.maybe_applied
    return True


def _post_once(s: Session, row: TrackFile, ctx: JobContext) -> None:
    """Mark, POST, adopt. The mark (with the try counted) is the one commit before the call; the adopt is
    left to the caller's next commit, which also releases the lease."""
    version = row.meta_version
    earlier = row.post_started_at
    if earlier is not None:
        # Posting again after an attempt that may have landed: the poll checks for a late twin.
        verify_later(s, row, ctx.settings)
    row.post_started_at = utcnow()
    row.posted_bucket_id, row.posted_title = row.bucket_id, row.title
    row.status = FileStatus.UPLOADING
    row.updated_at = utcnow()
    s.add(row)
    write_changes(s, row)  # one UPDATE, without a flush's unit of work
    s.commit()  # committed before the POST: a later attempt knows to look first
    try:
        with verify_if_ambiguous(s, row, ctx.settings):
            remote = _post(ctx.client, row, ctx)
    except Exception as exc:
        if not _may_have_created(exc):  # e.g. a 429: no file to look for, no need to wait next time
            row.post_started_at = earlier
            if isinstance(exc, RetryLater):  # deferred by our own rate limit: not a try at all
                row.attempts -= 1
            s.add(row)
            s.commit()
        raise
    # An update merged while the POST was out bumped meta_version: read it (only it), so sync_meta sends it.
    set_committed_value(row, "meta_version", s.connection().execute(_META_VERSION, {"b_id": row.id}).scalar())
    adopt(row, remote, synced_version=version)
    s.add(row)


def _upload_leased(s: Session, row: TrackFile, ctx: JobContext) -> dict[str, Any]:
    """The upload of a row whose lease this job holds (taken in the session's open transaction)."""
    if row.status == FileStatus.CANCELLED:
        return {"file_id": row.id, "cancelled": True}
    adopted = False
    if row.remote_id is None:
        if row.post_started_at is not None:
            _wait_for_earlier_post(row, ctx.settings)
        row.attempts += 1  # one more try at getting this file into the bucket
        s.add(row)
        if row.post_started_at is not None:  # looking first: the try counts even if the search fails
            s.commit()
            adopted = _adopt_earlier(s, row, ctx.client)
        if not adopted:
            _post_once(s, row, ctx)
    if adopted or row.synced_meta_version < row.meta_version:
        s.commit()  # the adopt kept before another call
        sync_meta(s, row, ctx.client, ctx.settings)
    return {"file_id": row.id, "id": row.remote_id, "acr_id": row.acr_id, "adopted": adopted}


def _upload_claimed(s: Session, row: TrackFile, ctx: JobContext) -> dict[str, Any]:
    """Run the upload under the lease (kept alive while it runs). The lease goes with the last commit: on
    success in the adopt's own UPDATE, on any exception by its own."""
    assert row.id is not None
    try:
        with kept_alive(row.id, ctx.owner, ctx.settings.lease_seconds):
            result = _upload_leased(s, row, ctx)
    except BaseException:
        s.rollback()
        release_file(s, row.id, ctx.owner)
        raise
    row.lease_owner, row.lease_until = None, None
    s.add(row)
    write_changes(s, row)  # the adopt and the lease's end: one UPDATE, without a flush's unit of work
    if ctx.record_outcome is not None:  # the operation's outcome in the same commit
        ctx.record_outcome(s, result)
    s.commit()
    return result


# The hot path's reads, built once.
_META_VERSION = select(TrackFile.meta_version).where(col(TrackFile.id) == bindparam("b_id"))
_ROW_OF_OPERATION = (
    select(TrackFile)
    .join(Operation, col(Operation.file_id) == col(TrackFile.id))
    .where(col(Operation.id) == bindparam("b_op_id"))
)


@continues_start
def handle_upload(job: UploadJob, op_id: int, ctx: JobContext) -> dict[str, Any]:
    with first_transaction(ctx) as s:
        # The common case: the producer planned the row and nobody holds it. One statement takes it, in the
        # transaction that marked the operation running; the mark before the POST commits both.
        if claim_file_of_operation(s, op_id, ctx.owner, ctx.settings.lease_seconds):
            row = s.exec(_ROW_OF_OPERATION, params={"b_op_id": op_id}).one()
            return _upload_claimed(s, row, ctx)
        s.commit()  # the start kept (the claim took nothing)

    file_id, planned = _own_row(job, op_id)
    if file_id is None:  # same ref already here: nothing to post, maybe metadata to update
        if planned["plan"] == UploadPlan.NOOP:  # same source and metadata: the row's own upload covers it
            return {**planned, "sent": False}
        return {**planned, **update_row_meta(planned["file_id"], op_id, job.title, job.user_defined, ctx)}

    with session_scope() as s:
        found = s.get(TrackFile, file_id)
        assert found is not None
        if found.status == FileStatus.CANCELLED:
            return {"file_id": file_id, "cancelled": True}
        taken, remaining = claim_file(s, file_id, ctx.owner, ctx.settings.lease_seconds)
        if not taken:
            raise RetryLater(
                min(max(remaining, 1.0), ctx.settings.dependency_wait),
                f"ref {found.ref!r} is being changed by another worker",
            )
        s.refresh(found)  # as the lease holder sees it
        return _upload_claimed(s, found, ctx)
