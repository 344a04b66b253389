"""The broker part of the Celery configuration: each broker gets the options that mean something to it.

Redis and RabbitMQ differ in what they guarantee (README, "Choosing a broker"): Redis redelivers an
unacknowledged message after a visibility timeout, RabbitMQ as soon as the consumer's connection closes.
Options meant for one transport break the other (py-amqp refuses Redis' keyword arguments), so they are
chosen here by the URL's scheme.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ingest.settings import Settings

# Our Redis transport: kombu's, with a fix for closing a channel whose connection is already gone.
REDIS_TRANSPORT = "ingest.worker.redis_transport:Transport"


def broker_config(settings: Settings) -> dict[str, Any]:
    """``broker_url``, ``broker_transport`` and ``broker_transport_options`` for ``settings.broker_url``."""
    url = settings.broker_url
    kind = settings.broker_kind
    if kind == "redis":
        return {
            "broker_url": url,
            # rediss:// keeps kombu's own class: kombu sets up TLS by that scheme name.
            "broker_transport": REDIS_TRANSPORT if url.lower().startswith("redis://") else None,
            "broker_transport_options": {
                # Must exceed the longest task plus the longest retry countdown (backoff_max, auth recheck),
                # or Redis hands a still-running or waiting message to a second worker.
                "visibility_timeout": settings.visibility_timeout,
                "unacked_restore_interval": settings.redelivery_check_interval,
                "unacked_restore_throttle": 1,
                # A publish on a connection to a vanished broker must fail (and be retried), not hang forever.
                "socket_timeout": 30,
                "socket_connect_timeout": 5,
                "health_check_interval": 10,
            },
        }
    if kind == "amqp":
        return {
            "broker_url": url,
            # Publisher confirms: a publish returns only once RabbitMQ holds the message (a send that fails
            # raises and is retried by task_publish_retry instead of vanishing). Queues are durable and
            # messages persistent (Celery's defaults for RabbitMQ, made explicit in app.py's queues).
            "broker_transport_options": {"confirm_publish": True},
        }
    if kind == "filesystem":
        folder = Path(url.removeprefix("filesystem://") or "var/broker").expanduser()
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "broker_url": "filesystem://",
            "broker_transport_options": {
                "data_folder_in": str(folder / "in"),
                "data_folder_out": str(folder / "in"),
                "processed_folder": str(folder / "processed"),
                # kombu's default is ./control, which would litter the directory the command ran from.
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": 0.1,
            },
        }
    return {"broker_url": url, "broker_transport_options": {}}
