"""Events for the catalog system, written to the outbox with the state change they report: one per
change (a redelivery or a second poll adds none), the body documented in docs/MESSAGES.md, no token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, func
from sqlmodel import col, select

from ingest.jobs import webhooks
from ingest.jobs.events import WEBHOOK_TASK
from ingest.settings import get_settings, reset_settings
from ingest.store import outbox
from ingest.store.db import session_scope
from ingest.store.models import OutboxEntry
from tests.conftest import TOKEN
from tests.helpers import file_row, wait_for
from tests.unit.support import op_of, poll, run, url_args

SECRET = "unit-webhook-secret"


@pytest.fixture
def events_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Events to a queue and a webhook for this test; yields the outbox id they start after. Entries the
    test wrote are removed afterwards (no worker of this run should publish them)."""
    with session_scope() as s:
        start = s.exec(select(func.max(OutboxEntry.id))).one() or 0
    monkeypatch.setenv("ACR_INGEST_EVENTS_QUEUE", "unit-events")
    monkeypatch.setenv("ACR_INGEST_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("ACR_INGEST_WEBHOOK_SECRET", SECRET)
    reset_settings()
    yield start
    monkeypatch.undo()
    reset_settings()
    with session_scope() as s:
        s.execute(delete(OutboxEntry).where(col(OutboxEntry.id) > start, col(OutboxEntry.kind) == outbox.EVENT))
        s.execute(delete(OutboxEntry).where(col(OutboxEntry.id) > start, col(OutboxEntry.destination) == WEBHOOK_TASK))
        s.commit()


def events_since(start: int, bucket: int) -> list[dict[str, Any]]:
    """The broker events of this bucket written after ``start``, oldest first; each has its webhook twin."""
    with session_scope() as s:
        rows = s.exec(select(OutboxEntry).where(col(OutboxEntry.id) > start).order_by(col(OutboxEntry.id))).all()
    mine = [r for r in rows if (r.payload.get("event") or r.payload).get("bucket_id") == bucket]
    broker = [r.payload for r in mine if r.kind == outbox.EVENT]
    hooks = [r.payload["event"] for r in mine if r.destination == WEBHOOK_TASK]
    assert hooks == broker  # the same event to both destinations
    assert all(r.sent_at is None and r.due_at <= r.created_at for r in mine)  # due at once, for the worker
    return broker


def test_an_upload_that_becomes_ready_reports_its_operation_then_its_file_once(ctx, emulator, bucket, events_on):
    out = run("upload_url", url_args(bucket, "ev-1", "Evented", user_defined={"k": 1}), ctx)
    op = op_of(ctx)
    assert [e["type"] for e in events_since(events_on, bucket)] == ["operation.succeeded"]

    row = file_row(bucket, "ev-1")
    wait_for(lambda: poll(ctx, bucket)["ready"] == 1, timeout=10, what="the poll to see the file ready")
    poll(ctx, bucket)  # a second poll changes nothing and reports nothing
    run("upload_url", url_args(bucket, "ev-1", "Evented", user_defined={"k": 1}), ctx)  # redelivered: nothing

    ended, ready = events_since(events_on, bucket)
    f = emulator.files(bucket)[0]
    assert ended["operation"] == {"id": op.id, "kind": "upload_url", "task_id": ctx.task_id}
    assert (ended["state"], ended["ref"], ended["id"], ended["acr_id"]) == ("succeeded", "ev-1", f["id"], f["acr_id"])
    assert ready["type"] == "file.ready" and ready["state"] == "ready" and ready["remote_state"] == 1
    assert (ready["ref"], ready["bucket_id"], ready["id"], ready["acr_id"]) == ("ev-1", bucket, f["id"], f["acr_id"])
    assert ready["operation"] == ended["operation"] and ready["reason"] is None
    assert ready["event_id"] != ended["event_id"] and ready["version"] == 1 and ready["time"].endswith("+00:00")
    assert out["result"]["id"] == row.remote_id == f["id"]
    assert TOKEN not in json.dumps([ended, ready])


def test_a_file_the_api_cannot_process_and_a_failed_job_are_reported(ctx, make_ctx, emulator, bucket, events_on):
    run("upload_url", {**url_args(bucket, "ev-bad"), "url": "https://cdn.example.com/broken.mp3"}, ctx)
    wait_for(lambda: poll(ctx, bucket)["error"] == 1, timeout=10, what="the poll to see the file in error")
    bad = make_ctx()
    run("update_meta", {"bucket_id": bucket, "ref": "ev-bad"}, bad)  # neither title nor user_defined

    _, error, failed = events_since(events_on, bucket)
    assert (error["type"], error["ref"], error["remote_state"]) == ("file.error", "ev-bad", -1)
    assert "could not process" in error["reason"]
    assert failed["type"] == "operation.failed" and failed["operation"]["task_id"] == bad.task_id
    assert failed["reason"].startswith("bad input") and failed["ref"] == "ev-bad"


def test_no_event_is_written_when_none_is_configured(ctx, emulator, bucket) -> None:
    assert not get_settings().events_enabled
    with session_scope() as s:
        start = s.exec(select(func.max(OutboxEntry.id))).one() or 0
    run("upload_url", url_args(bucket, "quiet"), ctx)
    with session_scope() as s:
        written = s.exec(select(OutboxEntry).where(col(OutboxEntry.id) > start, OutboxEntry.kind == outbox.EVENT))
        assert written.all() == []


def test_the_webhook_signature_covers_the_timestamp_and_the_body() -> None:
    body = webhooks.body_of({"event_id": "e1", "type": "file.ready"})
    now = str(int(time.time()))
    signed = webhooks.signature(SECRET, now, body)
    assert signed.startswith("sha256=") and len(signed) == 7 + 64
    assert webhooks.verify(SECRET, now, body, signed)
    assert not webhooks.verify("another secret", now, body, signed)
    assert not webhooks.verify(SECRET, now, body.replace(b"ready", b"error"), signed)
    assert not webhooks.verify(SECRET, str(int(now) + 1), body, signed)  # a new timestamp needs a new signature
    old = str(int(time.time()) - 3600)  # a replay an hour later, correctly signed then
    assert not webhooks.verify(SECRET, old, body, webhooks.signature(SECRET, old, body))
