"""The producer API: validate, record the operation (and the file row), then enqueue by task name.

Nothing here imports the tasks: jobs are sent by name, exactly as a producer in another language would.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from celery import Celery
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from ingest.jobs.bulk_uploads import (
    Item,
    Message,
    Refused,
    RowOutcome,
    batches,
    mark_unsent,
    new_row_values,
    op_values,
    plan_batch,
    upload_args,
)
from ingest.jobs.catalog_input import to_job
from ingest.jobs.errors import EnqueueError, InputError
from ingest.jobs.inputs import (
    UploadFileJob,
    UploadUrlJob,
    validate_delete_batch,
    validate_move_batch,
    validate_update_meta,
    validate_upload_file,
    validate_upload_url,
)
from ingest.jobs.managed_files import UploadJob, UploadPlan, by_ref, plan_upload, prepare_upload_row, unknown_ref
from ingest.jobs.retry_policy import BAD_INPUT_PREFIX
from ingest.settings import Settings, get_settings
from ingest.store import outbox
from ingest.store.db import get_engine, session_scope
from ingest.store.enqueue import insert_new_upload
from ingest.store.models import FileStatus, Operation, OpKind, OpStatus, TrackFile, utcnow
from ingest.store.reports import failed_operations
from ingest.store.values import BIGINT_MAX, db_id_or_none
from ingest.worker.bulk_publish import publish_tasks
from ingest.worker.outbox import PublishError, Written, publish, publish_written
from ingest.worker.outbox_publisher import BackgroundPublisher, PublisherClosed

PUBLISH_MODES = ("sync", "background")

log = logging.getLogger("ingest.producer")


@dataclass(frozen=True)
class Enqueued:
    kind: str
    # Uploads: "new", "reupload", "update", "noop", or "resent" (its message had not left: sent now);
    # "sent" otherwise.
    plan: str
    operation_id: int | None
    task_id: str | None
    file_id: int | None = None
    ref: str | None = None


def _compact(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None and v != []}


def _check_filters(*, kind: Any, bucket_id: Any, since: Any, limit: Any, reason: Any) -> None:
    """``retry_failed``'s filters, refused with ``InputError`` before they reach SQL."""
    errors: dict[str, str] = {}
    if kind is not None and kind not in [k.value for k in OpKind]:
        errors["kind"] = f"must be one of {', '.join(k.value for k in OpKind)}"
    if bucket_id is not None and db_id_or_none(bucket_id) is None:
        errors["bucket_id"] = f"must be a positive integer bucket id of at most {BIGINT_MAX}"
    if since is not None and not isinstance(since, datetime):
        errors["since"] = f"must be a datetime, got {type(since).__name__}"
    if limit is not None and (type(limit) is not int or not 0 <= limit <= BIGINT_MAX):
        errors["limit"] = "must be a positive integer (or None for all)"
    if reason is not None and not isinstance(reason, str):
        errors["reason"] = f"must be text, got {type(reason).__name__}"
    if errors:
        raise InputError(errors)


class Producer:
    """``publish`` (default ACR_INGEST_PRODUCER_PUBLISH): ``sync``, a call returns once its message is published
    (the CLI's one-job commands: their exit status says so); ``background``, once the job is committed, its
    message published by a thread of this process in batches. Either way the job is durable when the call
    returns. In background mode ``flush`` waits for what was handed over and raises ``EnqueueError`` for what
    the broker did not take (kept: the poll's sweeper sends it); ``close`` (or leaving a ``with`` block, or the
    process exiting) flushes and stops the thread."""

    def __init__(
        self,
        app: Celery | None = None,
        settings: Settings | None = None,
        *,
        publish: Literal["sync", "background"] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        mode = publish or self.settings.producer_publish
        if mode not in PUBLISH_MODES:
            raise InputError({"publish": f"must be one of {', '.join(PUBLISH_MODES)}, got {mode!r}"})
        self.publish_mode = mode
        if app is None:
            from ingest.worker.app import create_app, publish_retry_policy

            app = create_app(self.settings)
            # Its own app: a call gives up on an away broker soon, the job kept (a caller's app keeps its own).
            app.conf.task_publish_retry_policy = publish_retry_policy(self.settings.producer_publish_wait)
        self.app = app
        self._held = threading.local()
        self._background: BackgroundPublisher | None = None
        self._background_lock = threading.Lock()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the block's own error is the one to see
            self.close()
        except EnqueueError as unsent:
            log.warning("%s", unsent)

    def flush(self, timeout: float | None = None) -> None:
        """Background mode: wait until every job handed over so far is published; ``EnqueueError`` if the broker
        did not take some since the last flush (they are kept, due: the poll's sweeper sends them), and
        ``TimeoutError`` if ``timeout`` passes first. Nothing to do in sync mode."""
        publisher = self._background
        if publisher is not None and publisher.pid == os.getpid():
            _raise_unpublished(publisher.flush(timeout))

    def close(self, timeout: float | None = None) -> None:
        """``flush``, then stop the background publisher (a later call starts another)."""
        publisher, self._background = self._background, None
        if publisher is not None and publisher.pid == os.getpid():
            _raise_unpublished(publisher.close(timeout))

    def _submit(self, written: Written) -> None:
        try:
            self._publisher().submit(written)
        except PublisherClosed:  # another thread closed this producer a moment ago: a new publisher takes it
            self._publisher().submit(written)

    def _publisher(self) -> BackgroundPublisher:
        """This process's background publisher, made on first use (a forked child makes its own)."""
        publisher = self._background
        if publisher is None or publisher.pid != os.getpid():
            if publisher is not None:  # a forked child: the parent's lock may have been held at the fork
                self._background_lock = threading.Lock()
            with self._background_lock:
                publisher = self._background
                if publisher is None or publisher.pid != os.getpid():
                    publisher = self._background = BackgroundPublisher(self.app)
        return publisher

    def _kombu_producer(self) -> Any:
        """This thread's kombu producer for the one-job path, on a broker connection of its own (held,
        not taken from the app's pool and given back per job: that cost a tenth of the path). A forked
        child makes its own."""
        held = getattr(self._held, "producer", None)
        if held is None or held[0] != os.getpid():
            held = self._held.producer = (os.getpid(), self.app.connection_for_write().Producer())
        return held[1]

    # --- uploads -----------------------------------------------------------------------------

    def upload_url(
        self,
        url: str | None = None,
        *,
        title: str | None = None,
        bucket_id: int | str | None = None,
        user_defined: dict[str, Any] | str | None = None,
        ref: str | None = None,
    ) -> Enqueued:
        job = validate_upload_url(
            _compact({"url": url, "bucket_id": bucket_id, "title": title, "user_defined": user_defined, "ref": ref}),
            self.settings,
        )
        return self._upload(OpKind.UPLOAD_URL, job, {"url": job.url})

    def upload_file(
        self,
        path: str | None = None,
        *,
        title: str | None = None,
        bucket_id: int | str | None = None,
        user_defined: dict[str, Any] | str | None = None,
        ref: str | None = None,
        data_type: str = "audio",
        send_as: str | None = None,
    ) -> Enqueued:
        """Enqueue an upload of a file under the media root; ``send_as`` (audio or fingerprint, default
        ACR_INGEST_UPLOAD_AS) says whether the worker posts the audio or its fingerprint."""
        job = validate_upload_file(
            _compact(
                {
                    "path": path,
                    "bucket_id": bucket_id,
                    "title": title,
                    "user_defined": user_defined,
                    "ref": ref,
                    "data_type": data_type,
                    "send_as": send_as,
                }
            ),
            self.settings,
        )
        return self._upload(
            OpKind.UPLOAD_FILE, job, {"path": job.path, "data_type": job.data_type, "send_as": job.send_as}
        )

    def _upload(self, kind: OpKind, job: UploadJob, source: dict[str, Any]) -> Enqueued:
        new = self._upload_new(kind, job)
        if new is not None:
            return new
        args = {
            **source,
            "bucket_id": job.bucket_id,
            "title": job.title,
            "user_defined": job.user_defined,
            "ref": job.ref,
        }
        with session_scope() as s:
            existing = by_ref(s, job.bucket_id, job.ref)
            plan = plan_upload(existing, job)
            if plan is UploadPlan.NOOP:
                assert existing is not None and existing.id is not None
                # Nothing new to do, unless the job's message never reached the broker: send it now.
                unsent = [e for e in outbox.unsent_of_file(s, existing.id) if e.id and outbox.claim(s, e.id)]
                if not unsent:
                    return Enqueued(kind, plan, None, None, existing.id, job.ref)
                entry_ids = [e.id for e in unsent if e.id is not None]
                result = Enqueued(kind, "resent", None, unsent[-1].message_id, existing.id, job.ref)
            elif plan is UploadPlan.UPDATE:
                upd = {"bucket_id": job.bucket_id, "ref": job.ref, "title": job.title, "user_defined": job.user_defined}
                op, written = self._record(
                    s,
                    OpKind.UPDATE_META,
                    upd,
                    file_id=existing.id if existing else None,
                    file_generation=existing.generation if existing else None,
                )
                result = Enqueued(kind, plan, op.id, op.task_id, op.file_id, job.ref)
            else:
                try:
                    row = prepare_upload_row(s, existing, job)
                    op, written = self._record(s, kind, args, file_id=row.id)
                except IntegrityError:  # another producer wrote this ref a moment ago
                    s.rollback()
                    return self._upload(kind, job, source)
                result = Enqueued(kind, plan, op.id, op.task_id, op.file_id, job.ref)
        if plan is UploadPlan.NOOP:  # claimed entries: published now, whatever the mode
            for entry_id in entry_ids:
                self._send(entry_id, result.operation_id, rerun_hint=True)
        else:
            self._dispatch(written, result.operation_id, rerun_hint=True)
        return result

    def _upload_new(self, kind: OpKind, job: UploadJob) -> Enqueued | None:
        """A ref with no row yet (an upstream system's first call for a track, the common case): the file
        row, the operation and its outbox entry by Core statements in one transaction, then the publish.
        None when the ref has a row (or another producer wrote it a moment ago): ``_upload`` plans it."""
        args = upload_args(job)
        now = utcnow()
        operation = op_values(kind, args, None, now)
        del operation["file_id"]  # the new row's, set by the INSERT
        task_id = operation["task_id"]
        entry = outbox.entry_values(
            kind=outbox.TASK,
            destination=kind.task_name,
            message_id=task_id,
            payload=args,
            grace=self.settings.outbox_grace,
        )
        # One pooled connection for the rows, the publish and the entry's mark.
        with get_engine().connect() as conn:
            ids = insert_new_upload(conn, new_row_values(job, now), operation, entry)
            if ids is None:  # the ref has a row (maybe another producer's, a moment ago)
                return None
            file_id, op_id, entry_id = ids
            written = Written(entry_id, outbox.TASK, kind.task_name, task_id, args)
            if self.publish_mode == "sync":
                self._send_written(conn, written, op_id)
        if self.publish_mode == "background":
            self._submit(written)
        return Enqueued(kind, UploadPlan.NEW, op_id, task_id, file_id, job.ref)

    def upload_many(
        self, items: Iterable[Item], *, batch_size: int = 1000, dry_run: bool = False
    ) -> Iterator[RowOutcome]:
        """Enqueue many uploads (validated jobs, or ``Refused`` for a bad one, in order): one outcome per
        item, numbered from 1. Each batch is planned and written in one transaction, then published
        over one broker connection. If the broker fails midway the rows stay queued and marked unsent:
        re-running the same items sends them (EnqueueError says so). A dict is read as a catalog row (the
        columns of ``acr-ingest import``); anything else is refused with the reason."""
        if isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
            raise InputError({"items": f"must be an iterable of upload jobs, got {type(items).__name__}"})
        if type(batch_size) is not int or batch_size < 1:
            raise InputError({"batch_size": f"must be a positive integer, got {batch_size!r}"})
        for batch in batches((self._as_item(item) for item in items), batch_size):
            for attempt in range(3):
                try:
                    with session_scope() as s:
                        plan = plan_batch(s, batch, self.settings, dry_run=dry_run)
                    break
                except IntegrityError:  # another producer wrote one of these refs a moment ago: plan again
                    if attempt == 2:
                        raise
            self._publish_many(plan.messages)
            yield from plan.outcomes

    def _as_item(self, item: Any) -> Item:
        if isinstance(item, UploadUrlJob | UploadFileJob | Refused):
            return item
        if isinstance(item, dict):
            return to_job(item, self.settings)
        return Refused(
            InputError(
                {
                    "item": f"must be an upload job (validate_upload_url/validate_upload_file) or a dict of catalog "
                    f"columns, got {type(item).__name__}"
                }
            )
        )

    def _publish_many(self, messages: list[Message]) -> None:
        try:
            # Celery's envelope, routed and declared once per batch, pipelined on Redis (worker/bulk_publish.py).
            publish_tasks(self.app, messages)
            with session_scope() as s:
                outbox.mark_sent_many(s, [m.task_id for m in messages])
        except Exception as exc:
            # A pipeline that failed may have delivered part of the batch: mark all of it unsent. Sending
            # one again is harmless (the same task id runs once; a finished operation is not redone).
            with session_scope() as s:
                mark_unsent(s, [m.task_id for m in messages])
            raise EnqueueError(
                f"the broker did not take a batch of {len(messages)} messages ({type(exc).__name__}: {exc}); "
                "the rows are written: run the same import again to send them"
            ) from exc

    # --- metadata and batches --------------------------------------------------------------------

    def update_meta(
        self,
        *,
        bucket_id: int | str | None = None,
        ref: str | None = None,
        file_id: int | str | None = None,
        acr_id: str | None = None,
        title: str | None = None,
        user_defined: dict[str, Any] | str | None = None,
    ) -> Enqueued:
        job = validate_update_meta(
            _compact(
                {
                    "bucket_id": bucket_id,
                    "ref": ref,
                    "file_id": file_id,
                    "acr_id": acr_id,
                    "title": title,
                    "user_defined": user_defined,
                }
            ),
            self.settings,
        )
        generation = None
        if job.ref is not None:
            with session_scope() as s:
                row = by_ref(s, job.bucket_id, job.ref)
                if row is None:
                    raise unknown_ref(job.ref, job.bucket_id)
                generation = row.generation  # the file this update is for, even if the ref is re-uploaded
        return self._simple(OpKind.UPDATE_META, _compact(job.model_dump()), file_generation=generation)

    def delete(
        self,
        *,
        bucket_id: int | str | None = None,
        refs: list[str] | None = None,
        ids: list[int | str] | None = None,
        acr_ids: list[str] | None = None,
    ) -> Enqueued:
        job = validate_delete_batch(
            _compact({"bucket_id": bucket_id, "refs": refs, "ids": ids, "acr_ids": acr_ids}), self.settings
        )
        return self._simple(OpKind.DELETE_BATCH, _compact({"bucket_id": job.bucket_id, **job.targets.model_dump()}))

    def move(
        self,
        *,
        target_bucket_id: int | str | None = None,
        bucket_id: int | str | None = None,
        refs: list[str] | None = None,
        ids: list[int | str] | None = None,
        acr_ids: list[str] | None = None,
    ) -> Enqueued:
        job = validate_move_batch(
            _compact(
                {
                    "bucket_id": bucket_id,
                    "target_bucket_id": target_bucket_id,
                    "refs": refs,
                    "ids": ids,
                    "acr_ids": acr_ids,
                }
            ),
            self.settings,
        )
        return self._simple(
            OpKind.MOVE_BATCH,
            _compact(
                {"bucket_id": job.bucket_id, "target_bucket_id": job.target_bucket_id, **job.targets.model_dump()}
            ),
        )

    def _simple(self, kind: OpKind, args: dict[str, Any], file_generation: int | None = None) -> Enqueued:
        with session_scope() as s:
            op, written = self._record(s, kind, args, file_generation=file_generation)
            result = Enqueued(kind, "sent", op.id, op.task_id, None, args.get("ref"))
        self._dispatch(written, result.operation_id)
        return result

    # --- failures --------------------------------------------------------------------------------

    def retry_failed(
        self,
        *,
        kind: str | None = None,
        bucket_id: int | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        reason: str | None = None,
        include_bad_input: bool = False,
    ) -> list[Enqueued]:
        """Re-enqueue failed operations (a human decided to try again); uploads look in the bucket first.
        Bad input fails the same way again, so it is left out unless ``include_bad_input``; ``reason``
        keeps only failures whose error contains it. Each job is judged against the state it finds when
        it runs (an update from before a re-upload of its ref is skipped, with the reason)."""
        _check_filters(kind=kind, bucket_id=bucket_id, since=since, limit=limit, reason=reason)
        out: list[tuple[int, OpKind, dict[str, Any], str, int | None, int]] = []
        with session_scope() as s:
            query = failed_operations(
                kind=kind,
                bucket_id=bucket_id,
                since=since,
                reason=reason,
                exclude_prefix=None if include_bad_input else BAD_INPUT_PREFIX,
            ).order_by(col(Operation.id))
            if limit:
                query = query.limit(limit)
            for op in s.exec(query).all():
                task_id = str(uuid.uuid4())
                op.task_id, op.status, op.error = task_id, OpStatus.QUEUED, None
                op.attempts, op.throttled, op.finished_at, op.updated_at = 0, 0, None, utcnow()
                if op.file_id is not None and op.kind in OpKind.uploads():
                    row = s.get(TrackFile, op.file_id)
                    if row is not None and row.status == FileStatus.FAILED:
                        row.status, row.reason, row.updated_at = FileStatus.QUEUED, None, utcnow()
                        s.add(row)
                s.add(op)
                assert op.id is not None
                entry = self._outbox(s, OpKind(op.kind), dict(op.args), task_id)
                assert entry.id is not None
                out.append((op.id, OpKind(op.kind), dict(op.args), task_id, op.file_id, entry.id))
        results = []
        for op_id, op_kind, args, task_id, file_id, entry_id in out:
            self._send(entry_id, op_id)
            results.append(Enqueued(op_kind, "retry", op_id, task_id, file_id, args.get("ref")))
        return results

    # --- plumbing --------------------------------------------------------------------------------

    def _record(
        self,
        s: Session,
        kind: OpKind,
        args: dict[str, Any],
        file_id: int | None = None,
        file_generation: int | None = None,
    ) -> tuple[Operation, Written]:
        """The operation and its message in the outbox, committed together (with the caller's file row)."""
        task_id = str(uuid.uuid4())
        op = Operation(
            kind=kind,
            args=args,
            task_id=task_id,
            file_id=file_id,
            bucket_id=args.get("bucket_id"),
            file_generation=file_generation,
        )
        s.add(op)
        entry = self._outbox(s, kind, args, task_id)
        s.commit()
        assert entry.id is not None
        return op, Written(entry.id, outbox.TASK, kind.task_name, task_id, args)

    def _outbox(self, s: Session, kind: OpKind, args: dict[str, Any], task_id: str) -> Any:
        return outbox.add(
            s,
            kind=outbox.TASK,
            destination=kind.task_name,
            message_id=task_id,
            payload=args,
            grace=self.settings.outbox_grace,
        )

    def _dispatch(self, written: Written, op_id: int | None, *, rerun_hint: bool = False) -> None:
        """A committed entry: published now (sync), or handed to this process's background publisher."""
        if self.publish_mode == "background":
            self._submit(written)
        else:
            self._send(written.id, op_id, rerun_hint=rerun_hint)

    def _send(self, entry_id: int, op_id: int | None, *, rerun_hint: bool = False) -> None:
        """Publish a committed outbox entry. If the broker does not take it the job is kept: the poll's
        sweeper publishes it later (and, for an upload, running the same command again does it now)."""
        try:
            publish(self.app, entry_id)
        except PublishError as exc:
            raise _kept(exc, op_id, rerun_hint=rerun_hint) from exc

    def _send_written(self, conn: Connection, entry: Written, op_id: int) -> None:
        """``_send`` for an entry just written (and committed) on ``conn``: published as written."""
        try:
            publish_written(self.app, entry, conn, self._kombu_producer())
        except PublishError as exc:
            raise _kept(exc, op_id, rerun_hint=True) from exc


def _raise_unpublished(unpublished: Any) -> None:
    if unpublished:
        raise EnqueueError(
            f"could not enqueue {unpublished.count} job(s) ({unpublished.reason}); they are kept and are sent when "
            "the broker is back (by the state poll; or run the same commands again to send them now)"
        )


def _kept(exc: PublishError, op_id: int | None, *, rerun_hint: bool) -> EnqueueError:
    what = f"operation {op_id}" if op_id is not None else "the job"
    return EnqueueError(
        f"could not enqueue ({exc}); {what} is kept and is sent when the broker is back "
        f"(by the state poll, after ACR_INGEST_OUTBOX_GRACE)"
        + ("; or run the same command again to send it now" if rerun_hint else "")
    )
