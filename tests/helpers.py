"""Waiting on conditions with a deadline (never a bare sleep), and reading rows back."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import select

from ingest.store.db import session_scope
from ingest.store.models import Operation, TrackFile

T = TypeVar("T")


def wait_for(
    check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str | Callable[[], str] = ""
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and the last value at the deadline."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said or check}: last {value!r}")
        time.sleep(interval)
        value = check()
    return value


def file_row(bucket_id: int, ref: str) -> TrackFile | None:
    with session_scope() as s:
        return s.exec(select(TrackFile).where(TrackFile.bucket_id == bucket_id, TrackFile.ref == ref)).first()


def files_in(bucket_id: int) -> list[TrackFile]:
    with session_scope() as s:
        return list(s.exec(select(TrackFile).where(TrackFile.bucket_id == bucket_id).order_by(TrackFile.id)).all())


def operation(op_id: int) -> Operation:
    with session_scope() as s:
        op = s.get(Operation, op_id)
        assert op is not None
        return op


def op_done(op_id: int) -> Operation | None:
    op = operation(op_id)
    return op if op.status in ("succeeded", "partial", "failed") else None


def idle_producer() -> object:
    """A producer whose messages go to a broker no worker consumes: its jobs stay "in the queue"."""
    from ingest.producer import Producer
    from ingest.settings import get_settings
    from ingest.worker.app import create_app
    from tests.conftest import IDLE_BROKER

    settings = get_settings().model_copy(update={"broker_url": IDLE_BROKER})
    return Producer(create_app(settings), settings)


VENDOR_PAGE = Path(__file__).parent / "fixtures" / "vendor-files-api.zh.txt"


def vendor_examples() -> dict[str, dict[str, Any]]:
    """The four JSON examples of the vendor page (upload, list, update, get), keyed by what they answer."""
    text = VENDOR_PAGE.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    found = [decoder.raw_decode(text, m.end())[0] for m in re.finditer(r"^json\s*\n(?=\{)", text, re.M)]
    examples: dict[str, dict[str, Any]] = {}
    for ex in found:
        data = ex["data"]
        if "links" in ex:
            examples["list"] = ex
        elif isinstance(data, list):
            examples["get"] = ex
        elif isinstance(data["duration"], str):
            examples["upload"] = ex
        else:
            examples["update"] = ex
    return examples


def held_in_progress(broker_url: str, queue: str = "*") -> int:
    """Messages in Redis consumers' in-progress lists (ingest/worker/redis_transport.py), of one queue or all."""
    import redis

    from ingest.worker.redis_transport import INPROGRESS_PREFIX

    client = redis.Redis.from_url(broker_url)
    return sum(int(client.llen(k)) for k in client.scan_iter(f"{INPROGRESS_PREFIX}*:{queue}"))


def worker_queues(argv: list[str]) -> set[str] | None:
    """The queues a worker command line names (``-Q a,b``, ``-Qa,b``, ``--queues[=]a,b``; repeated ones add up),
    or None when it names none: such a worker consumes every queue the app declares."""
    found: set[str] = set()
    named = False
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-Q", "--queues"):
            value = argv[i + 1]
        elif arg.startswith("--queues="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-Q"):
            value = arg[2:]
        if value is not None:
            named = True
            found |= {q.strip() for q in value.split(",") if q.strip()}
    return found if named else None


def app_queues() -> set[str]:
    """Every queue the Celery app declares (what a worker started without -Q consumes)."""
    from ingest.settings import Settings
    from ingest.worker.app import create_app

    return {q.name for q in create_app(Settings()).conf.task_queues}


def purged_rabbitmq(url: str) -> str:
    """``url`` (a RabbitMQ vhost) with our queues emptied: what an earlier test left queued must not reach the
    next test's workers."""
    from kombu import Connection, Queue

    from ingest.worker.routing import QUEUES

    with Connection(url) as conn:
        for name in QUEUES:
            queue = Queue(name, durable=True)(conn.default_channel)
            queue.declare()
            queue.purge()
    return url


@contextmanager
def holding_the_poll_lease(name: str) -> Iterator[None]:
    """Hold the state poll's lease: every beat on this database (a session beat an earlier test started, on
    another broker and token) skips its poll, its outbox sweep and its auth-hold probe meanwhile."""
    from ingest.jobs.polling import LEASE
    from ingest.store import leases
    from ingest.store.db import session_scope

    owner = leases.owner_id(name)
    with session_scope() as s:
        wait_for(lambda: leases.acquire(s, LEASE, owner, 300), timeout=130, what="the state-poll lease")
    try:
        yield
    finally:
        with session_scope() as s:
            leases.release(s, LEASE, owner)
