"""The database goes away and comes back while a real worker runs jobs: every database error is a retry,
before the job's row exists, inside the handler and while recording a failure; nothing is lost or
acknowledged unrecorded, and the bucket ends with exactly one file per ref."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlmodel import select

from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import Operation, TrackFile
from ingest.worker.app import create_app
from tests.databases import OwnPostgres, own_postgres
from tests.faults.conftest import FAULT_BROKER, WorkerProcess
from tests.helpers import wait_for

pytestmark = pytest.mark.faults


@pytest.fixture
def db() -> Iterator[OwnPostgres]:
    with own_postgres("acr_dbdown") as database:
        yield database


def _send_by_name(ref: str, bucket: int) -> str:
    """A job as another system sends it: by task name, no row written beforehand."""
    task_id = str(uuid.uuid4())
    app = create_app(get_settings().model_copy(update={"broker_url": FAULT_BROKER}))
    args = {"url": f"https://cdn.example.com/{ref}.mp3", "title": ref, "bucket_id": bucket, "ref": ref}
    app.send_task("ingest.upload_url", kwargs=args, task_id=task_id)
    return task_id


def _operation(db: OwnPostgres, task_id: str) -> Operation | None:
    try:
        with session_scope(db.url) as s:
            return s.exec(select(Operation).where(Operation.task_id == task_id)).first()
    except Exception:  # the database is still away
        return None


def _deliveries(worker: WorkerProcess, task_id: str) -> int:
    """Deliveries of this task that ended (retried, or raised) according to the worker's log."""
    return sum(
        1
        for line in worker.text().splitlines()
        if task_id in line and ("database unavailable" in line or "raised unexpected" in line)
    )


def _finished(db: OwnPostgres, task_id: str) -> Operation | None:
    op = _operation(db, task_id)
    return op if op is not None and op.status in ("succeeded", "failed", "partial") else None


def test_a_job_taken_while_the_database_is_down_runs_when_it_is_back(
    db: OwnPostgres, spawn_worker, emulator, bucket
) -> None:
    worker = spawn_worker("dbdown", env={"ACR_INGEST_DATABASE_URL": db.url}).wait_ready()
    db.go_away()
    task_id = _send_by_name("d1", bucket)
    # Two deliveries while nothing can be written: before the fix the first one raised, was
    # acknowledged, and the job was gone.
    wait_for(lambda: _deliveries(worker, task_id) >= 2, timeout=60, what="two deliveries with the database down")
    assert _operation(db, task_id) is None
    db.come_back()

    op = wait_for(lambda: _finished(db, task_id), timeout=90, what=lambda: f"the job done ({worker.text()[-2000:]})")
    assert op.status == "succeeded", op.error
    assert [f["audio_id"] for f in emulator.files(bucket)] == ["d1"]


def test_the_database_going_away_during_the_upload_and_its_failure_loses_nothing(
    db: OwnPostgres, spawn_worker, emulator, bucket
) -> None:
    worker = spawn_worker("dbmid", env={"ACR_INGEST_DATABASE_URL": db.url}).wait_ready()
    emulator.faults.update(upload_delay=3.0)  # the POST is in flight long enough to pull the database away
    task_id = _send_by_name("d2", bucket)

    def posting() -> bool:
        with session_scope(db.url) as s:
            row = s.exec(select(TrackFile).where(TrackFile.bucket_id == bucket, TrackFile.ref == "d2")).first()
            return row is not None and row.post_started_at is not None

    wait_for(posting, timeout=60, what="the upload's POST in flight")
    db.go_away()
    # The POST succeeds, recording its answer fails (in the handler), and so does recording that
    # failure (the failure path): the delivery must end as a retry.
    wait_for(lambda: _deliveries(worker, task_id) >= 2, timeout=60, what="deliveries failing on the database")
    emulator.faults.reset()
    db.come_back()

    op = wait_for(lambda: _finished(db, task_id), timeout=90, what=lambda: f"the job done ({worker.text()[-2000:]})")
    assert op.status == "succeeded", op.error
    assert [f["audio_id"] for f in emulator.files(bucket)] == ["d2"]  # adopted, not posted twice
