"""Our Redis transport (ingest/worker/redis_transport.py) against kombu's own, on the run's Redis.

A broker restart left the worker closing a channel whose connection kombu had already detached; kombu's
restore of the unacknowledged messages then raised AttributeError and Celery stopped the worker. Ours
skips that restore, and the message is not lost: it comes back after the visibility timeout.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection, Exchange, Queue

from ingest.worker.redis_transport import Transport
from tests.conftest import REDIS_URL
from tests.helpers import wait_for

URL = REDIS_URL.rsplit("/", 1)[0] + "/9"  # a database of the run's private Redis no worker consumes
OPTIONS = {"visibility_timeout": 1, "unacked_restore_interval": 0.1}


def _take_one_unacked(transport: object) -> tuple[Connection, Queue, object]:
    """Publish one message and take it without acknowledging it, as a worker does (acks_late)."""
    name = f"restore-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name)
    conn = Connection(URL, transport=transport, transport_options=OPTIONS)
    channel = conn.channel()
    bound = queue(channel)
    bound.declare()
    conn.Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key=name, serializer="json")
    message = wait_for(lambda: bound.get(no_ack=False), what="the message delivered")
    assert message.payload == {"n": 1}
    return conn, queue, channel


def _broker_gone_then_close(conn: Connection, channel: object) -> None:
    # What kombu does before the worker closes its channels on a broker restart: the transport is
    # detached from its connection (Connection._do_close_transport) and the channel's client pool is gone.
    channel._disconnect_pools()  # type: ignore[attr-defined]
    conn.transport.client = None
    channel.close()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _empty_db() -> None:
    redis.Redis.from_url(URL).flushdb()


def test_kombus_own_transport_raises_closing_a_channel_of_a_dead_connection() -> None:
    """The bug, shown on the installed kombu: if this stops raising, kombu fixed it and ours can go."""
    conn, _, channel = _take_one_unacked("redis")
    with pytest.raises(AttributeError, match="hostname"):
        _broker_gone_then_close(conn, channel)


def test_our_transport_closes_quietly_and_the_message_comes_back_after_the_visibility_timeout() -> None:
    conn, queue, channel = _take_one_unacked(Transport)
    _broker_gone_then_close(conn, channel)  # no exception: the worker would live on

    with Connection(URL, transport=Transport, transport_options=OPTIONS) as fresh:
        bound = queue(fresh.channel())

        def redelivered() -> object:
            bound.channel.qos.restore_visible(num=100)  # what every worker does every unacked_restore_interval
            return bound.get(no_ack=True)

        message = wait_for(redelivered, timeout=30, interval=0.2, what="the unacknowledged message back")
        assert message.payload == {"n": 1}  # type: ignore[attr-defined]
