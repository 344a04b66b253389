"""`retry-failed` re-sends what a human asks for and nothing stale: a retried job is judged against the
state it finds (an update asked for a file the ref no longer names is skipped, with the reason), bad
input stays failed unless asked for, and failures can be picked by their reason."""

from __future__ import annotations

from click.testing import CliRunner
from sqlmodel import select

from ingest.cli.commands import main
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation
from tests.helpers import file_row, op_done, wait_for


def _ready(bucket: int, ref: str, title: str) -> None:
    wait_for(
        lambda: (row := file_row(bucket, ref)) is not None and row.status == FileStatus.READY and row.title == title,
        timeout=60,
        what=f"{ref} ready as {title!r}",
    )


def _failed_ops(bucket: int) -> list[Operation]:
    with session_scope() as s:
        return list(s.exec(select(Operation).where(Operation.bucket_id == bucket, Operation.status == "failed")).all())


def test_a_retried_update_from_before_a_re_upload_leaves_the_new_file_alone(producer, worker, emulator, bucket) -> None:
    producer.upload_url("https://cdn.example.com/old.mp3", title="Old", bucket_id=bucket, ref="CAT-2")
    _ready(bucket, "CAT-2", "Old")
    emulator.faults.error_rate = 1.0  # the update runs out of attempts
    upd = producer.update_meta(bucket_id=bucket, ref="CAT-2", title="Renamed old")
    assert wait_for(lambda: op_done(upd.operation_id), timeout=60).status == "failed"
    emulator.faults.reset()

    gone = producer.delete(bucket_id=bucket, refs=["CAT-2"])
    assert wait_for(lambda: op_done(gone.operation_id), timeout=60).status == "succeeded"
    new = producer.upload_url("https://cdn.example.com/new.mp3", title="New", bucket_id=bucket, ref="CAT-2")
    assert new.plan == "reupload"
    _ready(bucket, "CAT-2", "New")

    (again,) = producer.retry_failed(bucket_id=bucket)
    assert again.operation_id == upd.operation_id
    op = wait_for(lambda: op_done(upd.operation_id), timeout=60)
    assert op.status == "succeeded" and "uploaded again" in op.result["skipped"], (op.status, op.result)
    assert [(f["audio_id"], f["title"]) for f in emulator.files(bucket)] == [("CAT-2", "New")]
    assert file_row(bucket, "CAT-2").title == "New"


def test_retry_failed_leaves_bad_input_unless_asked_and_filters_by_reason(
    producer, worker, celery_app, emulator, bucket
) -> None:
    # Bad input from another system (a URL the validator refuses), and a job that ran out of attempts.
    celery_app.send_task(
        "ingest.upload_url", kwargs={"url": "ftp://cdn.example.com/x.mp3", "title": "X", "bucket_id": bucket}
    )
    emulator.faults.error_rate = 1.0
    lost = producer.upload_url("https://cdn.example.com/t.mp3", title="T", bucket_id=bucket, ref="flaky")
    assert wait_for(lambda: op_done(lost.operation_id), timeout=60).status == "failed"
    wait_for(lambda: len(_failed_ops(bucket)) == 2, timeout=60, what="both failed")
    emulator.faults.reset()
    reasons = sorted(op.error[:11] for op in _failed_ops(bucket))
    assert reasons == ["bad input: ", "gave up aft"], reasons

    runner = CliRunner()
    out = runner.invoke(main, ["retry-failed", "--bucket", str(bucket), "--reason", "NO SUCH REASON"])
    assert out.exit_code == 0 and out.output.strip() == "re-enqueued 0 operation(s)", out.output
    listed = runner.invoke(main, ["failures", "--bucket", str(bucket), "--reason", "GAVE UP"])
    assert "flaky" in listed.output and "bad input" not in listed.output, listed.output

    out = runner.invoke(main, ["retry-failed", "--bucket", str(bucket)])  # the transient one only
    assert out.output.strip() == "re-enqueued 1 operation(s)", out.output
    _ready(bucket, "flaky", "T")
    (still,) = _failed_ops(bucket)
    assert still.error.startswith("bad input: url")

    out = runner.invoke(main, ["retry-failed", "--bucket", str(bucket), "--include-bad-input", "--reason", "url"])
    assert out.output.strip() == "re-enqueued 1 operation(s)", out.output
    wait_for(lambda: op_done(still.id), timeout=60)
    (again,) = _failed_ops(bucket)  # asked for, re-sent, and refused again for the same field
    assert again.id == still.id and again.error.startswith("bad input: url")
