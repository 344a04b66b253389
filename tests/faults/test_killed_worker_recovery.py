"""A killed worker's work is back within seconds, not after the visibility timeout: the upload it was running
and the retry it was holding for its countdown both end done by another worker within 30 s, with the
default ACR_INGEST_VISIBILITY_TIMEOUT (1 h). A warm shutdown hands back what it holds at once, and a live
worker's held messages are never taken by another worker on the same host."""

from __future__ import annotations

import re
import signal
import time

import pytest
import redis

from ingest.store.models import FileStatus
from ingest.worker.redis_transport import INPROGRESS_PREFIX
from tests.faults.conftest import WorkerProcess, on_both_brokers
from tests.helpers import file_row, held_in_progress, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat")]

# The defaults a deployment has: an hour of visibility timeout; a 429's Retry-After obeyed as the API says.
ENV = {"ACR_INGEST_VISIBILITY_TIMEOUT": "3600", "ACR_INGEST_RATE_LIMIT_MODE": "off", "ACR_INGEST_BACKOFF_MAX": "60"}
RETRY_AFTER = 8  # the held retry's countdown: 8-16 s (Retry-After plus jitter)


def _held_in_redis(broker: str) -> int:
    """Job messages in workers' in-progress lists (of queue ``ingest``: the beat's polls come and go)."""
    return held_in_progress(broker, "ingest")


def _countdown_held(emulator, fault_producer, bucket: int, ref: str) -> None:
    """One upload answered 429 (Retry-After 8 s): its retry waits in the worker that took it."""
    served = emulator.stats()["faults"].get("rate_limited", 0)
    emulator.faults.retry_after = RETRY_AFTER
    emulator.faults.upload_burst_429 = 1  # uploads only: a beat poll must not take it
    fault_producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=ref, bucket_id=bucket, ref=ref)
    wait_for(lambda: emulator.stats()["faults"].get("rate_limited", 0) > served, what="the 429 served")


@on_both_brokers
def test_a_killed_workers_running_upload_and_held_retry_are_done_by_another_within_30s(
    fault_broker: str, spawn_worker, fault_producer, emulator, bucket
) -> None:
    first: WorkerProcess = spawn_worker("recover", concurrency=2, env=ENV).wait_ready()
    _countdown_held(emulator, fault_producer, bucket, "held")
    emulator.faults.upload_delay = 4.0  # the other upload is in the API's hands at the kill
    delayed = emulator.stats()["faults"].get("upload_delay", 0)
    fault_producer.upload_url("https://cdn.example.com/running.mp3", title="running", bucket_id=bucket, ref="running")
    wait_for(lambda: emulator.stats()["faults"].get("upload_delay", 0) > delayed, what="the POST arrived")
    if fault_broker.startswith("redis"):
        assert _held_in_redis(fault_broker) == 2  # the running upload and the retry waiting for its countdown
    first.kill(signal.SIGKILL)
    first.proc.wait(timeout=10)
    killed_at = time.monotonic()
    emulator.faults.upload_delay = 0
    # Restarted under the same node name, as a supervisor restarts it.
    spawn_worker("recover", concurrency=2, env=ENV)

    def both_ready() -> bool:
        rows = [file_row(bucket, ref) for ref in ("held", "running")]
        return all(r is not None and r.status == FileStatus.READY for r in rows)

    wait_for(both_ready, timeout=30, interval=0.2, what="both uploads of the killed worker ready")
    took = time.monotonic() - killed_at
    files = sorted(f["audio_id"] for f in emulator.files(bucket))
    assert files == ["held", "running"], files  # exactly one file each: the killed POST adopted, not repeated
    print(f"\nkilled worker's work done by another in {took:.1f} s ({fault_broker.split(':')[0]})")
    if fault_broker.startswith("redis"):
        assert _held_in_redis(fault_broker) == 0


def test_a_warm_shutdown_hands_back_a_held_retry_at_once_and_a_live_worker_keeps_its_own(
    fault_broker: str, spawn_worker, fault_producer, emulator, bucket
) -> None:
    """Redis: two workers on one host; the one holding a countdown keeps it (its peer beats beside it for more
    than twice the heartbeat timeout), then SIGTERM puts it straight back on the queue for the peer."""
    env = {**ENV, "ACR_INGEST_REDIS_HEARTBEAT_TIMEOUT": "3"}  # short, so that a wrong judgement would show
    # Both beating before the retry is held, so the watch below starts at once and ends inside its countdown
    # (8-16 s) however slowly a loaded machine starts workers; whichever took the message is the holder.
    workers = [spawn_worker(name, concurrency=1, env=env) for name in ("one", "two")]
    for w in workers:
        w.wait_ready()
    _countdown_held(emulator, fault_producer, bucket, "kept")
    # The 429's retry is a new message (with its ETA) that either worker may take: wait until one has.
    received = re.compile(r"Task ingest\.upload_url\[[^\]]+\] received")
    wait_for(lambda: sum(len(received.findall(w.text())) for w in workers) == 2, what="the retry received")
    wait_for(lambda: _held_in_redis(fault_broker) == 1, what="the retry held")
    client = redis.Redis.from_url(fault_broker)
    (key,) = [k.decode() for k in client.scan_iter(f"{INPROGRESS_PREFIX}*:ingest") if client.llen(k)]
    holder, peer = sorted(workers, key=lambda w: f"/{w.pid}/" not in key)
    deadline = time.monotonic() + 7  # more than twice the timeout: nothing moves
    while time.monotonic() < deadline:
        assert (client.llen(key), client.llen("ingest")) == (1, 0), "the live holder's retry was taken"
        time.sleep(0.2)
    assert file_row(bucket, "kept").status != FileStatus.READY  # still held: the watch ended inside the countdown
    before = len(received.findall(peer.text()))  # the peer may have run the first, refused, attempt
    assert holder.stop(timeout=30) == 0  # SIGTERM: a warm shutdown
    # Handed back at close and taken by the peer at once, not after any timeout...
    wait_for(lambda: len(received.findall(peer.text())) > before, timeout=3, interval=0.05, what="the peer received it")
    # ... which it runs when its countdown ends.
    row = wait_for(
        lambda: (r := file_row(bucket, "kept")) is not None and r.status == FileStatus.READY and r,
        timeout=30,
        what="the handed-back retry done by the peer",
    )
    assert row.remote_id and [f["audio_id"] for f in emulator.files(bucket)] == ["kept"]
