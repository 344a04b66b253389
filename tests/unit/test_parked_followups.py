"""Follow-ups naming a ref no worker has seen yet: retried a short while, then parked (a row, the operation
``waiting``, no message in flight) until the upload lands, when the poll wakes them; reported as
``unknown_ref`` only after the horizon."""

from __future__ import annotations

from sqlmodel import select

from ingest.jobs.identity import visible
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, OpStatus, ParkedFollowup
from ingest.store.reports import status_report
from tests.helpers import file_row, wait_for
from tests.unit.support import op_of, record, run, run_to_end, url_args, wake


def _parked_refs(op_id: int) -> list[str]:
    with session_scope() as s:
        return sorted(p.ref for p in s.exec(select(ParkedFollowup).where(ParkedFollowup.operation_id == op_id)))


def test_an_update_of_a_ref_not_seen_yet_is_parked_and_applied_when_its_upload_lands(
    make_ctx, emulator, bucket
) -> None:
    update = make_ctx(dependency_wait=0.05)  # retried for 6 x 0.05 s; the horizon (20 s here) is far
    args = {"bucket_id": bucket, "ref": "late", "title": "New", "user_defined": {"k": 1}}

    out, waits = run_to_end("update_meta", args, update)

    assert waits and all("not known yet" in w.reason for w in waits)
    assert out["status"] == OpStatus.WAITING  # not failed: parked, and no retry asked for
    assert out["error"].startswith(f"parked: waiting for the upload of ref 'late' in bucket {bucket}")
    op = op_of(update)
    assert op.finished_at is None and _parked_refs(op.id) == ["late"]
    with session_scope() as s:
        assert status_report(s)["waiting_for_uploads"]["refs"] >= 1
    assert update.task_id not in wake(update)  # nothing landed yet: it stays parked
    assert _parked_refs(op.id) == ["late"]

    run("upload_url", url_args(bucket, "late", "Old"), make_ctx())  # the upload comes back, by name
    assert emulator.files(bucket)[0]["title"] == "Old"
    assert update.task_id in wake(update)
    assert _parked_refs(op.id) == []

    out, _ = run_to_end("update_meta", args, update)  # the woken message
    assert out["status"] == OpStatus.SUCCEEDED
    (f,) = emulator.files(bucket)
    assert (f["title"], visible(f["user_defined"])) == ("New", {"k": 1})
    assert file_row(bucket, "late").title == "New"


def test_a_parked_delete_deletes_a_file_that_lands_and_cancels_an_upload_not_sent(make_ctx, emulator, bucket) -> None:
    delete = make_ctx(dependency_wait=0.05)
    args = {"bucket_id": bucket, "refs": ["a", "b"]}
    out, _ = run_to_end("delete_batch", args, delete)
    assert out["status"] == OpStatus.WAITING and _parked_refs(op_of(delete).id) == ["a", "b"]

    run("upload_url", url_args(bucket, "a"), make_ctx())  # "a" lands in the bucket
    assert delete.task_id in wake(delete)
    out, _ = run_to_end("delete_batch", args, delete)
    assert out["status"] == OpStatus.WAITING  # "a" deleted, "b" parked again
    assert out["result"]["outcomes"] == {"ref:a": "deleted"} and _parked_refs(op_of(delete).id) == ["b"]
    assert emulator.files(bucket) == []

    upload_b = make_ctx()
    record("upload_url", url_args(bucket, "b"), upload_b)  # "b"'s row is written, nothing sent yet
    assert delete.task_id in wake(delete)
    out, _ = run_to_end("delete_batch", args, delete)
    assert out["status"] == OpStatus.SUCCEEDED
    assert out["result"]["outcomes"] == {"ref:a": "deleted", "ref:b": "cancelled"}
    assert run("upload_url", url_args(bucket, "b"), upload_b)["result"]["cancelled"] is True
    assert emulator.files(bucket) == []
    assert [file_row(bucket, r).status for r in ("a", "b")] == [FileStatus.DELETED, FileStatus.CANCELLED]


def test_follow_ups_whose_upload_never_lands_are_reported_after_the_horizon(make_ctx, emulator, bucket) -> None:
    update = make_ctx(dependency_wait=0.05, unknown_ref_horizon=1.0)
    delete = make_ctx(dependency_wait=0.05, unknown_ref_horizon=1.0)
    u_args = {"bucket_id": bucket, "ref": "never", "title": "T"}
    d_args = {"bucket_id": bucket, "refs": ["never"]}
    assert run_to_end("update_meta", u_args, update)[0]["status"] == OpStatus.WAITING
    assert run_to_end("delete_batch", d_args, delete)[0]["status"] == OpStatus.WAITING

    woken: set[str] = set()
    wait_for(lambda: woken.update(wake(update)) or {update.task_id, delete.task_id} <= woken, timeout=15)

    out = run("update_meta", u_args, update)
    assert out["status"] == OpStatus.FAILED and out["error"].startswith("bad input: ref: unknown ref 'never'")
    out = run("delete_batch", d_args, delete)
    assert out["status"] == OpStatus.PARTIAL and out["result"]["outcomes"] == {"ref:never": "unknown_ref"}
    assert _parked_refs(op_of(update).id) == _parked_refs(op_of(delete).id) == []
