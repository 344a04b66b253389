"""Our own Prometheus counters, counted where things happen in a worker (names in docs/METRICS.md).

A prefork worker runs its tasks in several processes, so the counters use prometheus_client's
multiprocess mode: each process writes its values to files in one directory (``ACR_INGEST_METRICS_DIR``,
exported as ``PROMETHEUS_MULTIPROC_DIR``) and whoever serves them sums the files at scrape time. That
keeps an increment a memory write (no network call on the job's path, nothing lost when a broker or
Redis is away) and needs no process of ours to collect them. prometheus_client picks the mode when it is
first imported, so it is imported here, lazily, after the directory is set.

(The ``celery`` command may import prometheus_client before us: see ``_use_multiprocess_values``.)

State (files by state, queue depth, the auth hold) is not counted here but read at scrape time by
``ingest.worker.metrics_state``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.api.client import Gate
from ingest.jobs.errors import RetryLater
from ingest.settings import Settings, get_settings
from ingest.worker.routing import QUEUES

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = logging.getLogger("ingest.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Less than this in the gate is the round trip to Redis, not a wait for a token.
INLINE_WAIT_FLOOR = 0.02


@dataclass(frozen=True)
class Instruments:
    jobs: Counter
    retries: Counter
    api_calls: Counter
    api_rate_limited: Counter
    limiter_waits: Counter
    limiter_wait_seconds: Counter
    last_poll: Gauge
    queue_tasks: Counter


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_multiprocess_dir(settings: Settings, *, empty: bool) -> Path:
    """Point prometheus_client at the counters' directory (before its first import); ``empty`` clears
    what a previous run of this worker left (the library's rule: a fresh directory per run)."""
    folder = multiprocess_dir() or settings.metrics_dir or Path(tempfile.mkdtemp(prefix="acr-ingest-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    if empty:
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    _use_multiprocess_values()
    return folder


def _use_multiprocess_values() -> None:
    """prometheus_client chooses its value class when first imported; the ``celery`` command has often
    imported it already (Flower's CLI plugin does), before any of our code ran. Choose again, now that
    the directory is set; counters created from here on write to it."""
    import sys

    if "prometheus_client.values" not in sys.modules:
        return  # its first import will see the directory
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


_instruments_lock = threading.Lock()


def instruments() -> Instruments:
    """The counters, created once per process tree (pool children inherit them and write files of their own).
    Under a lock: the threads of a pool reach here together, and a counter registered twice raises."""
    with _instruments_lock:
        return _instruments()


@lru_cache(maxsize=1)
def _instruments() -> Instruments:
    settings = get_settings()
    if multiprocess_dir() is None and settings.metrics_dir is not None:
        prepare_multiprocess_dir(settings, empty=False)
    from prometheus_client import Counter, Gauge

    return Instruments(
        jobs=Counter("acr_ingest_jobs", "Task runs by kind and outcome.", ["kind", "outcome"]),
        retries=Counter("acr_ingest_retries", "Task runs that end in a retry, by kind and why.", ["kind", "why"]),
        api_calls=Counter(
            "acr_ingest_api_calls", "ACRCloud API requests by endpoint and status class.", ["endpoint", "status_class"]
        ),
        api_rate_limited=Counter("acr_ingest_api_rate_limited", "ACRCloud API answers 429, by endpoint.", ["endpoint"]),
        limiter_waits=Counter(
            "acr_ingest_limiter_waits", "Calls deferred by the shared rate limit, by endpoint.", ["endpoint"]
        ),
        limiter_wait_seconds=Counter(
            "acr_ingest_limiter_wait_seconds", "Seconds of deferral the shared rate limit asked for."
        ),
        # A moment, not a count: "max" over the pool's files is the latest poll any process ran (a recycled
        # pool child's file stays, so its last poll is not forgotten until the worker restarts).
        last_poll=Gauge(
            "acr_ingest_last_poll_timestamp_seconds",
            "Unix time at which this worker last ran the periodic state poll (any outcome).",
            multiprocess_mode="max",
        ),
        queue_tasks=Counter(
            "acr_ingest_queue_tasks", "Task runs that ended, by the queue their message came from.", ["queue"]
        ),
    )


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


def observe_api_call(endpoint: str, status: int | None, _headers: Mapping[str, str]) -> None:
    """The API client's observer: one call went out (``status`` None: no answer, e.g. a timeout)."""
    m = instruments()
    m.api_calls.labels(endpoint, status_class(status)).inc()
    if status == 429:
        m.api_rate_limited.labels(endpoint).inc()


def counted_gate(gate: Gate) -> Gate:
    """The shared rate limit's gate, counting each deferral and the wait it asked for."""

    def gate_and_count(endpoint: str) -> None:
        started = time.monotonic()
        try:
            gate(endpoint)
        except RetryLater as wait:
            m = instruments()
            m.limiter_waits.labels(endpoint).inc()
            m.limiter_wait_seconds.inc(wait.countdown)
            raise
        waited = time.monotonic() - started
        if waited > INLINE_WAIT_FLOOR:  # a short wait for a token, taken in the thread: a wait all the same
            m = instruments()
            m.limiter_waits.labels(endpoint).inc()
            m.limiter_wait_seconds.inc(waited)

    return gate_and_count


def retry_why(wait: RetryLater) -> str:
    """error: a failure used an attempt; held: the token is rejected; wait: no attempt used (a 429,
    the shared limit, an upload in flight, a lease)."""
    if wait.held:
        return "held"
    return "error" if wait.counts else "wait"


def poll_ran() -> None:
    """The periodic poll (sent by the beat) ran here now: the "no beat" alert watches this moment."""
    instruments().last_poll.set(time.time())


def count_job(kind: str, outcome: str, *, retry: RetryLater | None = None) -> None:
    """One task run ended in ``outcome`` (succeeded, partial, failed, retry, held, error)."""
    m = instruments()
    m.jobs.labels(kind, outcome).inc()
    if retry is not None:
        m.retries.labels(kind, retry_why(retry)).inc()


# A routing key outside the queues the app declares (routing.QUEUES) is counted as "other", so a foreign
# publisher cannot add series.
OTHER_QUEUE = "other"
_queue_counters: dict[str, Any] = {}


def queue_counters() -> dict[str, Any]:
    """The counter's child per queue, made once (a dict lookup per task, not prometheus_client's labels() with
    its lock); made at a worker's start, so each series is scraped at 0 before its first task and a rate sees
    the first one."""
    if not _queue_counters:
        with _instruments_lock:
            if not _queue_counters:
                counter = _instruments().queue_tasks
                _queue_counters.update({name: counter.labels(name) for name in (*QUEUES, OTHER_QUEUE)})
    return _queue_counters


def count_queue_task(routing_key: str | None) -> None:
    """A task run ended (any outcome, retries included): its message came from the queue ``routing_key``
    (every queue is bound under its own name), so that queue is consumed. None: no message (a task called
    in-process), nothing counted."""
    if routing_key is None:
        return
    counters = _queue_counters or queue_counters()
    (counters.get(routing_key) or counters[OTHER_QUEUE]).inc()
