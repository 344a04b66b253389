"""The circuit breaker: its state machine on the database, and jobs held through run_job while the API is down
for everyone, with no attempt used, one probe per interval, and closing by itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from ingest.devtools.emulator.app import DELETE_IDS, GET_IDS
from ingest.jobs.errors import RetryLater
from ingest.store import circuit_breaker as breaker
from ingest.store.db import session_scope
from ingest.store.models import CircuitBreaker, OpStatus, utcnow
from ingest.store.reports import status_report
from tests.helpers import wait_for
from tests.unit.support import op_of, run, run_to_end

THRESHOLD = 3


def _fail(op_id: int, window: float = 60.0) -> bool:
    with session_scope() as s:
        return breaker.record_failure(s, op_id, "[503] down", threshold=THRESHOLD, window=window)


def _may_call(interval: float) -> bool:
    with session_scope() as s:
        return breaker.may_call(s, interval)


def _is_open() -> bool:
    with session_scope() as s:
        return breaker.current(s) is not None


def test_it_opens_after_failures_of_different_jobs_probes_once_per_interval_and_closes_on_success() -> None:
    assert [_fail(1), _fail(1), _fail(1)] == [False] * 3  # one job failing alone is not an outage
    assert [_fail(2), _fail(3)] == [False, True]  # three different jobs in a row: open
    assert _fail(4) is True
    with session_scope() as s:
        report = status_report(s)["api_down"]
    assert report is not None and report["reason"] == "[503] down"

    assert _may_call(0.2) is False  # opened just now: the next probe is due in 0.2 s
    wait_for(lambda: _may_call(0.2), timeout=10, what="the probe")
    assert _may_call(0.2) is False  # one probe per interval, whatever the number of workers asking
    with session_scope() as s:
        assert breaker.current(s).held_tasks >= 2

    with session_scope() as s:
        breaker.record_success(s)
    assert not _is_open() and _may_call(0.2) is True
    assert _fail(5) is False  # the count started again


def test_a_success_or_the_end_of_the_window_resets_the_count() -> None:
    _fail(1), _fail(2)
    with session_scope() as s:
        breaker.record_success(s)
    assert _fail(3) is False and not _is_open()  # 1 since the success, not 3

    _fail(4)  # 2 in the window...
    with session_scope() as s:  # ...which started more than a window ago
        s.execute(update(CircuitBreaker).values(window_started=utcnow() - timedelta(seconds=61)))
        s.commit()
    assert _fail(5) is False and not _is_open()  # counted as the first of a new window


def _deletes(emulator) -> int:
    """Calls a delete job makes: the GET that checks which unmanaged ids exist, and the DELETE."""
    by_route = emulator.stats()["by_route"]
    return by_route.get(GET_IDS, 0) + by_route.get(DELETE_IDS, 0)


def _held(ctx, args) -> None:
    with pytest.raises(RetryLater) as wait:
        run("delete_batch", args, ctx)
    assert wait.value.held and not wait.value.counts, wait.value.reason


def test_while_the_api_is_down_jobs_are_held_without_using_attempts_and_resume(make_ctx, emulator, bucket) -> None:
    """Three jobs, 2 attempts each: without the breaker the first would fail on its second try."""
    interval = 1.0
    settings = {"max_attempts": 2, "breaker_threshold": THRESHOLD, "breaker_probe_interval": interval}
    uploader = make_ctx()
    ids = [uploader.client.upload_url(bucket, f"https://cdn.example.com/o{i}.mp3", title=f"O{i}").id for i in range(3)]
    jobs = [(make_ctx(**settings), {"bucket_id": bucket, "ids": [file_id]}) for file_id in ids]
    emulator.faults.error_rate = 1.0  # every request: 500, 502 or 503

    waits = []
    for ctx, args in jobs:
        with pytest.raises(RetryLater) as wait:
            run("delete_batch", args, ctx)
        waits.append(wait.value)
    assert [(w.counts, w.held) for w in waits] == [(True, False), (True, False), (False, True)]
    assert interval <= waits[2].countdown <= 1.5 * interval
    assert waits[2].reason.startswith("held: the API is down for everyone: ") and "[50" in waits[2].reason
    assert [(op_of(c).status, op_of(c).attempts) for c, _ in jobs] == [
        (OpStatus.WAITING, 1),
        (OpStatus.WAITING, 1),
        (OpStatus.HELD, 0),  # the failure that opened it used no attempt
    ]

    # The first job again, at once: held without calling the API (the probe is not due yet).
    calls = _deletes(emulator)
    _held(*jobs[0])
    assert _deletes(emulator) == calls
    assert (op_of(jobs[0][0]).status, op_of(jobs[0][0]).attempts) == (OpStatus.HELD, 1)

    # Still down: one probe per interval goes through and fails; no job fails or spends an attempt for it.
    for _ in range(2):
        before = _deletes(emulator)

        def probed(before: int = before) -> bool:
            for ctx, args in jobs:
                _held(ctx, args)
            return _deletes(emulator) > before

        wait_for(probed, timeout=10, what="a probe")
        assert _deletes(emulator) == before + 1
    assert _is_open() and [op_of(c).attempts for c, _ in jobs] == [1, 1, 0]

    emulator.faults.reset()  # the API is back: the next probe closes the breaker, every job ends done
    for ctx, args in jobs:
        out, _ = run_to_end("delete_batch", args, ctx, timeout=20)
        assert out["status"] == OpStatus.SUCCEEDED
        assert out["result"]["outcomes"] == {f"id:{args['ids'][0]}": "deleted"}
    assert not _is_open() and emulator.files(bucket) == []
    assert [op_of(c).attempts for c, _ in jobs] == [2, 2, 1]  # the failed runs that counted, and the success
