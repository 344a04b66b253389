"""The broker goes away and comes back: producers' sends are retried, workers reconnect, every job ends."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from ingest.devtools.processes import RedisServer
from ingest.store.models import FileStatus
from tests.conftest import WORKDIR
from tests.faults.conftest import beat_process, producer_for
from tests.helpers import files_in, wait_for

pytestmark = pytest.mark.faults


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(WORKDIR / f"redis-outage-{time.monotonic_ns()}", durable=True).start()
    yield server
    server.stop()


def test_broker_restart_loses_no_job(own_redis: RedisServer, spawn_worker, fault_env, emulator, bucket) -> None:
    env = {"ACR_INGEST_BROKER_URL": own_redis.url()}
    spawn_worker("outage", env=env, concurrency=2).wait_ready()
    with beat_process({**fault_env, **env}):
        _restart_while_sending(own_redis, emulator, bucket)


def _restart_while_sending(own_redis: RedisServer, emulator, bucket: int) -> None:
    producer = producer_for(own_redis.url())
    first = [f"o{i}" for i in range(10)]
    for ref in first:
        producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=ref, bucket_id=bucket, ref=ref)

    own_redis.stop()
    later = [f"o{i}" for i in range(10, 20)]
    errors: list[BaseException] = []

    def send_while_down() -> None:
        try:
            for ref in later:  # each send retries until the broker is back (task_publish_retry)
                producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=ref, bucket_id=bucket, ref=ref)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send_while_down)
    sender.start()
    wait_for(lambda: any(r.ref in later for r in files_in(bucket)), what="a send attempted while down")
    own_redis.start()
    sender.join(timeout=90)
    assert not errors and not sender.is_alive()

    wait_for(
        lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * 20,
        timeout=90,
        what=lambda: f"all 20 jobs ready ({Counter(r.status for r in files_in(bucket))})",
    )
    refs = sorted(f["audio_id"] for f in emulator.files(bucket))
    assert refs == sorted(first + later)  # none lost, none duplicated
