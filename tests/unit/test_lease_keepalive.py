"""The lease keep-alive: one thread per process renews every lease held under ``kept_alive``.

A job used to start and join a thread of its own for its lease (issue 9: visible in profiles at ~100
uploads/s). Now entering ``kept_alive`` only registers the lease; the process's one keep-alive thread
renews what is registered every (shortest lease)/3 and nothing after the body has left.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from ingest.store import leases
from ingest.store.db import session_scope
from ingest.store.leases import KEEPER, claim_file, kept_alive
from ingest.store.models import TrackFile
from tests.helpers import wait_for

TERM = 0.6  # seconds: a round every 0.2 s while such a lease is held
ROUND_WAIT = 10.0  # deadline for the keep-alive rounds waited on below (a loaded machine is slow)


def _file(bucket: int, ref: str) -> int:
    with session_scope() as s:
        row = TrackFile(ref=ref, bucket_id=bucket, data_type="audio_url", title="t", source=f"https://h/{ref}")
        s.add(row)
        s.commit()
        assert row.id is not None
        return row.id


def _claimed(bucket: int, ref: str, owner: str, term: float = TERM) -> int:
    file_id = _file(bucket, ref)
    with session_scope() as s:
        assert claim_file(s, file_id, owner, term)[0]
    return file_id


def _until(file_id: int) -> datetime:
    with session_scope() as s:
        row = s.get(TrackFile, file_id)
        assert row is not None and row.lease_until is not None
        return row.lease_until


def _rounds(count: int) -> None:
    assert KEEPER.wait_rounds(count, ROUND_WAIT), f"the keep-alive thread ran fewer than {count} rounds"


def _keepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lease-keepalive"]


def test_a_lease_shorter_than_the_body_is_renewed_while_held_and_not_after(bucket: int) -> None:
    held = _claimed(bucket, "held", "here:1:a")
    other = _claimed(bucket, "other", "here:1:b")
    with kept_alive(other, "here:1:b", TERM):  # keeps the rounds coming after the first body has left
        with kept_alive(held, "here:1:a", TERM):
            claimed_until = _until(held)
            for _ in range(8):  # 8 rounds of 0.2 s: well past the term of 0.6 s
                _rounds(1)
                with session_scope() as s:
                    taken, remaining = claim_file(s, held, "elsewhere:2:x", TERM)
                assert not taken and remaining > 0, "the lease ran out while its body was still running"
            assert _until(held) > claimed_until
        _rounds(1)  # a round in flight when the body left may still land
        left_at = _until(held)
        other_before = _until(other)
        _rounds(3)
        assert _until(other) > other_before, "the rounds went on (the other lease was renewed)"
        assert _until(held) == left_at, "a lease was renewed after its body had left"
    with session_scope() as s:
        wait_for(lambda: claim_file(s, held, "elsewhere:2:x", TERM)[0], timeout=10, what="the left lease to expire")


def test_a_lease_taken_while_the_thread_idles_is_renewed(bucket: int) -> None:
    with kept_alive(_claimed(bucket, "before", "here:1:i"), "here:1:i", TERM):  # the thread runs
        pass
    wait_for(lambda: KEEPER.idle, timeout=ROUND_WAIT, what="the keep-alive thread to go idle")
    held = _claimed(bucket, "after-idle", "here:1:j")
    with kept_alive(held, "here:1:j", TERM):
        claimed_until = _until(held)
        wait_for(lambda: _until(held) > claimed_until, timeout=ROUND_WAIT, what="a renewal after the idle time")
    assert len(_keepers()) == 1


def test_many_concurrent_holders_share_one_thread(bucket: int) -> None:
    holders = 20
    files = [_claimed(bucket, f"many-{i}", f"here:1:t{i}") for i in range(holders)]
    entered = threading.Semaphore(0)
    leave = threading.Event()

    def hold(i: int) -> None:
        with kept_alive(files[i], f"here:1:t{i}", TERM):
            entered.release()
            leave.wait(60)

    threads = [threading.Thread(target=hold, args=(i,), name=f"holder-{i}") for i in range(holders)]
    try:
        threads[0].start()
        assert entered.acquire(timeout=ROUND_WAIT)
        with_one = len(threading.enumerate()) - 1  # not counting the holder threads
        for t in threads[1:]:
            t.start()
        for _ in threads[1:]:
            assert entered.acquire(timeout=ROUND_WAIT)
        assert len(threading.enumerate()) - holders == with_one, "threads grew with the holders"
        assert len(_keepers()) == 1
        before = {f: _until(f) for f in files}
        _rounds(2)
        assert [f for f in files if _until(f) <= before[f]] == [], "not every held lease was renewed"
        assert len(_keepers()) == 1
    finally:
        leave.set()
        for t in threads:
            t.join(ROUND_WAIT)


@contextmanager
def _database_away(times: int) -> Iterator[list[int]]:
    """The keep-alive's next ``times`` sessions fail as a database that is away does."""
    real = leases.session_scope
    failed: list[int] = []

    def flaky(url: str | None = None) -> AbstractContextManager[Any]:
        if len(failed) < times:
            failed.append(1)
            raise OperationalError("UPDATE track_files ...", {}, ConnectionRefusedError("connection refused"))
        return real(url)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(leases, "session_scope", flaky)
        yield failed


def test_a_renewal_error_does_not_stop_later_renewals(bucket: int, caplog: pytest.LogCaptureFixture) -> None:
    held = _claimed(bucket, "flaky", "here:1:f")
    caplog.set_level(logging.WARNING, logger=leases.__name__)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KEEPER, "ERROR_LOG_EVERY", 3600.0)
        mp.setattr(KEEPER, "_last_error_log", float("-inf"))
        with _database_away(times=3) as failed, kept_alive(held, "here:1:f", TERM):
            claimed_until = _until(held)
            failures = KEEPER.failures
            wait_for(lambda: len(failed) == 3, timeout=ROUND_WAIT, what="three failed rounds")
            wait_for(lambda: _until(held) > claimed_until, timeout=ROUND_WAIT, what="a renewal after the failures")
            assert KEEPER.failures - failures == 3
    warnings = [r for r in caplog.records if r.name == leases.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "could not renew 1 file lease(s) (OperationalError" in warnings[0].getMessage()
    assert len(_keepers()) == 1


def _in_a_forked_child(file_id: int, owner: str, answer: Any) -> None:
    from ingest.store.db import dispose_engines

    dispose_engines()  # as the worker does after fork (worker_process_init)
    try:
        inherited = KEEPER._thread is not None
        with kept_alive(file_id, owner, TERM):
            claimed_until = _until(file_id)
            wait_for(lambda: _until(file_id) > claimed_until, timeout=ROUND_WAIT, what="a renewal in the child")
            answer.send(("renewed", inherited, len(_keepers())))
    except BaseException as exc:
        answer.send(("failed", repr(exc), 0))


def test_a_forked_child_renews_with_a_thread_of_its_own(bucket: int) -> None:
    held = _claimed(bucket, "forked", "here:1:c", term=TERM)
    with kept_alive(_claimed(bucket, "parent", "here:1:p"), "here:1:p", TERM):  # the parent's thread runs
        assert len(_keepers()) == 1
        receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(target=_in_a_forked_child, args=(held, "here:1:c", send))
        child.start()
        try:
            assert receive.poll(ROUND_WAIT * 2), "no answer from the child"
            assert receive.recv() == ("renewed", False, 1)
        finally:
            child.join(ROUND_WAIT)
    assert child.exitcode == 0
