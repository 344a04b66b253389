"""Events for the catalog system: a file became ready or failed, an operation ended.

Written to the outbox in the transaction of the state change they report (so an event is never sent for
a change that rolled back, nor lost for one that committed), one entry per destination: the broker's
events exchange (kind ``event``) and the webhook (a ``ingest.deliver_webhook`` task, retried with
backoff by the worker). Each change is reported once; delivery is at least once (a publisher killed
between the publish and its mark publishes again), so receivers drop repeats by ``event_id``.
The body is described in docs/MESSAGES.md; it never holds the token (nothing here reads it).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import object_session
from sqlmodel import Session, col, select

from ingest.settings import get_settings
from ingest.store import outbox
from ingest.store.history import arg_ref
from ingest.store.models import FileStatus, Operation, OpKind, OpStatus, TrackFile, utcnow

WEBHOOK_TASK = "ingest.deliver_webhook"
VERSION = 1  # of the body: fields are only ever added


def file_states() -> tuple[FileStatus, ...]:
    """The file states reported: ready, or failed in the API (error) or in our hands (failed)."""
    return (FileStatus.READY, FileStatus.ERROR, FileStatus.FAILED)


def file_changed(session: Session, row: TrackFile, previous: str, *, operation: Operation | None = None) -> None:
    """Record the event of a row that just changed status (call it in the transaction of the change)."""
    if row.status == previous or row.status not in file_states() or not get_settings().events_enabled:
        return
    op = operation or _last_upload(session, row)
    _record(
        session,
        f"file.{row.status}",
        {
            "ref": row.ref,
            "bucket_id": row.bucket_id,
            "id": row.remote_id,
            "acr_id": row.acr_id,
            "state": str(row.status),
            "remote_state": row.remote_state,
            "reason": row.reason,
            "operation": _op_ref(op),
        },
    )


def file_changed_here(row: TrackFile, previous: str) -> None:
    """``file_changed`` for a row in a session (a handler's), where no session is passed along."""
    session = object_session(row)
    if session is not None and row.status != previous:
        file_changed(session, row, previous)  # type: ignore[arg-type]


def operation_ended(session: Session, op: Operation, previous: str) -> None:
    """Record the event of an operation that just reached a final status (in the same transaction)."""
    if op.status == previous or op.status not in OpStatus.final() or not get_settings().events_enabled:
        return
    row = session.get(TrackFile, op.file_id) if op.file_id is not None else None
    body: dict[str, Any] = {
        "ref": row.ref if row else arg_ref(op.args),
        "bucket_id": op.bucket_id,
        "id": row.remote_id if row else None,
        "acr_id": row.acr_id if row else None,
        "state": str(op.status),
        "reason": op.error,
        "operation": _op_ref(op),
    }
    counts = (op.result or {}).get("counts")
    if isinstance(counts, dict):  # a batch: how many names ended how (`acr-ingest show` has each name)
        body["counts"] = counts
    _record(session, f"operation.{op.status}", body)


def _op_ref(op: Operation | None) -> dict[str, Any] | None:
    return None if op is None else {"id": op.id, "kind": op.kind, "task_id": op.task_id}


def _last_upload(session: Session, row: TrackFile) -> Operation | None:
    query = (
        select(Operation)
        .where(Operation.file_id == row.id, col(Operation.kind).in_(OpKind.uploads()))
        .order_by(col(Operation.id).desc())
    )
    return session.exec(query).first()


def _record(session: Session, event_type: str, fields: dict[str, Any]) -> None:
    settings = get_settings()
    event_id = str(uuid.uuid4())
    event = {"event_id": event_id, "type": event_type, "version": VERSION, "time": utcnow().isoformat(), **fields}
    # Due at once: the worker publishes due entries right after its job (and the poll sweeps what is left).
    if settings.events_queue:
        outbox.add(session, kind=outbox.EVENT, destination=event_type, message_id=event_id, payload=event, grace=0)
    if settings.webhook_url:
        outbox.add(
            session,
            kind=outbox.TASK,
            destination=WEBHOOK_TASK,
            message_id=f"{event_id}-webhook",  # the delivery task's id: sent twice, it is still one task
            payload={"event": event},
            grace=0,
        )
