"""The periodic state poll: files still processing are fetched ``ids_chunk_size`` at a time (one GET
of comma-separated ids per chunk, so a cycle costs ceil(n/chunk) calls) under a lease, so two beats
or overlapping cycles never poll twice."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, select

from ingest.api.errors import ApiError, AuthError, NotFoundError, RateLimitedError, TransientError
from ingest.api.schemas import BucketFile
from ingest.jobs import events
from ingest.jobs.batches import chunks
from ingest.jobs.context import JobContext
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.identity import same_meta
from ingest.jobs.inputs import validate_move_batch
from ingest.jobs.managed_files import file_lease, files_with_ref, state_reason, sync_meta
from ingest.jobs.parked_followups import wake_due
from ingest.jobs.presence import files_present
from ingest.jobs.runner import claim_stale
from ingest.settings import Settings, get_settings
from ingest.store import auth_hold, leases, outbox
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OpKind, OpStatus, TrackFile, utcnow

log = logging.getLogger("ingest.poll")
LEASE = "poll_states"
VANISHED = "no longer in the bucket (deleted outside acr-ingest?)"
VERIFY_BATCH = 50  # files checked per cycle (a few calls each); the rest wait for the next one
# Longer than a cycle can take; a poll whose worker died frees the lease after this.
POLL_LEASE_SECONDS = 120


# The poll's reads, built once (a cycle runs every few seconds, most of them with nothing to do); a bucket's
# poll adds its filter.
_PROCESSING = (
    select(TrackFile.id, TrackFile.bucket_id, TrackFile.remote_id)
    .where(TrackFile.status == FileStatus.PROCESSING, col(TrackFile.remote_id).is_not(None))
    .order_by(col(TrackFile.id))
)
_VERIFY_DUE = (
    select(TrackFile)
    .where(
        col(TrackFile.verify_after) <= bindparam("b_now"),
        col(TrackFile.remote_id).is_not(None),
        col(TrackFile.status).in_(FileStatus.verifiable()),
    )
    .order_by(col(TrackFile.id))
    .limit(VERIFY_BATCH)
)


def poll_states(ctx: JobContext, bucket_id: int | None = None) -> dict[str, Any]:
    """One cycle over every processing file (or one bucket's); returns counts, including API calls."""
    settings = ctx.settings
    counts = {
        "checked": 0,
        "ready": 0,
        "error": 0,
        "vanished": 0,
        "calls": 0,
        "verified": 0,
        "duplicates_removed": 0,
        "metadata_resent": 0,
    }
    with session_scope() as s:
        if not leases.acquire(s, LEASE, ctx.owner, max(POLL_LEASE_SECONDS, settings.poll_interval * 2)):
            return {"skipped": "another poll is running"}
        try:
            if not auth_hold.may_call(s, settings.current_token(), settings.auth_hold_recheck):
                return {"skipped": "held: the API rejects the access token"}
            query = _PROCESSING
            if bucket_id is not None:
                query = query.where(TrackFile.bucket_id == bucket_id)
            rows = s.exec(query).all()
            by_bucket: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for file_id, bucket, remote_id in rows:
                # A stored row has an id, and the query excludes a missing remote_id.
                assert file_id is not None and remote_id is not None
                by_bucket[bucket].append((file_id, remote_id))
            for bucket, items in by_bucket.items():
                for chunk in chunks(items, settings.ids_chunk_size):
                    counts["calls"] += 1
                    try:
                        # A 404 for the chunk is not "all gone": the API may refuse a list for one missing id.
                        found = {f.id: f for f in files_present(ctx.client, bucket, [r for _, r in chunk])}
                    except TransientError as exc:  # this chunk waits for the next cycle; go on
                        counts["call_errors"] = counts.get("call_errors", 0) + 1
                        log.info("state poll: %s", exc)
                        continue
                    _record_states(s, bucket, [(f, found.get(r)) for f, r in chunk], counts, settings)
                    s.commit()
            _verify_due(s, ctx, counts, bucket_id)
            if counts["calls"] or counts["verified"]:  # a cycle that called nothing proved nothing of the token
                auth_hold.lift(s)
        except AuthError as exc:
            auth_hold.hold(s, settings.current_token(), str(exc))
            counts["held"] = 1
        except (RateLimitedError, RetryLater) as exc:  # the API's or our budget is spent: next cycle
            log.info("state poll paused until the next cycle: %s", exc)
            counts["error_stop"] = 1
        except ApiError as exc:  # transient: the next cycle tries again
            log.warning("state poll stopped early: %s", exc)
            counts["error_stop"] = 1
        finally:
            leases.release(s, LEASE, ctx.owner)
    if counts["checked"]:
        log.info("state poll: %s", counts)
    return counts


def _record_states(
    s: Session,
    asked_bucket: int,
    seen: list[tuple[int, BucketFile | None]],
    counts: dict[str, Any],
    settings: Settings,
) -> None:
    """Write what the poll saw for one chunk: one SELECT, then one UPDATE per distinct change (a file still
    processing as before is not written at all). Only rows still processing in that bucket change (a delete
    or move committed meanwhile wins)."""
    remote_of = dict(seen)
    current = s.exec(
        select(TrackFile.id, TrackFile.remote_state, TrackFile.missing_since).where(
            col(TrackFile.id).in_(list(remote_of)),
            col(TrackFile.status) == FileStatus.PROCESSING,
            col(TrackFile.bucket_id) == asked_bucket,
        )
    ).all()
    changes: dict[tuple[tuple[str, Any], ...], list[int]] = defaultdict(list)
    now = utcnow()
    moving: set[object] | None = None  # read once per chunk, and only when a missing file may be vanished
    for file_id, remote_state, missing_since in current:
        assert file_id is not None
        counts["checked"] += 1
        remote = remote_of[file_id]
        if remote is None and missing_since is not None and _vanished(missing_since, settings):
            moving = _moving_out(s, asked_bucket, settings) if moving is None else moving
            row = s.get(TrackFile, file_id) if moving else None  # rare: a file gone past the grace time
            if row is not None and moving & {("ref", row.ref), ("id", row.remote_id), ("acr_id", row.acr_id)}:
                # Our own unfinished move took it (a slow or timed-out move whose retry has not landed yet):
                # the move ends it, moving the row to the target bucket, where the poll finds it again.
                counts["moving"] = counts.get("moving", 0) + 1
                continue
        values = _change(remote, remote_state, missing_since, counts, settings, now)
        if values:
            changes[tuple(sorted(values.items()))].append(file_id)
    for values_key, ids in changes.items():
        s.execute(
            update(TrackFile)
            .where(
                col(TrackFile.id).in_(ids),
                col(TrackFile.status) == FileStatus.PROCESSING,
                col(TrackFile.bucket_id) == asked_bucket,
            )
            .values(**dict(values_key))
        )
        values = dict(values_key)
        if "status" in values and get_settings().events_enabled:  # the rows this UPDATE moved: ready or error now
            moved = s.exec(
                select(TrackFile).where(
                    col(TrackFile.id).in_(ids),
                    col(TrackFile.status) == values["status"],
                    col(TrackFile.updated_at) == values["updated_at"],
                )
            ).all()
            for row in moved:
                events.file_changed(s, row, FileStatus.PROCESSING)  # committed with the chunk's states


def _change(
    remote: BucketFile | None,
    remote_state: int | None,
    missing_since: datetime | None,
    counts: dict[str, Any],
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    """What to write for one processing row given what the API answered (empty: nothing changed)."""
    if remote is None:
        if missing_since is None:
            return {"missing_since": now}
        if not _vanished(missing_since, settings):
            return {}
        counts["vanished"] += 1
        return {"status": FileStatus.ERROR, "reason": VANISHED, "updated_at": now}
    if remote.state == 0:
        return {} if remote_state == 0 and missing_since is None else {"remote_state": 0, "missing_since": None}
    status = FileStatus.of_remote_state(remote.state)
    counts["ready" if status == FileStatus.READY else "error"] += 1
    return {
        "remote_state": remote.state if isinstance(remote.state, int) else None,
        "status": status,
        "missing_since": None,
        "updated_at": now,
        "reason": state_reason(remote.state),
    }


def _moving_out(s: Session, bucket_id: int, settings: Settings) -> set[object]:
    """The files unfinished move_batch operations out of ``bucket_id`` name, as ("ref"|"id"|"acr_id", value)."""
    named: set[object] = set()
    ops = s.exec(
        select(Operation.args).where(
            Operation.kind == OpKind.MOVE_BATCH,
            Operation.bucket_id == bucket_id,
            col(Operation.status).in_(OpStatus.unfinished()),
        )
    ).all()
    for args in ops:
        try:  # the operation keeps its arguments as sent: read them as the job reads them
            targets = validate_move_batch(dict(args), settings).targets
        except InputError:
            continue
        named.update(("ref", r) for r in targets.refs)
        named.update(("id", i) for i in targets.ids)
        named.update(("acr_id", a) for a in targets.acr_ids)
    return named


def _vanished(missing_since: datetime, settings: Settings) -> bool:
    """A file missing from one answer is not gone yet: a move may be landing (the row changes bucket
    just after the API answers). It is gone when it is still missing a while later."""
    return (utcnow() - _aware(missing_since)).total_seconds() > settings.late_request_seconds


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _verify_due(s: Session, ctx: JobContext, counts: dict[str, Any], bucket_id: int | None) -> None:
    """Files where a request may have landed after we gave up on it: remove a late duplicate upload,
    and send the metadata again if a late update put an older version back."""
    query = _VERIFY_DUE
    if bucket_id is not None:
        query = query.where(TrackFile.bucket_id == bucket_id)
    rows = s.exec(query, params={"b_now": utcnow()}).all()
    for row in rows:
        try:
            _verify_one(s, row, ctx, counts)
        except TransientError as exc:  # this file is checked again next cycle
            counts["call_errors"] = counts.get("call_errors", 0) + 1
            log.info("verify %r: %s", row.ref, exc)
            s.rollback()


def _verify_one(s: Session, row: TrackFile, ctx: JobContext, counts: dict[str, Any]) -> None:
    client = ctx.client
    keep = None if row.status == FileStatus.DELETED else row.remote_id  # a deleted ref keeps no file
    twins = [f.id for f in files_with_ref(client, row) if f.id != keep]
    if twins:
        log.warning("ref %r: removing %d late duplicate(s) %s of file %s", row.ref, len(twins), twins, row.remote_id)
        client.delete_files(row.posted_bucket_id or row.bucket_id, twins)
        counts["duplicates_removed"] += len(twins)
    try:
        (remote,) = client.get_files(row.bucket_id, [keep]) if keep is not None else [None]
    except (NotFoundError, ValueError):
        remote = None
    if remote is not None and not same_meta(remote, row.title, row.user_defined):
        try:
            with file_lease(s, row, ctx):
                row.synced_meta_version = 0
                s.add(row)
                s.commit()
                sync_meta(s, row, client, ctx.settings)
            counts["metadata_resent"] += 1
        except RetryLater:
            return  # someone is changing it right now; check again next cycle
    s.refresh(row)
    if row.verify_after is not None and row.verify_after <= utcnow():
        row.verify_after = None
        s.add(row)
        s.commit()
    counts["verified"] += 1


def poll_cycle(ctx: JobContext, publish_outbox: Callable[[], int]) -> dict[str, Any]:
    """What the periodic task does: one poll, then (only the poll holding the lease) put back in the outbox
    the operations whose message was lost and the parked follow-ups whose upload has landed, and publish
    what the outbox holds unsent (a message never sent at enqueue time, or one sent again): one publishing
    path for all."""
    counts = poll_states(ctx)
    if "skipped" not in counts:
        with session_scope() as s:
            stale = claim_stale(s, ctx.settings.resend_after_seconds)
            woken = wake_due(s)
            for op in {op.id: op for op in stale + woken}.values():  # one message each
                assert op.task_id is not None
                outbox.rearm(
                    s, kind=outbox.TASK, destination=OpKind(op.kind).task_name, message_id=op.task_id, payload=op.args
                )
        counts["resent"] = len(stale)
        counts["woken"] = len(woken)
        counts["published"] = publish_outbox()
    return counts
