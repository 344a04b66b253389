"""The database schema's version: Alembic migrations (``ingest/store/migrations``), run once under a lock.

``upgrade`` is the only thing that creates or changes tables (``acr-ingest db upgrade``, the demo, the test
session). Workers and beat only *check* (``require_current``) and refuse to start on a schema that is not
this code's head: creating tables in every process raced on a fresh database.

A database made before migrations existed (every table present, no ``alembic_version``) is the baseline
schema: ``upgrade`` stamps it as the baseline and carries on from there.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from ingest.store.db import get_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The revision equal to the tables that ``create_all`` made before migrations existed.
BASELINE = "0001"
BASELINE_TABLES = frozenset({"track_files", "operations", "auth_holds", "leases"})
VERSION_TABLE = "alembic_version"
# Any fixed 64-bit key: two `db upgrade` runs on one PostgreSQL database wait for each other on it.
PG_LOCK_KEY = 0x616372_696E67  # "acr" "ing"


class SchemaError(RuntimeError):
    """The schema is not what this code needs; the message says what to run."""


@dataclass(frozen=True)
class SchemaState:
    url: str  # password hidden
    current: str | None  # the alembic_version row, if any
    head: str  # what this code needs
    tables: frozenset[str]
    known: bool  # ``current`` is a revision this code has

    @property
    def legacy(self) -> bool:
        """Tables from before migrations: no version row, but the baseline's tables are there."""
        return self.current is None and bool(self.tables & BASELINE_TABLES)

    @property
    def is_current(self) -> bool:
        return self.current == self.head

    def problem(self) -> str | None:
        """Why a worker must not start on it, with the fix; None when it is at head."""
        if self.is_current:
            return None
        if self.legacy:
            return (
                f"the database {self.url} was created before schema migrations (no {VERSION_TABLE} table): "
                "run `acr-ingest db upgrade` once (it recognizes and stamps it), then start the workers"
            )
        if self.current is None:
            return f"the database {self.url} has no acr-ingest tables: run `acr-ingest db upgrade` first"
        if not self.known:
            return (
                f"the database {self.url} is at schema revision {self.current}, which this version of acr-ingest "
                f"does not know (a newer version migrated it; this one needs {self.head}): upgrade acr-ingest"
            )
        return (
            f"the database {self.url} is at schema revision {self.current}, this version needs {self.head}: "
            "run `acr-ingest db upgrade`, then start the workers"
        )


def _url(url: str | None) -> str:
    if url is None:
        from ingest.settings import get_settings

        url = get_settings().database_url
    return url


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """Alembic's configuration built in code: no alembic.ini at run time."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", _url(url).replace("%", "%%"))  # ConfigParser interpolates %
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    head = scripts().get_current_head()  # raises when two revisions claim to be head (a merge is needed)
    assert head is not None, "no migrations found"
    return head


def _state(conn: Connection, url: str) -> SchemaState:
    current = MigrationContext.configure(conn).get_current_revision()
    known = True
    if current is not None:
        try:
            known = scripts().get_revision(current) is not None
        except Exception:  # alembic raises its own ResolutionError/CommandError for an unknown id
            known = False
    tables = frozenset(inspect(conn).get_table_names()) - {VERSION_TABLE}
    return SchemaState(safe_url(url), current, head_revision(), tables, known)


def inspect_schema(url: str | None = None) -> SchemaState:
    url = _url(url)
    with get_engine(url).connect() as conn:
        return _state(conn, url)


def require_current(url: str | None = None) -> SchemaState:
    """Raise ``SchemaError`` (saying what to run) unless the database is at this code's head revision."""
    state = inspect_schema(url)
    if problem := state.problem():
        raise SchemaError(problem)
    return state


@contextmanager
def _migration_lock(url: str) -> Iterator[Connection]:
    """A connection inside a transaction that only one migrating process holds at a time.

    PostgreSQL: a transaction-scoped advisory lock (released at commit; PostgreSQL runs the DDL in the same
    transaction). SQLite: an exclusive flock on a file next to the database, which works across processes.
    """
    parsed = make_url(url)
    engine = get_engine(url)
    lock_file = None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        lock_file = Path(parsed.database).with_name(Path(parsed.database).name + ".migrate-lock").open("a")
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # blocks until the other process is done
    try:
        with engine.begin() as conn:
            if parsed.get_backend_name() == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            yield conn
    finally:
        if lock_file is not None:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()


def upgrade(url: str | None = None, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to ``revision`` (stamping a pre-migration database as the baseline first).
    Safe to run from several processes at once: they take turns. Returns (before, after)."""
    url = _url(url)
    with _migration_lock(url) as conn:
        state = _state(conn, url)
        before = state.current
        if state.legacy:
            missing = BASELINE_TABLES - state.tables
            if missing:
                raise SchemaError(
                    f"the database {state.url} has some acr-ingest tables but not {sorted(missing)} and no "
                    f"{VERSION_TABLE}: it is not a schema this tool made; restore it or start from an empty database"
                )
            command.stamp(alembic_config(url, conn), BASELINE)
        command.upgrade(alembic_config(url, conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after


def check(url: str | None = None) -> None:
    """Raise alembic's ``AutogenerateDiffsDetected`` when the models differ from the migrations
    (the database must be at head: run ``upgrade`` first)."""
    url = _url(url)
    with _migration_lock(url) as conn:
        command.check(alembic_config(url, conn))


def new_revision(message: str, url: str | None = None, *, rev_id: str | None = None) -> str:
    """Write a new migration autogenerated from the models' difference to the database (at head).
    Its id is the next number ("0002", ...) unless given; returns the file's path."""
    url = _url(url)
    rev_id = rev_id or f"{len(list(scripts().walk_revisions())) + 1:04d}"
    with _migration_lock(url) as conn:
        script = command.revision(alembic_config(url, conn), message=message, autogenerate=True, rev_id=rev_id)
    assert script is not None and not isinstance(script, list)
    return str(script.path)
