"""The producer's background publish mode (``Producer(publish="background")``, worker/outbox_publisher.py): a call
returns once the job is committed, a thread of the process publishes in batches. Nothing handed over is lost or
sent twice: ``close`` publishes and marks everything, threads may call at once, a forked child publishes its own
jobs, and a batch the broker did not take stays due for the sweeper, which sends each job once. On the run's
database and a broker database no worker consumes."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter

import pytest
import redis
from sqlmodel import col, select

from ingest.jobs.errors import EnqueueError
from ingest.producer import Producer
from ingest.settings import get_settings
from ingest.store.db import dispose_engines, session_scope
from ingest.store.models import FileStatus, Operation, OutboxEntry, TrackFile, utcnow
from ingest.worker.app import QUEUE, create_app
from ingest.worker.outbox import sweep
from tests.conftest import IDLE_BROKER, WORKDIR


def _producer(broker_url: str = IDLE_BROKER, **conf: object) -> Producer:
    settings = get_settings().model_copy(update={"broker_url": broker_url})
    app = create_app(settings)
    app.conf.update(**conf)
    return Producer(app, settings, publish="background")


def _upload(producer: Producer, bucket: int, ref: str) -> str:
    done = producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=ref, bucket_id=bucket, ref=ref)
    assert done.plan == "new" and done.task_id
    return done.task_id


def _copies(task_ids: list[str]) -> Counter[str]:
    """How many messages with each of these task ids the idle broker's queue holds."""
    wanted = set(task_ids)
    raw = redis.Redis.from_url(IDLE_BROKER).lrange(QUEUE, 0, -1)
    return Counter(m["headers"]["id"] for m in map(json.loads, raw) if m["headers"].get("id") in wanted)


def _entries(task_ids: list[str]) -> list[OutboxEntry]:
    with session_scope() as s:
        return list(s.exec(select(OutboxEntry).where(col(OutboxEntry.message_id).in_(task_ids))).all())


def test_close_publishes_every_job_once_and_marks_it_sent(bucket: int) -> None:
    producer = _producer()
    task_ids = [_upload(producer, bucket, f"bg-{i}") for i in range(60)]
    producer.close()
    assert _copies(task_ids) == dict.fromkeys(task_ids, 1)
    entries = _entries(task_ids)
    assert len(entries) == 60 and all(e.sent_at is not None for e in entries)
    # Leaving a ``with`` block is a close too (and a closed producer starts another publisher when used).
    with producer:
        later = _upload(producer, bucket, "bg-later")
    assert _copies([later]) == {later: 1}


def test_threads_calling_at_once_each_job_sent_once(bucket: int) -> None:
    producer = _producer()
    task_ids: list[str] = []
    errors: list[BaseException] = []

    def calls(n: int) -> None:
        try:
            task_ids.extend(_upload(producer, bucket, f"t{n}-{i}") for i in range(25))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    producer.close()
    assert not errors and len(set(task_ids)) == 100
    assert _copies(task_ids) == dict.fromkeys(task_ids, 1)
    assert all(e.sent_at is not None for e in _entries(task_ids))


def test_a_batch_the_broker_did_not_take_is_kept_due_and_the_sweeper_sends_it_once(bucket: int) -> None:
    dead = _producer(f"redis+socket://{WORKDIR}/no-such-broker.sock", task_publish_retry=False)
    task_ids = [_upload(dead, bucket, f"kept-{i}") for i in range(3)]
    with session_scope() as s:  # durable when the call returned, whatever the broker does
        rows = s.exec(select(TrackFile).where(TrackFile.bucket_id == bucket)).all()
        assert sorted(r.ref for r in rows) == ["kept-0", "kept-1", "kept-2"]
        assert {r.status for r in rows} == {FileStatus.QUEUED}
    with pytest.raises(EnqueueError, match=r"could not enqueue 3 job\(s\).*kept"):
        dead.flush()
    dead.flush()  # reported once
    # Right after a failed batch the next ones are given back without a publish attempt (RECHECK), so a
    # flush during an outage does not wait out the publish retries once per batch.
    task_ids += [_upload(dead, bucket, f"kept-{i}") for i in range(3, 5)]
    with pytest.raises(EnqueueError, match=r"could not enqueue 2 job\(s\).*no-such-broker"):
        dead.flush()
    for entry in _entries(task_ids):
        assert entry.sent_at is None and entry.attempts == 1 and entry.last_error
        due = entry.due_at if entry.due_at.tzinfo else entry.due_at.replace(tzinfo=utcnow().tzinfo)
        assert due <= utcnow()  # the sweeper's at once, not after the grace
    dead.close()

    live = _producer()
    assert sweep(live.app) >= 5  # (and whatever else of the run's database was due)
    assert _copies(task_ids) == dict.fromkeys(task_ids, 1)
    assert all(e.sent_at is not None for e in _entries(task_ids))
    sweep(live.app)
    assert _copies(task_ids) == dict.fromkeys(task_ids, 1)  # sent: nobody takes it again


def test_a_forked_child_publishes_its_own_jobs_and_the_parent_its_own(bucket: int) -> None:
    producer = _producer()
    before = _upload(producer, bucket, "before-fork")  # the parent's publisher thread is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own engine and publisher, never the parent's
        code = 1
        try:
            os.close(read)
            dispose_engines()
            task_id = _upload(producer, bucket, "in-child")
            producer.close()
            os.write(write, task_id.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    after = _upload(producer, bucket, "after-fork")
    _, status = os.waitpid(pid, 0)
    child_task = os.read(read, 100).decode()
    os.close(read)
    assert status == 0 and child_task
    producer.close()
    task_ids = [before, child_task, after]
    assert _copies(task_ids) == dict.fromkeys(task_ids, 1)
    assert all(e.sent_at is not None for e in _entries(task_ids))
    with session_scope() as s:
        ops = s.exec(select(Operation).where(Operation.bucket_id == bucket)).all()
    assert sorted(op.task_id or "" for op in ops) == sorted(task_ids)


def test_every_call_of_a_background_producer_goes_through_its_publisher(bucket: int) -> None:
    producer = _producer()
    first = _upload(producer, bucket, "calls")
    update = producer.upload_url("https://cdn.example.com/calls.mp3", title="renamed", bucket_id=bucket, ref="calls")
    delete = producer.delete(bucket_id=bucket, refs=["calls"])
    assert update.plan == "update" and update.task_id and delete.task_id
    producer.close()
    task_ids = [first, update.task_id, delete.task_id]
    assert _copies(task_ids) == dict.fromkeys(task_ids, 1)
    assert all(e.sent_at is not None for e in _entries(task_ids))
