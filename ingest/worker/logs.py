"""Log lines of the worker and beat: plain text (Celery's lines) or, with ``ACR_INGEST_LOG_FORMAT=json``,
one JSON object per line; either way a line logged while a job runs carries the job's fields (task id,
kind, ref, bucket, attempt; the job's last line adds its outcome).

The fields live in a context variable set around each job, so every logger (the runner's, the API
client's) gets them without passing them along; threads of a threads pool each have their own.
Celery's logging signals install the filter and formatter on the handlers Celery sets up, in the
worker, its pool children (they inherit the handlers) and beat.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger
from celery.utils.log import get_multiprocessing_logger

from ingest.redact import mask_url_credentials
from ingest.settings import get_settings

_job_fields: ContextVar[dict[str, Any] | None] = ContextVar("acr_ingest_job_fields", default=None)
_REF_LIST_LIMIT = 5


def job_fields(kind: str, kwargs: Mapping[str, Any], task_id: str | None, attempt: int) -> dict[str, Any]:
    """What identifies a job in its log lines (never its arguments wholesale: no URL query, no metadata)."""
    ref = kwargs.get("ref")
    refs = kwargs.get("refs")
    if ref is None and isinstance(refs, list) and refs:
        more = len(refs) - _REF_LIST_LIMIT
        ref = ",".join(str(r) for r in refs[:_REF_LIST_LIMIT]) + (f",+{more} more" if more > 0 else "")
    return {"task_id": task_id, "task": kind, "ref": ref, "bucket": kwargs.get("bucket_id"), "attempt": attempt}


@contextmanager
def job_log_context(fields: dict[str, Any]) -> Iterator[None]:
    reset = _job_fields.set(fields)
    try:
        yield
    finally:
        _job_fields.reset(reset)


class JobFieldsFilter(logging.Filter):
    """Puts the running job's fields (and any passed as ``extra={"job": {...}}``) on ``record.job``."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _job_fields.get()
        extra = getattr(record, "job", None)
        if current is not None or extra:
            record.job = {**(current or {}), **(extra if isinstance(extra, dict) else {})}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback goes into ``exc`` so it stays on that line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            entry.update(job)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # A URL's password in any line (a message sent by name, Celery's DEBUG lines of a task's body...).
        return mask_url_credentials(json.dumps(entry, ensure_ascii=False, default=str))


class JobFieldsTextFormatter(logging.Formatter):
    """Celery's own text line, with the job's fields appended as ``key=value``."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        line = mask_url_credentials(self.inner.format(record))  # as in JsonFormatter
        job = getattr(record, "job", None)
        if not isinstance(job, dict):
            return line
        return line + " " + " ".join(f"{key}={_text_value(value)}" for key, value in job.items())


def _text_value(value: Any) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() or c in '="' for c in text)) else text


def install(logger: logging.Logger, log_format: str) -> None:
    """Give each of ``logger``'s handlers the job-fields filter and the configured format (idempotent)."""
    for handler in logger.handlers:
        if not any(isinstance(f, JobFieldsFilter) for f in handler.filters):
            handler.addFilter(JobFieldsFilter())
        current = handler.formatter
        if log_format == "json":
            if not isinstance(current, JsonFormatter):
                handler.setFormatter(JsonFormatter())
        elif not isinstance(current, JobFieldsTextFormatter):
            handler.setFormatter(JobFieldsTextFormatter(current))


def log_early(log_format: str) -> None:
    """Before Celery sets up logging: warnings it emits first (e.g. running as root) go through logging
    in the same format. Celery replaces this handler with its own when it sets up (the signal below)."""
    if log_format != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _on_celery_logging(logger: logging.Logger, **_: Any) -> None:
    log_format = get_settings().log_format
    install(logger, log_format)
    pool_logger = get_multiprocessing_logger()  # the pool's own errors, configured beside the root logger
    if logger is logging.getLogger() and pool_logger is not None:
        install(pool_logger, log_format)
