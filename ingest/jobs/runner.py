"""Running a job: the operation row, validation, the auth hold and the retry policy around a handler.

Handlers (uploads, metadata, batches) do the work and raise; this module turns what they raise into
a recorded state: waiting (retry later), held (token rejected) or failed with its reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ingest.api.errors import RateLimitedError
from ingest.jobs import events
from ingest.jobs.context import JobContext, OutcomeWriter
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.inputs import VALIDATORS, job_args
from ingest.jobs.managed_files import record_sent_by_name
from ingest.jobs.retry_policy import (
    Action,
    database_unavailable,
    decide,
    is_outage_failure,
    outage_countdown,
    reason_of,
)
from ingest.redact import mask_in
from ingest.settings import Settings, get_settings
from ingest.store import auth_hold, circuit_breaker, gate_cache
from ingest.store.db import get_engine, session_scope
from ingest.store.models import FileStatus, Operation, OpKind, OpStatus, TrackFile, utcnow
from ingest.store.values import db_id_or_none, storable_json

log = logging.getLogger("ingest.jobs")

Handler = Callable[[Any, int, JobContext], dict[str, Any]]


def ensure_operation(session: Session, kind: str, args: dict[str, Any], task_id: str) -> Operation:
    """The operation of this task: written by our producer, or created here for a message sent by
    another system."""
    op = session.exec(select(Operation).where(Operation.task_id == task_id)).first()
    if op is not None:
        return op
    # The message's values as the tables can hold them: a NaN or an id past BIGINT must not fail the insert
    # (the job would be acknowledged with no row at all); the validator names what is wrong.
    op = Operation(kind=kind, args=storable_json(args), task_id=task_id, bucket_id=db_id_or_none(args.get("bucket_id")))
    session.add(op)
    try:
        session.commit()
    except IntegrityError:  # the same message running twice: take the row the other one wrote
        session.rollback()
        op = session.exec(select(Operation).where(Operation.task_id == task_id)).one()
    return op


def summary(op: Operation) -> dict[str, Any]:
    return {"operation_id": op.id, "status": op.status, "error": op.error, "result": op.result}


def _set(session: Session, op_id: int, *, commit: bool = True, **values: Any) -> Operation:
    op = session.get(Operation, op_id)
    assert op is not None
    previous = op.status
    for key, value in values.items():
        setattr(op, key, value)
    op.updated_at = utcnow()
    if values.get("status") in OpStatus.final():
        op.finished_at = op.updated_at
        events.operation_ended(session, op, previous)  # committed with the status it reports
    session.add(op)
    if commit:
        session.commit()
    return op


def fail_file(session: Session, op: Operation, reason: str) -> None:
    """An upload that will not be retried: keep the row as failed with the reason. Flushes, does not commit:
    the caller commits it with the operation's failure, so no reader sees a failed job whose file is still
    uploading (and no crash between two commits leaves it so)."""
    if op.file_id is None or op.kind not in OpKind.uploads():
        return
    file_id = op.file_id
    row = session.get(TrackFile, file_id)
    if row is not None and row.remote_id is None and row.status in (FileStatus.QUEUED, FileStatus.UPLOADING):
        previous = row.status
        row.status = FileStatus.FAILED
        row.reason = reason
        row.updated_at = utcnow()
        session.add(row)
        events.file_changed(session, row, previous, operation=op)


def run_job(kind: str, args: dict[str, Any], ctx: JobContext, handler: Handler) -> dict[str, Any]:
    """Run one delivery of a job. A database that is away or locked anywhere (before the row exists, in
    the handler, while recording a failure) makes the delivery a retry: the message is never
    acknowledged as done while nothing is recorded."""
    try:
        return _run_recorded(kind, args, ctx, handler)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        raise _retry_unrecorded(kind, exc, ctx) from None


def _retry_unrecorded(kind: str, exc: Exception, ctx: JobContext) -> RetryLater:
    """The retry of a delivery whose outcome could not be written. Its attempts are Celery's own count
    (the row may not exist). Once they run out the job still cannot be failed (that too needs the
    database), so it keeps coming back at the longest backoff until the database answers."""
    decision = decide(exc, ctx.delivery + 1, 0, ctx.settings)
    countdown = decision.countdown if decision.action is Action.RETRY else ctx.settings.backoff_max
    log.warning(
        "%s %s: database unavailable, retry in %.1fs (delivery %d): %s",
        kind,
        ctx.task_id,
        countdown,
        ctx.delivery + 1,
        reason_of(exc),
    )
    return RetryLater(countdown, f"database unavailable: {reason_of(exc)}", counts=True)


# The hot path's statements, built once: building and keying a statement per job cost more than running it.
_START = (
    update(Operation)
    .where(col(Operation.task_id) == bindparam("b_task_id"), col(Operation.status).not_in(OpStatus.final()))
    .values(status=OpStatus.RUNNING, updated_at=bindparam("b_now"))
    .returning(col(Operation.id))
)
_OUTCOME_COLUMNS = ("status", "result", "error", "updated_at", "finished_at")
# A final outcome ends a run that counted: ``attempts`` includes it (a success at the first try shows 1). Runs
# that only waited (a 429, a hold, a parked follow-up, a batch going on in its next delivery) count nothing.
_OUTCOME = {
    final: update(Operation)
    .where(col(Operation.id) == bindparam("b_op_id"))
    .values(
        {
            **{c: bindparam(f"v_{c}") for c in _OUTCOME_COLUMNS if final or c != "finished_at"},
            **({"attempts": col(Operation.attempts) + 1} if final else {}),
        }
    )
    for final in (True, False)
}


def _start(s: Session, task_id: str) -> int | None:
    """The common case in one statement: our producer wrote the operation and it is not finished yet; mark
    it running and return its id. None: no row yet, or a redelivery of finished work."""
    return s.connection().execute(_START, {"b_task_id": task_id, "b_now": utcnow()}).scalar()


def _run_recorded(kind: str, args: dict[str, Any], ctx: JobContext, handler: Handler) -> dict[str, Any]:
    settings = ctx.settings
    validated: tuple[Any, Exception | None] | None = None
    # A handler marked ``continues_start`` takes this transaction as its first (one commit instead of two) in the
    # common case: our producer's job, valid, the gates remembered clear (reading them would need it committed).
    continues = getattr(handler, "continues_start", False) and gate_cache.clear()
    s = Session(get_engine(), expire_on_commit=False)
    try:
        op_id = _start(s, ctx.task_id)
        if op_id is not None and continues:
            validated = _validate(kind, args, ctx)
            if validated[1] is None:
                return _run_handler(kind, op_id, validated[0], ctx, handler, probed=False, started=s)
        if op_id is None:
            # A message sent by name (no row of our producer): its row keeps the validated arguments, so every
            # read path sees the types it expects; a message that fails validation keeps what it sent.
            validated = _validate(kind, args, ctx)
            job, _ = validated
            # An upload's rows as our producer writes them, in one commit (the common case of a message sent by
            # name); otherwise the operation first, then the handler plans.
            if job is not None and kind in OpKind.uploads():
                op_id = record_sent_by_name(s, kind, job, ctx.task_id)
            if op_id is None:
                # (A URL's password in a refused message is not kept: its row is read by show, failures, events.)
                op = ensure_operation(s, kind, job_args(job) if job is not None else mask_in(args), ctx.task_id)
                if op.status in OpStatus.final():  # a redelivered message whose work is already recorded
                    s.commit()
                    return summary(op)
                assert op.id is not None
                op_id = op.id
                _set(s, op_id, status=OpStatus.RUNNING)
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()  # (a no-op once a handler took it: it closed it)

    job, invalid = validated or _validate(kind, args, ctx)
    if invalid is not None:  # bad input: the policy fails it at once, naming the field
        return _handle_failure(kind, op_id, invalid, ctx)

    # Read both gates at most once a second per process while they are clear. A job that trusted that memory
    # is no probe: its success must not lift a hold another worker wrote meanwhile (the memory may expire
    # while it runs, and it may not have called the API at all).
    probed = not gate_cache.clear()
    if probed:
        try:
            _check_gates(settings)
        except RetryLater as wait:
            _record_wait(op_id, wait)
            raise
        except Exception as exc:
            return _handle_failure(kind, op_id, exc, ctx)
    return _run_handler(kind, op_id, job, ctx, handler, probed=probed)


def _record_wait(op_id: int, wait: RetryLater) -> None:
    """The operation waits for its retry (or is held while the API rejects the token)."""
    with session_scope() as s:
        _set(s, op_id, status=OpStatus.HELD if wait.held else OpStatus.WAITING, error=wait.reason)


def _run_handler(
    kind: str,
    op_id: int,
    job: Any,
    ctx: JobContext,
    handler: Handler,
    *,
    probed: bool,
    started: Session | None = None,
) -> dict[str, Any]:
    """The handler, and what it raised or returned recorded. ``started``: the runner's open transaction the
    handler continues (``first_transaction``); rolled back with the handler's first one if that raises."""
    try:
        recorded: dict[str, dict[str, Any]] = {}
        writer = _outcome_writer(op_id, recorded, probed=probed)
        try:
            result = handler(job, op_id, dataclasses.replace(ctx, record_outcome=writer, started=started))
        finally:
            if started is not None:  # closed by the handler once taken; left untaken, its start is rolled back
                started.close()  # before anything below writes (on SQLite it would wait for this transaction)
    except RetryLater as wait:
        _record_wait(op_id, wait)
        raise
    except Exception as exc:
        return _handle_failure(kind, op_id, exc, ctx)

    if "summary" in recorded:  # the handler wrote the outcome with its own last commit
        return recorded["summary"]
    with session_scope() as s:
        return _write_outcome(s, op_id, result, probed=probed)


def _validate(kind: str, args: dict[str, Any], ctx: JobContext) -> tuple[Any, Exception | None]:
    """(the job, None), or (None, why not)."""
    try:
        return VALIDATORS[kind](args, ctx.settings), None
    except InputError as exc:
        return None, exc
    except Exception as exc:  # a gap in validation must end the job failed with the reason, not stuck running
        log.exception("%s %s: validation raised %s", kind, ctx.task_id, type(exc).__name__)
        return None, exc


def _outcome_writer(op_id: int, recorded: dict[str, dict[str, Any]], *, probed: bool) -> OutcomeWriter:
    """The ``record_outcome`` a handler may call in its last transaction (saving the runner one of its own)."""

    def write(session: Session, result: dict[str, Any]) -> None:
        recorded["summary"] = _write_outcome(session, op_id, dict(result), commit=False, probed=probed)

    return write


def _write_outcome(
    session: Session, op_id: int, result: dict[str, Any], *, commit: bool = True, probed: bool = True
) -> dict[str, Any]:
    """The outcome in one UPDATE (no read first); the summary is what was written. ``probed``: the job read
    the gates itself (it may be the probe of a hold or an open breaker, whose success lifts them)."""
    status = result.pop("status", OpStatus.SUCCEEDED)
    # A parked follow-up may not have called the API at all; with both gates clear there is nothing to lift.
    if status in OpStatus.final() and probed and not gate_cache.clear():
        auth_hold.lift(session)
        circuit_breaker.record_success(session)
    error, stored = result.get("error"), result or None
    now = utcnow()
    final = status in OpStatus.final()
    values: dict[str, Any] = {"v_status": status, "v_result": stored, "v_error": error, "v_updated_at": now}
    if final:
        values["v_finished_at"] = now
    # A plain UPDATE on the session's connection (the ORM's bulk-update bookkeeping costs more than the
    # statement), after the session's pending changes so none of them is written over it later; an
    # Operation loaded in this session is refreshed below before it is read.
    session.flush()
    session.connection().execute(_OUTCOME[final], {"b_op_id": op_id, **values})
    if status in OpStatus.final() and get_settings().events_enabled:  # the event in the same transaction
        op = session.get(Operation, op_id)
        if op is not None:
            session.refresh(op)
            events.operation_ended(session, op, OpStatus.RUNNING)
    if commit:
        session.commit()
    return {"operation_id": op_id, "status": status, "error": error, "result": stored}


def _check_gates(settings: Settings) -> None:
    """Raise RetryLater while the token is rejected or the API is down for everyone (unless this job is the
    probe); remember when both are clear."""
    with session_scope() as s:
        if not auth_hold.may_call(s, settings.current_token(), settings.auth_hold_recheck):
            hold = auth_hold.current(s)
            raise RetryLater(
                settings.auth_hold_recheck,
                f"held: the API rejects the access token ({hold.reason if hold else ''})",
                held=True,
            )
        if not circuit_breaker.may_call(s, settings.breaker_probe_interval):
            outage = circuit_breaker.current(s)
            raise RetryLater(
                outage_countdown(settings),
                f"held: the API is down for everyone ({outage.reason if outage else ''})",
                held=True,
            )
        if settings.gate_cache_seconds > 0 and auth_hold.current(s) is None and circuit_breaker.is_clear(s):
            gate_cache.remember_clear(settings.gate_cache_seconds)


def _handle_failure(kind: str, op_id: int, exc: Exception, ctx: JobContext) -> dict[str, Any]:
    settings = ctx.settings
    with session_scope() as s:
        op = s.get(Operation, op_id)
        assert op is not None
        throttled = op.throttled + (1 if isinstance(exc, RateLimitedError) else 0)
        api_down = is_outage_failure(exc) and circuit_breaker.record_failure(
            s, op_id, reason_of(exc), threshold=settings.breaker_threshold, window=settings.breaker_window
        )
        decision = decide(exc, op.attempts + 1, throttled, settings, api_down=api_down)
        attempts = op.attempts + (1 if decision.counts else 0)
        if decision.action is Action.PAUSE:
            _set(s, op_id, status=OpStatus.HELD, error=decision.reason)
            raise RetryLater(decision.countdown, decision.reason, held=True) from None
        if decision.action is Action.HOLD:
            auth_hold.hold(s, settings.current_token(), reason_of(exc))
            _set(s, op_id, status=OpStatus.HELD, error=decision.reason)
            raise RetryLater(decision.countdown, decision.reason, held=True) from None
        if decision.action is Action.RETRY:
            log.info(
                "%s %s: retry in %.1fs (attempt %d): %s",
                kind,
                ctx.task_id,
                decision.countdown,
                attempts,
                decision.reason,
            )
            _set(s, op_id, status=OpStatus.WAITING, error=decision.reason, attempts=attempts, throttled=throttled)
            raise RetryLater(decision.countdown, decision.reason, counts=decision.counts) from None
        log.error("%s %s failed: %s", kind, ctx.task_id, decision.reason)
        op = _set(
            s,
            op_id,
            commit=False,
            status=OpStatus.FAILED,
            error=decision.reason,
            attempts=attempts,
            throttled=throttled,
        )
        fail_file(s, op, decision.reason)
        s.commit()
        return summary(op)


# Built once: the poll asks it every cycle.
_STALE = (
    select(Operation)
    .where(
        col(Operation.status).in_(OpStatus.unfinished()),
        col(Operation.updated_at) < bindparam("b_cutoff"),
        col(Operation.task_id).is_not(None),
    )
    .order_by(col(Operation.id))
    .limit(bindparam("b_limit"))
)


def claim_stale(session: Session, older_than: float, limit: int = 500) -> list[Operation]:
    """Unfinished operations nobody has touched for ``older_than`` seconds: their message was lost.
    Marks them touched (so the next cycle does not send them again) and returns them to resend."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    ops = list(session.exec(_STALE, params={"b_cutoff": cutoff, "b_limit": limit}).all())
    for op in ops:
        op.updated_at = utcnow()
        session.add(op)
    session.commit()
    if ops:
        log.warning(
            "resending %d operation(s) whose message was lost: %s", len(ops), ", ".join(str(op.id) for op in ops[:20])
        )
    return ops
