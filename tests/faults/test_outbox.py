"""A publish that fails is not a lost job: with the broker down the command exits non-zero but keeps the
job (row and outbox entry in one transaction); once the broker is back the poll's sweeper publishes it,
and running the same command again sends it at once, never twice. A producer in background mode killed right
after its calls returned loses none of them either, and a message sent twice (published, the process dead
before the mark) is run once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from sqlmodel import col, select

from ingest.devtools.processes import RedisServer
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OutboxEntry
from tests.conftest import WORKDIR
from tests.faults.conftest import beat_process
from tests.helpers import file_row, files_in, held_in_progress, holding_the_poll_lease, wait_for

pytestmark = pytest.mark.faults
CLI = str(Path(sys.executable).parent / "acr-ingest")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(WORKDIR / f"redis-outbox-{time.monotonic_ns()}", durable=True).start()
    yield server
    server.stop()


def _upload(env: dict[str, str], bucket: int, ref: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CLI,
            "upload-url",
            f"https://cdn.example.com/{ref}.mp3",
            "--title",
            ref,
            "--bucket",
            str(bucket),
            "--ref",
            ref,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _entries(bucket: int, ref: str) -> list[OutboxEntry]:
    with session_scope() as s:
        ops = s.exec(select(Operation).where(Operation.bucket_id == bucket)).all()
        ids = [op.task_id for op in ops if op.args.get("ref") == ref]
        return list(s.exec(select(OutboxEntry).where(OutboxEntry.message_id.in_(ids))).all())  # type: ignore[attr-defined]


def test_a_job_enqueued_while_the_broker_is_down_is_kept_and_sent_once(
    own_redis: RedisServer, spawn_worker, fault_env, emulator, bucket
) -> None:
    env = {**fault_env, "ACR_INGEST_BROKER_URL": own_redis.url(), "ACR_INGEST_OUTBOX_GRACE": "1"}
    spawn_worker("outbox", env=env).wait_ready()
    own_redis.stop()

    with holding_the_poll_lease("test-outbox"):  # no session beat sweeps this test's entries
        refs = ("swept", "rerun")
        # Each command gives up after ACR_INGEST_PRODUCER_PUBLISH_WAIT (5 s), not the worker's 51 s of publish
        # retries: the bound below is loose (a loaded machine), but it fails if the command took the worker's.
        started = time.monotonic()
        with ThreadPoolExecutor(len(refs)) as pool:
            failed = dict(zip(refs, pool.map(lambda ref: _upload(env, bucket, ref), refs), strict=True))
        assert time.monotonic() - started < 40
        for ref, done in failed.items():
            assert done.returncode == 1, done
            assert "could not enqueue" in done.stderr and "is kept" in done.stderr, done.stderr
            row = file_row(bucket, ref)
            assert row is not None and row.status == FileStatus.QUEUED  # the job is kept, not failed
            (entry,) = _entries(bucket, ref)
            assert entry.sent_at is None and entry.attempts == 1 and entry.last_error

        own_redis.start()
        again = _upload(env, bucket, "rerun")  # the same command again: its unsent message goes now
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["plan"] == "resent"
        assert _entries(bucket, "rerun")[0].sent_at is not None

    with beat_process(env):  # the poll's sweeper publishes the one nobody re-ran
        wait_for(
            lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * 2,
            timeout=90,
            what=lambda: f"both ready ({[(r.ref, r.status) for r in files_in(bucket)]})",
        )
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == ["rerun", "swept"]  # none lost or doubled
    for ref in ("swept", "rerun"):
        (entry,) = _entries(bucket, ref)  # one message per job, published once
        assert entry.sent_at is not None
        third = _upload(env, bucket, ref)
        assert third.returncode == 0 and json.loads(third.stdout)["plan"] == "noop", third


# A producer process in background mode: ten jobs published and marked (flush), ten more whose messages its
# publisher still holds when the process is killed, right after the last call returned.
KILLED_PRODUCER = """
import os, signal, sys
from ingest.producer import Producer
from ingest.worker.outbox_publisher import BackgroundPublisher

bucket = int(sys.argv[1])
producer = Producer(publish="background")
for i in range(20):
    if i == 10:
        producer.flush()
        producer._background = BackgroundPublisher(producer.app, linger=3600)  # holds what it is handed
    producer.upload_url(f"https://cdn.example.com/k{i}.mp3", title=f"k{i}", bucket_id=bucket, ref=f"k{i}")
print("returned", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_background_producer_killed_after_its_calls_returned_loses_no_job_and_runs_none_twice(
    own_redis: RedisServer, spawn_worker, fault_env, emulator, bucket
) -> None:
    env = {**fault_env, "ACR_INGEST_BROKER_URL": own_redis.url(), "ACR_INGEST_OUTBOX_GRACE": "1"}
    spawn_worker("outbox-killed", env=env).wait_ready()
    done = subprocess.run(
        [sys.executable, "-c", KILLED_PRODUCER, str(bucket)], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == -9 and "returned" in done.stdout, done.stderr
    refs = [f"k{i}" for i in range(20)]
    assert sorted(r.ref for r in files_in(bucket)) == sorted(refs)  # every job durable when its call returned
    sent = {ref: _entries(bucket, ref)[0].sent_at is not None for ref in refs}
    assert sent == {ref: i < 10 for i, ref in enumerate(refs)}, sent

    with beat_process(env):  # the sweeper sends the ten the dead process held, after their grace
        wait_for(
            lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * 20,
            timeout=120,
            what=lambda: f"all ready ({[(r.ref, r.status) for r in files_in(bucket)]})",
        )
        assert sorted(f["audio_id"] for f in emulator.files(bucket)) == sorted(refs)  # none lost or doubled
        assert all(_entries(bucket, ref)[0].sent_at is not None for ref in refs)

        # A process dead between the publish and the mark leaves its entry like this: sent again by the sweeper.
        (entry,) = _entries(bucket, "k3")
        with session_scope() as s:
            again = s.get(OutboxEntry, entry.id)
            assert again is not None
            again.sent_at, again.due_at = None, again.created_at
            s.add(again)
        wait_for(lambda: _entries(bucket, "k3")[0].sent_at is not None, timeout=60, what="k3 sent again")
        broker = redis.Redis.from_url(own_redis.url())
        wait_for(
            lambda: broker.llen("ingest") == 0 and held_in_progress(own_redis.url()) == 0,
            timeout=60,
            what="the second copy consumed",
        )
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == sorted(refs)  # the task id ran once
    with session_scope() as s:
        ops = s.exec(select(Operation).where(Operation.bucket_id == bucket, col(Operation.file_id).is_not(None))).all()
    assert len(ops) == 20 and {op.status for op in ops} == {"succeeded"}, [(op.args["ref"], op.status) for op in ops]
