"""Redis over TLS (``rediss://``) gets the same reliable fetch as ``redis://``: a worker SIGKILLed while it
runs a job from our producer and one sent by name by a plain Celery client loses neither; another worker
finishes both within 30 s, with the default hour of visibility timeout, and each ends as exactly one file.
kombu's own TLS transport, used before, lost a message taken in the instant of the kill and gave back the
rest only after the visibility timeout. A certificate that will never verify is refused at start-up in one line
(Celery would retry it for ever, as it rightly does a broker that is down)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from ingest.devtools.processes import RedisServer
from ingest.store.models import FileStatus
from tests.conftest import WORKDIR
from tests.helpers import file_row, held_in_progress, wait_for

pytestmark = pytest.mark.faults

ENV = {"ACR_INGEST_VISIBILITY_TIMEOUT": "3600", "ACR_INGEST_RATE_LIMIT_MODE": "off"}


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    server = RedisServer(WORKDIR / f"redis-tls-{time.monotonic_ns()}", tls=True).start()
    yield server
    server.stop()


@pytest.fixture
def fault_broker(tls_redis: RedisServer) -> str:
    """This module's broker (overrides tests/faults/conftest's): the TLS Redis, trusted by its own certificate."""
    url = tls_redis.url(0)
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.mark.usefixtures("fault_beat")
def test_tls_redis_broker_a_killed_workers_jobs_come_back_by_liveness(
    fault_broker: str, spawn_worker, fault_producer, emulator, bucket
) -> None:
    assert fault_broker.startswith("rediss://")
    first = spawn_worker("tls", concurrency=2, env=ENV).wait_ready()
    # Both POSTs in the API's hands at the kill, however slowly a loaded machine gets there; answered (8 s)
    # before the liveness timeout (10 s) gives the messages back, so the retries adopt the files, not post again.
    emulator.faults.upload_delay = 8.0
    delayed = emulator.stats()["faults"].get("upload_delay", 0)
    fault_producer.upload_url("https://cdn.example.com/ours.mp3", title="ours", bucket_id=bucket, ref="ours")
    client = Celery("plain-client", broker=fault_broker)  # an outside producer: kombu's own TLS client
    kwargs = {"url": "https://cdn.example.com/named.mp3", "title": "named", "bucket_id": bucket, "ref": "named"}
    client.send_task("ingest.upload_url", kwargs=kwargs, queue="ingest")
    wait_for(lambda: emulator.stats()["faults"].get("upload_delay", 0) >= delayed + 2, what="both POSTs arrived")
    assert held_in_progress(fault_broker, "ingest") == 2  # ours: each message in the consumer's in-progress list
    first.kill(signal.SIGKILL)
    first.proc.wait(timeout=10)
    emulator.faults.upload_delay = 0
    spawn_worker("tls", concurrency=2, env=ENV)

    def both_ready() -> bool:
        rows = [file_row(bucket, ref) for ref in ("ours", "named")]
        return all(r is not None and r.status == FileStatus.READY for r in rows)

    wait_for(both_ready, timeout=30, interval=0.2, what="both uploads of the killed worker ready")
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == ["named", "ours"]  # one file each
    assert held_in_progress(fault_broker, "ingest") == 0


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_an_untrusted_tls_broker_certificate_is_refused_in_one_line(
    process: str, tls_redis: RedisServer, tmp_path: Path
) -> None:
    untrusted = tls_redis.url(0).split("?", 1)[0]  # no ssl_ca_certs: a self-signed certificate never verifies
    args = ["--pool=solo"] if process == "worker" else [f"--schedule={tmp_path / 'schedule'}"]
    run = subprocess.run(
        [str(Path(sys.executable).with_name("acr-ingest")), process, *args],
        env={**os.environ, "ACR_INGEST_BROKER_URL": untrusted},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert "acr-ingest: not starting: the TLS broker of ACR_INGEST_BROKER_URL" in last, run.stderr[-3000:]
    assert "self-signed certificate" in last and "add ?ssl_ca_certs=" in last
