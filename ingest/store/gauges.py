"""The state the metrics exporter reads from the tables at scrape time (nothing is cached between scrapes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from ingest.store import auth_hold, circuit_breaker, outbox, rejected_messages
from ingest.store.models import FileStatus, TrackFile, utcnow


@dataclass(frozen=True)
class StateFigures:
    files: dict[tuple[int, str], int]  # (bucket_id, status) -> count
    oldest_processing_seconds: float  # 0 when no file is processing
    auth_held: bool
    auth_held_tasks: int
    api_down: bool  # the circuit breaker is open
    outbox_backlog: int  # messages written but not yet taken by the broker
    rejected_messages: int  # messages no task could run, kept for a human


def files_by_bucket_and_status(session: Session) -> dict[tuple[int, str], int]:
    rows = session.exec(
        select(TrackFile.bucket_id, TrackFile.status, func.count()).group_by(
            col(TrackFile.bucket_id), col(TrackFile.status)
        )
    ).all()
    return {(bucket, status): n for bucket, status, n in rows}


def oldest_processing_since(session: Session) -> datetime | None:
    """When the oldest file still processing was posted (its row's creation if the mark is gone)."""
    since = func.coalesce(TrackFile.post_started_at, TrackFile.created_at)
    return session.exec(select(func.min(since)).where(col(TrackFile.status) == FileStatus.PROCESSING)).one()


def read_state(session: Session) -> StateFigures:
    oldest = oldest_processing_since(session)
    if oldest is not None and oldest.tzinfo is None:  # SQLite hands back naive UTC
        oldest = oldest.replace(tzinfo=utcnow().tzinfo)
    hold = auth_hold.current(session)
    breaker = circuit_breaker.current(session)
    return StateFigures(
        files=files_by_bucket_and_status(session),
        oldest_processing_seconds=max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0,
        auth_held=hold is not None,
        auth_held_tasks=hold.held_tasks if hold is not None else 0,
        api_down=breaker is not None and breaker.opened_at is not None,
        outbox_backlog=outbox.unsent_count(session),
        rejected_messages=rejected_messages.count(session),
    )
