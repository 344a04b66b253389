"""Every task end to end: producer -> Redis -> a real worker -> the emulator over HTTP -> rows -> poll."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ingest.cli.demo import write_tone
from ingest.jobs.identity import REF_KEY
from ingest.store.models import FileStatus
from tests.helpers import file_row, files_in, idle_producer, op_done, operation, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _ready(bucket: int, ref: str, status: str = "ready", timeout: float = 20.0):
    return wait_for(
        lambda: (r := file_row(bucket, ref)) is not None and r.status == status and r,
        timeout=timeout,
        what=lambda: f"{ref} {status} (row: {file_row(bucket, ref)})",
    )


def remote(emulator, bucket: int) -> list[dict]:
    return emulator.files(bucket)


def test_upload_url_reaches_ready_with_ids(producer, emulator, bucket) -> None:
    sent = producer.upload_url(
        "https://cdn.example.com/a.mp3", title="Alpha", bucket_id=bucket, user_defined={"artist": "A"}, ref="cat-1"
    )
    assert sent.plan == "new"
    row = _ready(bucket, "cat-1")
    files = remote(emulator, bucket)
    assert len(files) == 1
    assert (row.remote_id, row.acr_id, row.remote_state) == (files[0]["id"], files[0]["acr_id"], 1)
    assert files[0]["audio_id"] == "cat-1" and files[0]["title"] == "Alpha"
    assert files[0]["user_defined"] == {"artist": "A", REF_KEY: "cat-1"}  # the ref rides along (identity.py)
    op = wait_for(lambda: op_done(sent.operation_id))
    assert op.status == "succeeded" and op.result["acr_id"] == row.acr_id


def test_upload_file_streams_a_wav_to_ready(producer, emulator, bucket, media: Path) -> None:
    write_tone(media / f"tone-{bucket}.wav", 440.0, seconds=0.5)
    producer.upload_file(f"tone-{bucket}.wav", title="Tone", bucket_id=bucket, ref="tone")
    row = _ready(bucket, "tone")
    assert row.data_type == "audio" and row.source == f"tone-{bucket}.wav"
    assert [f["id"] for f in remote(emulator, bucket)] == [row.remote_id]


def test_bad_audio_ends_in_error_with_reason(producer, bucket) -> None:
    producer.upload_url("https://cdn.example.com/broken-take.mp3", title="Broken", bucket_id=bucket, ref="bad")
    row = _ready(bucket, "bad", status="error")
    assert row.remote_state == -1 and "state -1" in row.reason


def test_update_meta_by_ref_changes_the_bucket(producer, emulator, bucket) -> None:
    producer.upload_url("https://cdn.example.com/b.mp3", title="Before", bucket_id=bucket, ref="r1")
    _ready(bucket, "r1")
    sent = producer.update_meta(bucket_id=bucket, ref="r1", title="After", user_defined={"k": "v"})
    assert wait_for(lambda: op_done(sent.operation_id)).status == "succeeded"
    (f,) = remote(emulator, bucket)
    assert (f["title"], f["user_defined"]) == ("After", {"k": "v", REF_KEY: "r1"})  # an update keeps the ref
    row = file_row(bucket, "r1")
    assert (row.title, row.synced_meta_version) == ("After", row.meta_version)


def test_update_by_acr_id_and_by_file_id(producer, emulator, bucket) -> None:
    producer.upload_url("https://cdn.example.com/c.mp3", title="One", bucket_id=bucket, ref="r2")
    row = _ready(bucket, "r2")
    a = producer.update_meta(bucket_id=bucket, acr_id=row.acr_id, title="Two")
    wait_for(lambda: op_done(a.operation_id))
    b = producer.update_meta(bucket_id=bucket, file_id=row.remote_id, user_defined={"n": 3})
    wait_for(lambda: op_done(b.operation_id))
    (f,) = remote(emulator, bucket)
    assert (f["title"], f["user_defined"]) == ("Two", {"n": 3, REF_KEY: "r2"})


def test_updates_sent_before_the_upload_finishes_wait_and_keep_order(producer, emulator, bucket) -> None:
    emulator.faults.upload_delay = 0.5  # the upload is still in flight when the updates arrive
    producer.upload_url("https://cdn.example.com/d.mp3", title="v0", bucket_id=bucket, ref="r3")
    ops = [producer.update_meta(bucket_id=bucket, ref="r3", title=f"v{i}") for i in range(1, 4)]
    for op in ops:
        assert wait_for(lambda op=op: op_done(op.operation_id), timeout=30).status == "succeeded"
    (f,) = remote(emulator, bucket)
    assert f["title"] == "v3"
    assert file_row(bucket, "r3").title == "v3"


def test_same_ref_twice_is_a_noop_and_changed_metadata_an_update(producer, emulator, bucket) -> None:
    first = producer.upload_url("https://cdn.example.com/e.mp3", title="Same", bucket_id=bucket, ref="r4")
    again = producer.upload_url("https://cdn.example.com/e.mp3", title="Same", bucket_id=bucket, ref="r4")
    assert (first.plan, again.plan, again.task_id) == ("new", "noop", None)
    _ready(bucket, "r4")
    changed = producer.upload_url("https://cdn.example.com/e.mp3", title="Renamed", bucket_id=bucket, ref="r4")
    assert changed.plan == "update"
    wait_for(lambda: op_done(changed.operation_id))
    files = remote(emulator, bucket)
    assert [f["title"] for f in files] == ["Renamed"]


def test_a_message_sent_by_name_from_another_system(celery_app, emulator, bucket) -> None:
    task_id = str(uuid.uuid4())
    celery_app.send_task(
        "ingest.upload_url",
        task_id=task_id,
        kwargs={
            "url": "https://cdn.example.com/f.mp3",
            "title": "Foreign",
            "bucket_id": bucket,
            "ref": "ext-1",
            "user_defined": {"src": "java"},
        },
    )
    row = _ready(bucket, "ext-1")
    assert remote(emulator, bucket)[0]["id"] == row.remote_id


def test_delete_batch_with_refs_ids_and_unknown_names(producer, emulator, bucket) -> None:
    for i in range(3):
        producer.upload_url(f"https://cdn.example.com/g{i}.mp3", title=f"G{i}", bucket_id=bucket, ref=f"g{i}")
    rows = [_ready(bucket, f"g{i}") for i in range(3)]
    sent = producer.delete(
        bucket_id=bucket, refs=["g0", "nope"], ids=[rows[1].remote_id, 999999], acr_ids=[rows[2].acr_id]
    )
    # "nope" may still be uploaded: the delete is parked until UNKNOWN_REF_HORIZON (20 s here), then says so.
    op = wait_for(lambda: op_done(sent.operation_id), timeout=90)
    assert op.status == "partial"
    assert op.result["outcomes"] == {
        "ref:g0": "deleted",
        "ref:nope": "unknown_ref",
        f"id:{rows[1].remote_id}": "deleted",
        "id:999999": "not_found",
        f"acr_id:{rows[2].acr_id}": "deleted",
    }
    assert remote(emulator, bucket) == []
    assert {r.status for r in files_in(bucket)} == {FileStatus.DELETED}


def test_move_batch_changes_the_bucket(producer, emulator, bucket) -> None:
    target = bucket + 500_000
    for i in range(2):
        producer.upload_url(f"https://cdn.example.com/m{i}.mp3", title=f"M{i}", bucket_id=bucket, ref=f"m{i}")
        _ready(bucket, f"m{i}")
    sent = producer.move(bucket_id=bucket, target_bucket_id=target, refs=["m0", "m1"])
    op = wait_for(lambda: op_done(sent.operation_id))
    assert op.status == "succeeded", op.error
    assert remote(emulator, bucket) == [] and len(remote(emulator, target)) == 2
    assert {r.ref for r in files_in(target)} == {"m0", "m1"}


def test_poll_costs_one_get_per_chunk(emulator, bucket) -> None:
    from ingest.api.client import AcrCloudClient
    from ingest.jobs.context import JobContext
    from ingest.jobs.polling import LEASE, poll_states
    from ingest.settings import get_settings
    from ingest.store import leases
    from ingest.store.db import session_scope
    from ingest.store.models import TrackFile

    settings = get_settings().model_copy(update={"ids_chunk_size": 2})
    client = AcrCloudClient.from_settings(settings)
    created = [client.upload_url(bucket, f"https://cdn.example.com/p{i}.mp3", title=f"P{i}") for i in range(5)]
    ctx = JobContext(task_id="poll-test", settings=settings, client=client)
    with session_scope() as s:
        for f in created:
            s.add(
                TrackFile(
                    ref=f"p{f.id}",
                    bucket_id=bucket,
                    data_type="audio_url",
                    title=f.title,
                    source="x",
                    remote_id=f.id,
                    acr_id=f.acr_id,
                    remote_state=0,
                    status=FileStatus.PROCESSING,
                )
            )
        # Hold the poll's lease so the beat's own polls stay out of this count.
        wait_for(lambda: leases.acquire(s, LEASE, ctx.owner, 30), what="the poll lease")
    wait_for(lambda: all(f["state"] == 1 for f in remote(emulator, bucket)))
    counts = poll_states(ctx, bucket_id=bucket)
    assert counts["calls"] == 3  # ceil(5 / 2)
    assert counts["ready"] >= 5 and {r.status for r in files_in(bucket)} == {FileStatus.READY}


def test_delete_of_a_pending_upload_cancels_it(producer, celery_app, emulator, bucket) -> None:
    # Record an upload whose message goes to a broker nobody consumes (it is "still in the queue")...
    pending = idle_producer().upload_url("https://cdn.example.com/h.mp3", title="H", bucket_id=bucket, ref="h")
    # ...delete it, then let the original message arrive.
    d = producer.delete(bucket_id=bucket, refs=["h"])
    assert wait_for(lambda: op_done(d.operation_id)).result["outcomes"] == {"ref:h": "cancelled"}
    args = operation(pending.operation_id).args
    celery_app.send_task("ingest.upload_url", kwargs=args, task_id=pending.task_id)
    op = wait_for(lambda: op_done(pending.operation_id))
    assert op.result == {"file_id": file_row(bucket, "h").id, "cancelled": True}
    assert file_row(bucket, "h").status == FileStatus.CANCELLED
    assert remote(emulator, bucket) == []


def test_failed_jobs_are_kept_listed_and_retried_by_a_human(emulator, bucket) -> None:
    from click.testing import CliRunner

    from ingest.cli.commands import main

    emulator.faults.error_rate = 1.0  # every call 5xx: the job runs out of attempts
    runner = CliRunner()
    out = runner.invoke(
        main,
        ["upload-url", "https://cdn.example.com/f.mp3", "--title", "F", "--bucket", str(bucket), "--ref", "fail-1"],
    )
    assert out.exit_code == 0, out.output
    row = _ready(bucket, "fail-1", status="failed")
    assert row.reason.startswith("gave up after 8 attempts") and row.attempts == 8
    listed = runner.invoke(main, ["failures", "--bucket", str(bucket), "--since", "1h"])
    assert "upload_url" in listed.output and "gave up after 8 attempts" in listed.output
    status = runner.invoke(main, ["status"]).output
    assert "recent failures" in status and "fail-1" in status

    emulator.faults.reset()
    again = runner.invoke(main, ["retry-failed", "--kind", "upload_url", "--bucket", str(bucket)])
    assert again.output.strip() == "re-enqueued 1 operation(s)"
    row = _ready(bucket, "fail-1")
    assert [f["audio_id"] for f in remote(emulator, bucket)] == ["fail-1"]
    assert runner.invoke(main, ["failures", "--bucket", str(bucket)]).output.count("upload_url") == 0


def test_an_operation_whose_message_was_lost_is_sent_again(emulator, bucket) -> None:
    from datetime import timedelta

    from ingest.store.db import session_scope
    from ingest.store.models import Operation, utcnow

    # The message goes to a broker nobody reads: as if it vanished with a broker that died.
    lost = idle_producer().upload_url("https://cdn.example.com/lost.mp3", title="Lost", bucket_id=bucket, ref="lost-1")
    with session_scope() as s:
        op = s.get(Operation, lost.operation_id)
        op.updated_at = utcnow() - timedelta(hours=3)  # untouched for longer than resend_after
        s.add(op)
    row = _ready(bucket, "lost-1")
    assert [f["id"] for f in remote(emulator, bucket)] == [row.remote_id]
    assert operation(lost.operation_id).task_id == lost.task_id  # same task id: a replay is a no-op


def test_an_upload_answered_500_after_the_api_created_it_is_adopted_not_duplicated(producer, emulator, bucket) -> None:
    emulator.faults.created_then_error_rate = 1.0  # the file is created, the answer is a 500
    sent = producer.upload_url("https://cdn.example.com/amb.mp3", title="Ambiguous", bucket_id=bucket, ref="amb")
    wait_for(
        lambda: len(remote(emulator, bucket)) == 1 and operation(sent.operation_id).attempts >= 1,
        what="the created-then-500 answer",
    )
    emulator.faults.reset()
    row = _ready(bucket, "amb")
    files = remote(emulator, bucket)
    assert [f["id"] for f in files] == [row.remote_id] and files[0]["audio_id"] == "amb"
    # The poll may mark the row ready before the task records its result: wait for the operation.
    assert wait_for(lambda: op_done(sent.operation_id)).result["adopted"] is True
    assert emulator.stats()["searches"].get(f"{bucket}:Ambiguous", 0) >= 1  # it looked before posting again


def test_an_upload_refused_with_429_is_posted_again_without_searching_or_waiting(producer, emulator, bucket) -> None:
    """A 429 is an answer: nothing was created, so the retry neither waits out an 'in flight' POST
    nor searches the bucket for it."""
    emulator.set_faults(upload_burst_429=1, retry_after=0)  # the upload, not a poll that comes first
    sent = producer.upload_url("https://cdn.example.com/r.mp3", title="Refused", bucket_id=bucket, ref="r429")
    row = _ready(bucket, "r429")
    op = wait_for(lambda: op_done(sent.operation_id))  # the poll may mark the row ready first
    assert op.throttled == 1 and op.attempts == 1 and op.result["adopted"] is False  # the 429 used none
    assert f"{bucket}:Refused" not in emulator.stats()["searches"]
    assert row.verify_after is None and [f["id"] for f in remote(emulator, bucket)] == [row.remote_id]


def test_re_enqueueing_a_failed_upload_adopts_what_its_last_post_created(producer, emulator, bucket) -> None:
    emulator.faults.created_then_error_rate = 1.0  # the POST creates the file, the answer is a 500...
    sent = producer.upload_url("https://cdn.example.com/re.mp3", title="Again", bucket_id=bucket, ref="again")
    wait_for(lambda: len(remote(emulator, bucket)) == 1, what="the created-then-500 answer")
    emulator.set_faults(created_then_error_rate=0.0, error_rate=1.0)  # ...and then every look fails
    _ready(bucket, "again", status="failed", timeout=60)
    assert operation(sent.operation_id).status == "failed"
    emulator.faults.reset()
    again = producer.upload_url("https://cdn.example.com/re.mp3", title="Again", bucket_id=bucket, ref="again")
    assert again.plan == "reupload"
    row = _ready(bucket, "again")
    assert [f["id"] for f in remote(emulator, bucket)] == [row.remote_id]  # adopted, not posted twice
