"""Reliable fetch on Redis: a message is the broker's until it is acknowledged, and a dead consumer's
messages go back to their queue by liveness, not after a timeout.

kombu's Redis transport takes a message with BRPOP and only afterwards writes it to its ``unacked`` hash:
a worker killed in between loses it for good (celery/celery#7950), and one killed later leaves it there
until the visibility timeout (an hour) runs out. This transport keeps every message in exactly one Redis
list at every instant, as Sidekiq Pro's super_fetch does:

- **fetch**: one atomic ``LMOVE`` (a Lua script over every queue key, in kombu's fair order) or, when all
  are empty, a blocking ``BLMOVE`` on one of them, moves the message from its queue into this consumer's
  *in-progress* list for that queue (``_acr.inprogress:<consumer>:<queue key>``);
- **ack** removes it from there (``LREM``); a reject with requeue and a channel's close put it back;
- **liveness**: each consuming channel beats every ``heartbeat_interval`` (a score of Redis' own clock in
  the ``_acr.heartbeats`` sorted set; its lists named in the ``_acr.consumers`` hash). Every live consumer
  moves the lists of one not heard from for ``heartbeat_timeout`` back onto their queues, in one script,
  so two never restore the same list. A judge that was itself cut off from Redis waits a full timeout of
  beats first: after a broker restart nobody mistakes a live peer for a dead one.

Producers do not change: any client still ``LPUSH``es a Celery protocol-2 envelope onto the queue's list.
ETA and countdown messages held in a worker's memory stay in its in-progress list, so they come back too.
Messages left in kombu's ``unacked`` hash (by a worker of an earlier version) are still restored after the
visibility timeout, by kombu's own sweep. Needs Redis >= 6.2 (``LMOVE``); refuses ``global_keyprefix``.

One fix of kombu's is kept: closing a channel whose connection is already gone (a broker restart) must not
raise (``transport.client`` is None there; kombu #582 / #970): its lists stay and come back by liveness.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger("ingest.worker.redis_transport")

INPROGRESS_PREFIX = "_acr.inprogress:"
HEARTBEATS = "_acr.heartbeats"
CONSUMERS = "_acr.consumers"
# Envelopes that are not a JSON object with properties: kept here when the database cannot record them.
UNREADABLE = "_acr.unreadable"

# KEYS: queue key, in-progress key, ... in the order to try. The first message found moves atomically.
FETCH = """
for i = 1, #KEYS, 2 do
  local item = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'RIGHT', 'LEFT')
  if item then return {KEYS[i], item} end
end
return false
"""

# KEYS: heartbeats, consumers. ARGV: id ('' = none), its lists (JSON), timeout, forget-after, judge (0/1).
# The lists of a consumer silent for `timeout` go back to their queues; its entry is dropped only after
# `forget`, so one wrongly judged dead (a pause) and fetching again before its next beat loses nothing.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
local restored = 0
if ARGV[5] == '1' then
  local dead = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])), 'BYSCORE',
                          'LIMIT', 0, 100, 'WITHSCORES')
  for i = 1, #dead, 2 do
    local id = dead[i]
    local lists = redis.call('HGET', KEYS[2], id)
    if lists then
      for _, pair in ipairs(cjson.decode(lists)) do
        while redis.call('LMOVE', pair[2], pair[1], 'LEFT', 'RIGHT') do restored = restored + 1 end
      end
    end
    if tonumber(dead[i + 1]) < now - tonumber(ARGV[4]) then
      redis.call('HDEL', KEYS[2], id)
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return restored
"""

# KEYS: heartbeats, consumers, then queue key, in-progress key, ... ARGV: id. Everything back, then forget it.
RELEASE = """
local n = 0
for i = 3, #KEYS, 2 do
  while redis.call('LMOVE', KEYS[i + 1], KEYS[i], 'LEFT', 'RIGHT') do n = n + 1 end
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return n
"""

# KEYS: in-progress key, queue key. ARGV: message, 'left'/'right'. Back on the queue only if still held.
REQUEUE = """
if redis.call('LREM', KEYS[1], -1, ARGV[1]) > 0 then
  if ARGV[2] == 'left' then redis.call('LPUSH', KEYS[2], ARGV[1]) else redis.call('RPUSH', KEYS[2], ARGV[1]) end
  return 1
end
return 0
"""


def consumer_id() -> str:
    """Unique per channel, readable by an operator: host, pid and a random part (a restart never reuses it)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def inprogress_key(consumer: str, source: str) -> str:
    return f"{INPROGRESS_PREFIX}{consumer}:{source}"


class Heartbeat:
    """A daemon thread that beats for one consuming channel and judges the others (any pool, even solo).

    A thread, not an event-loop timer: a solo or threads pool runs tasks where the loop would run, and a
    long upload must not read as a dead worker.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.client = channel.Client(connection_pool=channel.pool)
        self.interval = channel.heartbeat_interval
        self.timeout = channel.heartbeat_timeout
        self.forget_after = max(10 * self.timeout, 300.0)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._in_touch_since: float | None = None  # monotonic time since when every beat reached Redis
        self._warned = False
        self.thread = threading.Thread(target=self._run, name="acr-ingest-redis-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.lock:  # a beat in progress finishes first; none starts after
            self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except Exception:  # never end the thread: a consumer that stops beating is judged dead
                log.exception("heartbeat failed")

    def beat(self) -> int:
        """One beat (and, once in touch for a whole timeout, one judgement); the number of messages restored."""
        with self.lock:
            if self.stopped.is_set():
                return 0
            now = time.monotonic()
            judge = self._in_touch_since is not None and now - self._in_touch_since >= self.timeout
            try:
                restored = int(
                    self.client.eval(
                        BEAT,
                        2,
                        HEARTBEATS,
                        CONSUMERS,
                        self.channel.consumer_id,
                        self.channel.lists_json(),
                        self.timeout,
                        self.forget_after,
                        "1" if judge else "0",
                    )
                )
            except Exception as exc:  # Redis away: beat again next interval, judge nobody until back in touch
                self._in_touch_since = None
                if not self._warned:
                    log.warning("heartbeat to Redis failed (%s: %s); retrying", type(exc).__name__, exc)
                    self._warned = True
                return 0
            if self._in_touch_since is None:
                self._in_touch_since = now
            self._warned = False
        if restored:
            log.warning(
                "moved %d message(s) of workers not heard from for %ss back to their queues", restored, self.timeout
            )
        return restored


class QoS(kombu_redis.QoS):
    """Acknowledgement on the in-progress lists (kombu's ``unacked`` hash is only swept for old entries)."""

    channel: Channel

    def append(self, message: Any, delivery_tag: Any) -> None:
        # The message is already in the in-progress list: nothing to write. (kombu writes its hash here.)
        kombu_redis.virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        self.channel.forget(delivery_tag)
        kombu_redis.virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue:
            self.channel.requeue(delivery_tag, leftmost=True)
        else:
            self.channel.forget(delivery_tag)
        kombu_redis.virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> Any:
        self.channel.release()
        self._delivered.clear()
        return None


class Channel(kombu_redis.Channel):
    QoS = QoS

    #: Seconds between beats, and of silence after which a consumer counts as dead (transport options).
    heartbeat_interval = 2.0
    heartbeat_timeout = 10.0
    _sync_client: Any = None  # conn_or_acquire's client (a class default: kombu's __init__ already uses it)
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "heartbeat_interval",
        "heartbeat_timeout",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError(
                "global_keyprefix is not supported by acr-ingest's Redis transport: use a Redis database of its own"
            )
        version = str(self.client.info("server").get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (6, 2):
            raise RuntimeError(f"Redis {version} has no LMOVE: acr-ingest's broker needs Redis 6.2 or newer")
        self.consumer_id = consumer_id()
        self._lists: dict[str, str] = {}  # queue key -> this consumer's in-progress list for it
        self._registered_keys: frozenset[str] = frozenset()
        self._inflight: dict[Any, tuple[str, bytes]] = {}  # delivery tag -> (queue key, the message as in Redis)
        self._heartbeat: Heartbeat | None = None
        self._released = False
        self._fetch_blocking: str | None = None  # the queue key of a BLMOVE in flight, None for the sweep

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new redis client for every publish and ack (~200 response callbacks set up:
        a quarter of a one-job producer's CPU); one per channel instead, on the channel's pool. The client
        is thread-safe (each command takes a connection from the pool), and a new pool (kombu drops the
        pools after a fork or a reconnect) gets a new client."""
        if client:
            yield client
            return
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = self._create_client()
        yield self._sync_client

    # --- registration and liveness ------------------------------------------------------------------------
    def lists_json(self) -> str:
        return json.dumps(sorted(self._lists.items()))

    def _pairs(self, keys: list[str]) -> list[str]:
        """KEYS for FETCH: each queue key with this consumer's in-progress list, registered before any fetch."""
        for key in keys:
            if key not in self._lists:
                self._lists[key] = inprogress_key(self.consumer_id, key)
        if not self._registered_keys.issuperset(keys):
            # Registered synchronously: a kill right after the first move must find the list named.
            with self.conn_or_acquire() as client:
                client.eval(BEAT, 2, HEARTBEATS, CONSUMERS, self.consumer_id, self.lists_json(), 1, 1, "0")
            self._registered_keys = frozenset(self._lists)
            self._released = False
        if self._heartbeat is None or not self._heartbeat.thread.is_alive():
            if self._heartbeat is not None:
                log.error("the heartbeat thread had stopped; starting it again")
            self._heartbeat = Heartbeat(self)
            self._heartbeat.start()
        return [k for key in keys for k in (key, self._lists[key])]

    def release(self) -> None:
        """Every message this consumer holds back onto its queue, and the consumer forgotten (at close).

        Through the heartbeat's client: it outlives kombu detaching the transport from its connection
        (``transport.client`` is None on a broker restart, kombu #582 / #970). If Redis is unreachable the
        lists stay, no longer beaten for, and a live consumer moves them back within heartbeat_timeout.
        """
        heartbeat = self._heartbeat
        if heartbeat is None or self._released:
            self._inflight.clear()
            return
        heartbeat.stop()
        pairs = [k for key, dst in sorted(self._lists.items()) for k in (key, dst)]
        try:
            heartbeat.client.eval(RELEASE, 2 + len(pairs), HEARTBEATS, CONSUMERS, *pairs, self.consumer_id)
            self._released = True
        except Exception as exc:
            log.warning(
                "Redis unreachable while closing a channel (%s): its %d message(s) in progress come back to "
                "their queues within %ss",
                type(exc).__name__,
                len(self._inflight),
                self.heartbeat_timeout,
            )
        finally:
            heartbeat.client.connection_pool.disconnect()
            self._inflight.clear()

    def close(self) -> None:
        try:
            super().close()  # restores through QoS.restore_unacked when it holds deliveries
        finally:
            self.release()

    def _after_fork(self) -> None:
        # A forked child does not own its parent's consumer: it must never release or beat for it.
        self._lists = {}
        self._heartbeat = None
        self._released = True
        super()._after_fork()

    # --- fetch ----------------------------------------------------------------------------------------------
    def _fetch_keys(self) -> list[str]:
        queues = self._queue_cycle.consume(len(self.active_queues))
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    def _brpop_start(self, timeout: Any = None) -> None:
        keys = self._fetch_keys()
        if not keys:
            return
        pairs = self._pairs(keys)
        self._fetch_blocking = None
        self._fetch_first_key = keys[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command("EVAL", FETCH, len(pairs), *pairs)

    def _send_blocking_fetch(self, key: str) -> None:
        timeout = self.brpop_timeout or 1
        self._fetch_blocking = key
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command("BLMOVE", key, self._lists[key], "RIGHT", "LEFT", timeout)

    def _brpop_read(self, **options: Any) -> bool:
        blocking = self._fetch_blocking
        keep_polling = False
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BLMOVE" if blocking else "EVAL", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if blocking is not None:
                source, item = (blocking, reply) if reply is not None else (None, None)
            elif reply:
                source, item = bytes_to_str(reply[0]), reply[1]
            else:
                source = item = None
                if not self._closing:
                    # Nothing waiting anywhere: wait on one queue key (the fair cycle's first) for a while.
                    self._send_blocking_fetch(self._fetch_first_key)
                    keep_polling = True
            if item is None or source is None:
                raise kombu_redis.Empty()
            self._deliver_fetched(source, item)
            return True
        finally:
            if not keep_polling:
                self._in_poll = None  # type: ignore[assignment]
                self._fetch_blocking = None
                self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: Any = None) -> Any:
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        pairs = self._pairs(keys)
        with self.conn_or_acquire() as client:
            reply = client.eval(FETCH, len(pairs), *pairs)
            self._maybe_update_queues_expire(client, queue)
        if not reply:
            raise kombu_redis.Empty()
        payload = self._envelope(bytes_to_str(reply[0]), reply[1])
        if payload is None:
            raise kombu_redis.Empty()
        return payload

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self.forget(message.delivery_tag)
        return message

    def _deliver_fetched(self, source: str, raw: bytes) -> None:
        payload = self._envelope(source, raw)
        if payload is None:
            return
        queue = source.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self.connection._deliver(payload, queue)

    def _envelope(self, source: str, raw: bytes) -> dict[str, Any] | None:
        """The message as kombu delivers it, tracked under a delivery tag unique in this channel.

        A producer in another language may leave out ``delivery_tag`` or reuse one: a fresh tag is given
        (the raw bytes in Redis stay as sent, so the ack still finds them).
        """
        try:
            payload = loads(bytes_to_str(raw))
            properties = payload["properties"]
            if not isinstance(properties, dict):
                raise TypeError("properties is not an object")
        except Exception as exc:
            self._set_aside(source, raw, f"the envelope is not a kombu message ({type(exc).__name__}: {exc})")
            return None
        tag = properties.get("delivery_tag")
        if not isinstance(tag, str | int) or tag in self._inflight:
            tag = properties["delivery_tag"] = uuid.uuid4().hex
        self._inflight[tag] = (source, raw)
        return payload

    def _set_aside(self, source: str, raw: bytes, reason: str) -> None:
        """An envelope no consumer can read: recorded as a rejected message, never redelivered, never lost."""
        from ingest.store import rejected_messages

        dst = self._lists[source]
        try:
            rejected_messages.record(reason=reason, body=raw, headers=None, content_type=None, queue=source, task=None)
        except Exception:
            log.exception("could not record an unreadable message (%s); kept in Redis list %s", reason, UNREADABLE)
            with self.conn_or_acquire() as client:
                client.eval(REQUEUE, 2, dst, UNREADABLE, raw, "left")
            return
        log.warning("set aside an unreadable message from %s: %s", source, reason)
        with self.conn_or_acquire() as client:
            client.lrem(dst, 1, raw)

    # --- ack and requeue ------------------------------------------------------------------------------------
    def forget(self, delivery_tag: Any) -> None:
        """Acknowledged: the message leaves this consumer's in-progress list."""
        held = self._inflight.pop(delivery_tag, None)
        if held is None:
            return
        source, raw = held
        with self.conn_or_acquire() as client:
            client.lrem(self._lists[source], -1, raw)

    def requeue(self, delivery_tag: Any, leftmost: bool = False) -> None:
        """Back onto its queue (the far end when ``leftmost``, as kombu's reject does), if this consumer holds it."""
        held = self._inflight.pop(delivery_tag, None)
        if held is None:
            return
        source, raw = held
        with self.conn_or_acquire() as client:
            client.eval(REQUEUE, 2, self._lists[source], source, raw, "left" if leftmost else "right")

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        self.requeue(message.delivery_tag, leftmost=leftmost)


class Transport(kombu_redis.Transport):
    Channel = Channel
    #: A blocking fetch waits on one queue key only (BLMOVE has one source; kombu's BRPOP waited on all), so a
    #: message for another queue or priority of this worker's waits for the block to time out: 0.1 s, not 1 s.
    #: (kombu's int annotation; Redis takes a float.)
    brpop_timeout = 0.1  # type: ignore[assignment]
