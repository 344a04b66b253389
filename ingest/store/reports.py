"""What operators ask: counts by state, recent failures with reasons, whether work is held, the managed files and
one file's history (the records behind `status`, `files`, `failures` and `show`, as text or --json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from ingest.store import auth_hold, circuit_breaker, outbox, rejected_messages
from ingest.store.history import FileHistory, arg_ref
from ingest.store.models import Operation, OpStatus, ParkedFollowup, TrackFile


def file_counts(session: Session) -> dict[str, int]:
    rows = session.exec(select(TrackFile.status, func.count()).group_by(TrackFile.status)).all()
    return {status: n for status, n in rows}


def operation_counts(session: Session) -> dict[str, dict[str, int]]:
    rows = session.exec(
        select(Operation.kind, Operation.status, func.count()).group_by(Operation.kind, Operation.status)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for kind, status, n in rows:
        out.setdefault(kind, {})[status] = n
    return out


def failed_operations(
    *,
    kind: str | None = None,
    bucket_id: int | None = None,
    since: datetime | None = None,
    statuses: tuple[OpStatus, ...] = (OpStatus.FAILED,),
    reason: str | None = None,
    exclude_prefix: str | None = None,
) -> SelectOfScalar[Operation]:
    """The query behind `acr-ingest failures` (failed and partial) and `retry-failed` (failed only).
    ``reason``: a substring of the error (any case); ``exclude_prefix``: leave out errors starting with it
    (e.g. bad input)."""
    query = select(Operation).where(col(Operation.status).in_(statuses))
    if reason:
        query = query.where(func.lower(col(Operation.error)).contains(reason.lower(), autoescape=True))
    if exclude_prefix:
        query = query.where(~func.coalesce(col(Operation.error), "").startswith(exclude_prefix, autoescape=True))
    if kind:
        query = query.where(Operation.kind == kind)
    if bucket_id is not None:
        query = query.where(Operation.bucket_id == bucket_id)
    if since is not None:
        query = query.where(Operation.updated_at >= since)
    return query


def total(session: Session, query: SelectOfScalar[Any]) -> int:
    """How many rows ``query`` matches (a listing cut at its limit says "showing N of total")."""
    return int(session.exec(select(func.count()).select_from(query.subquery())).one())


def failures_query(
    *,
    kind: str | None = None,
    bucket_id: int | None = None,
    since: datetime | None = None,
    reason: str | None = None,
) -> SelectOfScalar[Operation]:
    # A partial batch (some names not found) is a failure to look at too; retry-failed still only re-sends failed.
    return failed_operations(
        kind=kind, bucket_id=bucket_id, since=since, reason=reason, statuses=(OpStatus.FAILED, OpStatus.PARTIAL)
    )


def failures(
    session: Session,
    *,
    kind: str | None = None,
    bucket_id: int | None = None,
    since: datetime | None = None,
    reason: str | None = None,
    limit: int | None = 50,
) -> list[Operation]:
    query = failures_query(kind=kind, bucket_id=bucket_id, since=since, reason=reason)
    return list(session.exec(query.order_by(col(Operation.updated_at).desc()).limit(limit)).all())


def failure_record(op: Operation) -> dict[str, Any]:
    """One failed or partial operation as `failures --json` and `status --json` give it: the text's columns
    under stable keys (``error`` the reason, ``at`` when it last changed)."""
    return {
        "operation_id": op.id,
        "kind": op.kind,
        "status": op.status,
        "bucket_id": op.bucket_id,
        "ref": arg_ref(op.args),
        "attempts": op.attempts,
        "at": op.updated_at.isoformat(),
        "error": op.error,
    }


def parked_followups(session: Session) -> dict[str, Any] | None:
    """Follow-ups waiting for the upload of a ref not seen yet (see ``ingest.jobs.parked_followups``)."""
    refs, operations, oldest, until = session.exec(
        select(
            func.count(),
            func.count(func.distinct(ParkedFollowup.operation_id)),
            func.min(ParkedFollowup.created_at),
            func.min(ParkedFollowup.until),
        )
    ).one()
    if not refs:
        return None
    return {"operations": operations, "refs": refs, "since": oldest.isoformat(), "first_horizon": until.isoformat()}


def status_report(session: Session, *, failure_limit: int = 10) -> dict[str, Any]:
    hold = auth_hold.current(session)
    outage = circuit_breaker.current(session)
    return {
        "api_down": None
        if outage is None or outage.opened_at is None
        else {
            "reason": outage.reason,
            "since": outage.opened_at.isoformat(),
            "last_probe": outage.last_probe.isoformat(),
            "held_tasks": outage.held_tasks,
        },
        "waiting_for_uploads": parked_followups(session),
        "files": file_counts(session),
        "operations": operation_counts(session),
        "unpublished": outbox.unsent_count(session),  # jobs whose message has not reached the broker yet
        "held": None
        if hold is None
        else {
            "reason": hold.reason,
            "since": hold.since.isoformat(),
            "held_tasks": hold.held_tasks,
        },
        "recent_failures": [failure_record(op) for op in failures(session, limit=failure_limit)],
        "failures_total": total(session, failures_query()),
        "rejected_messages": {
            "count": rejected_messages.count(session),
            "latest": [
                {"id": m.id, "at": m.received_at.isoformat(), "queue": m.queue, "task": m.task, "reason": m.reason}
                for m in rejected_messages.latest(session)
            ],
        },
    }


def files_query(*, bucket_id: int | None = None, status: str | None = None) -> SelectOfScalar[TrackFile]:
    query = select(TrackFile)
    if bucket_id is not None:
        query = query.where(TrackFile.bucket_id == bucket_id)
    if status:
        query = query.where(TrackFile.status == status)
    return query


def files(
    session: Session, *, bucket_id: int | None = None, status: str | None = None, limit: int | None = 200
) -> list[TrackFile]:
    query = files_query(bucket_id=bucket_id, status=status)
    return list(session.exec(query.order_by(col(TrackFile.id)).limit(limit)).all())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def file_record(row: TrackFile) -> dict[str, Any]:
    """One managed file as `files --json` and `show --json` give it: the text's columns under stable keys
    (``row_id`` ours, ``remote_id`` the API's numeric id, ``remote_state`` its processing state), with what the
    upload posted (``send_as``; a fingerprint's ``fingerprint_bytes`` and ``duration_ms`` once it was made)."""
    return {
        "row_id": row.id,
        "ref": row.ref,
        "bucket_id": row.bucket_id,
        "title": row.title,
        "status": row.status,
        "remote_state": row.remote_state,
        "remote_id": row.remote_id,
        "acr_id": row.acr_id,
        "source": row.source,
        "data_type": row.data_type,
        "send_as": row.send_as,
        "fingerprint_bytes": row.fingerprint_bytes,
        "duration_ms": row.duration_ms,
        "attempts": row.attempts,
        "reason": row.reason,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def history_record(h: FileHistory) -> dict[str, Any]:
    """`show --json`: the file's record and every operation that touched it, oldest first, each with the outcomes
    a batch recorded for the names that mean this file."""
    return {
        **file_record(h.file),
        "operations": [
            {
                "operation_id": op.id,
                "kind": op.kind,
                "bucket_id": op.bucket_id,
                "status": op.status,
                "attempts": op.attempts,
                "throttled": op.throttled,
                "created_at": _iso(op.created_at),
                "finished_at": _iso(op.finished_at),
                "outcomes": outcomes,
                "error": op.error,
            }
            for op, outcomes in h.operations
        ],
    }
