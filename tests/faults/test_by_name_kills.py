"""Jobs sent by name from a plain Celery client (no Producer, so no row exists before a worker takes the job)
all along while workers are SIGKILLed again and again at random moments. On RabbitMQ a killed worker's
unacknowledged deliveries go back to the queue when its connection closes: none lost, none duplicated.

(On Redis the same run can lose a job: kombu pops a message before it records it as unacknowledged, and a
kill in between loses it; a job sent by name has no row our poll could resend. README, "Choosing a broker".)
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest
from celery import Celery
from sqlmodel import select

from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation
from tests.faults.conftest import WorkerProcess
from tests.helpers import files_in, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat")]

JOBS = 60
KILLS = 12


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _owners_uploading(bucket: int) -> set[int]:
    """The pids (worker processes) holding an upload of this bucket right now."""
    return {
        int(r.lease_owner.split(":")[1]) for r in files_in(bucket) if r.status == FileStatus.UPLOADING and r.lease_owner
    }


@pytest.mark.parametrize("fault_broker", ["rabbitmq"], indirect=True)
def test_jobs_sent_by_name_survive_repeated_sigkills_on_rabbitmq(
    fault_broker: str, spawn_worker, emulator, bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    emulator.faults.upload_delay = 0.4  # each POST is in flight long enough for kills to land in it
    created_before = emulator.stats()["uploads_created"]
    # An outside producer: Celery's defaults (JSON, protocol 2), nothing of ours.
    client = Celery("plain-client", broker=fault_broker)

    names = iter(range(10_000))
    workers: list[WorkerProcess] = [
        spawn_worker(f"byname{next(names)}", pool=pool, concurrency=2) for pool in ("prefork", "threads")
    ]
    refs = [f"bn{i}" for i in range(JOBS)]
    task_ids: list[str] = []
    sending = threading.Event()
    sending.set()
    errors: list[BaseException] = []

    def send_throughout() -> None:
        try:
            for i, ref in enumerate(refs):
                kwargs = {
                    "url": f"https://cdn.example.com/{ref}.mp3",
                    "title": f"BN{i}",
                    "bucket_id": bucket,
                    "ref": ref,
                }
                task_ids.append(client.send_task("ingest.upload_url", kwargs=kwargs, queue="ingest").id)
                time.sleep(rng.uniform(0.05, 0.5))  # pacing: the jobs arrive all along the kills
        except BaseException as exc:
            errors.append(exc)
        finally:
            sending.clear()

    sender = threading.Thread(target=send_throughout)
    sender.start()
    kills = in_flight_kills = 0
    try:
        while kills < KILLS or sending.is_set():
            time.sleep(rng.uniform(0.3, 2.0))  # a random moment: what the worker is doing then is up to chance
            ready = [w for w in workers if w.alive() and " ready." in w.text()]
            if not ready:
                continue
            victim = rng.choice(ready)
            holders = _owners_uploading(bucket)
            victim.kill()
            victim.proc.wait(timeout=10)
            kills += 1
            # An upload held by a process that died with the victim was in flight at the kill.
            in_flight_kills += any(not _pid_alive(pid) for pid in holders)
            workers.append(spawn_worker(f"byname{next(names)}", pool=rng.choice(["prefork", "threads"]), concurrency=2))
    finally:
        sender.join(timeout=120)
    assert not errors and len(task_ids) == JOBS

    def settled() -> bool:
        rows = files_in(bucket)
        return len(rows) == JOBS and all(r.status == FileStatus.READY for r in rows)

    wait_for(
        settled,
        timeout=240,
        interval=0.5,
        what=lambda: (
            f"every by-name job ready ({Counter(r.status for r in files_in(bucket))}, {len(files_in(bucket))} rows)"
        ),
    )
    per_ref = Counter(f["audio_id"] for f in emulator.files(bucket))
    lost = sorted(ref for ref in refs if per_ref[ref] == 0)
    duplicated = sum(n - 1 for n in per_ref.values() if n > 1)
    with capsys.disabled():
        print(
            f"\nby-name kills (seed {seed}): jobs={JOBS} kills={kills} with_upload_in_flight={in_flight_kills} "
            f"lost={len(lost)} duplicated={duplicated} "
            f"posts_created={emulator.stats()['uploads_created'] - created_before}"
        )
    assert (lost, duplicated) == ([], 0)
    assert kills >= KILLS and in_flight_kills >= 1, "no kill landed while an upload ran: the test proved nothing"

    # Each ref's row says what the bucket holds, and each task id ended as one succeeded operation.
    remote = {f["audio_id"]: f for f in emulator.files(bucket)}
    for row in files_in(bucket):
        f = remote[row.ref]
        assert (row.remote_id, row.acr_id, row.title) == (f["id"], f["acr_id"], f["title"]), row.ref
        assert f["title"] == f"BN{refs.index(row.ref)}"
    with session_scope() as s:
        ops = s.exec(select(Operation).where(Operation.task_id.in_(task_ids))).all()  # type: ignore[union-attr]
    assert sorted(op.task_id for op in ops) == sorted(task_ids)
    assert {op.status for op in ops} == {"succeeded"}
