"""Messages no task can run (poison messages), published raw with kombu as a hand-written producer
might: each is taken off the queue and kept with its reason, the worker lives on, and a good job sent
right after is done. The worker is a real ``acr-ingest worker`` process on a broker of its own: a Redis database,
then the run's RabbitMQ vhost (where a message refused the wrong way would come back for ever)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kombu import Connection
from sqlmodel import col, select

from ingest.cli.commands import main
from ingest.devtools.processes import ChildProcess
from ingest.producer import Producer
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import RejectedMessage
from ingest.worker.app import create_app
from tests.conftest import REDIS_URL, WORKDIR
from tests.helpers import op_done, purged_rabbitmq, wait_for

POISON_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/21"  # no other test's worker consumes it
ACR_INGEST = Path(sys.executable).with_name("acr-ingest")  # the installed command, as an operator runs it
JSON = "application/json"
PICKLE_MARKER = WORKDIR / "unpickled-by-the-worker"


class _CreatesAFileWhenUnpickled:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(PICKLE_MARKER),))


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def poison_broker(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        redis.Redis.from_url(POISON_BROKER).flushdb()
        return POISON_BROKER
    return purged_rabbitmq(request.getfixturevalue("rabbitmq_url"))


@pytest.fixture(scope="module")
def poison_worker(emulator: object, poison_broker: str) -> Iterator[ChildProcess]:
    proc = ChildProcess(
        "poison-worker",
        [str(ACR_INGEST), "worker", "--concurrency=1", "--without-gossip", "--without-mingle"],
        log=WORKDIR / f"poison-worker-{time.monotonic_ns()}.log",
        env={**os.environ, "ACR_INGEST_BROKER_URL": poison_broker},
    )
    wait_for(lambda: proc.check() or " ready." in proc.text(), timeout=60, what="poison worker ready")
    yield proc
    proc.stop()


@pytest.fixture
def poison_producer(poison_broker: str) -> Producer:
    settings = get_settings().model_copy(update={"broker_url": poison_broker})
    return Producer(create_app(settings), settings)


def _publish(app: Any, body: Any, *, headers: dict[str, Any] | None, content_type: str = JSON) -> None:
    """One message on queue ``ingest``, exactly as given (no Celery client in between)."""
    queue = app.amqp.queues["ingest"]
    with Connection(app.conf.broker_url) as conn:
        conn.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            headers=headers or {},
            content_type=content_type,
            content_encoding="binary" if isinstance(body, bytes) else "utf-8",
            serializer=None,
        )


def _headers(task: str = "ingest.upload_url", **extra: Any) -> dict[str, Any]:
    return {"task": task, "id": str(uuid.uuid4()), "lang": "py", **extra}


def _good_kwargs(marker: str) -> dict[str, Any]:
    return {"url": f"https://h/{marker}.mp3", "title": marker, "bucket_id": 1}


def _rejected_since(first_id: int) -> list[RejectedMessage]:
    with session_scope() as s:
        return list(
            s.exec(select(RejectedMessage).where(col(RejectedMessage.id) > first_id).order_by(col(RejectedMessage.id)))
        )


def _last_rejected_id() -> int:
    with session_scope() as s:
        last = s.exec(select(RejectedMessage.id).order_by(col(RejectedMessage.id).desc())).first()
        return last or 0


def test_poison_messages_are_kept_with_their_reason_and_the_worker_lives_on(
    poison_worker: ChildProcess, poison_producer: Producer, bucket: int
) -> None:
    app = poison_producer.app
    before = _last_rejected_id()
    run = uuid.uuid4().hex[:8]
    deep = '[[], {"user_defined": ' + "[" * 50_000 + "]" * 50_000 + "}, {}]"

    def text(marker: str, value: Any) -> str:
        return json.dumps(value).replace("MARK", f"{run}-{marker}")

    pickled = pickle.dumps([[], {"marker": f"{run}-pickle", "boom": _CreatesAFileWhenUnpickled()}, {}])
    ok = [[], _good_kwargs("MARK"), {}]
    # (marker, body, headers, content type, the reason contains)
    cases: list[tuple[str, Any, dict[str, Any] | None, str, str]] = [
        ("object-body", text("object-body", _good_kwargs("MARK")), _headers(), JSON, "[args, kwargs, embed]"),
        ("unknown-task", text("unknown-task", ok), _headers("ingest.no_such"), JSON, "unknown task"),
        ("celery-task", text("celery-task", [[], {"x": "MARK"}, {}]), _headers("celery.ping"), JSON, "unknown task"),
        ("positional", text("positional", [["MARK"], {}, {}]), _headers(), JSON, "positional arguments"),
        ("kwargs-list", text("kwargs-list", [[], ["MARK"], {}]), _headers(), JSON, "must be a JSON object"),
        ("not-json", f"{{not json {run}-not-json", _headers(), JSON, "not readable JSON"),
        ("pickle", pickled, _headers(), "application/x-python-serialize", "is not accepted"),
        ("no-task", text("no-task", {"args": ["MARK"]}), None, JSON, "no task header"),
        ("no-id", text("no-id", ok), {"task": "ingest.upload_url"}, JSON, "headers.id"),
        ("deep", deep.replace('"user_defined"', f'"{run}-deep"'), _headers(), JSON, "not readable JSON"),
        # Tasks of fixed arguments: Celery would call them and log the TypeError (the message gone).
        (
            "poll-kwarg",
            text("poll-kwarg", [[], {"colour": "MARK"}, {}]),
            _headers("ingest.poll_states"),
            JSON,
            "poll_states() got an unexpected keyword argument 'colour'",
        ),
        (
            "webhook-missing",
            text("webhook-missing", [[], {"evnt": "MARK"}, {}]),
            _headers("ingest.deliver_webhook"),
            JSON,
            "the arguments do not fit ingest.deliver_webhook",
        ),
        (
            "webhook-type",
            text("webhook-type", [[], {"event": "MARK"}, {}]),
            _headers("ingest.deliver_webhook"),
            JSON,
            "argument 'event' of ingest.deliver_webhook must be a JSON object, got str",
        ),
        # Passes our check; Celery itself refuses the ETA (its answer used to be a log line only).
        ("bad-eta", text("bad-eta", ok), _headers(eta="not a time"), JSON, "invalid task message"),
    ]
    for _, body, headers, content_type, _ in cases:
        _publish(app, body.encode() if isinstance(body, str) else body, headers=headers, content_type=content_type)
    good = poison_producer.upload_url(f"https://h/{run}-good.mp3", title="good", bucket_id=bucket)

    assert good.operation_id is not None
    op = wait_for(
        lambda: poison_worker.check() or op_done(good.operation_id),  # check() raises once the worker has exited
        timeout=90,
        what="the good job after the poison messages",
    )
    assert op.status == "succeeded", op.error
    rows = wait_for(
        lambda: (r := _rejected_since(before)) and len(r) >= len(cases) and r,
        timeout=60,
        what=lambda: f"{len(cases)} rejected, have {[(r.body[:40], r.reason) for r in _rejected_since(before)]}",
    )
    by_marker = {marker: [r for r in rows if f"{run}-{marker}" in r.body] for marker, *_ in cases}
    for marker, _, headers, content_type, reason in cases:
        found = by_marker[marker]
        assert len(found) == 1, (marker, [(r.body[:60], r.reason) for r in rows])
        row = found[0]
        assert reason in row.reason, (marker, row.reason)
        assert row.queue == "ingest" and row.content_type == content_type
        assert row.headers is not None and row.headers.get("id") == (headers or {}).get("id")
    assert len(rows) == len(cases)
    assert not PICKLE_MARKER.exists(), "the worker unpickled a message"
    assert next(r for r in rows if f"{run}-deep" in r.body).body_bytes == len(
        deep.replace('"user_defined"', f'"{run}-deep"')
    )

    assert poison_worker.alive()
    assert "Unrecoverable error" not in poison_worker.text()

    status = CliRunner().invoke(main, ["status"])
    assert status.exit_code == 0, status.output
    assert "rejected messages" in status.output and "invalid task message" in status.output
    report = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert report["rejected_messages"]["count"] >= len(cases)


def test_a_huge_body_is_kept_bounded(poison_worker: ChildProcess, poison_producer: Producer) -> None:
    before = _last_rejected_id()
    body = json.dumps({"blob": "z" * 1_000_000}).encode()
    _publish(poison_producer.app, body, headers=_headers())
    (row,) = wait_for(
        lambda: poison_worker.check() or _rejected_since(before), timeout=60, what="the huge message recorded"
    )
    assert row.body_bytes == len(body) and 0 < len(row.body) <= 65_536
    assert poison_worker.alive()
