"""What one upload job costs the database in the common path: counted with SQLAlchemy's engine events.

The worker is CPU-bound on bookkeeping long before it runs out of threads (issue 9): an upload must take
a handful of statements in at most 2 transactions: the operation's start, the claim and the mark before the
POST (the one commit that has to precede the call) in the first, the outcome in the second.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, insert
from sqlmodel import select

from ingest.jobs.errors import RetryLater
from ingest.store import gate_cache
from ingest.store.auth_hold import HOLD_NAME, fingerprint
from ingest.store.db import get_engine, session_scope
from ingest.store.models import AuthHold, FileStatus, Operation, OpStatus
from tests.conftest import TOKEN
from tests.helpers import file_row, wait_for
from tests.unit.support import record, run, url_args

MAX_TRANSACTIONS = 2
MAX_STATEMENTS = 7


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


def test_an_upload_takes_a_handful_of_statements_in_two_transactions(ctx, make_ctx, bucket) -> None:
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


def test_an_upload_sent_by_name_costs_one_commit_more_than_a_producers(ctx, make_ctx, bucket) -> None:
    """No producer rows: the worker writes the file row and the running operation in one commit, then runs the
    producer's path (it used to insert the operation, mark it running, fail the claim, then plan the row)."""
    run("upload_url", url_args(bucket, "warm-name", "Warm"), make_ctx())  # connections and caches warm
    args = url_args(bucket, "cost-name", "Cost")

    with counted() as tally:
        out = run("upload_url", args, ctx)  # as send_task('ingest.upload_url', kwargs=args) delivers it

    assert out["status"] == OpStatus.SUCCEEDED, out
    row = file_row(bucket, "cost-name")
    assert row is not None and row.status == FileStatus.PROCESSING and row.remote_id is not None
    assert row.lease_owner is None and row.attempts == 1
    with session_scope() as s:
        op = s.exec(select(Operation).where(Operation.task_id == ctx.task_id)).one()
    assert op.file_id == row.id and op.status == OpStatus.SUCCEEDED and op.args == {**args, "user_defined": {}}
    listing = "\n".join(tally.statements)
    assert tally.commits <= MAX_TRANSACTIONS + 1, f"{tally.commits} commits:\n{listing}"


def test_a_hold_another_worker_sets_is_seen_within_the_gate_cache_time(make_ctx, emulator, bucket) -> None:
    """The gates read clear are trusted for ``gate_cache_seconds``: a hold written by another process (not
    through this one's store functions) lets at most that long of calls through, then holds the jobs."""
    trust = 5.0  # long enough that the second job surely runs inside it, even on a busy machine
    gate_cache.forget()
    assert run("upload_url", url_args(bucket, "gate-1"), make_ctx(gate_cache_seconds=trust))["status"] == "succeeded"
    with session_scope() as s:  # as another worker would: a row, no call into this process
        s.execute(insert(AuthHold).values(name=HOLD_NAME, token_fingerprint=fingerprint(TOKEN), reason="401"))
    try:
        cached = run("upload_url", url_args(bucket, "gate-2"), make_ctx(gate_cache_seconds=trust))
        assert cached["status"] == OpStatus.SUCCEEDED  # inside the cache time: not held yet

        def held() -> bool:
            try:
                run("upload_url", url_args(bucket, "gate-3"), make_ctx(gate_cache_seconds=trust, auth_hold_recheck=60))
            except RetryLater as wait:
                return wait.held
            return False

        wait_for(held, timeout=3 * trust, interval=0.2, what="the hold to be seen once the cache time is over")
    finally:
        gate_cache.forget()


def test_a_job_that_trusted_the_gate_memory_does_not_lift_a_hold_when_the_memory_expires_meanwhile(
    make_ctx, emulator, bucket
) -> None:
    """Only a job that read the gates itself may be a hold's probe: one that ran on the memory of clear gates
    (and may not have called the API at all) leaves a hold another worker wrote alone, even if the memory
    expires while it runs."""
    gate_cache.forget()
    assert run("upload_url", url_args(bucket, "trust-1"), make_ctx(gate_cache_seconds=60))["status"] == "succeeded"
    assert gate_cache.clear()
    with session_scope() as s:  # another worker's hold, not seen by this process
        s.execute(insert(AuthHold).values(name=HOLD_NAME, token_fingerprint=fingerprint(TOKEN), reason="401"))
    emulator.set_faults(latency=0.5)
    expiry = threading.Timer(0.2, gate_cache.forget)  # the memory runs out while the POST is on its way
    expiry.start()
    try:
        out = run("upload_url", url_args(bucket, "trust-2"), make_ctx(gate_cache_seconds=60))
    finally:
        expiry.cancel()
        emulator.set_faults(latency=0.0)
        gate_cache.forget()
    assert out["status"] == OpStatus.SUCCEEDED
    with session_scope() as s:
        assert s.get(AuthHold, HOLD_NAME) is not None, "a job that was no probe lifted the hold"
