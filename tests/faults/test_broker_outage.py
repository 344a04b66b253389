"""The broker goes away and comes back: producers' sends are retried, workers reconnect, every job ends."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ingest.models import FileStatus
from tests.conftest import WORKDIR
from tests.faults.conftest import beat_process, producer_for
from tests.helpers import files_in, wait_for

pytestmark = pytest.mark.faults


class OwnRedis:
    """A redis-server of the test's own, with an append-only file so a restart keeps the queue (as a
    production broker with persistence does)."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "yes",
                        "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
                        "--save", "", "--maxmemory-policy", "noeviction",
                        "--logfile", str(self.folder / "redis.log")], check=True)
        wait_for(self._ping, what="redis up")

    def stop(self) -> None:
        with contextlib.suppress(redis.ConnectionError):  # shutdown closes the connection as it exits
            redis.Redis(port=self.port).shutdown(nosave=False)
        wait_for(lambda: not self._ping(), what="redis down")


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis(WORKDIR / f"redis-{id(object())}")
    server.start()
    yield server
    if server._ping():
        server.stop()


@pytest.mark.skipif(subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0,
                    reason="needs redis-server to run a broker of the test's own")
def test_broker_restart_loses_no_job(own_redis: OwnRedis, spawn_worker, fault_env, emulator, bucket) -> None:
    env = {"ACR_INGEST_BROKER_URL": own_redis.url}
    spawn_worker("outage", env=env, concurrency=2).wait_ready()
    with beat_process({**fault_env, **env}):
        _restart_while_sending(own_redis, emulator, bucket)


def _restart_while_sending(own_redis: OwnRedis, emulator, bucket: int) -> None:
    producer = producer_for(own_redis.url)
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

    wait_for(lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * 20, timeout=90,
             what=lambda: f"all 20 jobs ready ({Counter(r.status for r in files_in(bucket))})")
    refs = sorted(f["audio_id"] for f in emulator.files(bucket))
    assert refs == sorted(first + later)  # none lost, none duplicated
