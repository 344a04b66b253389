"""The upload / adopt / poll / twin-sweep / batch / update paths under every emulator profile (issue 8):
each profile breaks one guess our client and emulator shared, and the outcome must not change."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest

from ingest.api.errors import UnconfirmedUploadError
from ingest.devtools.emulator.profiles import PROFILES
from ingest.jobs.errors import InputError, RetryLater
from ingest.jobs.identity import REF_KEY, tagged
from ingest.jobs.inputs import VALIDATORS
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, OpStatus, TrackFile, utcnow
from tests.helpers import file_row, files_in, wait_for
from tests.unit.support import poll, run, run_to_end, url_args

ALL = pytest.mark.parametrize("profile", list(PROFILES), indirect=True)
UNKNOWN_ID = 999_999_999


def _final(api) -> tuple[FileStatus, str | None]:
    """(status, part of the reason) a processed, good file ends in under this profile."""
    if PROFILES[api.profile].odd_states:
        return FileStatus.ERROR, "state 2"  # undocumented state: an error a human looks at, never processing
    return FileStatus.READY, None


def _upload(api, bucket: int, ref: str, title: str | None = None) -> None:
    """Upload to the end (an answer without ids makes the job wait for the POST's window, then search)."""
    out, _ = run_to_end("upload_url", url_args(bucket, ref, title), api.ctx(connect_timeout=0.1, read_timeout=0.3))
    assert out["status"] == OpStatus.SUCCEEDED, out


def _processed(api, bucket: int) -> None:
    wait_for(lambda: all(f["state"] != 0 for f in api.emu.files(bucket)), what="processing to end")


@ALL
def test_an_ambiguous_upload_is_adopted_polled_and_its_late_twin_removed(api, bucket) -> None:
    # Short HTTP timeouts: the wait for an earlier POST in flight is connect + read timeout.
    ctx = api.ctx(connect_timeout=0.1, read_timeout=0.3)
    api.emu.faults.created_then_error_rate = 1.0  # stored, then a 500: the ambiguous failure
    args = url_args(bucket, "amb", "Ambiguous", user_defined={"artist": "A"})
    with pytest.raises(RetryLater):
        run("upload_url", args, ctx)
    api.emu.faults.reset()

    out, _ = run_to_end("upload_url", args, ctx)
    (f,) = api.emu.files(bucket)  # adopted: no second POST, whatever the API did with audio_id
    row = file_row(bucket, "amb")
    assert out["status"] == OpStatus.SUCCEEDED and out["result"]["adopted"] is True
    assert (row.remote_id, row.acr_id) == (f["id"], f["acr_id"])
    assert f["user_defined"] == {"artist": "A", REF_KEY: "amb"}
    assert row.user_defined == {"artist": "A"}  # the reserved key is not the user's

    _processed(api, bucket)
    poll(ctx, bucket)
    status, why = _final(api)
    row = file_row(bucket, "amb")
    assert row.status == status and (why is None or why in row.reason)

    # A POST given up on that landed after all: a second file carrying the ref (as our upload sends it).
    with contextlib.suppress(UnconfirmedUploadError):  # this profile's upload answer names no file; stored anyway
        ctx.client.upload_url(
            bucket,
            "https://cdn.example.com/amb.mp3",
            title="Ambiguous",
            user_defined=tagged({"artist": "A"}, "amb"),
            audio_id="amb",
        )
    assert len(api.emu.files(bucket)) == 2
    with session_scope() as s:
        r = s.get(TrackFile, row.id)
        r.verify_after = utcnow() - timedelta(seconds=1)
        s.add(r)
    counts = poll(ctx, bucket)
    assert counts["duplicates_removed"] == 1
    assert [g["id"] for g in api.emu.files(bucket)] == [row.remote_id]


@ALL
def test_an_upload_answer_without_ids_is_found_not_posted_again(api, bucket) -> None:
    ctx = api.ctx(connect_timeout=0.1, read_timeout=0.3)
    out, waits = run_to_end("upload_url", url_args(bucket, "u"), ctx)
    (f,) = api.emu.files(bucket)
    assert out["status"] == OpStatus.SUCCEEDED and file_row(bucket, "u").remote_id == f["id"]
    assert out["result"]["adopted"] is PROFILES[api.profile].upload_without_ids
    assert bool(waits) is PROFILES[api.profile].upload_without_ids  # it waited, then searched


@ALL
def test_delete_and_move_of_mixed_lists_record_what_happened(api, bucket) -> None:
    ctx = api.ctx(ids_chunk_size=10)
    target = bucket + 500_000
    for ref in ("d0", "d1", "d2", "m0"):
        _upload(api, bucket, ref)
    d1, d2 = file_row(bucket, "d1"), file_row(bucket, "d2")
    ctx.client.delete_files(bucket, [d2.remote_id])  # gone outside acr-ingest (or by our own timed-out try)

    out = run("delete_batch", {"bucket_id": bucket, "refs": ["d0", "d2"], "ids": [d1.remote_id, UNKNOWN_ID]}, ctx)
    assert out["result"]["outcomes"] == {
        "ref:d0": "deleted",
        "ref:d2": "already_deleted",
        f"id:{d1.remote_id}": "deleted",
        f"id:{UNKNOWN_ID}": "not_found",
    }
    assert [f["audio_id"] or f["user_defined"][REF_KEY] for f in api.emu.files(bucket)] == ["m0"]
    assert [file_row(bucket, r).status for r in ("d0", "d1", "d2")] == [FileStatus.DELETED] * 3

    moved = run(
        "move_batch",
        {"bucket_id": bucket, "target_bucket_id": target, "refs": ["m0"], "ids": [UNKNOWN_ID]},
        api.ctx(ids_chunk_size=10),
    )
    assert moved["result"]["outcomes"] == {"ref:m0": "moved", f"id:{UNKNOWN_ID}": "not_found"}
    assert api.emu.files(bucket) == [] and len(api.emu.files(target)) == 1
    assert file_row(target, "m0").remote_id == api.emu.files(target)[0]["id"]


@ALL
def test_the_poll_of_a_chunk_with_a_missing_file_does_not_drift_the_others(api, bucket) -> None:
    ctx = api.ctx(ids_chunk_size=10)
    delay = api.emu.processing_delay
    try:  # still processing once uploaded, even after the wait an upload answer without ids costs
        api.emu.processing_delay = 1.0
        for ref in ("p0", "p1", "gone"):
            _upload(api, bucket, ref)
    finally:
        api.emu.processing_delay = delay
    assert {r.status for r in files_in(bucket)} == {FileStatus.PROCESSING}
    ctx.client.delete_files(bucket, [file_row(bucket, "gone").remote_id])
    _processed(api, bucket)
    poll(ctx, bucket)
    status, _ = _final(api)
    assert [file_row(bucket, r).status for r in ("p0", "p1")] == [status, status]
    assert file_row(bucket, "p0").missing_since is None
    gone = file_row(bucket, "gone")
    assert gone.status == FileStatus.PROCESSING and gone.missing_since is not None


@ALL
def test_a_metadata_update_reaches_the_bucket_and_keeps_the_ref(api, bucket) -> None:
    _upload(api, bucket, "r", "Before")
    out = run("update_meta", {"bucket_id": bucket, "ref": "r", "title": "After", "user_defined": {"k": 1}}, api.ctx())
    assert out["status"] == OpStatus.SUCCEEDED, out
    (f,) = api.emu.files(bucket)
    assert (f["title"], f["user_defined"]) == ("After", {"k": 1, REF_KEY: "r"})


def test_the_reserved_key_is_refused_in_job_input(bucket) -> None:
    with pytest.raises(InputError) as bad:
        VALIDATORS["upload_url"](url_args(bucket, "x", user_defined={REF_KEY: "y"}), get_settings())
    assert REF_KEY in str(bad.value) and "user_defined" in str(bad.value)


def test_acrid_adds_a_file_by_an_existing_acr_id(api, bucket) -> None:
    # Runs in whatever profile; the lenient one here (the acrid call's form is the same in all).
    acrid = "0123456789abcdef0123456789abcdef"
    f = api.ctx().client.upload_acrid(bucket, acrid, title="By acrid", user_defined={"k": "v"})
    (stored,) = api.emu.files(bucket)
    assert (f.id, f.acr_id, stored["acr_id"], stored["title"]) == (stored["id"], acrid, acrid, "By acrid")
    with pytest.raises(ValueError):
        api.ctx().client.upload_acrid(bucket, "  ", title="x")
