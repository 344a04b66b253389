"""Events for the catalog system, the worker's half (``ingest.jobs.events`` writes them to the outbox):
publishing an ``event`` entry to the broker's events exchange, and the ``ingest.deliver_webhook`` task's
body, which POSTs one event and retries with backoff under the one retry policy."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from kombu import Exchange, Queue

from ingest.api.errors import ApiError, RateLimitedError
from ingest.jobs import webhooks
from ingest.jobs.retry_policy import Action, decide
from ingest.settings import Settings, get_settings
from ingest.store.outbox import Outgoing

log = logging.getLogger("ingest.events")


def events_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.events_exchange, type="topic", durable=True)


def events_queue(settings: Settings) -> Queue | None:
    """The queue every event lands in (bound with ``#``); consumers may bind queues of their own too."""
    if not settings.events_queue:
        return None
    return Queue(settings.events_queue, exchange=events_exchange(settings), routing_key="#", durable=True)


def publish_event(app: Celery, entry: Outgoing, producer: Any = None) -> None:
    """One event to the exchange, routing key = its type (``file.ready``...), persistent, JSON; on
    ``producer`` (a kombu producer its caller holds), else one from the app's pool."""
    settings = get_settings()
    queue = events_queue(settings)
    with app.producer_or_acquire(producer) as producer:
        producer.publish(
            entry.payload,
            exchange=events_exchange(settings),
            routing_key=entry.destination,
            declare=[queue] if queue is not None else [events_exchange(settings)],
            serializer="json",
            delivery_mode="persistent",
            message_id=entry.message_id,
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
        )


def deliver_webhook(task: Task, event: dict[str, Any]) -> dict[str, Any]:
    """POST the event; a failure the policy retries comes back after its backoff, a final one is logged as
    an error with the event id (the body stays in the outbox table)."""
    settings = get_settings()
    event_id = event.get("event_id")
    if not settings.webhook_url:
        log.error("webhook: event %s not delivered: ACR_INGEST_WEBHOOK_URL is not set on this worker", event_id)
        return {"delivered": False, "event_id": event_id, "reason": "ACR_INGEST_WEBHOOK_URL is not set"}
    try:
        return webhooks.deliver(event, settings)
    except ApiError as exc:
        attempt = task.request.retries + 1
        decision = decide(exc, attempt, attempt if isinstance(exc, RateLimitedError) else 0, settings)
        if decision.action is Action.RETRY:
            log.info("webhook: event %s, retry in %.1fs (attempt %d): %s", event_id, decision.countdown, attempt, exc)
            raise task.retry(countdown=min(decision.countdown, settings.max_countdown)) from None
        log.error("webhook: event %s (%s) not delivered: %s", event_id, event.get("type"), decision.reason)
        return {"delivered": False, "event_id": event_id, "reason": decision.reason}
