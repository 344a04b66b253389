"""The retry policy through run_job: what each failure leaves in the operation row, and whether the job
is run again (``RetryLater``, with its countdown and whether it used up an attempt) or ends."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy import select as sa_select
from sqlalchemy.orm import Session

from ingest.jobs.errors import RetryLater
from ingest.jobs.runner import run_job
from ingest.store import auth_hold
from ingest.store.db import get_engine, session_scope
from ingest.store.models import FileStatus, Operation, OpStatus, TrackFile
from tests.helpers import file_row
from tests.unit.support import op_of, run, run_to_end, url_args


def test_a_5xx_leaves_the_job_waiting_and_counts_an_attempt_until_they_run_out(make_ctx, emulator, bucket) -> None:
    ctx = make_ctx(max_attempts=3)
    args = {"bucket_id": bucket, "ids": [123456789]}
    emulator.faults.error_rate = 1.0  # every request: 500, 502 or 503

    with pytest.raises(RetryLater) as wait:
        run("delete_batch", args, ctx)
    assert wait.value.counts and not wait.value.held
    assert 0 <= wait.value.countdown <= ctx.settings.backoff_base * 2  # full jitter on attempt 1
    op = op_of(ctx)
    assert (op.status, op.attempts, op.finished_at) == (OpStatus.WAITING, 1, None)
    assert op.error == wait.value.reason and "[50" in op.error  # the API's status, for a human

    out, waits = run_to_end("delete_batch", args, ctx)
    assert len(waits) == 1 and waits[0].counts
    assert out["status"] == OpStatus.FAILED and out["error"].startswith("gave up after 3 attempts: ")
    assert op_of(ctx).attempts == 3 and op_of(ctx).finished_at is not None


def test_an_upload_that_runs_out_of_attempts_leaves_its_row_failed(make_ctx, emulator, bucket) -> None:
    ctx = make_ctx(max_attempts=2, connect_timeout=0.1, read_timeout=0.2)
    emulator.faults.error_rate = 1.0
    out, waits = run_to_end("upload_url", url_args(bucket, "f"), ctx)
    assert out["status"] == OpStatus.FAILED and out["error"].startswith("gave up after 2 attempts")
    assert any("in flight" in w.reason for w in waits)  # it waited out the POST before looking for it
    row = file_row(bucket, "f")
    assert (row.status, row.reason, row.remote_id) == (FileStatus.FAILED, out["error"], None)
    assert emulator.files(bucket) == []


def test_a_failed_upload_and_its_row_fail_in_one_commit(make_ctx, emulator, bucket) -> None:
    """No reader (show, failures, a test) ever sees the job failed while its file still says uploading."""
    ctx = make_ctx(max_attempts=1, connect_timeout=0.1, read_timeout=0.2)
    emulator.faults.error_rate = 1.0
    seen: list[tuple[str | None, str | None]] = []

    def look(_session: Session) -> None:  # after every commit, from a connection of its own
        with get_engine().connect() as conn:
            op = conn.execute(sa_select(Operation.status).where(Operation.task_id == ctx.task_id)).scalar()
            row = conn.execute(
                sa_select(TrackFile.status).where(TrackFile.bucket_id == bucket, TrackFile.ref == "one")
            ).scalar()
        seen.append((op, row))

    event.listen(Session, "after_commit", look)
    try:
        out, _ = run_to_end("upload_url", url_args(bucket, "one"), ctx)
    finally:
        event.remove(Session, "after_commit", look)
    assert out["status"] == OpStatus.FAILED
    assert (OpStatus.FAILED, FileStatus.FAILED) in seen
    assert [pair for pair in seen if pair[0] == OpStatus.FAILED and pair[1] != FileStatus.FAILED] == []


def test_a_429_is_retried_without_using_an_attempt(make_ctx, emulator, bucket) -> None:
    # Every worker holding off is the shared budget's part: the client's observer tells it (test_ratelimit.py).
    ctx = make_ctx(backoff_max=0.1)
    emulator.set_faults(burst_429=1, retry_after=2)
    with pytest.raises(RetryLater) as wait:
        run("upload_url", url_args(bucket, "r429", "Refused"), ctx)
    assert not wait.value.counts and wait.value.countdown <= 0.1
    assert (op_of(ctx).attempts, op_of(ctx).throttled) == (0, 1)

    out, waits = run_to_end("upload_url", url_args(bucket, "r429", "Refused"), ctx)
    assert out["status"] == OpStatus.SUCCEEDED and out["result"]["adopted"] is False and waits == []
    assert (op_of(ctx).attempts, op_of(ctx).throttled) == (1, 1)  # the run that succeeded; the 429 not
    assert f"{bucket}:Refused" not in emulator.stats()["searches"]  # a 429 created nothing to look for
    assert len(emulator.files(bucket)) == 1


def _never_called(job: Any, op_id: int, ctx: Any) -> dict[str, Any]:
    raise AssertionError("the handler ran on input that does not validate")


@pytest.mark.parametrize(
    ("kind", "args", "field"),
    [
        ("upload_url", {"url": "ftp://x/a.mp3", "title": "T"}, "url"),
        ("upload_url", {"url": "https://x/a.mp3", "title": "  "}, "title"),
        ("upload_file", {"path": "../../etc/passwd", "title": "T"}, "path"),
        ("update_meta", {"ref": "r"}, "title"),
        ("update_meta", {"ref": "r", "file_id": 3, "title": "T"}, "ref"),
        ("delete_batch", {"ids": ["x1"]}, "ids[0]"),
        ("delete_batch", {"surprise": 1, "refs": ["a"]}, "surprise"),
        ("move_batch", {"refs": ["a"]}, "target_bucket_id"),
    ],
)
def test_bad_input_fails_at_once_naming_the_field(ctx, bucket, kind: str, args: dict, field: str) -> None:
    out = run_job(kind, {"bucket_id": bucket, **args}, ctx, _never_called)  # no RetryLater: it ends here
    assert out["status"] == OpStatus.FAILED
    assert out["error"].startswith(f"bad input: {field}: ")
    op = op_of(ctx)
    assert (op.attempts, op.error) == (0, out["error"]) and op.finished_at is not None


def test_a_rejected_token_holds_the_job_without_failing_it_until_a_good_one_works(make_ctx, emulator, bucket) -> None:
    held = make_ctx(access_token=SecretStr("a-revoked-token"), auth_hold_recheck=30.0)
    args = url_args(bucket, "tok")
    refused = emulator.stats()["by_status"].get("401", 0)

    with pytest.raises(RetryLater) as wait:
        run("upload_url", args, held)
    assert wait.value.held and not wait.value.counts
    assert wait.value.countdown == held.settings.auth_hold_recheck
    assert (op_of(held).status, op_of(held).attempts) == (OpStatus.HELD, 0)
    with session_scope() as s:
        hold = auth_hold.current(s)
        assert hold is not None and "Unauthenticated" in hold.reason
    assert emulator.stats()["by_status"].get("401", 0) == refused + 1

    # Delivered again before the re-check is due: it waits without calling the API.
    with pytest.raises(RetryLater) as again:
        run("upload_url", args, held)
    assert again.value.held and again.value.reason.startswith("held: the API rejects the access token")
    assert emulator.stats()["by_status"].get("401", 0) == refused + 1
    assert file_row(bucket, "tok").post_started_at is None  # nothing was ever sent for it

    # The same message once a valid token is configured: it runs, and the hold is lifted.
    fixed = dataclasses.replace(make_ctx(), task_id=held.task_id, owner=held.owner)
    out = run("upload_url", args, fixed)
    assert out["status"] == OpStatus.SUCCEEDED and op_of(fixed).attempts == 1  # the held runs did not count
    assert len(emulator.files(bucket)) == 1
    with session_scope() as s:
        assert auth_hold.current(s) is None


def test_an_unexpected_exception_in_validation_ends_the_job_failed_not_running(ctx, bucket, monkeypatch) -> None:
    """A gap in validation (any exception but InputError) must not leave the operation running forever."""
    from ingest.jobs import runner

    def gap(args: dict[str, Any], settings: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setitem(runner.VALIDATORS, "upload_url", gap)
    out = run("upload_url", url_args(bucket, "gap"), ctx)
    op = op_of(ctx)
    assert (out["status"], op.status) == (OpStatus.FAILED, OpStatus.FAILED)
    assert op.error == "RecursionError: maximum recursion depth exceeded" and op.finished_at is not None


def test_an_unexpected_exception_in_a_handler_ends_the_job_failed(ctx, bucket) -> None:
    def broken(job: Any, op_id: int, ctx: Any) -> dict[str, Any]:
        raise KeyError("surprise")

    out = run_job("upload_url", url_args(bucket, "broken"), ctx, broken)
    assert out["status"] == OpStatus.FAILED and out["error"] == "KeyError: 'surprise'"


def test_a_success_after_a_5xx_counts_both_runs(make_ctx, emulator, bucket) -> None:
    ctx = make_ctx(max_attempts=3, backoff_max=0.1)
    args = {"bucket_id": bucket, "ids": [123456789]}
    emulator.faults.error_rate = 1.0
    with pytest.raises(RetryLater):
        run("delete_batch", args, ctx)
    assert op_of(ctx).attempts == 1
    emulator.faults.error_rate = 0.0
    out, _ = run_to_end("delete_batch", args, ctx)
    assert out["status"] == OpStatus.PARTIAL and op_of(ctx).attempts == 2
