"""The tasks: one line each, calling into ``ingest.jobs`` with JSON keyword arguments.

Names are stable (``ingest.upload_url``...) so producers in any language can send them by name; the
arguments are documented in docs/MESSAGES.md. The behaviour common to all of them is in ``IngestTask``.
"""

from __future__ import annotations

from typing import Any

from ingest.jobs.batches import handle_delete, handle_move
from ingest.jobs.polling import poll_cycle
from ingest.jobs.updates import handle_update
from ingest.jobs.uploads import handle_upload
from ingest.worker.app import app
from ingest.worker.base import IngestTask
from ingest.worker.events import deliver_webhook as deliver_event
from ingest.worker.metrics import poll_ran
from ingest.worker.outbox import sweep


@app.task(bind=True, name="ingest.upload_url", max_retries=None)
def upload_url(self: IngestTask, **kwargs: Any) -> dict[str, Any]:
    return self.run_job("upload_url", kwargs, handle_upload)


@app.task(bind=True, name="ingest.upload_file", max_retries=None)
def upload_file(self: IngestTask, **kwargs: Any) -> dict[str, Any]:
    return self.run_job("upload_file", kwargs, handle_upload)


@app.task(bind=True, name="ingest.update_meta", max_retries=None)
def update_meta(self: IngestTask, **kwargs: Any) -> dict[str, Any]:
    return self.run_job("update_meta", kwargs, handle_update)


@app.task(bind=True, name="ingest.delete_batch", max_retries=None)
def delete_batch(self: IngestTask, **kwargs: Any) -> dict[str, Any]:
    return self.run_job("delete_batch", kwargs, handle_delete)


@app.task(bind=True, name="ingest.move_batch", max_retries=None)
def move_batch(self: IngestTask, **kwargs: Any) -> dict[str, Any]:
    return self.run_job("move_batch", kwargs, handle_move)


@app.task(bind=True, name="ingest.poll_states", acks_late=False)
def poll_states(self: IngestTask) -> dict[str, Any]:
    # Periodic and idempotent: a lost run is simply the next cycle. Unsent and lost messages go out by name.
    try:
        return poll_cycle(self.job_context(), publish_outbox=lambda: sweep(self.app))
    finally:
        poll_ran()  # acr_ingest_last_poll_timestamp_seconds, whatever the cycle did: the beat is alive


@app.task(bind=True, name="ingest.deliver_webhook", max_retries=None)
def deliver_webhook(self: IngestTask, event: dict[str, Any]) -> dict[str, Any]:
    # An event for the catalog system POSTed to ACR_INGEST_WEBHOOK_URL; written by ingest.jobs.events.
    return deliver_event(self, event)
