"""Gauges of state, computed at scrape time from the tables and the broker (never counted): files by
bucket and state, the age of the oldest processing file, the auth hold, the depth of each queue.

A source that cannot be read (database or broker away) does not fail the scrape: its gauges are left
out and ``acr_ingest_state_up{source=...}`` says 0, so an alert can tell "no files" from "no answer".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from celery import Celery
from kombu import Connection
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ingest.store.db import session_scope
from ingest.store.gauges import StateFigures, read_state

log = logging.getLogger("ingest.metrics")


class StateCollector(Collector):
    def __init__(self, app: Celery) -> None:
        self.app = app

    def queue_names(self) -> list[str]:
        return sorted({q.name for q in (self.app.conf.task_queues or ())} | {self.app.conf.task_default_queue})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("acr_ingest_state_up", "1 when this source answered the scrape.", labels=["source"])
        try:
            with session_scope() as s:
                figures = read_state(s)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: database unreadable: %s", type(exc).__name__)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            yield from _database_families(figures)
        try:
            depths = self.queue_depths()
        except Exception as exc:
            log.warning("metrics: broker unreadable: %s", type(exc).__name__)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            depth = GaugeMetricFamily("acr_ingest_queue_depth", "Messages waiting in each queue.", labels=["queue"])
            for name, n in depths.items():
                depth.add_metric([name], n)
            yield depth
        yield up

    def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue (a passive declare: the broker's own count; an absent queue is empty)."""
        depths: dict[str, int] = {}
        conn: Connection
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            for name in self.queue_names():
                channel = conn.channel()  # a failed passive declare closes an AMQP channel: one per queue
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    depths[name] = 0
                finally:
                    channel.close()
        return depths


def _database_families(figures: StateFigures) -> Iterator[GaugeMetricFamily]:
    files = GaugeMetricFamily(
        "acr_ingest_files", "Managed files by bucket and local state.", labels=["bucket", "state"]
    )
    for (bucket, state), n in sorted(figures.files.items()):
        files.add_metric([str(bucket), state], n)
    yield files
    yield GaugeMetricFamily(
        "acr_ingest_oldest_processing_age_seconds",
        "Seconds since the oldest file still processing was posted (0: none processing).",
        value=figures.oldest_processing_seconds,
    )
    yield GaugeMetricFamily(
        "acr_ingest_auth_held", "1 while the API rejects the token and work is held.", value=int(figures.auth_held)
    )
    yield GaugeMetricFamily(
        "acr_ingest_auth_held_tasks", "Job runs deferred by the current hold.", value=figures.auth_held_tasks
    )
    yield GaugeMetricFamily(
        "acr_ingest_api_down",
        "1 while the circuit breaker holds work (the API fails for everyone).",
        value=int(figures.api_down),
    )
    yield GaugeMetricFamily(
        "acr_ingest_outbox_backlog",
        "Messages written with their rows but not yet taken by the broker.",
        value=figures.outbox_backlog,
    )
    yield GaugeMetricFamily(
        "acr_ingest_rejected_messages",
        "Messages no task could run, kept in rejected_messages for a human.",
        value=figures.rejected_messages,
    )
