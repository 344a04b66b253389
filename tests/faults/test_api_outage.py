"""The API answers 5xx to every call for longer than a job's retries would last, then recovers: the circuit
breaker holds the work (no attempt used), probes, closes by itself, and every job ends done (issue 7, item 9)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from ingest.cli.commands import main
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import OpStatus
from ingest.store.reports import status_report
from tests.helpers import files_in, operation, wait_for

pytestmark = pytest.mark.faults
JOBS = 8


def _api_down() -> dict | None:
    with session_scope() as s:
        return status_report(s)["api_down"]


def test_an_outage_longer_than_the_retries_holds_work_and_every_job_ends_done(
    spawn_worker, fault_producer, emulator, bucket
) -> None:
    env = {"ACR_INGEST_BREAKER_THRESHOLD": "3", "ACR_INGEST_CONNECT_TIMEOUT": "1", "ACR_INGEST_READ_TIMEOUT": "2"}
    s = get_settings()
    # The longest MAX_ATTEMPTS counted tries can take: every backoff at its ceiling, plus one wait for a
    # POST that may still be in flight (connect + read timeout) before an upload looks for its file.
    retries_last = 1 + 2 + sum(min(s.backoff_max, s.backoff_base * 2**a) for a in range(1, s.max_attempts + 1))
    outage = 2 * retries_last
    emulator.faults.error_rate = 1.0  # every call: 500, 502 or 503
    spawn_worker("api-outage", env=env, pool="threads", concurrency=4).wait_ready()

    started = time.monotonic()
    sent = [
        fault_producer.upload_url(
            f"https://cdn.example.com/out{i}.mp3", title=f"Out {i}", bucket_id=bucket, ref=f"out{i}"
        )
        for i in range(JOBS)
    ]
    ids = [e.operation_id for e in sent]
    wait_for(_api_down, timeout=60, what="the circuit breaker to open")
    assert "API DOWN since" in CliRunner().invoke(main, ["status"]).output

    held: list[int] = []

    def outage_over() -> bool:  # the outage lasts; nothing may fail meanwhile
        statuses = [operation(i).status for i in ids]
        assert OpStatus.FAILED not in statuses, [operation(i).error for i in ids]
        held.append(statuses.count(OpStatus.HELD))
        return time.monotonic() - started >= outage

    wait_for(outage_over, timeout=outage + 30, interval=0.2)
    most_held = max(held)
    assert _api_down() is not None and most_held > 0

    emulator.faults.reset()  # the API is back
    recovered = time.monotonic()

    def all_done() -> list | None:
        found = [operation(i) for i in ids]
        return found if all(OpStatus(o.status).is_final for o in found) else None

    ops = wait_for(
        all_done,
        timeout=120,
        what=lambda: f"every job done: {[(operation(i).status, operation(i).error) for i in ids]}",
    )
    resumed_in = time.monotonic() - recovered

    assert [o.status for o in ops] == [OpStatus.SUCCEEDED] * JOBS, [o.error for o in ops]
    assert max(o.attempts for o in ops) < s.max_attempts  # attempts not used up
    assert _api_down() is None  # closed by itself
    remote = emulator.files(bucket)
    assert sorted(f["audio_id"] for f in remote) == sorted(f"out{i}" for i in range(JOBS))  # each once
    assert {r.remote_id for r in files_in(bucket)} == {f["id"] for f in remote}
    print(
        f"outage {outage:.1f}s (retries last at most {retries_last:.1f}s); up to {most_held}/{JOBS} jobs held; "
        f"attempts used {[o.attempts for o in ops]} of {s.max_attempts}; all done {resumed_in:.1f}s after recovery"
    )
