"""Values at the edge of what the tables hold, on SQLite and on PostgreSQL (a database of the test's own):
large API ids are kept (BIGINT), and values a database refuses are answered as bad input by field,
never lost with no operation row, never with raw SQL as the reason."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlmodel import select

from ingest.devtools.processes import ChildProcess
from ingest.producer import Producer
from ingest.settings import get_settings, reset_settings
from ingest.store import schema
from ingest.store.db import dispose_engines, session_scope
from ingest.store.models import Operation, TrackFile
from ingest.worker.app import create_app
from tests.conftest import REDIS_URL, WORKDIR
from tests.helpers import op_done, wait_for

PG_ADMIN = os.environ.get("ACR_INGEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LIMITS_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/23"  # no other test's worker consumes it
ACR_INGEST = Path(sys.executable).with_name("acr-ingest")
BIG_BUCKET = 2**31 + 7  # past PostgreSQL's INTEGER
BIG_FILE_ID = 2**62


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_ADMIN.replace("+psycopg", ""), autocommit=True, connect_timeout=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{WORKDIR / f'limits-{uuid.uuid4().hex[:8]}.db'}"
        schema.upgrade(url)
        yield url
        return
    try:
        admin = _admin()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN} ({exc}); set ACR_INGEST_TEST_POSTGRES_URL")
    name = f"acr_ingest_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        schema.upgrade(url)
        yield url
    finally:
        dispose_engines()
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def limits_worker(database_url: str, emulator: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[Producer]:
    """This process and a real ``acr-ingest worker`` both on ``database_url``; a producer sending to that worker."""
    redis.Redis.from_url(LIMITS_BROKER).flushdb()
    monkeypatch.setenv("ACR_INGEST_DATABASE_URL", database_url)
    reset_settings()
    worker = ChildProcess(
        "limits-worker",
        [str(ACR_INGEST), "worker", "--pool=threads", "--concurrency=2", "--without-gossip", "--without-mingle"],
        log=WORKDIR / f"limits-worker-{time.monotonic_ns()}.log",
        env={**os.environ, "ACR_INGEST_BROKER_URL": LIMITS_BROKER},
    )
    try:
        wait_for(lambda: worker.check() or " ready." in worker.text(), timeout=60, what="limits worker ready")
        settings = get_settings().model_copy(update={"broker_url": LIMITS_BROKER})
        yield Producer(create_app(settings), settings)
    finally:
        worker.stop()
        reset_settings()  # the next test reads the session's own settings again


def _url_job(**overrides: Any) -> dict[str, Any]:
    return {"url": "https://h/a.mp3", "title": "t", "bucket_id": 1, **overrides}


def _op_by_task(task_id: str) -> Operation | None:
    with session_scope() as s:
        op = s.exec(select(Operation).where(Operation.task_id == task_id)).first()
        return op if op is not None and op.status in ("succeeded", "failed") else None


def test_large_ids_are_kept_and_refused_values_are_field_errors(limits_worker: Producer) -> None:
    producer = limits_worker
    # A bucket id past 2^31 is a real bucket: uploaded, and its row keeps the id.
    done = producer.upload_url("https://h/big-bucket.mp3", title="big", bucket_id=BIG_BUCKET, ref="big")
    assert done.operation_id is not None
    op = wait_for(lambda: op_done(done.operation_id), timeout=60, what="the upload into a large bucket id")
    assert op.status == "succeeded", op.error
    with session_scope() as s:
        row = s.exec(select(TrackFile).where(TrackFile.ref == "big")).one()
        assert row.bucket_id == BIG_BUCKET and row.remote_id is not None
        row.remote_id = BIG_FILE_ID  # the API's file ids may grow as large: the column holds them
        s.add(row)
    with session_scope() as s:
        assert s.exec(select(TrackFile.remote_id).where(TrackFile.ref == "big")).one() == BIG_FILE_ID

    # Sent by name (as another system would): each ends failed as bad input naming the field.
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("upload_url", _url_job(bucket_id=2**63), "bucket_id: "),
        ("upload_url", _url_job(bucket_id=2**70), "bucket_id: "),
        ("update_meta", {"bucket_id": 1, "file_id": 2**63, "title": "t"}, "file_id: "),
        ("delete_batch", {"bucket_id": 1, "ids": [2**64]}, "ids[0]: "),
        ("upload_url", _url_job(user_defined={"a": float("nan")}), "user_defined: "),
        ("upload_url", _url_job(user_defined={"a": [float("inf")]}), "user_defined: "),
        ("upload_url", _url_job(url="https://h/a\x00b.mp3"), "url: must not contain control characters"),
        ("upload_url", _url_job(ref="a\x00b"), "ref: "),
        ("upload_url", {**_url_job(), "a\x00": 1}, "a\\x00: unknown argument"),
    ]
    sent = []
    for kind, kwargs, expect in cases:
        task_id = str(uuid.uuid4())
        producer.app.send_task(f"ingest.{kind}", kwargs=kwargs, task_id=task_id)
        sent.append((task_id, expect))
    for task_id, expect in sent:
        op = wait_for(lambda task_id=task_id: _op_by_task(task_id), timeout=60, what=f"the job expecting {expect}")
        assert op.status == "failed" and op.error is not None, op
        assert op.error.startswith("bad input: ") and expect in op.error, op.error
        assert "SQL" not in op.error and "psycopg" not in op.error
