"""Follow-ups (update, delete, move) naming a ref no worker has seen yet: kept until its upload lands.

Another system may send an upload and its follow-up back to back, and the upload can come back much
later: a worker killed while holding it leaves it unacknowledged until the broker's visibility timeout
(3600 s by default), and its retry countdowns are capped at half that. So a ref not seen yet:

1. for ``UNKNOWN_REF_WAITS`` x ``DEPENDENCY_WAIT`` after the follow-up first ran, it is retried (the
   common case: the upload is being handled right now by another worker);
2. then, until the horizon (``UNKNOWN_REF_HORIZON``, default 2 x the visibility timeout: the
   redelivery, a countdown and the upload's own run fit in it), the follow-up is PARKED: a row per
   ref here, the operation left ``waiting`` with the reason, its message acknowledged. No worker thread
   is held and nothing circulates through the broker. The state poll wakes it (sends it again under
   its task id) as soon as a row for the ref appears, and the follow-up then runs as for any known
   ref: an update is merged and sent, a delete cancels an upload not sent yet or deletes the file
   right after it lands, a move moves it;
3. after the horizon the poll wakes it too, and it reports the ref as ``unknown_ref`` (a failed update,
   a partial batch): visible in ``status``/``failures``, never dropped silently.

Should a wake message be lost, the operation is still unfinished and the poll's resend of stale
operations (``RESEND_AFTER``) sends it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete
from sqlmodel import Session, col, select

from ingest.settings import Settings
from ingest.store.models import Operation, OpStatus, ParkedFollowup, TrackFile, utcnow

# How many dependency waits a follow-up naming a ref not seen yet is retried before it is parked.
UNKNOWN_REF_WAITS = 6


class RefWait(StrEnum):
    RETRY = "retry"  # the upload is probably being handled right now: retry after DEPENDENCY_WAIT
    PARK = "park"  # it may still come back (a killed worker's message): park until it lands
    UNKNOWN = "unknown"  # past the horizon: report the ref as unknown


def ref_wait(asked_at: datetime, settings: Settings) -> RefWait:
    """What a follow-up first run at ``asked_at`` does about a ref no row has (yet)."""
    age = utcnow() - asked_at
    if age < timedelta(seconds=settings.dependency_wait * UNKNOWN_REF_WAITS):
        return RefWait.RETRY
    if age < timedelta(seconds=settings.unknown_ref_horizon_seconds):
        return RefWait.PARK
    return RefWait.UNKNOWN


def horizon(asked_at: datetime, settings: Settings) -> datetime:
    return asked_at + timedelta(seconds=settings.unknown_ref_horizon_seconds)


def park(session: Session, op: Operation, bucket_id: int, refs: list[str], settings: Settings) -> dict[str, Any]:
    """Keep the operation's unknown refs as parked rows (replacing any earlier ones); returns the handler
    result that leaves the operation ``waiting`` with the reason, for a human and for ``status``."""
    assert op.id is not None
    until = horizon(op.created_at, settings)
    session.execute(delete(ParkedFollowup).where(col(ParkedFollowup.operation_id) == op.id))
    for ref in dict.fromkeys(refs):
        session.add(ParkedFollowup(operation_id=op.id, bucket_id=bucket_id, ref=ref, until=until))
    session.commit()
    names = ", ".join(repr(r) for r in refs[:5]) + (f" and {len(refs) - 5} more" if len(refs) > 5 else "")
    return {
        "status": OpStatus.WAITING,
        "waiting_for": [f"ref:{r}" for r in refs],
        "error": (
            f"parked: waiting for the upload of ref {names} in bucket {bucket_id}; applied when it lands, "
            f"reported as unknown_ref if it has not by {until.isoformat(timespec='seconds')}"
        ),
    }


# Built once: the poll asks it every cycle.
_ANY_PARKED = select(ParkedFollowup.operation_id).limit(1)


def wake_due(session: Session, limit: int = 500) -> list[Operation]:
    """Parked operations to run again now: a parked ref has landed, or the horizon has passed. Their
    parked rows are removed (a run that still finds refs missing parks them again) and the operations
    marked touched; the caller sends them under their task id. Rows of finished operations are dropped."""
    if session.execute(_ANY_PARKED).first() is None:  # the usual cycle: nothing parked, one cheap read
        return []
    now = utcnow()
    finished = (
        select(ParkedFollowup.operation_id)
        .join(Operation, col(Operation.id) == col(ParkedFollowup.operation_id))
        .where(col(Operation.status).in_(OpStatus.final()))
    )
    session.execute(delete(ParkedFollowup).where(col(ParkedFollowup.operation_id).in_(finished)))
    landed = select(ParkedFollowup.operation_id).join(
        TrackFile,
        and_(col(TrackFile.bucket_id) == col(ParkedFollowup.bucket_id), col(TrackFile.ref) == col(ParkedFollowup.ref)),
    )
    expired = select(ParkedFollowup.operation_id).where(col(ParkedFollowup.until) <= now)
    due = sorted(set(session.exec(landed).all()) | set(session.exec(expired).all()))[:limit]
    ops = [op for op in (session.get(Operation, op_id) for op_id in due) if op is not None and op.task_id]
    session.execute(delete(ParkedFollowup).where(col(ParkedFollowup.operation_id).in_(due)))
    for op in ops:
        op.updated_at = now
        session.add(op)
    session.commit()
    return ops
