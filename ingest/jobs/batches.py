"""delete_batch and move_batch: files named by ref, API id or acr_id, sent in chunks of comma-separated
ids. The outcome of every name is recorded (deleted, moved, cancelled, not_found, ...); progress is
committed after each chunk so a retry never re-sends what already succeeded."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import CursorResult
from sqlmodel import Session, col, select

from ingest.api.client import AcrCloudClient
from ingest.api.errors import NotFoundError
from ingest.api.schemas import BucketFile
from ingest.jobs.context import JobContext
from ingest.jobs.errors import RetryLater
from ingest.jobs.inputs import DeleteBatchJob, MoveBatchJob, Targets
from ingest.jobs.managed_files import by_ref
from ingest.jobs.parked_followups import RefWait, park, ref_wait
from ingest.jobs.presence import files_present, matching
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OpStatus, TrackFile, utcnow

# API calls a batch job makes in one run (one delivery), checked between chunks: past it, the progress is
# saved and the job goes on in its next delivery, right away (no attempt used). A chunk costs at most
# 2c - 1 GETs and one call for a delete of c ids the API does not have, 4c for a move; at 10 requests a
# second a run then lasts about a minute, far from any visibility timeout, whatever the batch's size.
CALLS_PER_RUN = 500


class CountedClient:
    """The API calls a batch makes, counted (``calls``)."""

    def __init__(self, client: AcrCloudClient) -> None:
        self._client = client
        self.calls = 0

    def get_files(self, bucket_id: int, ids: Sequence[Any]) -> list[BucketFile]:
        self.calls += 1
        return self._client.get_files(bucket_id, ids)

    def delete_files(self, bucket_id: int, ids: Sequence[Any]) -> list[BucketFile]:
        self.calls += 1
        return self._client.delete_files(bucket_id, ids)

    def move_files(self, target_bucket_id: int, ids: Sequence[Any]) -> list[BucketFile]:
        self.calls += 1
        return self._client.move_files(target_bucket_id, ids)


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _resolve(session: Session, bucket_id: int, targets: Targets) -> list[tuple[str, TrackFile | None, Any]]:
    """(name, managed row or None, the id to send or None for an unknown ref), in the order given. Only rows
    of the job's bucket are ours to change: a file of another bucket named by id is not in this one."""
    out: list[tuple[str, TrackFile | None, Any]] = []
    for ref in targets.refs:
        out.append((f"ref:{ref}", by_ref(session, bucket_id, ref), None))
    for file_id in targets.ids:
        row = session.exec(
            select(TrackFile).where(TrackFile.bucket_id == bucket_id, TrackFile.remote_id == file_id)
        ).first()
        out.append((f"id:{file_id}", row, file_id))
    for acr_id in targets.acr_ids:
        row = session.exec(
            select(TrackFile).where(TrackFile.bucket_id == bucket_id, TrackFile.acr_id == acr_id)
        ).first()
        out.append((f"acr_id:{acr_id}", row, acr_id))
    return out


def _cancel_if_unsent(session: Session, row: TrackFile) -> bool:
    """Cancel an upload that has not reached the API (no POST started, nobody holds it)."""
    now = utcnow()
    # An UPDATE returns a CursorResult (it has rowcount); Session.execute is typed as a plain Result.
    result = cast(
        CursorResult[Any],
        session.execute(
            update(TrackFile)
            .where(
                and_(
                    col(TrackFile.id) == row.id,
                    col(TrackFile.remote_id).is_(None),
                    col(TrackFile.post_started_at).is_(None),
                    or_(col(TrackFile.lease_until).is_(None), col(TrackFile.lease_until) < now),
                )
            )
            .values(status=FileStatus.CANCELLED, reason="deleted before it was uploaded", updated_at=now)
        ),
    )
    session.commit()
    return result.rowcount == 1


def _save(session: Session, op_id: int, outcomes: dict[str, str], generations: dict[str, int]) -> None:
    op = session.get(Operation, op_id)
    assert op is not None
    op.result = {"outcomes": dict(outcomes), "generations": dict(generations)}
    op.updated_at = utcnow()
    session.add(op)
    session.commit()


def _result(outcomes: dict[str, str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    problems = {
        name: o
        for name, o in outcomes.items()
        if o in ("not_found", "unknown_ref", "conflict", "upload_failed", "reuploaded_since")
    }
    status = OpStatus.PARTIAL if problems else OpStatus.SUCCEEDED
    out: dict[str, Any] = {"status": status, "counts": counts, "outcomes": outcomes}
    if problems:
        out["error"] = f"{len(problems)} of {len(outcomes)} not done: " + ", ".join(
            f"{n} ({o})" for n, o in list(problems.items())[:20]
        )
    return out


def _in_bucket(client: CountedClient, bucket_id: int, keys: list[Any]) -> list[Any]:
    """Which of these ids/acr_ids the bucket holds (one GET, more if the API 404s a mixed list)."""
    return matching(keys, files_present(cast(AcrCloudClient, client), bucket_id, keys))


def _affected(keys: list[Any], answered: list[BucketFile]) -> list[Any]:
    """The keys the API says it acted on: the files it listed, or every key when it listed none (the
    page does not document the response: empty, 204, true, a count... are all success)."""
    return matching(keys, answered) if answered else keys


@dataclass(frozen=True)
class BatchVerb:
    """What a batch does to a chunk of ids, and how to tell afterwards what is already done."""

    name: str  # outcome of a key acted on: "deleted" / "moved"
    call: Callable[[list[Any]], list[BucketFile]]
    # After a 404 (an earlier, timed-out try may have acted already): which keys still need the
    # call, and which are already in the desired state.
    pending: Callable[[list[Any]], list[Any]]
    already: Callable[[list[Any], set[Any]], list[Any]]
    on_done: Callable[[Session, TrackFile], None]
    check: Callable[[Session, TrackFile], str | None] | None = None


def _send_chunk(verb: BatchVerb, keys: list[Any], managed: set[Any]) -> tuple[list[Any], list[Any]]:
    """(keys acted on now, keys found already done); ``managed``: the keys of files in our tables."""
    todo = keys
    if any(k not in managed for k in keys):
        # An id we never uploaded may not exist, and an answer that lists no files (a count, 204...)
        # would not tell: ask first, so "not_found" is a fact and not a guess.
        todo = verb.pending(keys)
    try:
        done = _affected(todo, verb.call(todo)) if todo else []
    except NotFoundError:
        # A mixed list: the API may refuse all of it for one missing id. Find out which exist, send those.
        todo = verb.pending(todo)
        done = _affected(todo, verb.call(todo)) if todo else []
    rest = [k for k in keys if k not in done]
    return done, verb.already(rest, managed) if rest else []


def _run_batch(
    job: DeleteBatchJob | MoveBatchJob,
    op_id: int,
    ctx: JobContext,
    verb: BatchVerb,
    client: CountedClient,
) -> dict[str, Any]:
    settings = ctx.settings
    with session_scope() as s:
        op = s.get(Operation, op_id)
        assert op is not None
        outcomes: dict[str, str] = dict((op.result or {}).get("outcomes", {}))
        # The file each ref named when this job first saw it: a retry (retry-failed, hours later) must not
        # delete or move a newer file uploaded under the same ref since.
        generations: dict[str, int] = dict((op.result or {}).get("generations", {}))
        waiting: list[str] = []
        parked: list[str] = []  # refs not seen yet that may still arrive: kept until their upload lands
        send: list[tuple[str, TrackFile | None, Any]] = []
        for name, row, key in _resolve(s, job.bucket_id, job.targets):
            if name in outcomes:
                continue
            if row is None and key is None:  # a ref we have never seen
                wait = ref_wait(op.created_at, settings)
                if wait is RefWait.RETRY:
                    waiting.append(name)
                elif wait is RefWait.PARK:
                    parked.append(name.removeprefix("ref:"))
                else:
                    outcomes[name] = "unknown_ref"
                continue
            if row is None:
                send.append((name, None, key))
                continue
            if name.startswith("ref:") and generations.setdefault(name, row.generation) != row.generation:
                outcomes[name] = "reuploaded_since"  # the file it named is gone; this one was not asked for
                continue
            if row.status in FileStatus.gone():
                outcomes[name] = "already_deleted"
            elif row.remote_id is None:
                if verb.name == "deleted" and _cancel_if_unsent(s, row):
                    outcomes[name] = "cancelled"
                elif row.status == FileStatus.FAILED:  # nothing to wait for: a human retries it or not
                    outcomes[name] = "upload_failed"
                else:
                    waiting.append(name)
            elif verb.check is not None and (problem := verb.check(s, row)) is not None:
                outcomes[name] = problem
            else:
                send.append((name, row, row.remote_id))
        _save(s, op_id, outcomes, generations)

        left = len(send)
        for chunk in chunks(send, settings.ids_chunk_size):
            if client.calls >= CALLS_PER_RUN:  # saved after each chunk: the next delivery goes on from here
                raise RetryLater(
                    0.0,
                    f"{client.calls} API calls in this run; {left} of {len(send)} name(s) left for the next",
                )
            left -= len(chunk)
            managed = {key for _, row, key in chunk if row is not None}
            done, already = _send_chunk(verb, [key for _, _, key in chunk], managed)
            acted = {str(k) for k in done}
            earlier = {str(k) for k in already}
            for name, row, key in chunk:
                if str(key) in acted or str(key) in earlier:
                    outcomes[name] = verb.name if str(key) in acted else f"already_{verb.name}"
                    if row is not None:
                        verb.on_done(s, row)
                else:
                    outcomes[name] = "not_found"
            _save(s, op_id, outcomes, generations)

    if waiting:
        raise RetryLater(
            settings.dependency_wait, f"waiting for the upload of {len(waiting)} file(s): {', '.join(waiting[:5])}"
        )
    if parked:  # all else is done: the operation waits, as parked rows, for these uploads to land
        with session_scope() as s:
            op = s.get(Operation, op_id)
            assert op is not None
            return {**park(s, op, job.bucket_id, parked, settings), "outcomes": outcomes}
    return _result(outcomes)


def handle_delete(job: DeleteBatchJob, op_id: int, ctx: JobContext) -> dict[str, Any]:
    def on_done(s: Session, row: TrackFile) -> None:
        row.status, row.reason, row.updated_at = FileStatus.DELETED, None, utcnow()
        s.add(row)
        s.flush()

    client = CountedClient(ctx.client)
    return _run_batch(
        job,
        op_id,
        ctx,
        BatchVerb(
            "deleted",
            lambda keys: client.delete_files(job.bucket_id, keys),
            pending=lambda keys: _in_bucket(client, job.bucket_id, keys),
            # A file of ours that is no longer in the bucket is deleted (perhaps by our own timed-out try).
            already=lambda keys, managed: [k for k in keys if k in managed],
            on_done=on_done,
        ),
        client,
    )


def handle_move(job: MoveBatchJob, op_id: int, ctx: JobContext) -> dict[str, Any]:
    target = job.target_bucket_id
    client = CountedClient(ctx.client)

    def check(s: Session, row: TrackFile) -> str | None:
        return "conflict" if by_ref(s, target, row.ref) not in (None, row) else None

    def on_done(s: Session, row: TrackFile) -> None:
        row.bucket_id, row.updated_at = target, utcnow()
        s.add(row)
        s.flush()

    return _run_batch(
        job,
        op_id,
        ctx,
        BatchVerb(
            "moved",
            lambda keys: client.move_files(target, keys),
            pending=lambda keys: _in_bucket(client, job.bucket_id, keys),
            already=lambda keys, _managed: _in_bucket(client, target, keys),
            on_done=on_done,
            check=check,
        ),
        client,
    )
