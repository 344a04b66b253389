"""The tasks: thin wrappers that call into ``ingest`` with JSON keyword arguments.

Names are stable (``ingest.upload_url``...) so producers in any language can send them by name; the
arguments are documented in docs/MESSAGES.md.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Task

from ingest.batches import handle_delete, handle_move
from ingest.client import AcrCloudClient
from ingest.context import JobContext, RetryLater
from ingest.db import session_scope
from ingest.metadata import handle_update
from ingest.operations import Handler, claim_stale, run_job
from ingest.polling import poll_states as run_poll
from ingest.ratelimit import SharedRateLimit
from ingest.settings import get_settings
from ingest.uploads import handle_upload
from tasks.app import app

_client: AcrCloudClient | None = None
_limiter: SharedRateLimit | None = None
_client_lock = threading.Lock()


def get_client() -> AcrCloudClient:
    """One client (one connection pool) per worker process, gated by the shared rate limit if set."""
    global _client, _limiter
    with _client_lock:
        if _client is None:
            settings = get_settings()
            _limiter = SharedRateLimit.from_settings(settings)
            _client = AcrCloudClient.from_settings(settings, gate=_limiter)
        return _client


def reset_client() -> None:
    global _client, _limiter
    with _client_lock:
        _client = _limiter = None


def _context(task: Task) -> JobContext:
    client = get_client()
    return JobContext(task_id=task.request.id, settings=get_settings(), client=client, limiter=_limiter)


def _run(task: Task, kind: str, kwargs: dict[str, Any], handler: Handler) -> dict[str, Any]:
    try:
        return run_job(kind, kwargs, _context(task), handler)
    except RetryLater as wait:
        settings = get_settings()
        # A countdown longer than the visibility timeout would make Redis deliver the message twice.
        countdown = min(wait.countdown, settings.visibility_timeout / 2)
        raise task.retry(countdown=countdown) from None


@app.task(bind=True, name="ingest.upload_url", max_retries=None)
def upload_url(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _run(self, "upload_url", kwargs, handle_upload)


@app.task(bind=True, name="ingest.upload_file", max_retries=None)
def upload_file(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _run(self, "upload_file", kwargs, handle_upload)


@app.task(bind=True, name="ingest.update_meta", max_retries=None)
def update_meta(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _run(self, "update_meta", kwargs, handle_update)


@app.task(bind=True, name="ingest.delete_batch", max_retries=None)
def delete_batch(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _run(self, "delete_batch", kwargs, handle_delete)


@app.task(bind=True, name="ingest.move_batch", max_retries=None)
def move_batch(self: Task, **kwargs: Any) -> dict[str, Any]:
    return _run(self, "move_batch", kwargs, handle_move)


@app.task(bind=True, name="ingest.poll_states", acks_late=False)
def poll_states(self: Task) -> dict[str, Any]:
    # Periodic and idempotent: a lost run is simply the next cycle.
    counts = run_poll(_context(self))
    if "skipped" not in counts:  # only the poll holding the lease looks for lost messages
        with session_scope() as s:
            stale = claim_stale(s, get_settings().resend_after_seconds)
            for op in stale:
                app.send_task(f"ingest.{op.kind}", kwargs=op.args, task_id=op.task_id)
        counts["resent"] = len(stale)
    return counts
