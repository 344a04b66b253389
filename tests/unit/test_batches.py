"""delete_batch and move_batch through run_job: an outcome per name, progress kept across retries."""

from __future__ import annotations

import pytest

from ingest.devtools.emulator.app import DELETE_IDS, MOVE_IDS
from ingest.jobs.errors import RetryLater
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OpStatus
from tests.helpers import file_row
from tests.unit.support import op_of, record, run, run_to_end, url_args

UNKNOWN_ID = 999_999_999


def _calls(emulator, route: str) -> int:
    return emulator.stats()["by_route"].get(route, 0)


def test_delete_batch_records_an_outcome_per_name(make_ctx, emulator, bucket) -> None:
    for i in range(3):
        run("upload_url", url_args(bucket, f"g{i}"), make_ctx())
    g1, g2 = (file_row(bucket, f"g{i}") for i in (1, 2))
    record("upload_url", url_args(bucket, "h"), make_ctx())  # enqueued, not sent yet
    # "nope" may be an upload still on its way: the job retries DEPENDENCY_WAIT * 6 (0.3 s here), and
    # would then park until the horizon, here the same 0.3 s (parking: test_parked_followups).
    delete = make_ctx(dependency_wait=0.05, ids_chunk_size=2, unknown_ref_horizon=0.3)
    args = {"bucket_id": bucket, "refs": ["g0", "h", "nope"], "ids": [g1.remote_id, UNKNOWN_ID], "acr_ids": [g2.acr_id]}
    deletes = _calls(emulator, DELETE_IDS)

    with pytest.raises(RetryLater) as wait:
        run("delete_batch", args, delete)
    assert wait.value.reason == "waiting for the upload of 1 file(s): ref:nope"
    assert emulator.files(bucket) == []  # everything else is done, and recorded before waiting:
    assert op_of(delete).result["outcomes"]["ref:g0"] == "deleted"
    assert _calls(emulator, DELETE_IDS) - deletes == 2  # four ids sent, two per call

    out, waits = run_to_end("delete_batch", args, delete)
    # Further waits only while its 0.3 s horizon lasts: a loaded machine may reach the next run past it.
    assert all("ref:nope" in w.reason for w in waits)
    assert out["status"] == OpStatus.PARTIAL
    assert out["result"]["outcomes"] == {
        "ref:g0": "deleted",
        "ref:h": "cancelled",
        "ref:nope": "unknown_ref",
        f"id:{g1.remote_id}": "deleted",
        f"id:{UNKNOWN_ID}": "not_found",
        f"acr_id:{g2.acr_id}": "deleted",
    }
    assert out["error"].startswith("2 of 6 not done:")
    assert _calls(emulator, DELETE_IDS) - deletes == 2  # the retries sent nothing again
    assert [file_row(bucket, r).status for r in ("g0", "g1", "g2", "h")] == [FileStatus.DELETED] * 3 + [
        FileStatus.CANCELLED
    ]

    # Deleting again is not an error, and sends nothing.
    again = run("delete_batch", {"bucket_id": bucket, "refs": ["g0"]}, make_ctx())
    assert (again["status"], again["result"]["outcomes"]) == (OpStatus.SUCCEEDED, {"ref:g0": "already_deleted"})
    assert _calls(emulator, DELETE_IDS) - deletes == 2
    # Nor is there anything left to update.
    update = run("update_meta", {"bucket_id": bucket, "ref": "g0", "title": "Z"}, make_ctx())
    assert update["status"] == OpStatus.FAILED and update["error"].startswith("bad input: ref:")


def test_a_file_an_earlier_try_deleted_is_already_deleted_not_missing(ctx, make_ctx, emulator, bucket) -> None:
    run("upload_url", url_args(bucket, "k"), ctx)
    row = file_row(bucket, "k")
    ctx.client.delete_files(bucket, [row.remote_id])  # as if our own timed-out DELETE had landed
    out = run("delete_batch", {"bucket_id": bucket, "refs": ["k"]}, make_ctx())
    assert (out["status"], out["result"]["outcomes"]) == (OpStatus.SUCCEEDED, {"ref:k": "already_deleted"})
    assert file_row(bucket, "k").status == FileStatus.DELETED


def test_a_delete_naming_a_file_of_another_bucket_leaves_that_file_alone(ctx, make_ctx, emulator, bucket) -> None:
    run("upload_url", url_args(bucket, "x"), ctx)
    row = file_row(bucket, "x")
    out = run("delete_batch", {"bucket_id": bucket + 700_000, "ids": [row.remote_id]}, make_ctx())
    assert [f["id"] for f in emulator.files(bucket)] == [row.remote_id]  # the API deleted nothing...
    assert file_row(bucket, "x").status == FileStatus.PROCESSING  # ...so our row must not say deleted
    assert out["result"]["outcomes"] == {f"id:{row.remote_id}": "not_found"}


def test_move_batch_moves_files_and_refuses_a_ref_the_target_has(ctx, make_ctx, emulator, bucket) -> None:
    target = bucket + 500_000
    for ref in ("m0", "m1"):
        run("upload_url", url_args(bucket, ref), make_ctx())
    run("upload_url", url_args(target, "m1", "Other M1"), make_ctx())  # the target has its own m1
    m0, m1 = file_row(bucket, "m0"), file_row(bucket, "m1")
    moves = _calls(emulator, MOVE_IDS)

    out = run("move_batch", {"bucket_id": bucket, "target_bucket_id": target, "refs": ["m0", "m1"]}, ctx)

    assert out["status"] == OpStatus.PARTIAL
    assert out["result"]["outcomes"] == {"ref:m0": "moved", "ref:m1": "conflict"}
    assert file_row(bucket, "m0") is None and file_row(target, "m0").id == m0.id  # the row changed bucket
    assert file_row(target, "m0").remote_id == m0.remote_id
    assert {f["id"] for f in emulator.files(target)} == {m0.remote_id, file_row(target, "m1").remote_id}
    assert [f["id"] for f in emulator.files(bucket)] == [m1.remote_id]  # the conflicting one stayed
    assert _calls(emulator, MOVE_IDS) - moves == 1  # only m0 was sent


def test_a_move_naming_an_upload_not_sent_yet_waits_for_it(make_ctx, emulator, bucket) -> None:
    target = bucket + 500_000
    upload = make_ctx()
    record("upload_url", url_args(bucket, "p"), upload)
    move = make_ctx(dependency_wait=0.05)
    args = {"bucket_id": bucket, "target_bucket_id": target, "refs": ["p"]}
    with pytest.raises(RetryLater) as wait:
        run("move_batch", args, move)
    assert wait.value.countdown == 0.05 and not wait.value.counts
    assert op_of(move).status == OpStatus.WAITING

    run("upload_url", url_args(bucket, "p"), upload)  # its message arrives
    out, _ = run_to_end("move_batch", args, move)
    assert out["result"]["outcomes"] == {"ref:p": "moved"}
    assert [f["audio_id"] for f in emulator.files(target)] == ["p"] and emulator.files(bucket) == []
    assert file_row(target, "p").status == FileStatus.PROCESSING


def test_a_delete_retried_after_its_ref_was_uploaded_again_leaves_the_new_file(make_ctx, emulator, bucket) -> None:
    """A delete that failed while the API was down, re-sent by a human after the ref was deleted and uploaded
    again, must not delete the newer file (it was asked for the old one)."""
    run("upload_url", url_args(bucket, "again", "Old"), make_ctx())
    stale = make_ctx(max_attempts=1)
    emulator.faults.error_rate = 1.0  # the API is down for this delete's only attempt
    out = run("delete_batch", {"bucket_id": bucket, "refs": ["again"]}, stale)
    assert out["status"] == OpStatus.FAILED
    emulator.faults.reset()

    run_to_end("delete_batch", {"bucket_id": bucket, "refs": ["again"]}, make_ctx())  # deleted meanwhile
    run_to_end("upload_url", url_args(bucket, "again", "New"), make_ctx())  # and uploaded again
    new = file_row(bucket, "again")
    assert new is not None and new.status != FileStatus.DELETED and new.generation == 1

    op = op_of(stale)
    with session_scope() as s:  # what retry-failed does to the row before re-sending it
        row = s.get(Operation, op.id)
        assert row is not None
        row.status, row.error, row.attempts = OpStatus.QUEUED, None, 0
        s.add(row)
    out, _ = run_to_end("delete_batch", {"bucket_id": bucket, "refs": ["again"]}, stale)  # the same operation
    assert out["status"] == OpStatus.PARTIAL
    assert op_of(stale).result["outcomes"] == {"ref:again": "reuploaded_since"}
    assert [f["title"] for f in emulator.files(bucket)] == ["New"]


STRICT = pytest.mark.parametrize("profile", ["batch-404-any"], indirect=True)


@STRICT
@pytest.mark.parametrize("kind", ["delete_batch", "move_batch"])
def test_a_batch_of_missing_ids_spends_a_bounded_number_of_calls_per_run(
    kind: str, api, bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids the API does not have, on an API that 404s a list if any id is missing: each was ~2 GETs (a
    10,000-id delete made 19,900 in one task, a move 39,800). A run now stops past CALLS_PER_RUN calls,
    its progress saved, and the next delivery goes on; every id still ends not_found."""
    from ingest.jobs import batches

    monkeypatch.setattr(batches, "CALLS_PER_RUN", 150)
    ids = [UNKNOWN_ID - i for i in range(400)]
    args = {"bucket_id": bucket, "ids": ids, **({"target_bucket_id": bucket + 1} if kind == "move_batch" else {})}
    ctx = api.ctx(ids_chunk_size=50)
    per_chunk = 4 * 50 if kind == "move_batch" else 2 * 50  # the worst one chunk can cost
    runs: list[int] = []
    while True:
        before = api.emu.stats()["requests"]
        try:
            out = run(kind, args, ctx)
        except RetryLater as wait:
            assert wait.countdown == 0 and "name(s) left for the next" in wait.reason
            out = None
        runs.append(api.emu.stats()["requests"] - before)
        if out is not None:
            break
        assert len(runs) < 40
    assert max(runs) <= 150 + per_chunk, runs
    assert len(runs) > 1  # it did go on in later runs
    assert out["status"] == OpStatus.PARTIAL
    assert set(out["result"]["outcomes"].values()) == {"not_found"} and len(out["result"]["outcomes"]) == 400
    # Each id asked about at most twice in all (2n - 1 GETs for n missing ids; a move asks both buckets).
    assert sum(runs) <= (2 if kind == "delete_batch" else 4) * 400


@STRICT
def test_bisection_does_not_ask_for_a_half_it_knows_is_missing_something(api, bucket, make_ctx) -> None:
    from ingest.jobs.presence import files_present

    ctx = api.ctx()
    run("upload_url", url_args(bucket, "p0"), ctx)
    held = file_row(bucket, "p0").remote_id
    before = api.emu.stats()["requests"]
    # [held, missing]: the list 404s, [held] answers, so [missing] is known missing without a GET.
    assert [f.id for f in files_present(ctx.client, bucket, [held, UNKNOWN_ID])] == [held]
    assert api.emu.stats()["requests"] - before == 2
