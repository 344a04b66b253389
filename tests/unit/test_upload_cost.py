"""What one upload job costs the database in the common path: counted with SQLAlchemy's engine events.

The worker is CPU-bound on bookkeeping long before it runs out of threads (issue 9): an upload must take
a handful of statements in at most 3 transactions, the mark before the POST being the one commit that
has to precede the call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event

from ingest.store.db import get_engine
from ingest.store.models import FileStatus, OpStatus
from tests.helpers import file_row
from tests.unit.support import record, run, url_args

MAX_TRANSACTIONS = 3
MAX_STATEMENTS = 8


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    commits: int = 0


@contextmanager
def counted() -> Iterator[Tally]:
    """Statements and commits this thread sends to the database (the lease keep-alive thread is not ours)."""
    engine, me, tally = get_engine(), threading.get_ident(), Tally()

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() == me:
            tally.statements.append(" ".join(statement.split())[:90])

    def on_commit(_conn: Any) -> None:
        if threading.get_ident() == me:
            tally.commits += 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        yield tally
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)


def test_an_upload_takes_a_handful_of_statements_in_three_transactions(ctx, make_ctx, bucket) -> None:
    args = url_args(bucket, "cost-1", "Cost")
    record("upload_url", args, ctx)  # as the producer leaves it: operation and file row queued
    run("upload_url", url_args(bucket, "warm", "Warm"), make_ctx())  # connections and caches warm

    with counted() as tally:
        out = run("upload_url", args, ctx)

    assert out["status"] == OpStatus.SUCCEEDED, out
    row = file_row(bucket, "cost-1")
    assert row is not None and row.status == FileStatus.PROCESSING and row.remote_id is not None
    assert row.lease_owner is None and row.attempts == 1  # the lease released, the try counted
    listing = "\n".join(tally.statements)
    assert tally.commits <= MAX_TRANSACTIONS, f"{tally.commits} commits:\n{listing}"
    assert len(tally.statements) <= MAX_STATEMENTS, f"{len(tally.statements)} statements:\n{listing}"
