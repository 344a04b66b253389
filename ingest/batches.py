"""delete_batch and move_batch: files named by ref, API id or acr_id, sent in chunks of comma-separated
ids. The outcome of every name is recorded (deleted, moved, cancelled, not_found, ...); progress is
committed after each chunk so a retry never re-sends what already succeeded."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import and_, or_, update
from sqlmodel import Session, select

from ingest.client import AcrCloudClient
from ingest.context import JobContext, RetryLater
from ingest.db import session_scope
from ingest.errors import NotFoundError
from ingest.files import by_ref
from ingest.metadata import UNKNOWN_REF_WAITS
from ingest.models import FileStatus, Operation, OpStatus, TrackFile, utcnow
from ingest.schemas import BucketFile
from ingest.validation import DeleteBatchJob, MoveBatchJob, Targets

GONE = (FileStatus.DELETED, FileStatus.CANCELLED)


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _resolve(session: Session, bucket_id: int, targets: Targets) -> list[tuple[str, TrackFile | None, Any]]:
    """(name, managed row or None, the id to send or None for an unknown ref), in the order given."""
    out: list[tuple[str, TrackFile | None, Any]] = []
    for ref in targets.refs:
        out.append((f"ref:{ref}", by_ref(session, bucket_id, ref), None))
    for file_id in targets.ids:
        row = session.exec(select(TrackFile).where(TrackFile.remote_id == file_id)).first()
        out.append((f"id:{file_id}", row, file_id))
    for acr_id in targets.acr_ids:
        row = session.exec(select(TrackFile).where(TrackFile.acr_id == acr_id)).first()
        out.append((f"acr_id:{acr_id}", row, acr_id))
    return out


def _cancel_if_unsent(session: Session, row: TrackFile) -> bool:
    """Cancel an upload that has not reached the API (no POST started, nobody holds it)."""
    now = utcnow()
    result = session.execute(
        update(TrackFile)
        .where(and_(
            TrackFile.id == row.id,
            TrackFile.remote_id.is_(None),  # type: ignore[union-attr]
            TrackFile.post_started_at.is_(None),  # type: ignore[union-attr]
            or_(TrackFile.lease_until.is_(None), TrackFile.lease_until < now),  # type: ignore[union-attr]
        ))
        .values(status=FileStatus.CANCELLED, reason="deleted before it was uploaded", updated_at=now)
    )
    session.commit()
    return result.rowcount == 1


def _save(session: Session, op_id: int, outcomes: dict[str, str]) -> None:
    op = session.get(Operation, op_id)
    assert op is not None
    op.result = {"outcomes": dict(outcomes)}
    op.updated_at = utcnow()
    session.add(op)
    session.commit()


def _result(outcomes: dict[str, str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    problems = {name: o for name, o in outcomes.items() if o in ("not_found", "unknown_ref", "conflict")}
    status = OpStatus.PARTIAL if problems else OpStatus.SUCCEEDED
    out: dict[str, Any] = {"status": status, "counts": counts, "outcomes": outcomes}
    if problems:
        out["error"] = f"{len(problems)} of {len(outcomes)} not done: " + ", ".join(
            f"{n} ({o})" for n, o in list(problems.items())[:20])
    return out


def _present(client: AcrCloudClient, bucket_id: int, keys: list[Any]) -> list[Any]:
    """Which of these ids/acr_ids the bucket holds (one GET), after a batch answered 404."""
    try:
        files: list[BucketFile] = client.get_files(bucket_id, keys)
    except NotFoundError:
        return []
    return _matching(keys, files)


def _matching(keys: list[Any], files: list[BucketFile]) -> list[Any]:
    known = {str(f.id) for f in files} | {f.acr_id for f in files}
    return [k for k in keys if str(k) in known]


def _affected(keys: list[Any], answered: list[BucketFile]) -> list[Any]:
    """The keys the API says it acted on: the files it listed, or every key when it listed none (the
    page does not document the response; partial success must still be recorded per id)."""
    return _matching(keys, answered) if answered else keys


def _run_batch(
    job: DeleteBatchJob | MoveBatchJob,
    op_id: int,
    ctx: JobContext,
    verb: str,
    call: Callable[[list[Any]], list[BucketFile]],
    on_done: Callable[[Session, TrackFile], str],
    check: Callable[[Session, TrackFile], str | None] | None = None,
) -> dict[str, Any]:
    settings = ctx.settings
    with session_scope() as s:
        op = s.get(Operation, op_id)
        assert op is not None
        outcomes: dict[str, str] = dict((op.result or {}).get("outcomes", {}))
        age = utcnow() - op.created_at
        waiting: list[str] = []
        send: list[tuple[str, TrackFile | None, Any]] = []
        for name, row, key in _resolve(s, job.bucket_id, job.targets):
            if name in outcomes:
                continue
            if row is None and key is None:  # a ref we have never seen
                if age.total_seconds() < settings.dependency_wait * UNKNOWN_REF_WAITS:
                    waiting.append(name)
                else:
                    outcomes[name] = "unknown_ref"
                continue
            if row is None:
                send.append((name, None, key))
                continue
            if row.status in GONE:
                outcomes[name] = "already_deleted"
            elif row.remote_id is None:
                if verb == "deleted" and _cancel_if_unsent(s, row):
                    outcomes[name] = "cancelled"
                elif row.status == FileStatus.FAILED and row.post_started_at is None:
                    outcomes[name] = "upload_failed"
                else:
                    waiting.append(name)
            elif check is not None and (problem := check(s, row)) is not None:
                outcomes[name] = problem
            else:
                send.append((name, row, row.remote_id))
        _save(s, op_id, outcomes)

        for chunk in chunks(send, settings.ids_chunk_size):
            keys = [key for _, _, key in chunk]
            try:
                done = _affected(keys, call(keys))
            except NotFoundError:
                done = _present(ctx.client, job.bucket_id, keys)
                if done:
                    done = _affected(done, call(done))
            done_set = {str(k) for k in done}
            for name, row, key in chunk:
                if str(key) in done_set:
                    outcomes[name] = on_done(s, row) if row is not None else verb
                else:
                    outcomes[name] = "not_found"
            _save(s, op_id, outcomes)

    if waiting:
        raise RetryLater(settings.dependency_wait,
                         f"waiting for the upload of {len(waiting)} file(s): {', '.join(waiting[:5])}")
    return _result(outcomes)


def handle_delete(job: DeleteBatchJob, op_id: int, ctx: JobContext) -> dict[str, Any]:
    def on_done(s: Session, row: TrackFile) -> str:
        row.status = FileStatus.DELETED
        row.reason = None
        row.updated_at = utcnow()
        s.add(row)
        s.flush()
        return "deleted"

    return _run_batch(job, op_id, ctx, "deleted",
                      lambda keys: ctx.client.delete_files(job.bucket_id, keys), on_done)


def handle_move(job: MoveBatchJob, op_id: int, ctx: JobContext) -> dict[str, Any]:
    target = job.target_bucket_id

    def check(s: Session, row: TrackFile) -> str | None:
        return "conflict" if by_ref(s, target, row.ref) not in (None, row) else None

    def on_done(s: Session, row: TrackFile) -> str:
        row.bucket_id = target
        row.updated_at = utcnow()
        s.add(row)
        s.flush()
        return "moved"

    return _run_batch(job, op_id, ctx, "moved", lambda keys: ctx.client.move_files(target, keys), on_done,
                      check)
