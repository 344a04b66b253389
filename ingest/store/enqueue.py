"""One new upload's rows (the producer's one-job path): its file row, its operation and the operation's
outbox entry, written together or not at all, and not at all when the ref already has a row.

By Core statements, no ORM objects (a flush of three objects cost more than everything else the job
does). On PostgreSQL one statement (``INSERT ... ON CONFLICT DO NOTHING`` feeding two ``INSERT ... SELECT``
in CTEs) run in autocommit: a single statement is atomic, and it is one round trip instead of six
(BEGIN, SELECT, three INSERTs, COMMIT). Elsewhere (SQLite, in-process) a transaction of a lookup and three
INSERTs. The caller's connection is left in autocommit on PostgreSQL, ready for the entry's mark.

On SQLite and PostgreSQL (psycopg) the statements run on the driver's own cursor, compiled once with their
columns' bind processors; each value is converted once per call (the shared ``now`` and arguments: the
operation's ``args`` and the entry's ``payload`` are one dict). SQLAlchemy's execution around a statement cost
more than the statement (on PostgreSQL 1.5 ms of CPU a job against 0.3 ms for the driver's INSERT).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Select, bindparam, insert, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from ingest.store.bulk import insert_one, table_of
from ingest.store.db import autocommit
from ingest.store.models import Operation, OutboxEntry, TrackFile

_FILES, _OPS, _OUTBOX = table_of(TrackFile), table_of(Operation), table_of(OutboxEntry)
# Built once: SQLAlchemy's compiled cache then finds it by a cheap key. Also the by-name job's first read
# (jobs/managed_files.record_sent_by_name).
FILE_ID_BY_REF = select(_FILES.c.id).where(
    _FILES.c.bucket_id == bindparam("bucket_id"), _FILES.c.ref == bindparam("ref")
)


def insert_new_upload(
    conn: Connection, file: dict[str, Any], operation: dict[str, Any], entry: dict[str, Any]
) -> tuple[int, int, int] | None:
    """Write the rows (``operation`` without its ``file_id``, ``entry`` the outbox columns); committed
    here. Their ids (file, operation, entry), or None when the ref has a row (the caller plans that case)."""
    # Neither the statements in a CTE nor the driver's own cursor get SQLAlchemy's Python-side column
    # defaults: given here.
    file = _with_defaults(_FILES, file)
    operation = _with_defaults(_OPS, operation, "file_id")
    entry = _with_defaults(_OUTBOX, entry)
    if conn.dialect.name == "postgresql":
        autocommit(conn)
        if conn.dialect.driver == "psycopg":
            return _psycopg(conn, file, operation, entry)
        params = {f"f_{k}": v for k, v in file.items()}
        params.update({f"o_{k}": v for k, v in operation.items()})
        params.update({f"e_{k}": v for k, v in entry.items()})
        # ON CONFLICT DO NOTHING: a ref another producer wrote a moment ago is a row found, not an error.
        row = conn.execute(_pg_statement(tuple(file), tuple(operation), tuple(entry)), params).first()
        conn.commit()  # SQLAlchemy's own transaction ends (nothing is sent: the statement committed itself)
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))
    if conn.dialect.name == "sqlite":
        return _sqlite(conn, file, operation, entry)
    try:
        with conn.begin():
            if conn.execute(FILE_ID_BY_REF, {"bucket_id": file["bucket_id"], "ref": file["ref"]}).first() is not None:
                return None
            file_id = insert_one(conn, TrackFile, file)
            op_id = insert_one(conn, Operation, {**operation, "file_id": file_id})
            entry_id = insert_one(conn, OutboxEntry, entry)
    except IntegrityError:  # another producer wrote this ref between the lookup and the INSERT
        return None
    return file_id, op_id, entry_id


def _with_defaults(table: Any, values: dict[str, Any], *also: str) -> dict[str, Any]:
    """``values`` and the Python-side defaults of the columns it (and ``also``) leaves out."""
    scalars, callables = _defaults_of(table, (*values, *also))
    if not scalars and not callables:
        return values
    return {**scalars, **{name: make(None) for name, make in callables}, **values}


@functools.cache
def _defaults_of(table: Any, given: tuple[str, ...]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """The scalar defaults and the default callables of ``table``'s columns not in ``given`` (once per shape:
    walking the columns per call cost a tenth of the write)."""
    scalars: dict[str, Any] = {}
    callables: list[tuple[str, Any]] = []
    for column in table.columns:
        default = column.default
        if column.name in given or default is None:
            continue
        if default.is_scalar:
            scalars[column.name] = default.arg
        elif default.is_callable:
            callables.append((column.name, default.arg))
    return scalars, tuple(callables)


class _Converted:
    """Each value's bind form, worked out once per call (the same ``now`` and argument dict appear in several
    columns); by identity, for the call's own objects only."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, Any]] = {}

    def __call__(self, process: Any, value: Any) -> Any:
        if process is None or value is None:
            return value if process is None else process(value)
        seen = self._seen.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        out = process(value)
        self._seen[id(value)] = (value, out)
        return out


def _psycopg(
    conn: Connection, file: dict[str, Any], operation: dict[str, Any], entry: dict[str, Any]
) -> tuple[int, int, int] | None:
    """The one statement on psycopg's own cursor, in autocommit; psycopg's errors raised as SQLAlchemy's."""
    dialect = conn.dialect
    statement, slots = _pg_compiled(dialect, tuple(file), tuple(operation), tuple(entry))
    tables = {"f": file, "o": operation, "e": entry}
    convert = _Converted()
    params = {name: convert(process, tables[table][column]) for name, table, column, process in slots}
    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        with raw.cursor() as cur:
            cur.execute(statement, params)
            row = cur.fetchone()
    except dialect.loaded_dbapi.Error as err:
        raise DBAPIError.instance(statement, params, err, dialect.loaded_dbapi.Error) from err
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


@functools.cache
def _pg_compiled(
    dialect: Any, file_cols: tuple[str, ...], op_cols: tuple[str, ...], entry_cols: tuple[str, ...]
) -> tuple[str, list[tuple[str, str, str, Any]]]:
    """``_pg_statement`` as psycopg runs it (SQLAlchemy's rendering: its casts and parameter names), and per
    parameter (name, which dict, which column, its bind processor)."""
    compiled = _pg_statement(file_cols, op_cols, entry_cols).compile(dialect=dialect)
    slots = []
    for name, bind in compiled.binds.items():
        table, column = name.split("_", 1)
        slots.append((name, table, column, bind.type.dialect_impl(dialect).bind_processor(dialect)))
    return compiled.string, slots


def _sqlite(
    conn: Connection, file: dict[str, Any], operation: dict[str, Any], entry: dict[str, Any]
) -> tuple[int, int, int] | None:
    """The same four statements on sqlite3's own cursor, each compiled once with its columns' bind
    processors (as ``bulk.insert_rows`` does): SQLAlchemy's execution around each cost three times the
    statement. In SQLAlchemy's transaction on ``conn`` (it commits or rolls back); sqlite3's errors
    raised as SQLAlchemy raises them (``OperationalError: no such table`` is what the CLI explains)."""
    dialect = conn.dialect
    operation = {**operation, "file_id": None}
    try:
        with conn.begin():
            raw = conn.connection.driver_connection
            assert raw is not None
            cur = raw.cursor()
            try:
                cur.execute(_sqlite_lookup(dialect), (file["bucket_id"], file["ref"]))
                if cur.fetchone() is not None:
                    return None
                convert = _Converted()
                file_id = _sqlite_insert(cur, dialect, _FILES, file, convert)
                operation["file_id"] = file_id
                op_id = _sqlite_insert(cur, dialect, _OPS, operation, convert)
                entry_id = _sqlite_insert(cur, dialect, _OUTBOX, entry, convert)
            except dialect.loaded_dbapi.Error as err:
                raise DBAPIError.instance(None, None, err, dialect.loaded_dbapi.Error) from err
            finally:
                cur.close()
    except IntegrityError:  # another producer wrote this ref after the lookup
        return None
    return file_id, op_id, entry_id


@functools.cache
def _sqlite_lookup(dialect: Any) -> str:
    return str(FILE_ID_BY_REF.compile(dialect=dialect))


def _sqlite_insert(cur: Any, dialect: Any, table: Any, values: dict[str, Any], convert: _Converted) -> int:
    statement, order, processors = _compiled_insert(dialect, table, tuple(values))
    params = [convert(p, values[name]) for name, p in zip(order, processors, strict=True)]
    cur.execute(statement, params)
    return int(cur.lastrowid)


@functools.cache
def _compiled_insert(dialect: Any, table: Any, given: tuple[str, ...]) -> tuple[str, list[str], list[Any]]:
    """The INSERT of these columns in the driver's parameter order, and each column's bind processor
    (JSON text, SQLite's datetime text); every column with a Python-side default must be given."""
    missing = [c.name for c in table.columns if c.default is not None and c.name not in given]
    assert not missing, f"{table.name}: give {missing} (their defaults are not applied here)"
    compiled = insert(table).compile(dialect=dialect, column_keys=list(given))
    order = list(compiled.positiontup or ())
    assert compiled.positional and set(order) == set(given)
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order]
    return compiled.string, order, processors


@functools.cache
def _pg_statement(file_cols: tuple[str, ...], op_cols: tuple[str, ...], entry_cols: tuple[str, ...]) -> Select[Any]:
    def values(prefix: str, table: Any, cols: tuple[str, ...]) -> list[Any]:
        # Typed (rendered with a cast): a parameter in a SELECT list gets no type from its target column.
        return [bindparam(f"{prefix}_{c}", type_=table.c[c].type) for c in cols]

    new_file = (
        pg_insert(_FILES)
        .values({c: bindparam(f"f_{c}", type_=_FILES.c[c].type) for c in file_cols})
        .on_conflict_do_nothing(index_elements=[_FILES.c.bucket_id, _FILES.c.ref])
        .returning(_FILES.c.id)
        .cte("new_file")
    )
    new_op = (
        insert(_OPS)
        .from_select([*op_cols, "file_id"], select(*values("o", _OPS, op_cols), new_file.c.id))
        .returning(_OPS.c.id)
        .cte("new_op")
    )
    new_entry = (
        insert(_OUTBOX)
        .from_select(list(entry_cols), select(*values("e", _OUTBOX, entry_cols)).select_from(new_op))
        .returning(_OUTBOX.c.id)
        .cte("new_entry")
    )
    return select(new_file.c.id, new_op.c.id, new_entry.c.id).select_from(
        new_file.join(new_op, literal_column("true")).join(new_entry, literal_column("true"))
    )
