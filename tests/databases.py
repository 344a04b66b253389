"""A PostgreSQL database of one test's own that the test can make unreachable and bring back.

``ALTER DATABASE ... ALLOW_CONNECTIONS false`` plus terminating its sessions is a real outage as a
client sees it: every open connection breaks and every new one is refused ("database ... is not
currently accepting connections"), while the server stays up for the test's own control connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("ACR_INGEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class OwnPostgres:
    def __init__(self, name: str) -> None:
        from sqlalchemy.engine import make_url

        self.name = name
        self.url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        self._admin_dsn = make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self._admin_dsn, autocommit=True, connect_timeout=5) as conn:
            for sql in statements:
                conn.execute(sql)

    def create(self) -> OwnPostgres:
        """A new database with the tables at the schema's head (as `acr-ingest db upgrade` leaves it)."""
        from ingest.store import schema

        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', f'CREATE DATABASE "{self.name}"')
        schema.upgrade(self.url)
        return self

    def go_away(self) -> None:
        """Refuse new connections and break the open ones."""
        self._admin(
            f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false',
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.name}'",
        )

    def come_back(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def postgres_reachable() -> bool:
    try:
        OwnPostgres("postgres")._admin("SELECT 1")
    except Exception:
        return False
    return True


@contextmanager
def own_postgres(prefix: str) -> Iterator[OwnPostgres]:
    """A fresh database ``<prefix>_<unique>`` with the project's tables; dropped afterwards."""
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (set ACR_INGEST_TEST_POSTGRES_URL)")
    from ingest.store.db import get_engine

    db = OwnPostgres(f"{prefix}_{os.getpid()}_{time.monotonic_ns()}").create()
    get_engine(db.url)  # creates the tables
    try:
        yield db
    finally:
        db.come_back()
        from ingest.store.db import dispose_engines

        dispose_engines()
        db.drop()
