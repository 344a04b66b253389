"""Running jobs the way a worker would, minus Celery: ``run_job`` again after each ``RetryLater``
countdown (what ``IngestTask`` turns into ``self.retry(countdown=...)``), under the same task id."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sqlmodel import select

from ingest.jobs.batches import handle_delete, handle_move
from ingest.jobs.context import JobContext
from ingest.jobs.errors import RetryLater
from ingest.jobs.inputs import VALIDATORS
from ingest.jobs.managed_files import prepare_upload_row
from ingest.jobs.polling import LEASE, poll_cycle, poll_states
from ingest.jobs.runner import Handler, ensure_operation, run_job
from ingest.jobs.updates import handle_update
from ingest.jobs.uploads import handle_upload
from ingest.store import leases, outbox
from ingest.store.db import session_scope
from ingest.store.leases import owner_id
from ingest.store.models import Operation, OutboxEntry
from tests.helpers import wait_for

HANDLERS: dict[str, Handler] = {
    "upload_url": handle_upload,
    "upload_file": handle_upload,
    "update_meta": handle_update,
    "delete_batch": handle_delete,
    "move_batch": handle_move,
}
# The owner under which the unit tests hold the state poll's lease (conftest) and poll (``poll``).
POLL_OWNER = owner_id("unit-tests-poll")


def run(kind: str, args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """One delivery of the job: ``run_job`` with the kind's handler (raises ``RetryLater``)."""
    return run_job(kind, args, ctx, HANDLERS[kind])


def run_to_end(
    kind: str, args: dict[str, Any], ctx: JobContext, *, timeout: float = 10.0
) -> tuple[dict[str, Any], list[RetryLater]]:
    """Deliver the job again after each countdown it asks for, until it ends; (its summary, the waits).

    Sleeps exactly the countdown the job asked for (Celery would), never more; fails at the deadline."""
    deadline = time.monotonic() + timeout
    waits: list[RetryLater] = []
    while True:
        try:
            return run(kind, args, ctx), waits
        except RetryLater as wait:
            waits.append(wait)
            if time.monotonic() + wait.countdown > deadline:
                raise AssertionError(
                    f"{kind} still waiting after {len(waits)} retries: {[w.reason for w in waits][-3:]}"
                ) from None
            time.sleep(wait.countdown)


def record(kind: str, args: dict[str, Any], ctx: JobContext) -> Operation:
    """Write the operation row as the producer does at enqueue time (its id is the enqueue order),
    without running it. An upload also gets its file row, "queued": an upload not sent yet."""
    with session_scope() as s:
        file_id = None
        if kind in ("upload_url", "upload_file"):
            job = VALIDATORS[kind](args, ctx.settings)
            file_id = prepare_upload_row(s, None, job).id
        op = ensure_operation(s, kind, args, ctx.task_id)
        if file_id is not None:
            op.file_id = file_id
            s.add(op)
            s.commit()
        return op


def op_of(ctx: JobContext) -> Operation:
    """The operation row of this context's task id (its message)."""
    with session_scope() as s:
        return s.exec(select(Operation).where(Operation.task_id == ctx.task_id)).one()


def poll(ctx: JobContext, bucket_id: int) -> dict[str, Any]:
    """One state poll of this bucket under the unit tests' poll lease (the conftest holds it); the lease is
    taken back afterwards so no other poll runs in between two of the test's."""
    counts = poll_states(dataclasses.replace(ctx, owner=POLL_OWNER), bucket_id=bucket_id)
    with session_scope() as s:
        wait_for(lambda: leases.acquire(s, LEASE, POLL_OWNER, 60), timeout=20, what="the state-poll lease")
    assert "skipped" not in counts, counts
    return counts


def wake(ctx: JobContext) -> list[str]:
    """One poll cycle (as ``poll``); returns the task ids it sent again (woken or resent), sending none."""
    sent: list[str] = []

    def take_outbox() -> int:  # what the worker's sweep publishes, taken off the outbox instead
        with session_scope() as s:
            for entry_id in outbox.due(s, 1000):
                entry = s.get(OutboxEntry, entry_id)
                if entry is not None and outbox.claim(s, entry_id):
                    sent.append(entry.message_id)
                    outbox.mark_sent(s, entry_id)
        return len(sent)

    counts = poll_cycle(dataclasses.replace(ctx, owner=POLL_OWNER), publish_outbox=take_outbox)
    with session_scope() as s:
        wait_for(lambda: leases.acquire(s, LEASE, POLL_OWNER, 60), timeout=20, what="the state-poll lease")
    assert "skipped" not in counts, counts
    return sent


def url_args(bucket: int, ref: str, title: str | None = None, **extra: Any) -> dict[str, Any]:
    """The arguments of an upload_url job, as a producer sends them."""
    return {
        "url": f"https://cdn.example.com/{ref}.mp3",
        "bucket_id": bucket,
        "title": title or ref.upper(),
        "user_defined": {},
        "ref": ref,
        **extra,
    }
