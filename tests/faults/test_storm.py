"""500 mixed jobs under the emulator's fault knobs end with the bucket equal to the tables.

Faults: 30% of requests answer 5xx, 10% of uploads are created and then answered 500, 5% of requests
are delayed past the read timeout (the request still lands, late), a rate limit of 40 requests/s
(429 with Retry-After beyond it) and a burst of three extra 429s every 5 seconds. The storm lasts
until every job has ended; then the poll settles what landed late. Prints one line: jobs, faults
injected, retries, lost, duplicated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlmodel import select

from ingest.store.db import session_scope
from ingest.store.models import Operation, TrackFile
from tests.conftest import MEDIA
from tests.faults.conftest import producer_for
from tests.helpers import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat")]

UPLOADS, DELETED, MOVED, UPDATED = 300, range(0, 100), range(100, 200), range(200, 250)
STORM_ENV = {
    "ACR_INGEST_READ_TIMEOUT": "1",
    # An upload attempt here is up to two calls (search, POST), each failing ~40% of the time: 40
    # attempts make running out a 1-in-10^6 event per storm rather than a few percent.
    "ACR_INGEST_MAX_ATTEMPTS": "40",
    "ACR_INGEST_BACKOFF_BASE": "0.05",
    "ACR_INGEST_BACKOFF_MAX": "3",
    # Its 429s are injected at random, not caused by our rate: a learning budget would (rightly) slow to a
    # crawl. What the storm tests is loss and duplication; the learned budget has tests of its own.
    "ACR_INGEST_RATE_LIMIT_MODE": "off",
}
FINAL = ("succeeded", "partial", "failed")
# "cancelled": a delete that reached an upload before anything was sent (e.g. its POST got a 429).
SETTLED = ("ready", "deleted", "cancelled", "error", "failed")


def _storm_knobs(emulator, stop: threading.Event) -> None:
    emulator.set_faults(error_rate=0.3, created_then_error_rate=0.1, latency=1.5, latency_rate=0.05, retry_after=1)
    emulator.rate_limit = 40  # the real limiter: 429 + Retry-After beyond 40 requests/s
    while not stop.wait(5.0):
        emulator.faults.burst_429 = 3


def test_storm_of_500_mixed_jobs_loses_and_duplicates_nothing(
    spawn_worker, fault_env, emulator, bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    target = bucket + 700_000
    for _ in range(2):
        spawn_worker(f"storm{_}", env=STORM_ENV, pool="threads", concurrency=8)
    producer = producer_for(fault_env["ACR_INGEST_BROKER_URL"])
    before = emulator.stats()
    stop = threading.Event()
    knobs = threading.Thread(target=_storm_knobs, args=(emulator, stop), daemon=True)
    knobs.start()

    started = time.monotonic()
    ops: list[int] = []
    for i in range(UPLOADS):
        ref, title = f"s{i}", f"S{i}"
        if i % 3 == 2:
            (MEDIA / f"storm-{bucket}-{i}.wav").write_bytes(b"RIFF" + bytes(2000 + i))
            sent = producer.upload_file(f"storm-{bucket}-{i}.wav", title=title, bucket_id=bucket, ref=ref)
        else:
            sent = producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=title, bucket_id=bucket, ref=ref)
        ops.append(sent.operation_id)
    for a, b in zip(DELETED[::2], DELETED[1::2], strict=True):
        ops.append(producer.delete(bucket_id=bucket, refs=[f"s{a}", f"s{b}"]).operation_id)
    for a, b in zip(MOVED[::2], MOVED[1::2], strict=True):
        ops.append(producer.move(bucket_id=bucket, target_bucket_id=target, refs=[f"s{a}", f"s{b}"]).operation_id)
    for i in UPDATED:
        for n in (1, 2):
            ops.append(producer.update_meta(bucket_id=bucket, ref=f"s{i}", title=f"S{i}-u{n}").operation_id)
    assert len(ops) == 500

    last: dict[str, object] = {}

    def snapshot() -> tuple[list[str], list[TrackFile]]:
        with session_scope() as s:
            statuses = s.exec(select(Operation.status).where(Operation.id.in_(ops))).all()  # type: ignore[union-attr]
            rows = s.exec(select(TrackFile).where(TrackFile.bucket_id.in_([bucket, target]))).all()  # type: ignore[attr-defined]
            bad = s.exec(
                select(Operation.kind, Operation.error).where(
                    Operation.id.in_(ops), Operation.status.in_(["failed", "partial"])
                )
            ).all()  # type: ignore[union-attr,attr-defined]
        last.update(
            ops=Counter(statuses),
            files=Counter(r.status for r in rows),
            verifying=sum(r.verify_after is not None for r in rows),
            bad_ops=bad[:6],
            bad_files=[(r.ref, r.status, r.reason) for r in rows if r.status in ("error", "failed")][:6],
        )
        return list(statuses), list(rows)

    def jobs_done() -> bool:
        return all(st in FINAL for st in snapshot()[0])

    def converged() -> bool:
        statuses, rows = snapshot()
        return (
            all(st in FINAL for st in statuses)
            and len(rows) == UPLOADS
            and all(r.status in SETTLED and r.verify_after is None for r in rows)
        )

    try:  # every job ends while the storm goes on...
        wait_for(jobs_done, timeout=240, interval=0.5, what=lambda: f"every storm job ended ({last})")
    finally:
        stop.set()
        knobs.join()
        emulator.faults.reset()
        emulator.rate_limit = None
    storm_seconds = time.monotonic() - started
    # ...then the poll settles what may have landed late (verification of ambiguous requests).
    wait_for(converged, timeout=90, interval=0.5, what=lambda: f"the tables and bucket settled ({last})")

    with session_scope() as s:
        op_rows = s.exec(select(Operation).where(Operation.id.in_(ops))).all()  # type: ignore[union-attr]
        rows = {r.ref: r for r in s.exec(select(TrackFile).where(TrackFile.bucket_id.in_([bucket, target]))).all()}  # type: ignore[attr-defined]
    failed = [
        (op.kind, op.args.get("ref") or op.args.get("refs"), op.error) for op in op_rows if op.status != "succeeded"
    ]
    retries = sum(op.attempts + op.throttled for op in op_rows)

    remote = {b: emulator.files(b) for b in (bucket, target)}
    per_ref = Counter(f["audio_id"] for files in remote.values() for f in files)
    expected_where = {f"s{i}": (None if i in DELETED else target if i in MOVED else bucket) for i in range(UPLOADS)}
    lost = sorted(ref for ref, b in expected_where.items() if b is not None and per_ref[ref] == 0)
    duplicated = sum(n - 1 for n in per_ref.values() if n > 1) + sum(
        per_ref[ref] for ref, b in expected_where.items() if b is None
    )
    stats = emulator.stats()
    faults = {k: v - before["faults"].get(k, 0) for k, v in stats["faults"].items() if v - before["faults"].get(k, 0)}
    with capsys.disabled():  # the one line reaches the CI log even when the test passes
        print(
            f"\nstorm: jobs={len(ops)} faults={faults} retries={retries} lost={len(lost)} duplicated={duplicated} "
            f"(jobs ended in {storm_seconds:.0f}s under the storm)"
        )

    assert not failed, failed[:10]
    assert (lost, duplicated) == ([], 0)
    # The tables say what the bucket holds, file by file.
    by_id = {f["id"]: f for files in remote.values() for f in files}
    for i in range(UPLOADS):
        ref = f"s{i}"
        row = rows[ref]
        if expected_where[ref] is None:
            assert row.status in ("deleted", "cancelled") and row.remote_id not in by_id
            continue
        f = by_id[row.remote_id]
        assert (row.bucket_id, f["bucket_id"], f["audio_id"], row.acr_id) == (expected_where[ref],) * 2 + (
            ref,
            f["acr_id"],
        )
        assert row.status == "ready" and f["state"] == 1
        want = f"S{i}-u2" if i in UPDATED else f"S{i}"
        assert (row.title, f["title"]) == (want, want), ref
    assert sum(faults.values()) > 300  # the storm really stormed
