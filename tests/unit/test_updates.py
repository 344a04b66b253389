"""handle_update through run_job: each field ends with the value of the last-enqueued update, whatever
order the updates run in; an update waits for its upload."""

from __future__ import annotations

import pytest

from ingest.jobs.errors import RetryLater
from ingest.jobs.identity import REF_KEY
from ingest.store.models import OpStatus
from tests.helpers import file_row
from tests.unit.support import op_of, record, run, run_to_end, url_args


def test_two_updates_run_in_reverse_order_end_with_the_later_enqueued_one(make_ctx, emulator, bucket) -> None:
    run("upload_url", url_args(bucket, "r", "v0"), make_ctx())
    earlier, later = make_ctx(), make_ctx()
    first = {"bucket_id": bucket, "ref": "r", "title": "v1", "user_defined": {"k": 1}}
    second = {"bucket_id": bucket, "ref": "r", "title": "v2"}
    a, b = record("update_meta", first, earlier), record("update_meta", second, later)
    assert a.id < b.id  # the operations' ids are the enqueue order

    out_b = run("update_meta", second, later)  # the later one runs first...
    assert out_b["status"] == OpStatus.SUCCEEDED and out_b["result"]["sent"] is True
    assert emulator.files(bucket)[0]["title"] == "v2"
    out_a = run("update_meta", first, earlier)  # ...the earlier one last: its title is older, its
    assert out_a["status"] == OpStatus.SUCCEEDED  # user_defined is the only one there is

    (f,) = emulator.files(bucket)
    row = file_row(bucket, "r")
    assert (f["title"], f["user_defined"]) == ("v2", {"k": 1, REF_KEY: "r"})
    assert (row.title, row.user_defined) == ("v2", {"k": 1})
    assert (row.title_seq, row.user_defined_seq) == (b.id, a.id)
    assert row.synced_meta_version == row.meta_version  # the bucket holds the desired state

    # Either message delivered again changes nothing.
    assert run("update_meta", second, later) == out_b
    assert emulator.files(bucket)[0]["title"] == "v2"


def test_an_update_waits_for_its_upload_and_is_applied_after_it(make_ctx, emulator, bucket) -> None:
    upload = make_ctx()
    record("upload_url", url_args(bucket, "w", "Before"), upload)  # enqueued, not posted yet
    update = make_ctx(dependency_wait=0.05)
    args = {"bucket_id": bucket, "ref": "w", "title": "After"}

    with pytest.raises(RetryLater) as wait:
        run("update_meta", args, update)
    assert wait.value.countdown == 0.05 and "waiting for the upload" in wait.value.reason
    assert op_of(update).status == OpStatus.WAITING and emulator.files(bucket) == []

    run("upload_url", url_args(bucket, "w", "Before"), upload)
    out, _ = run_to_end("update_meta", args, update)
    assert out["status"] == OpStatus.SUCCEEDED
    (f,) = emulator.files(bucket)
    assert f["title"] == "After" and file_row(bucket, "w").title == "After"


def test_an_update_of_a_ref_never_uploaded_fails_after_the_horizon(make_ctx, bucket) -> None:
    # Retried for DEPENDENCY_WAIT * 6 (0.3 s), then it would be parked until the horizon: here the same.
    ctx = make_ctx(dependency_wait=0.05, unknown_ref_horizon=0.3)
    out, waits = run_to_end("update_meta", {"bucket_id": bucket, "ref": "ghost", "title": "T"}, ctx)
    assert waits and all("not known yet" in w.reason for w in waits)
    assert out["status"] == OpStatus.FAILED
    assert out["error"].startswith("bad input: ref: unknown ref 'ghost'")


def test_a_file_not_managed_here_is_updated_by_its_id(ctx, make_ctx, emulator, bucket) -> None:
    remote = ctx.client.upload_url(bucket, "https://cdn.example.com/u.mp3", title="Theirs")
    out = run("update_meta", {"bucket_id": bucket, "file_id": remote.id, "title": "Ours"}, make_ctx())
    assert out["result"] == {"id": remote.id, "acr_id": remote.acr_id, "managed": False}
    assert emulator.files(bucket)[0]["title"] == "Ours"
