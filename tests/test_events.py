"""Events for the catalog system through a real worker and beat: a consumer on the real broker receives
the events of an upload that becomes ready and of a failed job, and a real local HTTP server receives
each as a webhook whose signature the test checks itself; the endpoint fails its first request, which
is retried.

The worker runs on a broker database and a SQLite database of its own: the session's worker and beat
(events off) share the main database, and their poll would mark this test's file ready unreported.
Jobs are sent by name, as another system sends them (the worker writes the operation rows)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import create_engine
from sqlmodel import Session, select

from ingest.settings import get_settings
from ingest.store.models import Operation, TrackFile
from ingest.worker.app import create_app
from tests.conftest import REDIS_URL, TOKEN
from tests.faults.conftest import WorkerProcess, beat_process
from tests.helpers import wait_for

ACR_INGEST = str(Path(sys.executable).with_name("acr-ingest"))
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/27"  # this test's worker and beat
SECRET = "webhook-secret-for-the-test"
EXCHANGE = "acr_ingest.events.test"


class Hook:
    """A webhook receiver on loopback: records every request; answers 503 to the first ``fail_first``."""

    def __init__(self, fail_first: int) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = 503 if len(hook.requests) < hook.fail_first else 204
                hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/acr-events"

    def accepted(self) -> dict[str, dict[str, Any]]:
        """The events answered 2xx, by event id, after checking each signature independently."""
        out = {}
        for headers, body, status in list(self.requests):
            if status < 300:
                stamp = headers["x-acr-ingest-timestamp"]
                expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
                assert hmac.compare_digest(headers["x-acr-ingest-signature"], f"sha256={expected}"), headers
                assert abs(time.time() - int(stamp)) < 300
                event = json.loads(body)
                assert headers["x-acr-ingest-event"] == event["event_id"]
                out[event["event_id"]] = event
        return out


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook(fail_first=1)
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def env(emulator: object, hook: Hook, tmp_path: Path) -> dict[str, str]:
    redis.Redis.from_url(BROKER).flushdb()
    env = {
        **os.environ,
        "ACR_INGEST_BROKER_URL": BROKER,
        "ACR_INGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "ACR_INGEST_EVENTS_QUEUE": f"test.events.{uuid.uuid4().hex[:8]}",
        "ACR_INGEST_EVENTS_EXCHANGE": EXCHANGE,
        "ACR_INGEST_WEBHOOK_URL": hook.url,
        "ACR_INGEST_WEBHOOK_SECRET": SECRET,
    }
    subprocess.run([ACR_INGEST, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    return env


def test_events_reach_a_broker_consumer_and_a_signed_webhook_retried_after_a_failure(env, hook, bucket) -> None:
    queue = Queue(env["ACR_INGEST_EVENTS_QUEUE"], Exchange(EXCHANGE, type="topic", durable=True), "#", durable=True)
    received: list[dict[str, Any]] = []
    app = create_app(get_settings().model_copy(update={"broker_url": BROKER}))
    with (
        Connection(BROKER) as conn,
        conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(body), msg.ack())], accept=["json"]),
    ):
        worker = WorkerProcess("events", env, pool="threads", concurrency=4)
        try:
            with beat_process(env):
                worker.wait_ready(timeout=60)
                upload_id, failed_id = str(uuid.uuid4()), str(uuid.uuid4())
                app.send_task(
                    "ingest.upload_url",
                    kwargs={"url": "https://cdn.example.com/e1.mp3", "title": "E1", "bucket_id": bucket, "ref": "e1"},
                    task_id=upload_id,
                )
                # Bad input (neither title nor user_defined): the job fails at once, naming the field.
                app.send_task("ingest.update_meta", kwargs={"bucket_id": bucket, "ref": "e1"}, task_id=failed_id)

                def drained() -> list[str]:
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)
                    return sorted(e["type"] for e in received if e["bucket_id"] == bucket)

                want = ["file.ready", "operation.failed", "operation.succeeded"]
                wait_for(lambda: drained() == want, timeout=90, what=lambda: f"events {want}: got {drained()}")
                wait_for(lambda: len(hook.accepted()) == 3, timeout=60, what=lambda: f"3 webhooks: {hook.requests}")
        finally:
            worker.stop(timeout=20)

    with Session(create_engine(env["ACR_INGEST_DATABASE_URL"])) as s:
        row = s.exec(select(TrackFile).where(TrackFile.bucket_id == bucket, TrackFile.ref == "e1")).one()
        ops = {op.task_id: op for op in s.exec(select(Operation).where(Operation.bucket_id == bucket)).all()}
    by_type = {e["type"]: e for e in received}
    ready, ended, failed = by_type["file.ready"], by_type["operation.succeeded"], by_type["operation.failed"]
    assert (ready["ref"], ready["id"], ready["acr_id"], ready["state"]) == ("e1", row.remote_id, row.acr_id, "ready")
    assert (
        ready["operation"]
        == ended["operation"]
        == {"id": ops[upload_id].id, "kind": "upload_url", "task_id": upload_id}
    )
    assert (ended["id"], ended["acr_id"], ended["state"]) == (row.remote_id, row.acr_id, "succeeded")
    assert failed["operation"]["task_id"] == failed_id and failed["reason"] == ops[failed_id].error
    assert failed["reason"].startswith("bad input") and ops[failed_id].status == "failed"

    # The webhook got the same three events, signed; the first POST got a 503 and that event came again.
    assert hook.accepted() == {e["event_id"]: e for e in received}
    _, first_body, first_status = hook.requests[0]
    assert first_status == 503 and json.loads(first_body)["event_id"] in hook.accepted()
    assert len(hook.requests) == 4
    assert TOKEN not in json.dumps(received) and all(TOKEN.encode() not in b for _, b, _ in hook.requests)
    assert all(TOKEN not in json.dumps(h) for h, _, _ in hook.requests)
