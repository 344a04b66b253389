"""Publishing many task messages at once (``Producer.upload_many``, the catalog import).

Each message is the one ``app.send_task(name, kwargs=..., task_id=...)`` would publish: Celery's own
protocol-2 builder (``app.amqp.as_task_v2``) makes the headers, properties and body (docs/MESSAGES.md),
and each is published to the queue and exchange Celery's router picks for its task name, with the same
serializer, delivery mode and publish-retry policy. What ``send_task`` does per message and this does
once per batch: routing, and declaring the queue (kombu copies and re-binds the queue on every publish
even when it is declared already). No task-sent event (it doubles the publish cost; the operations table
records what was sent, and Flower sees each job once a worker receives it), and a short ``kwargsrepr``
(Celery's ``saferepr`` of the arguments costs as much as the publish).

On Redis the messages go out as pipelined ``LPUSH``es (kombu's publish batch: one round trip per batch);
on RabbitMQ each publish waits for its publisher confirm, as ``send_task`` does.

``publish_task`` is the one-message form (the producer's one-job path, the outbox's publisher): the same
message, its route worked out once per app and task name, its queue declared once per connection.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery
from celery.utils.nodenames import anon_nodename

from ingest.jobs.bulk_uploads import Message
from ingest.worker.routing import queue_of

# The keys of task_publish_retry_policy that kombu's retry takes (Celery also knows ``retry_errors``).
_POLICY_KEYS = ("max_retries", "interval_start", "interval_step", "interval_max")


@dataclass(frozen=True)
class _Route:
    """Where and how Celery would publish a task of this name (``amqp.send_task_message``'s choices)."""

    exchange: Any
    routing_key: str
    delivery_mode: Any
    declare: list[Any]
    options: dict[str, Any]  # what else the router gave (properties such as priority), passed through


def _route(app: Celery, name: str, kwargs: dict[str, Any]) -> _Route:
    amqp = app.amqp
    options = dict(amqp.router.route({}, name, (), kwargs, None))
    queue = options.pop("queue", None)
    exchange = options.pop("exchange", None)
    routing_key = options.pop("routing_key", None)
    exchange_type = options.pop("exchange_type", None)
    delivery_mode = options.pop("delivery_mode", None)
    qname = queue
    if queue is None and exchange is None:
        queue = amqp.default_queue
    if queue is not None:
        if isinstance(queue, str):
            qname, queue = queue, amqp.queues[queue]
        else:
            qname = queue.name
    if delivery_mode is None:
        delivery_mode = getattr(getattr(queue, "exchange", None), "delivery_mode", None)
        delivery_mode = delivery_mode or app.conf.task_default_delivery_mode
    if exchange_type is None:
        exchange_type = getattr(getattr(queue, "exchange", None), "type", "direct")
    if (not exchange or not routing_key) and exchange_type == "direct":
        exchange, routing_key = "", qname
    elif exchange is None:
        exchange = queue.exchange.name or amqp.default_exchange
        routing_key = routing_key or queue.routing_key or app.conf.task_default_routing_key
    return _Route(exchange, routing_key, delivery_mode, [queue] if queue is not None else [], options)


@functools.cache
def _origin_of(pid: int) -> str:
    return anon_nodename()


def _origin() -> str:
    """The message's ``origin`` (as ``send_task`` sets it: host and pid), worked out once per process."""
    return _origin_of(os.getpid())


_routes: WeakKeyDictionary[Celery, dict[tuple[str, str | None], _Route]] = WeakKeyDictionary()


def _cached_route(app: Celery, name: str, kwargs: dict[str, Any]) -> _Route:
    """``_route``, once per app, task name and the queue its arguments pick (worker/routing.py: the router's
    answer depends on nothing else)."""
    routes = _routes.get(app)
    if routes is None:
        routes = _routes[app] = {}
    key = (name, queue_of(name, kwargs))
    route = routes.get(key)
    if route is None:
        route = routes[key] = _route(app, name, kwargs)
    return route


def short_kwargsrepr(kwargs: dict[str, Any]) -> str:
    """What a worker logs and Flower shows for the arguments: the job's ref and bucket."""
    return f"{{'ref': {kwargs.get('ref')!r}, 'bucket_id': {kwargs.get('bucket_id')!r}}}"


def publish_tasks(app: Celery, messages: Sequence[Message], producer: Any = None) -> None:
    """Publish ``messages`` (task name, keyword arguments, task id), in order, over one producer: ``producer``
    (a kombu producer its caller holds, as the background publisher does) or one from the app's pool.

    Raises whatever the broker raised. Then part of the batch may have been delivered (a pipeline that
    failed midway, or the confirms received before the failure): the caller treats all of it as unsent.
    """
    if not messages:
        return
    conf = app.conf
    amqp = app.amqp
    retry = bool(conf.task_publish_retry)
    policy = {k: v for k, v in (conf.task_publish_retry_policy or {}).items() if k in _POLICY_KEYS}
    serializer, compression = conf.task_serializer, conf.task_compression
    reply_to = app.thread_oid
    origin = anon_nodename()  # as_task_v2 works it out again for every message otherwise
    routes: dict[tuple[str, str | None], _Route] = {}  # by task name and the queue its arguments pick
    with app.producer_or_acquire(producer) as producer:
        if retry:
            producer.connection.ensure_connection(**policy)
        # Redis: one pipeline for the whole batch (every message is one LPUSH); other transports publish
        # at once. A publish only buffers inside the batch, so there is nothing for a retry to repeat.
        batched = producer.supports_batch_publish
        with producer.batch(max_size=2 * len(messages) + 2):
            for m in messages:
                key = (m.task_name, queue_of(m.task_name, m.args))
                route = routes.get(key)
                if route is None:
                    route = routes[key] = _route(app, m.task_name, m.args)
                    for entity in route.declare:
                        producer.maybe_declare(entity, retry=retry, **policy)
                headers, properties, body, _ = amqp.as_task_v2(
                    m.task_id,
                    m.task_name,
                    (),
                    m.args,
                    reply_to=reply_to,
                    origin=origin,
                    ignore_result=None,
                    argsrepr="()",
                    kwargsrepr=short_kwargsrepr(m.args),
                )
                producer.publish(
                    body,
                    exchange=route.exchange,
                    routing_key=route.routing_key,
                    serializer=serializer,
                    compression=compression,
                    delivery_mode=route.delivery_mode,
                    headers=headers,
                    retry=retry and not batched,
                    retry_policy=policy,
                    **route.options,
                    **properties,
                )


def publish_task(app: Celery, message: Message, producer: Any = None) -> None:
    """Publish one message, as ``publish_tasks`` does, with kombu's publish retry (the connection
    re-established under ``task_publish_retry_policy``), on ``producer`` (a kombu producer its caller
    holds) or one from the app's pool. Raises whatever the broker raised."""
    conf = app.conf
    retry = bool(conf.task_publish_retry)
    policy = {k: v for k, v in (conf.task_publish_retry_policy or {}).items() if k in _POLICY_KEYS}
    route = _cached_route(app, message.task_name, message.args)
    headers, properties, body, _ = app.amqp.as_task_v2(
        message.task_id,
        message.task_name,
        (),
        message.args,
        reply_to=app.thread_oid,
        origin=_origin(),
        ignore_result=None,
        argsrepr="()",
        kwargsrepr=short_kwargsrepr(message.args),
    )
    with app.producer_or_acquire(producer) as producer:
        if route.declare:
            if retry:
                producer.connection.ensure_connection(**policy)
            # kombu's own cache of what this connection declared, looked at first: maybe_declare copies
            # and binds the queue before it looks (a declare again after a reconnect: a new connection).
            declared = producer.connection.declared_entities
            for entity in route.declare:
                if hash(entity) not in declared:
                    producer.maybe_declare(entity, retry=retry, **policy)
        producer.publish(
            body,
            exchange=route.exchange,
            routing_key=route.routing_key,
            serializer=conf.task_serializer,
            compression=conf.task_compression,
            delivery_mode=route.delivery_mode,
            headers=headers,
            retry=retry,
            retry_policy=policy,
            **route.options,
            **properties,
        )
