"""Many new rows at once, in the caller's transaction (the bulk enqueue: files, operations, outbox entries).

A Core ``executemany`` spends most of its time in SQLAlchemy, not in the database: every value of every
row goes through its type's bind processor (JSON text, SQLite's datetime text...) inside the execution
context, even the ``now`` that all the rows share. Here:

- PostgreSQL with psycopg: ``COPY ... FROM STDIN``. psycopg's ``executemany`` costs the client ~50 µs of CPU
  a row (it dumps and pipelines each row's parameters in Python) and the server a statement a row; COPY
  is ~3x cheaper on both sides (measured: 1,000 ``track_files`` rows in 19-25 ms of client CPU instead of
  60-94 ms, 57-80 ms instead of 137-219 ms wall).
- A driver with positional parameters (SQLite): the INSERT compiled once, each value converted by its
  column type's own bind processor (a value shared by the rows converted once), and one DBAPI
  ``executemany`` (~30 % less CPU: 29-35 ms for 1,000 ``track_files`` rows instead of 46-47).
- Anything else: Core's ``executemany``.

Every way writes what a Core INSERT writes: the columns' Python-side defaults fill what a row leaves out,
JSON columns hold their value's JSON text, and a constraint the rows break raises SQLAlchemy's own
exception (``IntegrityError`` for a unique ref another producer wrote a moment ago).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import JSON, String, Table, bindparam, func, insert, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import aliased
from sqlmodel import Session, SQLModel, col, select

from ingest.store.models import TrackFile


def table_of(model: type[SQLModel]) -> Table:
    """A model's Core table. A bulk INSERT of plain dicts into it skips the ORM's bookkeeping per row
    (``insert(Model)`` collects, checks and copies every row's values again: ~20 % more CPU)."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def insert_one(conn: Connection, model: type[SQLModel], values: dict[str, Any]) -> int:
    """Insert one row by Core (no ORM object, no flush: a third of the CPU), the columns' defaults filling
    what ``values`` leaves out; its new id. Not committed here."""
    result = conn.execute(insert(table_of(model)), values)
    key = result.inserted_primary_key
    assert key is not None and key[0] is not None
    return int(key[0])


def plan_each_query(session: Session) -> None:
    """For the rest of this transaction, have PostgreSQL plan each statement for its own parameters.

    psycopg prepares a statement it has run 5 times, and PostgreSQL then settles on a generic plan. For a
    batch's lookups (``ref IN (1,000 parameters)``, ``file_id IN (...)``) that plan filters every row of the
    bucket against the list one value at a time, since a list of parameters cannot be hashed: measured on
    an import into one bucket, the lookup took 12 ms at the first batch and 1.4 s at the 20th (quadratic).
    Planned with its values, the list is hashed (6 ms at 20,000 rows). ``SET LOCAL`` ends with the
    transaction: the pooled connection keeps its settings. Elsewhere (SQLite), nothing to do.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql" and (conn.dialect.server_version_info or (0,)) >= (12,):
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def files_by_ref(session: Session, bucket_id: int, refs: Sequence[str]) -> list[TrackFile]:
    """The rows of these refs in this bucket (a batch's lookup: up to a batch's size of refs).

    On PostgreSQL each ref is one probe of the unique (bucket_id, ref) index, whatever the statistics say:
    ``bucket_id = :b AND ref IN (...)`` is planned by the estimate for the bucket, and for a bucket the
    statistics do not know yet (a new one, or a table not analyzed since the import began) that estimate
    is a few rows, so the plan reads every row of the bucket through its ``bucket_id`` index: each
    batch of an import read all the rows the import had written (measured at 100,000 rows: 25 ms a
    batch, growing with the bucket; the probes take 8-13 ms at any size). The refs are unnested and each
    looked up in a LATERAL subquery that ``OFFSET 0`` keeps the planner from flattening. Elsewhere
    (SQLite, which picks the unique index by itself): the plain ``IN``.
    """
    return list(session.exec(_by_ref(session, bucket_id, refs, lambda found: (found,))))


def file_ids_by_ref(session: Session, bucket_id: int, refs: Sequence[str]) -> dict[str, int]:
    """``{ref: id}`` of these refs in this bucket (rows just inserted: no ORM objects), as ``files_by_ref``."""
    rows = session.exec(_by_ref(session, bucket_id, refs, lambda found: (found.id, found.ref)))
    return {ref: file_id for file_id, ref in rows}


def _by_ref(session: Session, bucket_id: int, refs: Sequence[str], what: Callable[[Any], tuple[Any, ...]]) -> Any:
    unique = list(dict.fromkeys(refs))
    if session.connection().dialect.name != "postgresql":
        return select(*what(TrackFile)).where(TrackFile.bucket_id == bucket_id, col(TrackFile.ref).in_(unique))
    wanted = select(func.unnest(bindparam("refs", value=unique, type_=ARRAY(String))).label("ref")).subquery("r")
    each = (
        select(TrackFile).where(TrackFile.bucket_id == bucket_id, TrackFile.ref == wanted.c.ref).offset(0).lateral("t")
    )
    return select(*what(aliased(TrackFile, each))).select_from(wanted).join(each, true())


def insert_rows(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``model``'s table; not committed here."""
    if not rows:
        return
    table = table_of(model)
    conn = session.connection()
    given = list(rows[0])
    defaults = column_defaults(table, given)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy(conn, table, given, defaults, rows)
        return
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=given + list(defaults))
    if compiled.positional and set(compiled.positiontup or ()) == set(given) | set(defaults):
        _executemany(conn, table, compiled.string, list(compiled.positiontup or ()), defaults, rows)
    else:
        conn.execute(insert(table), list(rows))


def column_defaults(table: Table, given: list[str]) -> dict[str, Any]:
    """The Python-side defaults a Core INSERT applies to the columns the rows leave out (once per call)."""
    defaults: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        if column.name in given or default is None:
            continue
        if default.is_scalar:
            defaults[column.name] = default.arg  # type: ignore[attr-defined]
        elif default.is_callable:
            defaults[column.name] = default.arg(None)  # type: ignore[attr-defined]
    return defaults


def _executemany(
    conn: Connection,
    table: Table,
    statement: str,
    order: list[str],
    defaults: dict[str, Any],
    rows: Sequence[dict[str, Any]],
) -> None:
    dialect = conn.dialect
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order]
    converted: dict[int, tuple[Any, Any]] = {}  # id(value) -> (value, its bind form): a shared `now` once

    def bind(process: Callable[[Any], Any] | None, value: Any) -> Any:
        if process is None or value is None:
            return value if process is None else process(value)
        if isinstance(value, dict | list):  # JSON: each row's own
            return process(value)
        seen = converted.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        out = process(value)
        converted[id(value)] = (value, out)
        return out

    slots = [(process, name, name in defaults) for process, name in zip(processors, order, strict=True)]
    fixed = {name: bind(process, defaults[name]) for process, name, is_default in slots if is_default}
    data = [
        tuple(fixed[name] if is_default else bind(process, row[name]) for process, name, is_default in slots)
        for row in rows
    ]
    conn.exec_driver_sql(statement, data)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _copy(
    conn: Connection, table: Table, given: list[str], defaults: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> None:
    names = given + list(defaults)
    dumps: Callable[[Any], str] = getattr(conn.dialect, "_json_serializer", None) or json.dumps
    # JSON columns: their JSON text; None is SQL NULL only where the column says so (else JSON null).
    json_columns = {name: bool(type_.none_as_null) for name in given if isinstance(type_ := table.c[name].type, JSON)}
    fixed = [_plain(v) for v in defaults.values()]

    def value(name: str, v: Any) -> Any:
        if name in json_columns:
            return None if v is None and json_columns[name] else dumps(v)
        return _plain(v)

    def values(row: dict[str, Any]) -> list[Any]:
        return [value(name, row[name]) for name in given] + fixed

    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(values(row))
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy raises it for an INSERT: IntegrityError, DataError, OperationalError...
        raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc
