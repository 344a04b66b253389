"""A publish that fails is not a lost job: with the broker down the command exits non-zero but keeps the
job (row and outbox entry in one transaction); once the broker is back the poll's sweeper publishes it,
and running the same command again sends it at once, never twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlmodel import select

from ingest.devtools.processes import RedisServer
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OutboxEntry
from tests.conftest import WORKDIR
from tests.faults.conftest import beat_process
from tests.helpers import file_row, files_in, wait_for

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

    refs = ("swept", "rerun")
    # Each command waits out the publish retries (task_publish_retry_policy, ~50 s) before it gives up: the two
    # side by side, not one after the other.
    with ThreadPoolExecutor(len(refs)) as pool:
        failed = dict(zip(refs, pool.map(lambda ref: _upload(env, bucket, ref), refs), strict=True))
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
