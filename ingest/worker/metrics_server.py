"""Serving the metrics over HTTP: a worker's own counters (``ACR_INGEST_METRICS_PORT``), or the
exporter of ``acr-ingest metrics`` (state gauges, plus counters of a directory of workers on its host).

Flower's ``/metrics`` stays what it is: Celery's own view (task runtimes, workers online).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_shutdown

from ingest.settings import Settings, get_settings
from ingest.worker.metrics import instruments, multiprocess_dir, prepare_multiprocess_dir, queue_counters

log = logging.getLogger("ingest.metrics")

_private_dir: Path | None = None


def build_registry(*, counters_dir: Path | None, app: Celery | None) -> Any:
    """A registry of the counters summed over ``counters_dir`` and/or the state gauges read through ``app``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if counters_dir is not None:
        MultiProcessCollector(registry, path=str(counters_dir))
    if app is not None:
        from ingest.worker.metrics_state import StateCollector

        registry.register(StateCollector(app))
    return registry


def serve(registry: Any, host: str, port: int) -> None:
    """Serve ``registry`` on host:port from a daemon thread (any path answers with the metrics)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)


def start_worker_exporter(settings: Settings) -> None:
    """In the worker's main process, before the pool forks: counters in a fresh directory, served."""
    global _private_dir
    if settings.metrics_port is None:
        return
    private = multiprocess_dir() is None and settings.metrics_dir is None
    folder = prepare_multiprocess_dir(settings, empty=True)
    _private_dir = folder if private else None
    instruments()  # created here, so every pool child inherits them and writes files of its own
    queue_counters()  # each queue's series at 0 from the first scrape: a rate then sees the first task
    serve(build_registry(counters_dir=folder, app=None), settings.metrics_host, settings.metrics_port)


@worker_init.connect
def _serve_worker_metrics(**_: Any) -> None:
    start_worker_exporter(get_settings())


@worker_shutdown.connect
def _remove_private_dir(**_: Any) -> None:
    if _private_dir is not None:
        shutil.rmtree(_private_dir, ignore_errors=True)
