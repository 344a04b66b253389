"""What a job needs to run: its identity, the settings and an API client. No Celery here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from ingest.api.client import AcrCloudClient
from ingest.settings import Settings
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

    def __post_init__(self) -> None:
        if not self.owner:
            self.owner = owner_id(self.task_id)
