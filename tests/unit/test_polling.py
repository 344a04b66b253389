"""poll_states called directly: one GET per chunk of ids, states written back, late twins removed."""

from __future__ import annotations

from datetime import timedelta

from ingest.devtools.emulator.app import GET_IDS
from ingest.jobs.polling import VANISHED, _vanished, poll_states
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, TrackFile, utcnow
from tests.helpers import file_row, files_in, wait_for
from tests.unit.support import poll, record, run, url_args


def _gets(emulator) -> int:
    return emulator.stats()["by_route"].get(GET_IDS, 0)


def test_the_poll_costs_one_get_per_chunk_and_writes_the_states(make_ctx, emulator, bucket) -> None:
    ctx = make_ctx(ids_chunk_size=2)
    for ref in ("p0", "p1", "p2", "broken-p3"):  # "broken" in a URL: the emulator ends it in state -1
        run("upload_url", url_args(bucket, ref), make_ctx())
    old_delay = emulator.processing_delay
    emulator.processing_delay = 60.0  # one file that is still processing while the test runs
    try:
        run("upload_url", url_args(bucket, "slow"), make_ctx())
    finally:
        emulator.processing_delay = old_delay
    assert {r.status for r in files_in(bucket)} == {FileStatus.PROCESSING}
    wait_for(lambda: sorted(f["state"] for f in emulator.files(bucket)) == [-1, 0, 1, 1, 1], what="processing")

    gets = _gets(emulator)
    counts = poll(ctx, bucket)
    assert (counts["calls"], counts["checked"], counts["ready"], counts["error"]) == (3, 5, 3, 1)  # ceil(5/2)
    assert _gets(emulator) - gets == 3
    status = {r.ref: r.status for r in files_in(bucket)}
    assert status == {
        "p0": FileStatus.READY,
        "p1": FileStatus.READY,
        "p2": FileStatus.READY,
        "broken-p3": FileStatus.ERROR,
        "slow": FileStatus.PROCESSING,
    }
    assert "state -1" in file_row(bucket, "broken-p3").reason

    again = poll(ctx, bucket)  # only the processing file is asked about
    assert (again["calls"], again["checked"], again["ready"]) == (1, 1, 0)
    assert _gets(emulator) - gets == 4


def test_a_second_poll_while_one_runs_is_skipped(ctx, emulator, bucket) -> None:
    run("upload_url", url_args(bucket, "s"), ctx)
    gets = _gets(emulator)
    # The conftest holds the poll lease, as a poll running elsewhere would.
    assert poll_states(ctx, bucket_id=bucket) == {"skipped": "another poll is running"}
    assert _gets(emulator) == gets


def test_a_file_gone_from_the_bucket_is_an_error_only_once_late_requests_are_over(make_ctx, bucket) -> None:
    ctx = make_ctx(connect_timeout=0.1, read_timeout=0.2)  # a late request lands within 0.5 s
    run("upload_url", url_args(bucket, "v"), ctx)
    row = file_row(bucket, "v")
    ctx.client.delete_files(bucket, [row.remote_id])  # deleted outside acr-ingest

    first = poll(ctx, bucket)
    row = file_row(bucket, "v")
    assert first["vanished"] == 0 and row.status == FileStatus.PROCESSING and row.missing_since is not None
    wait_for(lambda: poll(ctx, bucket)["vanished"] == 1, timeout=5, interval=0.1, what="the file to be vanished")
    row = file_row(bucket, "v")
    assert (row.status, row.reason) == (FileStatus.ERROR, VANISHED)


def test_a_late_twin_of_an_upload_is_removed_by_the_poll(ctx, emulator, bucket) -> None:
    run("upload_url", url_args(bucket, "t", "Twin"), ctx)
    row = file_row(bucket, "t")
    # A POST we gave up on that landed after all: a second file carrying the same ref.
    twin = ctx.client.upload_url(bucket, "https://cdn.example.com/t.mp3", title="Twin", audio_id="t")
    with session_scope() as s:
        r = s.get(TrackFile, row.id)
        r.verify_after = utcnow() - timedelta(seconds=1)  # the check is due
        s.add(r)

    counts = poll(ctx, bucket)
    assert (counts["verified"], counts["duplicates_removed"]) == (1, 1)
    assert twin.id != row.remote_id and [f["id"] for f in emulator.files(bucket)] == [row.remote_id]
    assert file_row(bucket, "t").verify_after is None


def test_a_file_our_unfinished_move_took_is_not_vanished_and_the_move_ends_it(make_ctx, emulator, bucket) -> None:
    """A move that timed out after the API moved the file (its retry not landed yet) left the file missing
    from the source for longer than the grace time: a full storm run marked such a moved file vanished."""
    ctx = make_ctx(connect_timeout=0.1, read_timeout=0.2)  # late requests are over within 0.5 s
    target = bucket + 500_000
    emulator.processing_delay, old_delay = 60.0, emulator.processing_delay  # stays processing meanwhile
    try:
        run("upload_url", url_args(bucket, "mv"), ctx)
        run("upload_url", url_args(bucket, "gone"), make_ctx())
    finally:
        emulator.processing_delay = old_delay
    mv, gone = file_row(bucket, "mv"), file_row(bucket, "gone")
    move = make_ctx()
    args = {"bucket_id": bucket, "target_bucket_id": target, "refs": ["mv"]}
    record("move_batch", args, move)  # the move's operation, unfinished (its first try timed out)
    ctx.client.move_files(target, [mv.remote_id])  # ... after the API had moved the file
    ctx.client.delete_files(bucket, [gone.remote_id])  # and another file deleted outside acr-ingest

    poll(ctx, bucket)  # both missing: the grace time starts
    wait_for(lambda: _vanished(file_row(bucket, "mv").missing_since, ctx.settings), what="the grace time to end")
    counts = poll(ctx, bucket)
    assert (counts["vanished"], counts.get("moving")) == (1, 1)
    assert file_row(bucket, "gone").reason == VANISHED  # the move names only "mv"
    assert file_row(bucket, "mv").status == FileStatus.PROCESSING

    out = run("move_batch", args, move)  # the retry finds the file in the target: the move is done
    assert out["result"]["outcomes"]["ref:mv"] in ("moved", "already_moved")
    assert (file_row(target, "mv").id, file_row(target, "mv").status) == (mv.id, FileStatus.PROCESSING)
    assert poll(ctx, target)["checked"] == 1  # found in its new bucket: no longer missing
    row = file_row(target, "mv")
    assert (row.status, row.missing_since) == (FileStatus.PROCESSING, None)
