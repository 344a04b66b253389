"""What a job needs to run: its identity, the settings and an API client. No Celery here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlmodel import Session

from ingest.api.client import AcrCloudClient
from ingest.settings import Settings
from ingest.store.db import session_scope
from ingest.store.leases import owner_id

# Writes the job's outcome in the caller's open transaction (committed by the caller).
OutcomeWriter = Callable[[Session, dict[str, Any]], None]


@dataclass
class JobContext:
    task_id: str
    settings: Settings
    client: AcrCloudClient
    owner: str = field(default="")
    delivery: int = 0  # retries of this message so far (Celery's count; needs no database)
    # Set by the runner: a handler may record its outcome with its own last commit instead of the runner's.
    record_outcome: OutcomeWriter | None = None
    # Set by the runner for a handler marked ``continues_start``: its open transaction, in which the operation
    # was just marked running (not committed). The handler's first transaction (``first_transaction``) is it.
    started: Session | None = None

    def __post_init__(self) -> None:
        if not self.owner:
            self.owner = owner_id(self.task_id)


H = TypeVar("H", bound=Callable[..., Any])


def continues_start(handler: H) -> H:
    """Mark a handler whose first transaction may continue the runner's (``first_transaction``): it must open it
    at once, before any other session of its own and before any call, so the operation's start and the handler's
    first write are one commit."""
    handler.continues_start = True  # type: ignore[attr-defined]
    return handler


@contextmanager
def first_transaction(ctx: JobContext) -> Iterator[Session]:
    """The handler's first session: the runner's open one when it left one (taken once), else a new one.
    Committed when the body ends, rolled back (the start with it: the runner records the outcome anew) when
    it raises."""
    started, ctx.started = ctx.started, None
    if started is None:
        with session_scope() as s:
            yield s
        return
    with started:
        try:
            yield started
            started.commit()
        except BaseException:
            started.rollback()
            raise
