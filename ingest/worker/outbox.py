"""Publishing the outbox (``ingest.store.outbox``): one entry right after its writer's commit, or every
due entry from the poll's sweeper. How an entry is published depends on its ``kind``; a new kind of
message adds its publisher to ``PUBLISHERS``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.engine import Connection

from ingest.jobs.bulk_uploads import Message
from ingest.settings import get_settings
from ingest.store import outbox
from ingest.store.db import autocommit, session_scope
from ingest.store.models import OutboxEntry
from ingest.store.outbox import Outgoing
from ingest.worker.bulk_publish import publish_task
from ingest.worker.events import publish_event

log = logging.getLogger("ingest.outbox")
SWEEP_BATCH = 200


@dataclass(frozen=True)
class Written:
    """An entry its writer just committed, as it wrote it (``publish_written`` does not read it back)."""

    id: int
    kind: str
    destination: str
    message_id: str
    payload: dict[str, Any]


def _send_task(app: Celery, entry: Outgoing, producer: Any = None) -> None:
    # The message ``app.send_task`` would send, without its task-sent event (worker/bulk_publish.py).
    publish_task(app, Message(entry.destination, entry.payload, entry.message_id), producer)


# Each takes the app, the entry and a kombu producer its caller holds (None: one from the app's pool).
PUBLISHERS: dict[str, Callable[[Celery, Outgoing, Any], None]] = {outbox.TASK: _send_task, outbox.EVENT: publish_event}


class PublishError(RuntimeError):
    """The broker did not take the message; the entry is kept and published later."""


def publish(app: Celery, entry_id: int) -> None:
    """Publish one entry its caller holds (just written, or claimed) and mark it sent; on failure give it
    back (due at once: the next sweep or a re-run of the command takes it) and raise ``PublishError``."""
    with session_scope() as s:
        entry = s.get(OutboxEntry, entry_id)
        if entry is None or entry.sent_at is not None:
            return
        try:
            PUBLISHERS[entry.kind](app, entry, None)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            s.rollback()
            outbox.give_back(s, entry_id, reason)
            raise PublishError(reason) from exc
        outbox.mark_sent(s, entry_id)


def publish_written(app: Celery, entry: Written, conn: Connection, producer: Any = None) -> None:
    """``publish`` for an entry its writer just committed on ``conn`` and holds (due after its grace, so
    no sweeper has it): published as written (on ``producer`` if given), without reading it back, then
    marked on ``conn``, one statement in autocommit (on PostgreSQL one round trip instead of three)."""
    autocommit(conn)
    try:
        PUBLISHERS[entry.kind](app, entry, producer)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        outbox.give_back(conn, entry.id, reason)
        raise PublishError(reason) from exc
    outbox.mark_sent(conn, entry.id)


def sweep(app: Celery) -> int:
    """Publish what is due and unsent (its writer died or the broker was away); the count published.
    Stops at the first failure: the broker is away, the next sweep tries again."""
    sent = 0
    with session_scope() as s:
        ids = outbox.due(s, SWEEP_BATCH)
        for entry_id in ids:
            if not outbox.claim(s, entry_id):
                continue  # a re-run or another sweeper has it
            try:
                publish(app, entry_id)
            except PublishError as exc:
                log.warning("outbox: publishing stopped, %d left for the next sweep: %s", len(ids) - sent, exc)
                break
            sent += 1
    if sent:
        log.info("outbox: published %d due message(s) (events, or jobs not sent at enqueue time)", sent)
    return sent


def publish_after_job(app: Celery) -> None:
    """Right after a job: publish the events it wrote (due at once). Never fails the job: what is left
    is published by the poll's sweep."""
    if not get_settings().events_enabled:
        return
    try:
        sweep(app)
    except Exception as exc:  # the database or broker away: the next sweep tries again
        log.warning("outbox: events left for the poll's sweep: %s: %s", type(exc).__name__, exc)
