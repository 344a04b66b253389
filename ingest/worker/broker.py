"""The broker part of the Celery configuration: each broker gets the options that mean something to it.

On Redis our transport (``worker/redis_transport.py``) keeps each message in a consumer's in-progress list
until it is acknowledged and gives a dead consumer's messages back by liveness; RabbitMQ does the same as
soon as the consumer's connection closes (README, "Choosing a broker").
Options meant for one transport break the other (py-amqp refuses Redis' keyword arguments), so they are
chosen here by the URL's scheme.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ingest.settings import Settings

# Our Redis transport: reliable fetch (in-progress lists and heartbeats) on kombu's.
REDIS_TRANSPORT = "ingest.worker.redis_transport:Transport"


def broker_config(settings: Settings) -> dict[str, Any]:
    """``broker_url``, ``broker_transport`` and ``broker_transport_options`` for ``settings.broker_url``."""
    url = settings.broker_url
    kind = settings.broker_kind
    if kind == "redis":
        return {
            "broker_url": url,
            "broker_transport": REDIS_TRANSPORT,
            # kombu sets up TLS by the scheme's name only for its own class: ours is told. Certificates are
            # verified unless the URL says otherwise (?ssl_cert_reqs=none|optional, ssl_ca_certs=..., as
            # redis-py reads the same URL for the rate limit); kombu's own default was not to verify.
            "broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED} if url.lower().startswith("rediss://") else None,
            "broker_transport_options": {
                # Ours: a consumer silent this long is dead and its messages go back (beats every fifth).
                "heartbeat_timeout": settings.redis_heartbeat_timeout,
                "heartbeat_interval": settings.redis_heartbeat_timeout / 5,
                # Entries of kombu's `unacked` hash an earlier version left: redelivered after this.
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
