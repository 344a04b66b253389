"""The outbox table's queries: add an entry in the caller's transaction, claim what is due (one
publisher per entry at a time), mark it sent or give it back with the error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, exists, func, update
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from ingest.store.bulk import insert_rows, plan_each_query, table_of
from ingest.store.models import Operation, OutboxEntry, utcnow

TASK = "task"  # kind: a Celery task sent by name; destination = the task name, payload = its kwargs
EVENT = "event"  # kind: an event for the catalog system; destination = its routing key, payload = its body
# How long a claimed entry is left to its publisher (a publish with its retries takes seconds) before
# another may take it.
CLAIM_SECONDS = 120.0
_ENTRIES = table_of(OutboxEntry)
# Built once (the one-job path marks an entry per job): SQLAlchemy's compiled cache finds it by a cheap key.
_MARK_SENT = update(_ENTRIES).where(_ENTRIES.c.id == bindparam("entry_id")).values(sent_at=bindparam("sent_at"))
_MARK_SENT_IDS = (
    update(_ENTRIES)
    .where(_ENTRIES.c.id.in_(bindparam("entry_ids", expanding=True)))
    .values(sent_at=func.coalesce(_ENTRIES.c.sent_at, bindparam("sent_at")))
)
# On PostgreSQL a mark commits without waiting for its WAL flush (``synchronous_commit`` off for that statement's
# own transaction: set_config(..., true) in a CTE is still in force when the statement commits). A mark lost to a
# server crash only has the sweeper send the message again after its grace, which the worker runs once (a task id
# runs once); the rows and the entry themselves stay durable. The one-job path then waits for one flush per job,
# not two: under a busy disk 95-103 -> 173-492 marks/s.
_LAZY = select(func.set_config("synchronous_commit", "off", True).label("lazy")).cte("lazy_commit")
_LAZILY = exists(select(_LAZY.c.lazy))
_MARK_SENT_PG = _MARK_SENT.where(_LAZILY)
_MARK_SENT_IDS_PG = _MARK_SENT_IDS.where(_LAZILY)


def _on_postgresql(conn: Session | Connection) -> bool:
    bind = conn if isinstance(conn, Connection) else conn.get_bind()
    return bind.dialect.name == "postgresql"


class Outgoing(Protocol):
    """What a publisher reads of an entry: an ``OutboxEntry``, or one its writer holds as it wrote it."""

    @property
    def kind(self) -> str: ...
    @property
    def destination(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...


def add(
    session: Session, *, kind: str, destination: str, message_id: str, payload: dict[str, Any], grace: float
) -> OutboxEntry:
    """A new entry, left to its writer (who publishes it after the commit) for ``grace`` seconds before
    the sweeper takes it; not committed here: it belongs to the caller's transaction."""
    entry = OutboxEntry(
        kind=kind,
        destination=destination,
        message_id=message_id,
        payload=payload,
        due_at=utcnow() + timedelta(seconds=grace),
    )
    session.add(entry)
    session.flush()
    return entry


def entry_values(
    *, kind: str, destination: str, message_id: str, payload: dict[str, Any], grace: float
) -> dict[str, Any]:
    """A new entry's columns, as ``add`` writes them (for a Core INSERT: ``store/enqueue.py``)."""
    now = utcnow()
    return {
        "kind": kind,
        "destination": destination,
        "message_id": message_id,
        "payload": payload,
        "due_at": now + timedelta(seconds=grace),
        "attempts": 0,
        "created_at": now,
    }


def add_many(session: Session, entries: list[dict[str, Any]], *, grace: float) -> None:
    """Many new task entries in one statement (a bulk enqueue): ``kind``, ``destination``, ``message_id`` and
    ``payload`` each. Not committed here: they belong to the caller's transaction, with their rows."""
    if entries:
        now = utcnow()
        due = now + timedelta(seconds=grace)
        insert_rows(session, OutboxEntry, [{**e, "due_at": due, "attempts": 0, "created_at": now} for e in entries])


def mark_sent_many(session: Session, message_ids: list[str]) -> None:
    """The broker took these messages (a bulk publish); committed. An entry already marked keeps its time.

    Found by message id alone: with ``sent_at IS NULL`` in the WHERE clause PostgreSQL takes the ``sent_at``
    index, whose entries for the versions just updated stay NULL until a vacuum, so each batch read every
    entry marked since (measured: 28 ms at the first of 100 batches, 60-220 ms at the last)."""
    if message_ids:
        plan_each_query(session)
        session.execute(
            update(OutboxEntry)
            .where(col(OutboxEntry.message_id).in_(message_ids))
            .values(sent_at=func.coalesce(OutboxEntry.sent_at, utcnow()))
        )
        session.commit()


def rearm(session: Session, *, kind: str, destination: str, message_id: str, payload: dict[str, Any]) -> None:
    """Have a message published again (its first copy was lost): due now, unsent. Not committed here."""
    entry = session.exec(select(OutboxEntry).where(OutboxEntry.message_id == message_id)).first()
    if entry is None:  # a message another system sent by name: it has no entry yet
        entry = OutboxEntry(kind=kind, destination=destination, message_id=message_id, payload=payload)
    entry.sent_at, entry.due_at = None, utcnow()
    session.add(entry)


def claim(session: Session, entry_id: int) -> bool:
    """Take a due, unsent entry to publish it (a conditional UPDATE: two publishers never both win)."""
    now = utcnow()
    taken = session.execute(
        update(OutboxEntry)
        .where(col(OutboxEntry.id) == entry_id, col(OutboxEntry.sent_at).is_(None), col(OutboxEntry.due_at) <= now)
        .values(due_at=now + timedelta(seconds=CLAIM_SECONDS))
    )
    session.commit()
    return bool(taken.rowcount)  # type: ignore[attr-defined]


def due(session: Session, limit: int) -> list[int]:
    """Ids of unsent entries whose writer did not publish them (oldest first)."""
    query = (
        select(OutboxEntry.id)
        .where(col(OutboxEntry.sent_at).is_(None), col(OutboxEntry.due_at) <= utcnow())
        .order_by(col(OutboxEntry.id))
        .limit(limit)
    )
    return [i for i in session.exec(query).all() if i is not None]


def mark_sent(session: Session | Connection, entry_id: int) -> None:
    """The broker took the entry's message; committed, on PostgreSQL without waiting for the flush (so the
    caller's transaction must hold nothing else that has to be durable: it commits lazily with the mark)."""
    session.execute(
        _MARK_SENT_PG if _on_postgresql(session) else _MARK_SENT, {"entry_id": entry_id, "sent_at": utcnow()}
    )
    session.commit()


def mark_sent_ids(conn: Connection, entry_ids: list[int]) -> None:
    """The broker took these entries' messages (a batch of the background publisher); one statement, committed
    (lazily on PostgreSQL, as ``mark_sent``). By primary key; an entry already marked (the sweeper sent it too)
    keeps its time."""
    if entry_ids:
        conn.execute(
            _MARK_SENT_IDS_PG if _on_postgresql(conn) else _MARK_SENT_IDS, {"entry_ids": entry_ids, "sent_at": utcnow()}
        )
        conn.commit()


def give_back_many(conn: Session | Connection, entry_ids: list[int], error: str) -> None:
    """The publish of these entries failed (one, or a batch the broker did not take): keep them, due at once
    (for the next sweep or a re-run). One statement, committed."""
    if entry_ids:
        conn.execute(
            update(OutboxEntry)
            .where(col(OutboxEntry.id).in_(entry_ids))
            .values(due_at=utcnow(), attempts=OutboxEntry.attempts + 1, last_error=error[:1000])
        )
        conn.commit()


def give_back(session: Session | Connection, entry_id: int, error: str) -> None:
    """The publish failed: keep the entry, due at once (for the next sweep or a re-run)."""
    give_back_many(session, [entry_id], error)


def unsent_of_file(session: Session, file_id: int) -> list[OutboxEntry]:
    """Unsent entries of the operations on a managed file (an upload whose message never left)."""
    query = (
        select(OutboxEntry)
        .join(Operation, col(Operation.task_id) == col(OutboxEntry.message_id))
        .where(Operation.file_id == file_id, col(OutboxEntry.sent_at).is_(None))
        .order_by(col(OutboxEntry.id))
    )
    return list(session.exec(query).all())


def unsent_count(session: Session) -> int:
    return session.exec(select(func.count()).select_from(OutboxEntry).where(col(OutboxEntry.sent_at).is_(None))).one()
