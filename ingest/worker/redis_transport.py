"""kombu's Redis transport, with one fix: closing a channel whose connection is already gone.

On a broker restart the worker closes its channels after kombu has detached the transport from its
connection (``transport.client = None``). Closing a channel restores the messages it still holds
unacknowledged (``QoS.restore_unacked_once``), which needs a new Redis client, whose parameters come from
``transport.client``: ``AttributeError: 'NoneType' object has no attribute 'hostname'`` escapes
``Channel.close`` and Celery stops the worker as an "Unrecoverable error" (celery 5.7 / kombu 5.7 /
redis-py 8.1; the kombu #582 / #970 family).

Skipping that restore loses nothing: every message a channel delivers is written to the ``unacked`` hash
*before* it is handed over (``QoS.append``), and any worker moves it back to its queue once the visibility
timeout has passed (``QoS.restore_visible``). tests/test_redis_transport.py shows both halves.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("ingest.worker.redis_transport")


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> Any:
        transport = self.channel.connection
        if client is None and (transport is None or transport.client is None):
            log.warning(
                "broker connection gone while closing a channel: %d unacknowledged message(s) stay in Redis' "
                "unacked set and are redelivered after the visibility timeout",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return super().restore_unacked(client)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
