"""Schema migrations (ingest/store/migrations) on SQLite and on a PostgreSQL database of the test's own:
from empty, from the schema `create_all` made before migrations, two upgrades at once, the models agreeing with
the migrations (`db check`), and workers and beat refusing a schema that is not at head."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from ingest.store import schema
from tests.conftest import IDLE_BROKER

PG_ADMIN = os.environ.get("ACR_INGEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = {*SQLModel.metadata.tables, schema.VERSION_TABLE}  # every table of the models, and the revision


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN.replace("+psycopg", ""), autocommit=True, connect_timeout=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a new SQLite file, or a PostgreSQL database created and dropped here."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name = f"acr_ingest_mig_{uuid.uuid4().hex[:10]}"
    try:
        with _pg_admin() as admin:
            admin.execute(f"CREATE DATABASE {name}")
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN}: {exc}")
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with _pg_admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _cli(*args: str, url: str, broker: str = IDLE_BROKER, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ACR_INGEST_DATABASE_URL": url, "ACR_INGEST_BROKER_URL": broker}
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli.commands", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_from_an_empty_database_to_head_and_back(empty_db: str) -> None:
    assert schema.inspect_schema(empty_db).problem() is not None  # empty: a worker would refuse it
    before, after = schema.upgrade(empty_db)
    assert (before, after) == (None, schema.head_revision())
    assert _tables(empty_db) == TABLES
    state = schema.require_current(empty_db)
    assert state.is_current and state.problem() is None
    schema.check(empty_db)  # the models and the migrations agree on this backend
    assert schema.upgrade(empty_db) == (after, after)  # a second run changes nothing

    with schema._migration_lock(empty_db) as conn:
        command.downgrade(schema.alembic_config(empty_db, conn), "base")
    assert _tables(empty_db) == {schema.VERSION_TABLE}
    schema.upgrade(empty_db)
    assert _tables(empty_db) == TABLES


def test_a_database_from_before_migrations_is_stamped_and_keeps_its_rows(empty_db: str) -> None:
    # What the version before migrations did in every worker: create_all of its models (the baseline's
    # tables), no alembic_version.
    schema.upgrade(empty_db, revision=schema.BASELINE)
    engine = create_engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {schema.VERSION_TABLE}"))
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO track_files (ref, bucket_id, data_type, title, user_defined, source, status, attempts,"
                " meta_version, synced_meta_version, title_seq, user_defined_seq, created_at, updated_at)"
                " VALUES ('CAT-1', 7, 'audio', 'Old Song', '{}', 'https://x/1.mp3', 'ready', 1, 0, 0, 0, 0, :t, :t)"
            ),
            {"t": now},
        )
    engine.dispose()
    state = schema.inspect_schema(empty_db)
    assert state.legacy and "before schema migrations" in (state.problem() or "")

    before, after = schema.upgrade(empty_db)
    assert before is None and after == schema.head_revision()
    schema.require_current(empty_db)
    schema.check(empty_db)
    engine = create_engine(empty_db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT title FROM track_files WHERE ref = 'CAT-1'")).scalar_one() == "Old Song"
    engine.dispose()


def test_two_upgrades_at_once_take_turns(empty_db: str) -> None:
    """Two `acr-ingest db upgrade` processes on one fresh database: both succeed, the tables are made once."""
    env = {**os.environ, "ACR_INGEST_DATABASE_URL": empty_db}
    cmd = [sys.executable, "-m", "ingest.cli.commands", "db", "upgrade"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(out for out, _ in outs)
    head = schema.head_revision()
    # One of them made the tables; the other waited for the lock and found them at head.
    assert any(f"upgraded (empty) -> {head}" in s for s in said), said
    assert any(f"already at {head}" in s for s in said), said
    assert _tables(empty_db) == TABLES


def test_db_current_and_check_say_what_to_run(empty_db: str) -> None:
    behind = _cli("db", "current", url=empty_db)
    assert behind.returncode == 1 and "acr-ingest db upgrade" in behind.stderr
    assert _cli("db", "upgrade", url=empty_db).returncode == 0
    current = _cli("db", "current", url=empty_db)
    assert (
        current.returncode == 0 and f": {schema.head_revision()}; code head: {schema.head_revision()}" in current.stdout
    )
    assert _cli("db", "check", url=empty_db).returncode == 0


def test_a_model_change_without_a_migration_fails_the_check(tmp_path: Path) -> None:
    """What CI catches: a column added to the models and no revision written for it."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    schema.upgrade(url)
    script = textwrap.dedent(
        f"""
        import sys
        from sqlalchemy import Column, Integer
        from alembic.util import AutogenerateDiffsDetected
        from ingest.store import schema
        from ingest.store.models import Operation
        Operation.__table__.append_column(Column("priority", Integer, nullable=True))
        try:
            schema.check({url!r})
        except AutogenerateDiffsDetected as exc:
            print("DIFF", exc)
            sys.exit(0)
        sys.exit("no difference found")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "DIFF" in run.stdout and "priority" in run.stdout


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_workers_and_beat_refuse_a_schema_not_at_head(process: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    args = [process, "--pool=solo"] if process == "worker" else [process, f"--schedule={tmp_path / 'schedule'}"]
    empty = _cli(*args, url=url)
    assert empty.returncode != 0
    assert "not starting" in empty.stderr and "acr-ingest db upgrade" in empty.stderr, empty.stderr[-2000:]

    # The previous version's database: refused too, with the fix (upgrade stamps it).
    engine = create_engine(url)
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    legacy = _cli(*args, url=url)
    assert legacy.returncode != 0 and "before schema migrations" in legacy.stderr, legacy.stderr[-2000:]
