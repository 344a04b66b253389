"""Engine and sessions. SQLite (WAL) by default; any SQLAlchemy URL works (PostgreSQL in production)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import Session, create_engine

from ingest.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
# A pooled connection idle this long is pinged before use (one that was in use a moment ago is not).
PING_AFTER_IDLE = 1.0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the poll and many workers read while one writes; busy_timeout waits out writers.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    if url is None:
        from ingest.settings import get_settings

        url = get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _make_engine(url)
            _engines[url] = engine
        return engine


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url)
        _ping_when_idle(engine)
    # No create_all here: tables come from the migrations (ingest.store.schema.upgrade, run once).
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, for connections that sat in the pool ``PING_AFTER_IDLE`` seconds or more. A ping
    is a round trip per checkout: on PostgreSQL it was an eighth of the producer's one-job path, which
    checks a connection out per job. One that dropped is replaced before use (the pool's own retry on
    ``DisconnectionError``); a server restart within the second after a connection was used shows as
    that statement's error, as one during a statement does."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("checked_in")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # new (just connected), or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:
            raise exc.DisconnectionError(f"pooled connection dropped while idle: {err}") from err


def dispose_engines() -> None:
    """Drop pooled connections (call in a forked child: sockets must not be shared across fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


def autocommit(conn: Connection) -> Connection:
    """Run ``conn``'s next statements each as its own transaction, on PostgreSQL (one round trip for a
    single-statement write instead of BEGIN, the statement, COMMIT). Elsewhere unchanged: SQLite is
    in-process, and switching costs a PRAGMA each way. Call it between transactions; the pool restores
    the connection's isolation level when it is returned."""
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
