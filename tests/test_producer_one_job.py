"""The producer's one-job path for a new ref (``Producer.upload_url``: Core statements, ``store/enqueue.py``)
writes the rows the bulk path writes and sends one message; a publish that fails keeps the job, unsent and
due, for the sweeper (or a re-run), which sends it once. On the run's database (SQLite, or
ACR_INGEST_TEST_DATABASE_URL) and a broker database no worker consumes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from sqlmodel import select

from ingest.jobs.errors import EnqueueError
from ingest.jobs.inputs import validate_upload_url
from ingest.producer import Producer
from ingest.settings import get_settings
from ingest.store import outbox
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OpStatus, OutboxEntry, TrackFile, utcnow
from ingest.worker.app import QUEUE, create_app, publish_retry_policy
from ingest.worker.outbox import publish
from tests.conftest import IDLE_BROKER, WORKDIR

# What differs between two rows of two refs written a moment apart.
OWN = {"id", "ref", "title", "source", "created_at", "updated_at", "task_id", "file_id", "args", "message_id"}
OWN |= {"payload", "due_at", "sent_at"}


def _producer(broker_url: str = IDLE_BROKER) -> Producer:
    settings = get_settings().model_copy(update={"broker_url": broker_url})
    return Producer(create_app(settings), settings)


def _rows(task_id: str) -> tuple[TrackFile, Operation, OutboxEntry]:
    with session_scope() as s:
        op = s.exec(select(Operation).where(Operation.task_id == task_id)).one()
        row = s.get(TrackFile, op.file_id)
        entry = s.exec(select(OutboxEntry).where(OutboxEntry.message_id == task_id)).one()
        assert row is not None
        return row, op, entry


def _messages(task_id: str) -> list[dict[str, Any]]:
    """The envelopes on the idle broker's queue with this task id."""
    raw = redis.Redis.from_url(IDLE_BROKER).lrange(QUEUE, 0, -1)
    return [m for m in map(json.loads, raw) if m["headers"].get("id") == task_id]


def _shape(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.model_dump().items() if k not in OWN}


def test_a_new_ref_is_written_as_the_bulk_path_writes_it_and_sent_once(bucket: int) -> None:
    producer = _producer()
    user_defined = {"artist": "A", "isrc": "ISRC1"}
    one = producer.upload_url("https://cdn.example.com/one.mp3", title="One", bucket_id=bucket, ref="one",
                              user_defined=user_defined)  # fmt: skip
    job = validate_upload_url(
        {"url": "https://cdn.example.com/bulk.mp3", "title": "Bulk", "bucket_id": bucket, "ref": "bulk",
         "user_defined": user_defined},
        producer.settings,
    )  # fmt: skip
    (bulk,) = producer.upload_many([job])
    assert one.plan == "new" and one.task_id and bulk.task_id

    mine, theirs = _rows(one.task_id), _rows(bulk.task_id)
    for written, expected in zip(mine, theirs, strict=True):
        assert _shape(written) == _shape(expected)
    row, op, entry = mine
    assert (row.id, op.id) == (one.file_id, one.operation_id) and op.file_id == row.id
    assert row.status == FileStatus.QUEUED and op.status == OpStatus.QUEUED
    assert op.args == entry.payload == {"url": "https://cdn.example.com/one.mp3", "bucket_id": bucket,
                                        "title": "One", "user_defined": user_defined, "ref": "one"}  # fmt: skip
    assert entry.sent_at is not None and theirs[2].sent_at is not None

    (message,) = _messages(one.task_id)
    (reference,) = _messages(bulk.task_id)
    assert message["headers"]["task"] == "ingest.upload_url"
    assert sorted(message["headers"]) == sorted(reference["headers"])
    assert sorted(message["properties"]) == sorted(reference["properties"])
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [] and kwargs == op.args

    again = producer.upload_url("https://cdn.example.com/one.mp3", title="One", bucket_id=bucket, ref="one",
                                user_defined=user_defined)  # fmt: skip
    assert again.plan == "noop" and len(_messages(one.task_id)) == 1


def test_a_producer_gives_up_on_an_away_broker_after_its_wait_not_the_workers(bucket: int) -> None:
    """Its own app retries for ACR_INGEST_PRODUCER_PUBLISH_WAIT; the worker's app keeps its 51 s for a restart."""
    worker_policy = create_app(get_settings()).conf.task_publish_retry_policy
    assert worker_policy == publish_retry_policy(51.0) and worker_policy["max_retries"] == 20
    for wait, retries in ((0.0, 0), (0.2, 1), (5.0, 4), (51.0, 20)):
        policy = publish_retry_policy(wait)
        waits = [
            min(policy["interval_start"] + n * policy["interval_step"], policy["interval_max"]) for n in range(retries)
        ]
        assert policy["max_retries"] == retries and sum(waits) <= wait, (wait, policy)

    settings = get_settings().model_copy(
        update={"broker_url": f"redis+socket://{WORKDIR}/no-such-broker.sock", "producer_publish_wait": 1.0}
    )
    dead = Producer(settings=settings)
    assert dead.app.conf.task_publish_retry_policy == publish_retry_policy(1.0)
    with pytest.raises(EnqueueError, match="is kept"):
        dead.upload_url("https://cdn.example.com/w.mp3", title="W", bucket_id=bucket, ref="w")
    with session_scope() as s:
        (op,) = s.exec(select(Operation).where(Operation.bucket_id == bucket)).all()
    assert op.task_id is not None and _rows(op.task_id)[2].attempts == 1  # kept, unsent


def test_a_publish_that_fails_keeps_the_job_unsent_and_due_and_it_is_sent_once(bucket: int) -> None:
    dead = _producer(f"redis+socket://{WORKDIR}/no-such-broker.sock")
    dead.app.conf.update(task_publish_retry=False)
    with pytest.raises(EnqueueError, match="is kept"):
        dead.upload_url("https://cdn.example.com/kept.mp3", title="Kept", bucket_id=bucket, ref="kept")
    with session_scope() as s:
        op = s.exec(select(Operation).where(Operation.bucket_id == bucket)).one()
    assert op.task_id is not None
    row, op, entry = _rows(op.task_id)
    assert row.status == FileStatus.QUEUED and op.status == OpStatus.QUEUED
    assert entry.sent_at is None and entry.attempts == 1 and entry.last_error
    due = entry.due_at if entry.due_at.tzinfo else entry.due_at.replace(tzinfo=utcnow().tzinfo)
    assert due <= utcnow()  # the sweeper's at once, not after the grace

    live = _producer()
    with session_scope() as s:  # what the sweeper does with it (outbox.sweep, one entry)
        assert entry.id is not None and outbox.claim(s, entry.id)
    publish(live.app, entry.id)
    assert _rows(op.task_id)[2].sent_at is not None
    assert len(_messages(op.task_id)) == 1
    with session_scope() as s:
        assert not outbox.claim(s, entry.id)  # sent: nobody takes it again
