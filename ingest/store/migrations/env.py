"""Alembic's environment: the SQLModel metadata of ingest.store.models and the connection that
ingest.store.schema hands over (already inside the migration lock). No alembic.ini is needed."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from ingest.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata


def _render_item(kind: str, obj: Any, _ctx: AutogenContext) -> str | Literal[False]:
    """Write SQLModel's column types as the plain SQLAlchemy types they store, so a migration file does not
    depend on sqlmodel's internals (which change between its releases)."""
    if kind == "type" and isinstance(obj, AutoString):
        length = getattr(obj.impl, "length", None)
        return f"sa.String({length})" if length else "sa.String()"
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False  # alembic's default rendering


def run_online(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table, so one migration serves both.
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


conn = config.attributes.get("connection")
if conn is None:
    raise RuntimeError("run migrations through `acr-ingest db ...` (ingest.store.schema), which takes the lock")
run_online(conn)
