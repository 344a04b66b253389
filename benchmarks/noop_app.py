"""A Celery app with the project's own configuration (``tasks.app.celery_config``) and one no-op task.

Workers started with ``-A benchmarks.noop_app`` run the same broker settings, acks, prefetch and events as
the ingest workers, so their throughput is the ceiling that Celery + Redis allow on this machine.
"""

from __future__ import annotations

import os
import threading

import redis
from celery import Celery

from ingest.settings import get_settings
from ingest.worker.app import celery_config

COUNTER_KEY = "bench:noop:done"
# In our task namespace: the message guard (same consumer as the ingest workers) runs only "ingest.*" tasks.
NOOP_TASK = "ingest.bench_noop"

app = Celery("bench_noop")
app.conf.update(celery_config(get_settings()))
if os.environ.get("ACR_INGEST_BENCH_TRANSPORT") == "kombu":
    app.conf.broker_transport = None  # kombu's own Redis transport, the baseline of benchmarks/redis_fetch.py

_client: redis.Redis | None = None
_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client
    with _lock:
        if _client is None:
            # The broker's database (db 10 in the benchmark): the driver counts completions there.
            _client = redis.Redis.from_url(get_settings().broker_url)
        return _client


@app.task(name=NOOP_TASK)
def noop() -> None:
    # The only work: one INCR, so the driver can tell when every task has run without a result backend.
    _redis().incr(COUNTER_KEY)
