"""A loaded row's changes written by one Core UPDATE, without the ORM's unit of work.

A flush of one changed object (the upload's mark before its POST) cost several times the statement it sends:
the unit of work sorts, collects and bookkeeps per flush. ``write_changes`` sends the same UPDATE (the changed
columns, by primary key) on the session's connection, in its transaction, and marks the object unchanged, so
the session's next flush or commit has nothing to write for it. The object stays in the session as it was.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, bindparam, inspect, update
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, SQLModel


def write_changes(session: Session, row: SQLModel) -> None:
    """Write ``row``'s changed column attributes now (one UPDATE); a row another transaction deleted raises
    ``StaleDataError``, as a flush does. Anything but plain columns changed: the session's own flush."""
    state = inspect(row)
    mapper = state.mapper
    changed = tuple(sorted(state.committed_state))
    if not changed:
        return
    if state.key is None or not all(key in mapper.column_attrs for key in changed):
        session.flush([row])
        return
    table = mapper.local_table
    assert isinstance(table, Table)
    keys = tuple(c.key for c in mapper.primary_key)
    params: dict[str, Any] = {f"v_{key}": state.dict[key] for key in changed}
    params.update({f"pk_{key}": value for key, value in zip(keys, state.key[1], strict=True)})
    result = session.connection().execute(_update(table, changed, keys), params)
    if result.rowcount != 1:
        raise StaleDataError(f"UPDATE of {table.name} {state.key[1]} matched {result.rowcount} rows, not 1")
    # What the flush does after its UPDATE (SQLAlchemy's own, non-public step): no change pending any more.
    state._commit_all(state.dict, session.identity_map)


@functools.lru_cache(maxsize=64)
def _update(table: Table, changed: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    # One statement per set of changed columns, built once (the hot path changes the same ones each time).
    return (
        update(table)
        .where(*(table.c[key] == bindparam(f"pk_{key}") for key in keys))
        .values({key: bindparam(f"v_{key}") for key in changed})
    )
