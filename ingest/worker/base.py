"""The base class of every acr-ingest task (Celery's "Instantiation" pattern, set as the app's
``task_cls``): it owns the per-process API client and shared rate limit, builds each job's context and
turns ``RetryLater`` into a Celery retry. Task bodies stay one line."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from celery import Task

from ingest.api.client import AcrCloudClient
from ingest.jobs.context import JobContext
from ingest.jobs.errors import RetryLater
from ingest.jobs.rate_limit import SharedRateLimit
from ingest.jobs.runner import Handler, run_job
from ingest.settings import get_settings
from ingest.worker.metrics import counted_gate, observe_api_call
from ingest.worker.observe import observe_job
from ingest.worker.outbox import publish_after_job


class IngestTask(Task):
    # One client (one connection pool) and one limiter per worker process, shared by every task class.
    _client: ClassVar[AcrCloudClient | None] = None
    _limiter: ClassVar[SharedRateLimit | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def api(cls) -> tuple[AcrCloudClient, SharedRateLimit | None]:
        with cls._lock:
            if IngestTask._client is None:
                settings = get_settings()
                IngestTask._limiter = SharedRateLimit.from_settings(settings)
                limiter = IngestTask._limiter
                IngestTask._client = AcrCloudClient.from_settings(
                    settings,
                    gate=counted_gate(limiter) if limiter is not None else None,
                    observers=[observe_api_call, *([limiter.observe] if limiter is not None else [])],
                )
            return IngestTask._client, IngestTask._limiter

    @classmethod
    def reset_process_state(cls) -> None:
        """Forget the client and limiter (a forked child must not share its parent's sockets)."""
        with cls._lock:
            IngestTask._client = IngestTask._limiter = None

    def job_context(self) -> JobContext:
        client, _ = self.api()
        return JobContext(
            task_id=self.request.id,
            settings=get_settings(),
            client=client,
            delivery=self.request.retries or 0,
        )

    def run_job(self, kind: str, kwargs: dict[str, Any], handler: Handler) -> dict[str, Any]:
        """Run one job; a job that must wait is retried by Celery after its countdown."""
        try:
            request = self.request
            return observe_job(
                kind,
                kwargs,
                request.id,
                request.retries + 1,
                lambda: run_job(kind, kwargs, self.job_context(), handler),
            )
        except RetryLater as wait:
            # A longer countdown would make the broker deliver the message twice (Redis' visibility
            # timeout, RabbitMQ's consumer_timeout).
            countdown = min(wait.countdown, get_settings().max_countdown)
            raise self.retry(countdown=countdown) from None
        finally:
            publish_after_job(self.app)  # the events the job wrote, if any
