"""Follow-ups sent by name before their upload, through a real worker and beat: parked, then applied when
the upload arrives long after the short retry window (issue 7, item 4)."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from sqlmodel import select

from ingest.cli.commands import main
from ingest.jobs.identity import visible
from ingest.jobs.parked_followups import UNKNOWN_REF_WAITS
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import Operation, OpStatus, utcnow
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _op(task_id: str) -> Operation | None:
    with session_scope() as s:
        return s.exec(select(Operation).where(Operation.task_id == task_id)).first()


def _parked(task_id: str) -> bool:
    op = _op(task_id)
    return op is not None and op.status == OpStatus.WAITING and (op.error or "").startswith("parked:")


def _send(celery_app, name: str, **kwargs) -> str:
    task_id = str(uuid.uuid4())
    celery_app.send_task(f"ingest.{name}", kwargs=kwargs, task_id=task_id)
    return task_id


def test_an_update_and_a_delete_sent_before_their_uploads_take_effect_when_they_land(
    celery_app, emulator, bucket
) -> None:
    settings = get_settings()
    window = UNKNOWN_REF_WAITS * settings.dependency_wait  # the old give-up point: 30 s by default, 1.8 s here
    update = _send(celery_app, "update_meta", bucket_id=bucket, ref="late-u", title="New", user_defined={"v": 2})
    delete = _send(celery_app, "delete_batch", bucket_id=bucket, refs=["late-d"])

    wait_for(lambda: all(_parked(t) for t in (update, delete)), timeout=60, what="both follow-ups parked")
    ops = [_op(update), _op(delete)]
    assert all(op is not None and op.status == OpStatus.WAITING for op in ops)
    assert all((utcnow() - op.created_at).total_seconds() > window for op in ops if op)  # past the old window
    assert "waiting for uploads: 2 follow-up(s)" in CliRunner().invoke(main, ["status"]).output

    # The uploads arrive only now, by name, as a redelivered message of a killed worker would.
    up_u = _send(
        celery_app, "upload_url", url="https://cdn.example.com/u.mp3", title="Old", bucket_id=bucket, ref="late-u"
    )
    up_d = _send(
        celery_app, "upload_url", url="https://cdn.example.com/d.mp3", title="D", bucket_id=bucket, ref="late-d"
    )

    done = wait_for(
        lambda: (
            all((op := _op(t)) and OpStatus(op.status).is_final for t in (update, delete, up_u, up_d))
            and [_op(t) for t in (update, delete)]
        ),
        timeout=90,
        what=lambda: f"follow-ups done: {[(o.status, o.error) for t in (update, delete) if (o := _op(t))]}",
    )
    u_op, d_op = done
    assert u_op.status == OpStatus.SUCCEEDED, u_op.error
    assert d_op.status == OpStatus.SUCCEEDED, d_op.error
    assert d_op.result["outcomes"]["ref:late-d"] in ("deleted", "cancelled")
    files = emulator.files(bucket)
    assert [(f["audio_id"], f["title"], visible(f["user_defined"])) for f in files] == [("late-u", "New", {"v": 2})]
