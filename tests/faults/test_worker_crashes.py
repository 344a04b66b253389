"""Workers killed or stopped in the middle of uploads: every job still ends with exactly one file."""

from __future__ import annotations

import os
import signal

import pytest

from ingest.store.models import FileStatus
from tests.faults.conftest import WorkerProcess, on_both_brokers
from tests.helpers import file_row, files_in, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat"), on_both_brokers]


def _one_file_per_ref(emulator, bucket: int) -> dict[str, dict]:
    files = emulator.files(bucket)
    refs = [f["audio_id"] for f in files]
    assert len(refs) == len(set(refs)), f"duplicated files in the bucket: {sorted(refs)}"
    return {f["audio_id"]: f for f in files}


def test_sigkill_mid_upload_is_redelivered_and_adopted_not_posted_twice(
    spawn_worker, fault_producer, emulator, bucket
) -> None:
    emulator.faults.upload_delay = 2.0  # the POST is in flight long enough to kill the worker during it
    created_before = emulator.stats()["uploads_created"]
    delayed_before = emulator.stats()["faults"].get("upload_delay", 0)
    first: WorkerProcess = spawn_worker("first", concurrency=1).wait_ready()
    fault_producer.upload_url("https://cdn.example.com/kill.mp3", title="Killed", bucket_id=bucket, ref="k1")
    # Kill once the POST is in the API's hands (the row says UPLOADING a moment before the request leaves).
    wait_for(lambda: emulator.stats()["faults"].get("upload_delay", 0) > delayed_before, what="the POST arrived")
    first.kill(signal.SIGKILL)
    first.proc.wait(timeout=10)
    # The API finishes the upload its client no longer waits for; then a worker takes the job again.
    wait_for(lambda: emulator.stats()["uploads_created"] > created_before, what="the killed POST created the file")

    second = spawn_worker("second", concurrency=1).wait_ready()
    row = wait_for(
        lambda: (r := file_row(bucket, "k1")) is not None and r.status == FileStatus.READY and r,
        timeout=60,
        what="k1 ready after redelivery",
    )
    files = _one_file_per_ref(emulator, bucket)
    assert list(files) == ["k1"] and files["k1"]["id"] == row.remote_id
    # The killed POST reached the emulator; the redelivered task found it instead of posting again.
    assert emulator.stats()["uploads_created"] - created_before == 1
    assert "adopting file" in second.text()


def test_sigterm_finishes_or_hands_back_its_tasks(spawn_worker, fault_producer, emulator, bucket) -> None:
    emulator.faults.upload_delay = 1.0
    worker = spawn_worker("warm", concurrency=2).wait_ready()
    refs = [f"t{i}" for i in range(8)]
    for ref in refs:
        fault_producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=ref, bucket_id=bucket, ref=ref)
    wait_for(lambda: any(r.status == FileStatus.UPLOADING for r in files_in(bucket)), what="uploads running")
    assert worker.stop(timeout=40) == 0  # warm shutdown: running tasks finish, the rest stay queued

    spawn_worker("after", concurrency=2).wait_ready()
    wait_for(
        lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * len(refs),
        timeout=180,  # a busy machine: the new worker's start and 8 uploads share two cores with others
        what=lambda: f"every upload ready ({[(r.ref, r.status) for r in files_in(bucket)]})",
    )
    assert sorted(_one_file_per_ref(emulator, bucket)) == sorted(refs)


def test_pool_child_killed_mid_upload_is_requeued_by_its_parent(spawn_worker, fault_producer, emulator, bucket) -> None:
    """Only the child process dies (OOM killer, segfault): task_reject_on_worker_lost requeues at once."""
    emulator.faults.upload_delay = 2.0
    worker = spawn_worker("parent", concurrency=1).wait_ready()
    fault_producer.upload_url("https://cdn.example.com/oom.mp3", title="OOM", bucket_id=bucket, ref="oom")
    row = wait_for(
        lambda: (r := file_row(bucket, "oom")) is not None and r.status == FileStatus.UPLOADING and r,
        what="the upload in flight",
    )
    child_pid = int(row.lease_owner.split(":")[1])
    assert child_pid != worker.proc.pid
    os.kill(child_pid, signal.SIGKILL)
    row = wait_for(
        lambda: (r := file_row(bucket, "oom")) is not None and r.status == FileStatus.READY and r,
        timeout=60,
        what="oom ready after the requeue",
    )
    assert list(_one_file_per_ref(emulator, bucket)) == ["oom"]
    assert "WorkerLostError" in worker.text()
    assert worker.proc.poll() is None  # the parent lived on and ran it again
