"""Stop work on the API while it rejects our token, and resume by itself when a valid one is configured.

The first 401/403 writes a hold row and logs one error. While the hold stands, jobs wait (a retry
countdown, not a failure) without calling the API, except one probe per ``auth_hold_recheck`` seconds
across all workers. A token different from the rejected one (e.g. written to ACR_INGEST_ACCESS_TOKEN_FILE)
is tried at once. Any successful call lifts the hold.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import and_, delete, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from ingest.store import gate_cache
from ingest.store.models import AuthHold, utcnow

log = logging.getLogger("ingest.auth")
HOLD_NAME = "api"


def fingerprint(token: str | None) -> str:
    return hashlib.sha256((token or "").encode()).hexdigest()[:16]


def may_call(session: Session, token: str | None, recheck: float) -> bool:
    """True when a job may call the API now (no hold, a new token, or this job is the probe)."""
    hold = session.get(AuthHold, HOLD_NAME)
    if hold is None or hold.token_fingerprint != fingerprint(token):
        return True
    now = utcnow()
    # An UPDATE returns a CursorResult (it has rowcount); Session.execute is typed as a plain Result.
    probe = cast(
        CursorResult[Any],
        session.execute(
            update(AuthHold)
            .where(and_(col(AuthHold.name) == HOLD_NAME, col(AuthHold.last_probe) <= now - timedelta(seconds=recheck)))
            .values(last_probe=now)
        ),
    )
    if probe.rowcount != 1:
        session.execute(
            update(AuthHold).where(col(AuthHold.name) == HOLD_NAME).values(held_tasks=AuthHold.held_tasks + 1)
        )
    session.commit()
    return probe.rowcount == 1


def hold(session: Session, token: str | None, reason: str) -> None:
    gate_cache.forget()
    fp = fingerprint(token)
    existing = session.get(AuthHold, HOLD_NAME)
    if existing is not None:
        if existing.token_fingerprint != fp:
            existing.token_fingerprint = fp
            existing.reason = reason
            existing.last_probe = utcnow()
            session.commit()
            log.error(
                "ACRCloud still rejects the access token (the new one too): %s. Work on the API "
                "is held until a valid token is configured.",
                reason,
            )
        return
    session.add(AuthHold(name=HOLD_NAME, token_fingerprint=fp, reason=reason))
    try:
        session.commit()
    except IntegrityError:  # another worker got there first and logged it
        session.rollback()
        return
    log.error(
        "ACRCloud rejected the access token: %s. Work on the API is held (jobs wait, none fail) "
        "until a valid token is configured (ACR_INGEST_ACCESS_TOKEN or ACR_INGEST_ACCESS_TOKEN_FILE).",
        reason,
    )


def lift(session: Session) -> None:
    if session.get(AuthHold, HOLD_NAME) is None:
        return
    # A DELETE returns a CursorResult (it has rowcount); Session.execute is typed as a plain Result.
    result = cast(CursorResult[Any], session.execute(delete(AuthHold).where(col(AuthHold.name) == HOLD_NAME)))
    session.commit()
    if result.rowcount:
        log.warning("ACRCloud accepts the access token again: held work resumes.")


def current(session: Session) -> AuthHold | None:
    return session.get(AuthHold, HOLD_NAME)
