"""Many uploads at once: plan a batch against the rows we hold, write its rows in bulk, and hand back
the messages to publish. The producer's ``upload_many`` (and so the catalog import) stands on this.

The same decisions as one upload at a time (``managed_files.plan_upload``): a new ref is queued, the
same ref and metadata is unchanged, another title or user_defined becomes an update, the same ref for
another source is refused. Rows are written before anything is published, so a publish that fails
midway loses nothing: the unsent operations stay ``queued`` and carry ``UNSENT`` in their error; a
re-run of the same batch (or the poll's resend of lost messages) sends them with their own task id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from ingest.jobs.errors import InputError
from ingest.jobs.managed_files import (  # (new_row_values, op_values: the producer imports them from here too)
    UploadJob,
    UploadPlan,
    data_type_of,
    new_row_values,
    op_values,
    plan_upload,
    prepare_upload_row,
    send_as_of,
    source_of,
)
from ingest.settings import Settings
from ingest.store import outbox
from ingest.store.bulk import file_ids_by_ref, files_by_ref, insert_rows, plan_each_query
from ingest.store.models import FileStatus, Operation, OpKind, OpStatus, TrackFile, utcnow

# The error an operation carries while its message has not reached the broker.
UNSENT = "not sent to the broker yet"


class Outcome(StrEnum):
    QUEUED = "queued"  # a new (or failed/deleted) ref: an upload is enqueued
    UNCHANGED = "unchanged"  # the same ref, source and metadata: nothing to do
    UPDATE = "update"  # the same ref and source, another title/user_defined: a metadata update
    RESENT = "resent"  # unchanged, but its upload's message never reached the broker: sent again
    REFUSED = "refused"  # bad input: the error names the field and the fix


@dataclass(frozen=True)
class RowOutcome:
    index: int  # 1-based position in what the caller gave (the import's row number)
    bucket_id: int | None
    ref: str | None
    outcome: Outcome
    error: str | None = None
    task_id: str | None = None


@dataclass(frozen=True)
class Message:
    task_name: str
    args: dict[str, Any]
    task_id: str


@dataclass
class BatchPlan:
    outcomes: list[RowOutcome]
    messages: list[Message]


@dataclass(frozen=True)
class Refused:
    """An item that failed validation, with what could be read of it for the report."""

    error: InputError
    ref: str | None = None
    bucket_id: int | None = None


Item = UploadJob | Refused


def kind_of(job: UploadJob) -> OpKind:
    return OpKind.UPLOAD_URL if data_type_of(job) == "audio_url" else OpKind.UPLOAD_FILE


def upload_args(job: UploadJob) -> dict[str, Any]:
    """The task's keyword arguments, exactly as ``Producer.upload_url``/``upload_file`` send them."""
    source: dict[str, Any] = {"url": source_of(job)} if kind_of(job) is OpKind.UPLOAD_URL else {}
    if not source:
        source = {"path": source_of(job), "data_type": data_type_of(job), "send_as": send_as_of(job)}
    return {**source, "bucket_id": job.bucket_id, "title": job.title, "user_defined": job.user_defined, "ref": job.ref}


def error_text(exc: InputError) -> str:
    return "; ".join(f"{field}: {message}" for field, message in exc.errors.items())


def batches(items: Iterable[Item], size: int) -> Iterator[list[tuple[int, Item]]]:
    """Numbered items in batches of at most ``size``. A ref seen again closes the batch first, so the
    later row is planned against what the earlier one wrote, as if they were sent one by one."""
    batch: list[tuple[int, Item]] = []
    keys: set[tuple[int, str]] = set()
    for index, item in enumerate(items, start=1):
        key = None if isinstance(item, Refused) else (item.bucket_id, item.ref)
        if len(batch) >= size or (key is not None and key in keys):
            yield batch
            batch, keys = [], set()
        batch.append((index, item))
        if key is not None:
            keys.add(key)
    if batch:
        yield batch


def _refs_by_bucket(rows: list[dict[str, Any]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        out[row["bucket_id"]].append(row["ref"])
    return out


def existing_rows(session: Session, jobs: Sequence[UploadJob]) -> dict[tuple[int, str], TrackFile]:
    refs_by_bucket: dict[int, list[str]] = defaultdict(list)
    for job in jobs:
        refs_by_bucket[job.bucket_id].append(job.ref)
    found: dict[tuple[int, str], TrackFile] = {}
    for bucket_id, refs in refs_by_bucket.items():
        for row in files_by_ref(session, bucket_id, refs):
            found[(row.bucket_id, row.ref)] = row
    return found


def _unsent_uploads(session: Session, file_ids: list[int], settings: Settings) -> dict[int, Operation]:
    """The queued upload operations of these rows whose message never reached the broker (or is lost)."""
    if not file_ids:
        return {}
    cutoff = utcnow() - timedelta(seconds=settings.resend_after_seconds)
    query = select(Operation).where(
        col(Operation.file_id).in_(file_ids),
        col(Operation.kind).in_(OpKind.uploads()),
        Operation.status == OpStatus.QUEUED,
    )
    return {
        op.file_id: op
        for op in session.exec(query)
        if op.file_id is not None and (op.error == UNSENT or _aware(op.updated_at) < cutoff)
    }


def _aware(when: datetime) -> datetime:
    # SQLite hands datetimes back without a zone; they were written in UTC.
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def plan_batch(session: Session, batch: Sequence[tuple[int, Item]], settings: Settings, *, dry_run: bool) -> BatchPlan:
    """Decide every item of the batch; unless ``dry_run``, write the rows and operations (the caller's
    session commits) and return the messages to publish, in item order."""
    now = utcnow()
    plan_each_query(session)  # PostgreSQL: the lookups by 1,000 refs or ids stay linear (store/bulk.py)
    jobs = [item for _, item in batch if not isinstance(item, Refused)]
    existing = existing_rows(session, jobs)
    decided: list[tuple[int, Item, UploadPlan | None, str | None]] = []
    for index, item in batch:
        if isinstance(item, Refused):
            decided.append((index, item, None, error_text(item.error)))
            continue
        try:
            decided.append((index, item, plan_upload(existing.get((item.bucket_id, item.ref)), item), None))
        except InputError as exc:
            decided.append((index, item, None, error_text(exc)))

    noop_queued = [
        held.id
        for _, item, plan, _ in decided
        if plan is UploadPlan.NOOP
        and isinstance(item, UploadJob)
        and (held := existing[(item.bucket_id, item.ref)]).status == FileStatus.QUEUED
        and held.id is not None
    ]
    unsent = _unsent_uploads(session, noop_queued, settings)

    new_rows = [new_row_values(item, now) for _, item, plan, _ in decided if plan is UploadPlan.NEW]  # type: ignore[arg-type]
    new_ids: dict[tuple[int, str], int] = {}
    if new_rows and not dry_run:
        # A bulk insert (COPY on PostgreSQL, one executemany elsewhere: store/bulk.py) and one lookup of the
        # ids: an INSERT ... RETURNING with many rows runs one statement per row on SQLite (measured: 10,000
        # executes for 10,000 rows).
        insert_rows(session, TrackFile, new_rows)
        for bucket_id, refs in _refs_by_bucket(new_rows).items():
            for ref, new_id in file_ids_by_ref(session, bucket_id, refs).items():
                new_ids[(bucket_id, ref)] = new_id

    outcomes: list[RowOutcome] = []
    ops: list[dict[str, Any]] = []
    resent: list[Operation] = []
    for index, item, plan, error in decided:
        if isinstance(item, Refused) or plan is None:
            outcomes.append(RowOutcome(index, item.bucket_id, item.ref, Outcome.REFUSED, error))
            continue
        key = (item.bucket_id, item.ref)
        row = existing.get(key)
        values: dict[str, Any] | None = None
        if plan is UploadPlan.NOOP:
            op = unsent.get(row.id) if row is not None and row.id is not None else None
            if op is None:
                outcomes.append(RowOutcome(index, item.bucket_id, item.ref, Outcome.UNCHANGED))
                continue
            resent.append(op)
            outcomes.append(RowOutcome(index, item.bucket_id, item.ref, Outcome.RESENT, task_id=op.task_id))
            continue
        if plan is UploadPlan.UPDATE:
            assert row is not None
            upd = {"bucket_id": item.bucket_id, "ref": item.ref, "title": item.title, "user_defined": item.user_defined}
            values = op_values(OpKind.UPDATE_META, upd, row.id, now)
            outcome = Outcome.UPDATE
        else:
            file_id = new_ids.get(key)
            if plan is UploadPlan.REUPLOAD and not dry_run:
                file_id = prepare_upload_row(session, row, item).id
            values = op_values(kind_of(item), upload_args(item), file_id, now)
            outcome = Outcome.QUEUED
        ops.append(values)
        outcomes.append(RowOutcome(index, item.bucket_id, item.ref, outcome, task_id=values["task_id"]))

    if dry_run:
        return BatchPlan([_without_task(o) for o in outcomes], [])
    if ops:
        insert_rows(session, Operation, ops)
        # Their messages in the outbox, in the same transaction: a broker that fails the publish delays
        # them (the poll's sweeper sends what is unsent), it never loses them.
        outbox.add_many(
            session,
            [
                {
                    "kind": outbox.TASK,
                    "destination": OpKind(v["kind"]).task_name,
                    "message_id": v["task_id"],
                    "payload": v["args"],
                }
                for v in ops
            ],
            grace=settings.outbox_grace,
        )
    for op in resent:
        op.error, op.updated_at = None, now
        session.add(op)
    messages = [Message(OpKind(v["kind"]).task_name, v["args"], v["task_id"]) for v in ops]
    messages += [Message(OpKind(op.kind).task_name, dict(op.args), op.task_id) for op in resent if op.task_id]
    return BatchPlan(outcomes, messages)


def _without_task(outcome: RowOutcome) -> RowOutcome:
    return RowOutcome(outcome.index, outcome.bucket_id, outcome.ref, outcome.outcome, outcome.error)


def mark_unsent(session: Session, task_ids: Sequence[str]) -> None:
    """The broker did not take these messages: say so on their (still queued) operations."""
    if task_ids:
        session.execute(
            update(Operation)
            .where(col(Operation.task_id).in_(list(task_ids)), col(Operation.status) == OpStatus.QUEUED)
            .values(error=UNSENT, updated_at=utcnow())
        )
