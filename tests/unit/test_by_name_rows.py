"""A message sent by name keeps the validated arguments on its operation row, and every read path (``show``,
``status``, ``files``, ``failures``, ``retry-failed``) survives whatever row such a message can leave: a failed
one keeps its arguments as sent (a string of ids, numbers past BIGINT, objects where lists belong)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from ingest.cli.commands import main
from ingest.settings import reset_settings
from ingest.store.db import session_scope
from ingest.store.models import Operation, OpKind, OpStatus
from tests.conftest import IDLE_BROKER
from tests.helpers import file_row
from tests.unit.support import op_of, run_to_end, url_args


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _ok(result: Result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.exit_code in (0, 1), result.output
    return result.output


@pytest.fixture
def idle_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """retry-failed publishes: to a broker database no worker consumes."""
    monkeypatch.setenv("ACR_INGEST_BROKER_URL", IDLE_BROKER)
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_a_batch_sent_by_name_stores_what_was_validated(make_ctx, emulator, bucket) -> None:
    ref = f"CAT-3-{bucket}"
    run_to_end("upload_url", url_args(bucket, ref), make_ctx())
    row = file_row(bucket, ref)
    assert row is not None and row.remote_id is not None
    ctx = make_ctx()
    # As send_task('ingest.delete_batch', kwargs={'bucket_id': ..., 'ids': '1,2,3'}) delivers it: no producer row.
    run_to_end("delete_batch", {"bucket_id": str(bucket), "ids": f"999999991, {row.remote_id}"}, ctx)
    op = op_of(ctx)
    assert op.args == {"bucket_id": bucket, "ids": [999999991, row.remote_id]}

    for how in ([ref], ["--op", str(op.id)]):
        out = _ok(_cli("show", *how))
        assert f"id:{row.remote_id} deleted" in out, out


def test_a_failed_bad_input_batch_says_nothing_was_done_for_its_ids(make_ctx, emulator, bucket) -> None:
    ref = f"CAT-16-{bucket}"
    run_to_end("upload_url", url_args(bucket, ref), make_ctx())
    row = file_row(bucket, ref)
    assert row is not None and row.remote_id is not None
    ctx = make_ctx()
    out, _ = run_to_end("delete_batch", {"bucket_id": bucket, "ids": [row.remote_id, "x"]}, ctx)
    assert out["status"] == OpStatus.FAILED and out["error"].startswith("bad input: ids[1]: ")
    for how in ([ref], ["--op", str(op_of(ctx).id)]):
        shown = _ok(_cli("show", *how))
        line = next(line for line in shown.splitlines() if line.startswith(f"{op_of(ctx).id} "))
        assert f"id:{row.remote_id} (not done: the batch failed)" in line and "pending" not in line, shown
    assert file_row(bucket, ref).status != "deleted"


def test_a_batch_that_failed_midway_shows_each_id_as_it_ended(make_ctx, emulator, bucket) -> None:
    """Progress is saved after each chunk: the ids of the chunks done show their outcome, the rest not done."""
    rows = []
    for ref in ("mid-1", "mid-2"):
        run_to_end("upload_url", url_args(bucket, ref), make_ctx())
        rows.append(file_row(bucket, ref))
    done, left = (r.remote_id for r in rows)
    with session_scope() as s:  # as a delete leaves it whose second chunk met a permanent API error
        op = Operation(
            kind=OpKind.DELETE_BATCH, args={"bucket_id": bucket, "ids": [done, left]}, task_id=f"mid-{bucket}",
            bucket_id=bucket, status=OpStatus.FAILED, error="the API refused it: [400] ...",
            result={"outcomes": {f"id:{done}": "deleted"}},
        )  # fmt: skip
        s.add(op)
        s.commit()
        op_id = op.id
    shown = _ok(_cli("show", "--op", str(op_id)))
    assert f"id:{done} deleted" in shown and f"id:{left} (not done: the batch failed)" in shown, shown


BAD_ARGS = [
    {"ids": "1,2,{id}"},
    {"refs": "{ref}"},
    {"ids": [True, 1.5, "{id}", None, {"a": 1}, ["{id}"], 2**70, -1, 0]},
    {"refs": {"{ref}": 1}, "acr_ids": 7, "ids": {"{id}": "{id}"}},
    {"refs": ["{ref}", 5, None, ["{ref}"]], "ref": {"x": 1}},
    {"ref": ["{ref}"], "ids": "{id}"},
    {"unstorable": "ValueError: Out of range float values are not JSON compliant: {ref}"},
]


def _fill(value: object, ref: str, remote_id: int) -> object:
    if isinstance(value, str):
        return value.replace("{ref}", ref).replace("{id}", str(remote_id))
    if isinstance(value, list):
        return [_fill(v, ref, remote_id) for v in value]
    if isinstance(value, dict):
        return {str(_fill(k, ref, remote_id)): _fill(v, ref, remote_id) for k, v in value.items()}
    return value


def test_every_read_path_survives_the_rows_a_by_name_message_can_leave(make_ctx, emulator, bucket, idle_broker) -> None:
    ref = f"CAT-7-{bucket}"
    run_to_end("upload_url", url_args(bucket, ref), make_ctx())
    row = file_row(bucket, ref)
    assert row is not None and row.remote_id is not None
    op_ids = []
    with session_scope() as s:
        for i, args in enumerate(BAD_ARGS):
            op = Operation(
                kind=OpKind.MOVE_BATCH if i % 2 else OpKind.DELETE_BATCH,
                args={"bucket_id": bucket, **_fill(args, ref, row.remote_id)},  # type: ignore[dict-item]
                task_id=f"by-name-{bucket}-{i}",
                bucket_id=bucket,
                status=OpStatus.FAILED,
                error="bad input: ids: must be a list",
                result={"outcomes": [1, 2]} if i == 3 else None,
            )
            s.add(op)
            s.commit()
            op_ids.append(op.id)

    out = _ok(_cli("show", ref))
    assert f"ref {ref} in bucket {bucket}" in out
    for op_id in op_ids:
        _ok(_cli("show", "--op", str(op_id)))
    _ok(_cli("show", "--id", str(row.remote_id)))
    assert str(bucket) in _ok(_cli("status"))
    _ok(_cli("status", "--json"))
    assert ref in _ok(_cli("files", "--bucket", str(bucket)))
    failures = _ok(_cli("failures", "--bucket", str(bucket)))
    assert all(str(op_id) in failures for op_id in op_ids), failures
    retried = _ok(_cli("retry-failed", "--bucket", str(bucket), "--include-bad-input"))
    assert f"re-enqueued {len(op_ids)} operation(s)" in retried
