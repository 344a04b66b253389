"""The Celery app. Run a worker with ``acr-ingest worker`` (or ``celery -A ingest.worker worker``)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_init
from kombu import Queue

from ingest.settings import Settings, get_settings

# Imported for their Celery signal receivers: the log format and job fields, a worker's metrics port, and
# every task run counted by its queue.
from ingest.worker import logs, metrics_server, observe  # noqa: F401
from ingest.worker.broker import broker_config
from ingest.worker.routing import FINGERPRINT_QUEUE, POLL_QUEUE, QUEUE, QUEUES, route_task

__all__ = ["FINGERPRINT_QUEUE", "POLL_QUEUE", "QUEUE", "app", "create_app", "publish_retry_policy"]

# A worker's own publishes (a retry's countdown, the poll's resends) keep trying this long: a broker restart.
WORKER_PUBLISH_WAIT = 51.0
_FIRST, _STEP, _MAX = 0.2, 0.5, 3.0


def publish_retry_policy(seconds: float) -> dict[str, float]:
    """kombu's publish retry (``task_publish_retry_policy``) that gives up after about ``seconds`` of waits:
    0.2 s, then 0.5 s longer each time, at most 3 s (51 s: 20 retries)."""
    retries, waited, interval = 0, 0.0, _FIRST
    while waited + interval <= seconds + 1e-9:
        waited += interval
        retries += 1
        interval = min(interval + _STEP, _MAX)
    return {"max_retries": retries, "interval_start": _FIRST, "interval_step": _STEP, "interval_max": _MAX}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        **broker_config(settings),  # the URL, transport and options that fit this broker (worker/broker.py)
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        # Each queue bound under its own name: left unset, Celery binds both to the exchange "ingest" with the
        # key "ingest", and a message published there (as another system may) lands in both queues.
        "task_queues": [Queue(name, routing_key=name, durable=True) for name in QUEUES],
        # The poll's queue, and fingerprint uploads' (worker/routing.py: by the message's arguments).
        "task_routes": (route_task,),
        # Delivery: acknowledge after the work, requeue when a worker process dies, one task at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # Publishes keep trying while the broker is away: a worker's for 51 s (a restart); a Producer's own app
        # for ACR_INGEST_PRODUCER_PUBLISH_WAIT (its job is in the outbox already: producer.py).
        "task_publish_retry": True,
        "task_publish_retry_policy": publish_retry_policy(WORKER_PUBLISH_WAIT),
        # On a cold shutdown, requeue unfinished tasks after a grace period instead of leaving them to
        # the visibility timeout (SIGTERM is a warm shutdown: running tasks finish).
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_concurrency": settings.worker_concurrency,
        # A message no task can run is recorded and taken off the queue instead of stopping the worker.
        "worker_consumer": "ingest.worker.message_guard:GuardedConsumer",
        "beat_schedule": {
            "poll-states": {
                "task": "ingest.poll_states",
                "schedule": settings.poll_interval,
                "options": {"expires": settings.poll_interval},
            },
        },
        "timezone": "UTC",
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app with the tasks of ``ingest.worker.tasks``; ``settings`` read now if given, else lazily."""
    app = Celery("acr_ingest", task_cls="ingest.worker.base:IngestTask", include=["ingest.worker.tasks"])
    if settings is not None:
        app.conf.update(celery_config(settings))
    else:
        app.add_defaults(lambda: celery_config(get_settings()))
    return app


app = create_app()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Database connections and the HTTP pool must not be shared with the parent across fork.
    from ingest.store.db import dispose_engines
    from ingest.worker.base import IngestTask

    dispose_engines()
    IngestTask.reset_process_state()


@worker_init.connect
@beat_init.connect
def _refuse_a_schema_not_at_head(**_: Any) -> None:
    # Workers never create tables (that raced on a fresh database): `acr-ingest db upgrade` runs once, first.
    # SystemExit, not an exception: Celery's signal dispatch logs exceptions and carries on.
    from ingest.worker.startup import require_schema

    require_schema()


@worker_init.connect
@beat_init.connect
def _refuse_an_untrusted_tls_broker(**_: Any) -> None:
    from ingest.worker.startup import require_trusted_broker

    require_trusted_broker()


@worker_init.connect
def _refuse_a_worker_without_a_token(**_: Any) -> None:
    from ingest.worker.startup import require_token

    require_token()


@worker_init.connect
def _refuse_a_worker_that_cannot_fingerprint(sender: Any, **_: Any) -> None:
    from ingest.worker.startup import require_fingerprints

    consume_from = sender.app.amqp.queues.consume_from  # what -Q selected (before worker_init); None: every queue
    require_fingerprints(queues=list(consume_from) if consume_from else None)


@beat_init.connect
def _refuse_a_second_beat(**_: Any) -> None:
    # After the schema check (connected first): the lease lives in the tables.
    from ingest.worker.startup import BeatLease

    BeatLease(get_settings()).take()
