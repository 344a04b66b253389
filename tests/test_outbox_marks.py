"""Marking an outbox entry sent, on both databases: the mark lands, and on PostgreSQL its lazy commit (no wait
for the WAL flush, store/outbox.py) stays inside the mark's own transaction: the pooled connection's next
writes (a job's rows) are durable again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from ingest.store import outbox, schema
from ingest.store.db import autocommit
from ingest.store.models import OutboxEntry
from tests.services import PostgresDatabase


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    database = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'marks.db'}"
    else:
        database = PostgresDatabase().create()
        url = database.url()
    schema.upgrade(url)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        if database is not None:
            database.drop()


def _entries(engine: Engine, prefix: str, n: int) -> list[int]:
    with Session(engine) as s:
        rows = [
            OutboxEntry(kind=outbox.TASK, destination="ingest.upload_url", message_id=f"{prefix}-{i}") for i in range(n)
        ]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows if r.id is not None]


def _sent(engine: Engine, ids: list[int]) -> list[bool]:
    with engine.connect() as conn:
        found = dict(conn.execute(select(OutboxEntry.id, OutboxEntry.sent_at).where(OutboxEntry.id.in_(ids))).all())
    return [found[i] is not None for i in ids]


def _synchronous_commit(conn: Connection) -> str | None:
    return conn.execute(text("SHOW synchronous_commit")).scalar()


def test_marks_land_and_leave_the_connection_durable(engine: Engine) -> None:
    one, *batch = _entries(engine, "conn", 4)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with engine.connect() as conn:
        outbox.mark_sent(autocommit(conn), one)  # the one-job path: the writer's own connection, in autocommit
        outbox.mark_sent_ids(conn, batch)  # the background publisher's batch
        if engine.dialect.name == "postgresql":
            assert _synchronous_commit(conn) == "on"  # set for the mark's own transaction only
            conn.execute(text("BEGIN"))
            assert _synchronous_commit(conn) == "on"
            conn.execute(text("ROLLBACK"))
    assert _sent(engine, [one, *batch]) == [True] * 4
    marks = [q for q in statements if q.lstrip().upper().startswith(("UPDATE", "WITH"))]
    assert len(marks) == 2
    assert all(("set_config" in q) == (engine.dialect.name == "postgresql") for q in marks), marks

    (sessioned,) = _entries(engine, "session", 1)
    with Session(engine) as s:  # the sweeper's path: a session whose transaction holds only the mark
        outbox.mark_sent(s, sessioned)
        if engine.dialect.name == "postgresql":
            assert s.execute(text("SHOW synchronous_commit")).scalar() == "on"
    assert _sent(engine, [sessioned]) == [True]
