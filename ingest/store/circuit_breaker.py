"""Stop spending attempts while the API is down for everyone; resume by itself when it answers again.

One row (name="api") shared by every worker, like the auth hold (``auth_hold.py``):

- closed: each transient failure of a job (5xx, connection refused/reset, timeout; not 429) is counted.
  A success resets the count, and so does a failure more than ``window`` seconds after the first one
  counted. A failure of the same operation as the last one counted does not add: one job failing on its
  own is the retry policy's business, not an outage. ``threshold`` failures of different jobs in a row
  within the window open the breaker (one error logged, by the worker that opened it);
- open: jobs do not call the API; they are held (status ``held``, no attempt used) and come back after
  a countdown. One probe per ``probe_interval`` seconds across all workers is let through;
- a job that succeeds (the probe) closes it, and held work resumes at its next countdown.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from ingest.store import gate_cache
from ingest.store.models import CircuitBreaker, utcnow

log = logging.getLogger("ingest.breaker")
BREAKER = "api"


def _updated(session: Session, statement: Any) -> int:
    # An UPDATE returns a CursorResult (it has rowcount); Session.execute is typed as a plain Result.
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _row(session: Session) -> CircuitBreaker:
    row = session.get(CircuitBreaker, BREAKER)
    if row is not None:
        return row
    session.add(CircuitBreaker(name=BREAKER))
    try:
        session.commit()
    except IntegrityError:  # another worker created it first
        session.rollback()
    row = session.get(CircuitBreaker, BREAKER)
    assert row is not None
    return row


def is_clear(session: Session) -> bool:
    """Closed with no failure counted: a success would have nothing to reset."""
    row = session.get(CircuitBreaker, BREAKER)
    return row is None or (row.opened_at is None and row.failures == 0)


def current(session: Session) -> CircuitBreaker | None:
    """The breaker when it is open, else None."""
    row = session.get(CircuitBreaker, BREAKER)
    return row if row is not None and row.opened_at is not None else None


def may_call(session: Session, probe_interval: float) -> bool:
    """True when a job may call the API now: the breaker is closed, or this job is the probe."""
    row = session.get(CircuitBreaker, BREAKER)
    if row is None or row.opened_at is None:
        return True
    now = utcnow()
    this = col(CircuitBreaker.name) == BREAKER
    probe = _updated(
        session,
        update(CircuitBreaker)
        .where(this, col(CircuitBreaker.last_probe) <= now - timedelta(seconds=probe_interval))
        .values(last_probe=now),
    )
    if probe != 1:
        session.execute(update(CircuitBreaker).where(this).values(held_tasks=CircuitBreaker.held_tasks + 1))
    session.commit()
    return probe == 1


def record_failure(session: Session, op_id: int, reason: str, *, threshold: int, window: float) -> bool:
    """Count a transient failure of operation ``op_id``; True when the breaker is open (now or already)."""
    gate_cache.forget()
    row = _row(session)
    if row.opened_at is not None:
        return True
    now = utcnow()
    this = col(CircuitBreaker.name) == BREAKER
    closed = col(CircuitBreaker.opened_at).is_(None)
    restarted = _updated(
        session,
        update(CircuitBreaker)
        .where(
            this,
            closed,
            or_(
                col(CircuitBreaker.failures) == 0, col(CircuitBreaker.window_started) < now - timedelta(seconds=window)
            ),
        )
        .values(failures=1, window_started=now, last_failed_op=op_id),
    )
    if not restarted:
        session.execute(
            update(CircuitBreaker)
            .where(
                this,
                closed,
                or_(col(CircuitBreaker.last_failed_op).is_(None), col(CircuitBreaker.last_failed_op) != op_id),
            )
            .values(failures=CircuitBreaker.failures + 1, last_failed_op=op_id)
        )
    opened = _updated(
        session,
        update(CircuitBreaker)
        .where(and_(this, closed, col(CircuitBreaker.failures) >= threshold))
        .values(opened_at=now, last_probe=now, reason=reason, held_tasks=0),
    )
    session.commit()
    if opened:
        log.error(
            "The ACRCloud API failed for %d jobs in a row (%s): work on the API is held (jobs wait, no attempt "
            "used) and probed until it answers again.",
            threshold,
            reason,
        )
    session.refresh(row)
    return row.opened_at is not None


def record_success(session: Session) -> None:
    """A job succeeded: reset the count, and close the breaker if it was open."""
    row = session.get(CircuitBreaker, BREAKER)
    if row is None or (row.failures == 0 and row.opened_at is None):
        return  # the usual case: no write
    this = col(CircuitBreaker.name) == BREAKER
    closed = _updated(
        session,
        update(CircuitBreaker)
        .where(this, col(CircuitBreaker.opened_at).is_not(None))
        .values(opened_at=None, reason=None, failures=0, last_failed_op=None),
    )
    session.execute(update(CircuitBreaker).where(this).values(failures=0, last_failed_op=None))
    session.commit()
    if closed:
        log.warning("The ACRCloud API answers again: held work resumes.")
