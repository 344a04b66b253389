"""The producer's background publisher: outbox entries its callers just committed, published from a thread
of its own in batches (one pipelined publish per batch, ``publish_tasks``), then marked sent in one statement.

The entries are durable before they get here (written and committed, due after ``ACR_INGEST_OUTBOX_GRACE``), so
what this holds in memory is only a head start on the poll's sweeper: a batch the broker did not take is given
back (due at once), and entries lost with the process (killed, or exited without ``flush``) are sent by the
sweeper once their grace has passed. A message published but not marked (the process died in between) is sent
again by the sweeper; the worker runs a task id once (``runner._start``: a finished operation is not redone).

One publisher per process and producer: a forked child makes its own (the parent's thread is not in the
child, and the parent's pending entries are the parent's to send).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from celery import Celery

from ingest.jobs.bulk_uploads import Message
from ingest.store import outbox
from ingest.store.db import autocommit, get_engine
from ingest.worker.bulk_publish import publish_tasks
from ingest.worker.outbox import Written

log = logging.getLogger("ingest.outbox")
MAX_BATCH = 500  # messages per pipelined publish (and per mark statement)
MAX_PENDING = 10_000  # entries held in memory before a caller waits for the publisher (the broker is slow)
# How long the thread lets entries gather before it publishes what it holds (unless a batch is full or a flush
# waits): a batch per entry cost more CPU than the call itself, and the thread's CPU is the callers' (one GIL).
LINGER = 0.1
# After a batch the broker did not take, what is handed over this long after is given back at once (the
# sweeper sends it) instead of waiting out the publish retries again: a flush during an outage stays short.
RECHECK = 5.0


class PublisherClosed(RuntimeError):
    """``submit`` after ``close`` (another thread closed the producer): its caller starts another publisher."""


@dataclass(frozen=True)
class Unpublished:
    """What ``flush`` reports: jobs whose message the broker did not take since the last flush (kept, due)."""

    count: int
    reason: str


class BackgroundPublisher:
    """Publishes ``outbox.TASK`` entries handed to ``submit`` (as their writer committed them) in batches."""

    def __init__(
        self, app: Celery, *, max_batch: int = MAX_BATCH, max_pending: int = MAX_PENDING, linger: float = LINGER
    ) -> None:
        self.app = app
        self.pid = os.getpid()
        self._max_batch, self._max_pending, self._linger = max_batch, max_pending, linger
        self._flushing = 0  # callers waiting in flush: the thread publishes at once
        self._pending: deque[Written] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0  # entries taken by the thread and not yet published or given back
        self._closing = False
        self._failed = 0
        self._reason = ""
        self._down_until = 0.0  # monotonic time until which batches are given back without a publish
        self._producer: Any = None
        self.batches = self.published = 0  # for the benchmark: the mean batch size
        self._thread = threading.Thread(target=self._run, name="acr-ingest-outbox-publisher", daemon=True)
        self._thread.start()
        # A process that exits without close() still sends what it holds (a forked child inherits this
        # registration: close_at_exit does nothing there).
        atexit.register(self.close_at_exit)

    def submit(self, entry: Written) -> None:
        """Hand over a committed task entry; waits only while ``MAX_PENDING`` are held."""
        with self._cond:
            while len(self._pending) >= self._max_pending and not self._closing:
                self._cond.wait()
            if self._closing:
                raise PublisherClosed("the producer's publisher is closed")
            self._pending.append(entry)
            if len(self._pending) in (1, self._max_batch):  # the thread waits for the first, or lingers
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> Unpublished | None:
        """Wait until everything submitted so far is published or given back; what the broker did not take
        since the last flush (None: all sent). ``TimeoutError`` when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending or self._in_flight:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"{len(self._pending) + self._in_flight} message(s) still being published")
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
            failed, self._failed = self._failed, 0
            return Unpublished(failed, self._reason) if failed else None

    def close(self, timeout: float | None = None) -> Unpublished | None:
        """``flush``, then stop the thread (idempotent)."""
        atexit.unregister(self.close_at_exit)
        try:
            return self.flush(timeout)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=5)

    def close_at_exit(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's copy: the parent's thread and entries are not here
        try:
            unpublished = self.close(timeout=60)
        except TimeoutError as exc:  # the broker is slow: the sweeper sends the rest after their grace
            log.warning("outbox: exiting with %s; the poll's sweeper sends them", exc)
            return
        if unpublished:
            log.warning(
                "outbox: exiting with %d job(s) the broker did not take (%s); kept, the poll's sweeper sends them",
                unpublished.count,
                unpublished.reason,
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    break  # closing, nothing left
                until = time.monotonic() + self._linger
                while len(self._pending) < self._max_batch and not (self._closing or self._flushing):
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
                self._in_flight = len(batch)
                self._cond.notify_all()  # a caller waiting for room
            try:
                self._publish(batch)
            except Exception:  # never let the thread die: what is unmarked is the sweeper's after its grace
                log.exception("outbox: the background publisher failed on a batch of %d", len(batch))
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()
        self._drop_producer()

    def _publish(self, batch: list[Written]) -> None:
        ids = [e.id for e in batch]
        attempted = time.monotonic() >= self._down_until
        try:
            if not attempted:
                raise ConnectionError("the broker did not take the last batch")
            if self._producer is None:
                self._producer = self.app.connection_for_write().Producer()
            publish_tasks(self.app, [Message(e.destination, e.payload, e.message_id) for e in batch], self._producer)
        except Exception as exc:
            # Part of a pipeline may have been delivered: all of it is given back (a second copy is harmless).
            reason = f"{type(exc).__name__}: {exc}" if attempted else self._reason
            self._drop_producer()
            with self._cond:
                if attempted:  # the next attempt after RECHECK
                    self._down_until = time.monotonic() + RECHECK
                if not self._failed:
                    log.warning("outbox: the broker did not take %d message(s), kept: %s", len(ids), reason)
                self._failed += len(ids)
                self._reason = reason
            with get_engine().connect() as conn:
                outbox.give_back_many(autocommit(conn), ids, reason)
            return
        with get_engine().connect() as conn:
            outbox.mark_sent_ids(autocommit(conn), ids)
        self.batches += 1
        self.published += len(ids)

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.connection.close()
            except Exception as exc:  # a connection already gone
                log.debug("outbox: closing the publisher's connection: %s", exc)
