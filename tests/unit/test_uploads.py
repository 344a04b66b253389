"""handle_upload through run_job: one file per (bucket, ref), whatever the API answers on the way."""

from __future__ import annotations

import math

import pytest

from ingest.cli.demo import write_tone
from ingest.devtools.emulator.app import BYTES_PER_SECOND, UPDATE, UPLOAD
from ingest.jobs.errors import RetryLater
from ingest.jobs.identity import REF_KEY
from ingest.store.models import FileStatus, OpStatus
from tests.conftest import MEDIA
from tests.helpers import file_row
from tests.unit.support import op_of, record, run, run_to_end, url_args


def test_upload_url_posts_once_and_records_the_ids(ctx, make_ctx, emulator, bucket) -> None:
    args = url_args(bucket, "cat-1", "Alpha", user_defined={"artist": "A"})
    out = run("upload_url", args, ctx)

    (f,) = emulator.files(bucket)
    row = file_row(bucket, "cat-1")
    assert out["status"] == OpStatus.SUCCEEDED and out["error"] is None
    assert out["result"] == {"file_id": row.id, "id": f["id"], "acr_id": f["acr_id"], "adopted": False}
    assert (row.remote_id, row.acr_id, row.remote_state) == (f["id"], f["acr_id"], 0)
    assert row.status == FileStatus.PROCESSING and row.synced_meta_version == row.meta_version
    assert (f["audio_id"], f["title"], f["user_defined"]) == ("cat-1", "Alpha", {"artist": "A", REF_KEY: "cat-1"})
    assert f"{bucket}:Alpha" not in emulator.stats()["searches"]  # a first attempt posts without looking

    # The same message delivered again (same task id): the recorded outcome, nothing sent.
    posts = emulator.stats()["by_route"][UPLOAD]
    assert run("upload_url", args, ctx) == out
    # The same job sent again (a new message): a no-op on the same row.
    again = run("upload_url", args, make_ctx())
    assert again["status"] == OpStatus.SUCCEEDED
    assert (again["result"]["plan"], again["result"]["file_id"]) == ("noop", row.id)
    assert emulator.stats()["by_route"][UPLOAD] == posts
    assert [g["id"] for g in emulator.files(bucket)] == [f["id"]]
    assert file_row(bucket, "cat-1").remote_id == f["id"]


def test_the_same_upload_sent_again_as_a_new_message_sends_nothing(ctx, make_ctx, emulator, bucket) -> None:
    args = url_args(bucket, "n1", "Same", user_defined={"a": 1})
    run("upload_url", args, ctx)
    puts = emulator.stats()["by_route"].get(UPDATE, 0)
    again = run("upload_url", args, make_ctx())
    assert again["result"]["plan"] == "noop"
    assert emulator.stats()["by_route"].get(UPDATE, 0) == puts and again["result"]["sent"] is False


def test_a_500_after_the_api_created_the_file_is_adopted_not_posted_again(make_ctx, emulator, bucket) -> None:
    # The job-side wait for an earlier POST is connect + read timeout: small here, so the test is quick.
    ctx = make_ctx(connect_timeout=0.1, read_timeout=0.4)
    args = url_args(bucket, "amb", "Ambiguous")
    emulator.faults.created_then_error_rate = 1.0  # the file is stored, the answer is a 500

    with pytest.raises(RetryLater) as first:
        run("upload_url", args, ctx)
    assert first.value.counts and not first.value.held  # a 5xx uses up one attempt
    assert len(emulator.files(bucket)) == 1
    row = file_row(bucket, "amb")
    assert row.remote_id is None and row.post_started_at is not None and row.status == FileStatus.UPLOADING
    assert row.verify_after is not None  # the poll will look for a late twin
    assert op_of(ctx).status == OpStatus.WAITING and op_of(ctx).attempts == 1
    emulator.faults.reset()

    # Retried at once: that POST may still be on its way, so it neither looks nor posts yet.
    with pytest.raises(RetryLater) as early:
        run("upload_url", args, ctx)
    assert "in flight" in early.value.reason and not early.value.counts
    assert 0 < early.value.countdown <= 0.1 + 0.4 + 0.1
    assert f"{bucket}:Ambiguous" not in emulator.stats()["searches"]

    out, _ = run_to_end("upload_url", args, ctx)
    assert out["status"] == OpStatus.SUCCEEDED and out["result"]["adopted"] is True
    files = emulator.files(bucket)
    row = file_row(bucket, "amb")
    assert [f["id"] for f in files] == [row.remote_id] and files[0]["audio_id"] == "amb"
    # Adopted as the bucket shows it now (the list may already say ready).
    assert (row.acr_id, row.remote_state) == (files[0]["acr_id"], files[0]["state"])
    assert row.status == FileStatus.of_remote_state(files[0]["state"])
    assert emulator.stats()["searches"].get(f"{bucket}:Ambiguous", 0) >= 1  # it looked before posting


def test_a_500_before_anything_was_stored_is_posted_again_after_looking(make_ctx, emulator, bucket) -> None:
    ctx = make_ctx(connect_timeout=0.1, read_timeout=0.2)
    args = url_args(bucket, "lost", "Lost")
    emulator.faults.error_rate = 1.0  # a 500 from the load balancer: nothing stored
    with pytest.raises(RetryLater):
        run("upload_url", args, ctx)
    assert emulator.files(bucket) == []
    emulator.faults.reset()

    out, _ = run_to_end("upload_url", args, ctx)
    assert out["result"]["adopted"] is False
    (f,) = emulator.files(bucket)
    assert f["id"] == file_row(bucket, "lost").remote_id
    assert emulator.stats()["searches"].get(f"{bucket}:Lost", 0) >= 1
    assert op_of(ctx).attempts == 2  # the 500 and the run that succeeded counted; the in-flight wait did not


def test_upload_file_streams_the_whole_file_from_the_media_root(ctx, emulator, bucket) -> None:
    name = f"tone-{bucket}.wav"
    write_tone(MEDIA / name, 440.0, seconds=0.5)
    size = (MEDIA / name).stat().st_size
    out = run("upload_file", {"path": name, "bucket_id": bucket, "title": "Tone", "ref": "tone"}, ctx)

    assert out["status"] == OpStatus.SUCCEEDED
    (f,) = emulator.files(bucket)
    row = file_row(bucket, "tone")
    assert (row.data_type, row.source, row.remote_id) == ("audio", name, f["id"])
    assert f["duration"] == math.ceil(size / BYTES_PER_SECOND)  # every byte reached the API
    assert (f["audio_id"], f["title"]) == ("tone", "Tone")


def test_an_upload_cancelled_by_a_delete_before_it_ran_posts_nothing(ctx, make_ctx, emulator, bucket) -> None:
    args = url_args(bucket, "h")
    record("upload_url", args, ctx)  # enqueued, its message not delivered yet
    deleted = run("delete_batch", {"bucket_id": bucket, "refs": ["h"]}, make_ctx())
    assert deleted["result"]["outcomes"] == {"ref:h": "cancelled"}

    out = run("upload_url", args, ctx)  # the message arrives after the delete
    assert out["status"] == OpStatus.SUCCEEDED
    assert out["result"] == {"file_id": file_row(bucket, "h").id, "cancelled": True}
    assert file_row(bucket, "h").status == FileStatus.CANCELLED
    assert emulator.files(bucket) == []
