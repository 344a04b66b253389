"""Our Redis transport (ingest/worker/redis_transport.py) on the run's Redis: reliable fetch.

Every message is in exactly one Redis list at every instant (its queue, or one consumer's in-progress list);
an ack removes it; a consumer that stops beating has its messages moved back by a live one; a close hands
them back at once. kombu's own transport is shown beside it where it differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from ingest.worker import redis_transport
from ingest.worker.redis_transport import CONSUMERS, HEARTBEATS, Transport
from tests.conftest import REDIS_URL
from tests.helpers import held_in_progress, wait_for

URL = REDIS_URL.rsplit("/", 1)[0] + "/9"  # a database of the run's private Redis no worker consumes
OPTIONS = {"heartbeat_timeout": 2, "heartbeat_interval": 0.2}


@pytest.fixture
def r() -> redis.Redis:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    return client


@pytest.fixture
def queue() -> Queue:
    name = f"rq-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name), routing_key=name)


@pytest.fixture
def conn() -> Iterator[Connection]:
    with Connection(URL, transport=Transport, transport_options=OPTIONS) as c:
        yield c


def _publish(conn: Connection, queue: Queue, n: int) -> None:
    producer = conn.Producer(conn.default_channel)
    for i in range(n):
        producer.publish({"n": i}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])


def test_a_taken_message_sits_in_the_consumers_in_progress_list_until_acked(r, conn, queue) -> None:
    _publish(conn, queue, 2)
    channel = conn.channel()
    message = queue(channel).get(no_ack=False)
    assert message.payload == {"n": 0}
    assert (r.llen(queue.name), held_in_progress(URL)) == (1, 1)  # never in no list, never in two
    message.ack()
    assert (r.llen(queue.name), held_in_progress(URL)) == (1, 0)
    channel.close()


def test_consuming_takes_every_message_and_close_hands_the_unacked_back_at_once(r, conn, queue) -> None:
    _publish(conn, queue, 5)
    got: list[object] = []
    consumer = conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)])
    consumer.consume()
    wait_for(lambda: conn.drain_events(timeout=1) or len(got) == 5, what="five delivered", timeout=15)
    assert sorted(m.payload["n"] for m in got) == list(range(5))  # type: ignore[attr-defined]
    assert (r.llen(queue.name), held_in_progress(URL)) == (0, 5)
    for m in got[:2]:
        m.ack()  # type: ignore[attr-defined]
    conn.release()  # what a warm shutdown does with what it still holds
    assert (r.llen(queue.name), held_in_progress(URL)) == (3, 0)
    assert not r.exists(HEARTBEATS) and not r.exists(CONSUMERS)  # the consumer forgotten, not left to expire


def test_a_message_on_any_consumed_queue_is_delivered_while_the_fetch_blocks_on_another(r, conn) -> None:
    a, b = (Queue(n, Exchange(n), routing_key=n) for n in (f"qa-{uuid.uuid4().hex[:6]}", f"qb-{uuid.uuid4().hex[:6]}"))
    got: list[object] = []
    conn.Consumer([a, b], callbacks=[lambda body, message: got.append(body)]).consume()
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=1.5)  # both empty: the fetch blocks on one of them
    # A producer in another language: a raw LPUSH of a Celery envelope, with no delivery_tag of its own.
    envelope = {
        "body": '{"x": 1}',
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {"delivery_info": {"exchange": b.name, "routing_key": b.name}},
    }
    r.lpush(b.name, json.dumps(envelope))
    wait_for(lambda: conn.drain_events(timeout=1) or got, timeout=10, what="the message on the other queue")
    assert got == [{"x": 1}]


def test_the_lists_of_a_killed_consumer_come_back_by_liveness_not_by_timeout(r, conn, queue) -> None:
    _publish(conn, queue, 3)
    # Another process takes all three without acknowledging, then is SIGKILLed.
    script = f"""
import sys, time
from kombu import Connection, Exchange, Queue
from ingest.worker.redis_transport import Transport
q = Queue({queue.name!r}, Exchange({queue.name!r}), routing_key={queue.name!r})
c = Connection({URL!r}, transport=Transport, transport_options={OPTIONS!r})
held = [q(c.channel()).get(no_ack=False) for _ in range(3)]
print("held", len(held), flush=True)
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held 3"
        assert (r.llen(queue.name), held_in_progress(URL)) == (0, 3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = time.monotonic()
    channel = conn.channel()
    queue(channel).declare()
    channel._pairs([queue.name])  # type: ignore[attr-defined]  # a live consumer of the queue: it beats and judges
    wait_for(lambda: r.llen(queue.name) == 3, timeout=20, interval=0.1, what="the killed consumer's messages back")
    waited = time.monotonic() - killed_at
    # Its silence (2 s) plus the judge's own first full timeout in touch with Redis (2 s), plus beats.
    assert waited < 8, waited
    assert held_in_progress(URL) == 0
    channel.close()


def test_live_consumers_do_not_take_each_others_messages(r, conn, queue) -> None:
    _publish(conn, queue, 2)
    first, second = conn.channel(), conn.channel()
    held = queue(first).get(no_ack=False)
    assert held is not None
    queue(second)  # the second consumer beats and judges alongside
    second._pairs([queue.name])  # type: ignore[attr-defined]
    deadline = time.monotonic() + 3 * OPTIONS["heartbeat_timeout"]
    while time.monotonic() < deadline:  # three whole timeouts of both beating: nothing may move
        assert (r.llen(queue.name), held_in_progress(URL)) == (1, 1)
        time.sleep(0.2)
    held.ack()
    assert held_in_progress(URL) == 0
    first.close()
    second.close()


def test_a_judge_cut_off_from_redis_waits_a_whole_timeout_before_it_restores(r, conn, queue) -> None:
    """After a broker restart every beat is old: the first to come back must not take its live peers' work."""
    _publish(conn, queue, 1)
    peer = conn.channel()
    assert queue(peer).get(no_ack=False) is not None
    peer._heartbeat.stop()  # type: ignore[attr-defined]  # the peer is silent from now on...
    r.zadd(HEARTBEATS, {peer.consumer_id: 0})  # type: ignore[attr-defined]  # ...and long since
    judge = conn.channel()
    judge._pairs([queue.name])  # type: ignore[attr-defined]
    judge._heartbeat.stop()  # type: ignore[attr-defined]  # beats by hand below
    beat = redis_transport.Heartbeat(judge)  # type: ignore[arg-type]
    assert beat.beat() == 0 and r.llen(queue.name) == 0  # just back in touch: no judgement yet
    beat._in_touch_since -= OPTIONS["heartbeat_timeout"]  # type: ignore[operator]  # in touch a whole timeout
    assert beat.beat() == 1 and r.llen(queue.name) == 1


def test_an_envelope_that_is_not_a_kombu_message_is_set_aside_and_the_next_one_delivered(r, conn, queue) -> None:
    from sqlmodel import col, select

    from ingest.store.db import session_scope
    from ingest.store.models import RejectedMessage

    marker = f"garbage-{uuid.uuid4().hex}"
    r.lpush(queue.name, marker)
    _publish(conn, queue, 1)
    got: list[object] = []
    conn.Consumer(queue, callbacks=[lambda body, message: got.append(body)]).consume()
    wait_for(lambda: conn.drain_events(timeout=1) or got, timeout=10, what="the good message after the bad")
    assert got == [{"n": 0}]
    with session_scope() as s:
        rows = s.exec(select(RejectedMessage).where(col(RejectedMessage.body).contains(marker))).all()
    assert len(rows) == 1 and "not a kombu message" in rows[0].reason
    assert r.llen(queue.name) == 0 and held_in_progress(URL) == 1  # only the good one, held until acked
