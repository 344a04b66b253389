"""Around each job run: its fields on every log line, one closing line with the outcome, and the
outcome counted (``acr_ingest_jobs_total``, ``acr_ingest_retries_total``); every task run (the poll and
webhooks too) counted by the queue it came from (``acr_ingest_queue_tasks_total``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery.signals import task_postrun

from ingest.jobs.errors import RetryLater
from ingest.worker.logs import job_fields, job_log_context
from ingest.worker.metrics import count_job, count_queue_task

log = logging.getLogger("ingest.jobs")


def observe_job(
    kind: str, kwargs: Mapping[str, Any], task_id: str | None, attempt: int, run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    with job_log_context(job_fields(kind, kwargs, task_id, attempt)):
        try:
            summary = run()
        except RetryLater as wait:
            outcome = "held" if wait.held else "retry"
            count_job(kind, outcome, retry=wait)
            log.info(
                "job %s: %s in %.1fs: %s",
                kind,
                outcome,
                wait.countdown,
                wait.reason,
                extra={"job": {"outcome": outcome, "countdown": round(wait.countdown, 3)}},
            )
            raise
        except Exception as exc:
            count_job(kind, "error")
            # Celery logs the traceback; this line only ties it to the job's fields.
            log.warning("job %s: error: %s", kind, type(exc).__name__, extra={"job": {"outcome": "error"}})
            raise
        outcome = str(summary.get("status"))
        count_job(kind, outcome)
        level = logging.INFO if outcome == "succeeded" else logging.WARNING
        fields = {"outcome": outcome, "operation_id": summary.get("operation_id")}
        if summary.get("error"):
            log.log(level, "job %s: %s: %s", kind, outcome, summary["error"], extra={"job": fields})
        else:
            log.log(level, "job %s: %s", kind, outcome, extra={"job": fields})
        return summary


@task_postrun.connect
def _count_by_queue(task: Any = None, **_: Any) -> None:
    # Celery's signal, sent after every task run whatever its end: the one place that sees the poll and
    # webhooks as well as jobs, and the message's delivery (which queue) without touching the task path.
    delivery = getattr(getattr(task, "request", None), "delivery_info", None)
    count_queue_task(delivery.get("routing_key") if delivery else None)
