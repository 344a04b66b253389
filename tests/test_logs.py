"""Log lines: with ACR_INGEST_LOG_FORMAT=json the worker and beat write one JSON object per line, and a
job's lines carry its task id, ref, bucket, attempt and (on its last line) its outcome; plain text by
default, with the same fields appended."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from ingest.devtools.processes import ChildProcess
from tests.conftest import REDIS_URL, WORKDIR
from tests.faults.conftest import WorkerProcess, producer_for
from tests.helpers import file_row, op_done, purged_rabbitmq, wait_for

ACR_INGEST = str(Path(sys.executable).with_name("acr-ingest"))  # the installed command, as operators run it
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/16"


@pytest.fixture
def env(emulator: object) -> dict[str, str]:
    redis.Redis.from_url(BROKER).flushdb()
    return {**os.environ, "ACR_INGEST_BROKER_URL": BROKER}


def _acr_ingest(name: str, *args: str, env: dict[str, str]) -> ChildProcess:
    """The ``acr-ingest`` command as an operator runs it: its log (stderr) and its stdout apart."""
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    return ChildProcess(
        name,
        [ACR_INGEST, *args],
        log=WORKDIR / f"{name}-{stamp}.log",
        stdout_log=WORKDIR / f"{name}-{stamp}.stdout",
        env=env,
    )


def _parse_every_line(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def test_json_logs_one_object_a_line_with_the_job_fields(env, bucket) -> None:
    json_env = {**env, "ACR_INGEST_LOG_FORMAT": "json"}
    worker = _acr_ingest("json-worker", "worker", "--concurrency", "1", "--loglevel", "INFO", env=json_env)
    beat = _acr_ingest(
        "json-beat", "beat", "--loglevel", "INFO", f"--schedule={WORKDIR / 'json-beat-schedule'}", env=json_env
    )
    try:
        wait_for(lambda: worker.check() or " ready." in worker.text(), timeout=60, what="the JSON worker ready")
        sent = producer_for(BROKER).upload_url(
            "https://cdn.example.com/j.mp3", title="J", bucket_id=bucket, ref="json-ref"
        )
        assert wait_for(lambda: op_done(sent.operation_id), timeout=60).status == "succeeded"
        wait_for(lambda: (r := file_row(bucket, "json-ref")) is not None and r.status == "ready", timeout=60)
        wait_for(lambda: "poll_states" in beat.text(), timeout=30, what="beat sent the poll")
    finally:
        worker.stop()
        beat.stop()

    worker_lines = _parse_every_line(worker.text())
    beat_lines = _parse_every_line(beat.text())
    # Celery prints one notice outside logging, to stdout, when it stops; nothing else goes there.
    for proc in (worker, beat):
        assert proc.stdout_log is not None
        stray = proc.stdout_log.read_text().strip()
        assert stray in ("", "worker: Warm shutdown (MainProcess)"), stray
    assert any("ready." in e["message"] for e in worker_lines)
    assert any("Sending due task" in e["message"] for e in beat_lines)
    (job_line,) = [e for e in worker_lines if e.get("task_id") == sent.task_id and "outcome" in e]
    assert job_line["ref"] == "json-ref"
    assert job_line["bucket"] == bucket
    assert job_line["attempt"] == 1
    assert job_line["outcome"] == "succeeded"
    assert job_line["task"] == "upload_url" and job_line["operation_id"] == sent.operation_id
    assert {"ts", "level", "logger", "message"} <= job_line.keys()


def test_text_logs_carry_the_job_fields(env, bucket) -> None:
    worker = WorkerProcess("text-logs", env, concurrency=1)
    try:
        worker.wait_ready()
        sent = producer_for(BROKER).upload_url(
            "https://cdn.example.com/t.mp3", title="T", bucket_id=bucket, ref="text ref"
        )
        assert wait_for(lambda: op_done(sent.operation_id), timeout=60).status == "succeeded"
        line = wait_for(
            lambda: next((ln for ln in worker.text().splitlines() if f"task_id={sent.task_id}" in ln), None),
            what="the job's line",
        )
    finally:
        worker.stop()
    assert "job upload_url: succeeded" in line
    for field in ('ref="text ref"', f"bucket={bucket}", "attempt=1", "outcome=succeeded"):
        assert field in line


@pytest.fixture(params=["redis", "rabbitmq"])
def masking_broker(request: pytest.FixtureRequest, env: dict[str, str]) -> str:
    """The masking test's broker: what Celery logs and the events carry is the same text on both."""
    if request.param == "redis":
        return BROKER
    return purged_rabbitmq(request.getfixturevalue("rabbitmq_url"))


def test_a_url_password_sent_by_name_is_masked_in_the_debug_log_and_the_task_events(
    env, masking_broker: str, bucket
) -> None:
    """A message from another system carrying ``https://user:password@host``: refused as bad input (tested in
    test_bad_input), and the password is in none of what the worker writes or shows: its DEBUG log (Celery logs
    the received request and the pool's job, body included), the task-received event Flower shows (from the
    sender's kwargsrepr header, or Celery's repr of the kwargs when a sender sent none) and the operation row."""
    from kombu import Connection
    from sqlmodel import select

    from ingest.store.db import session_scope
    from ingest.store.models import Operation

    secrets = {"celery": "s3cret-celery-pw", "raw": "s3cret-raw-pw"}
    app = producer_for(masking_broker).app  # type: ignore[attr-defined]
    events: list[dict] = []
    listening = threading.Event()
    receivers: list = []

    def listen() -> None:
        # One consumer for the whole test: events are fanned out to whoever listens at that instant (Redis:
        # PUBLISH), so a capture reopened in a loop missed the events sent between two captures.
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            receiver.on_consume_ready = lambda *_a, **_k: listening.set()
            receivers.append(receiver)
            with contextlib.suppress(OSError):
                receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    worker = WorkerProcess(
        "masked-worker", {**env, "ACR_INGEST_BROKER_URL": masking_broker}, concurrency=1, loglevel="DEBUG"
    )
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ids = {how: f"masked-{how}-{uuid.uuid4()}" for how in secrets}
    try:
        worker.wait_ready(timeout=60)
        assert listening.wait(timeout=30), "the event receiver did not start consuming"

        def kwargs(how: str) -> dict:
            return {"url": f"https://user:{secrets[how]}@cdn.example.com/x.mp3", "title": "t", "bucket_id": bucket}

        # As Celery's send_task sends it: the sender computes kwargsrepr, password and all.
        app.send_task("ingest.upload_url", kwargs=kwargs("celery"), task_id=ids["celery"])
        # A hand-written producer: no argsrepr/kwargsrepr headers (Celery then shows repr(kwargs)).
        queue = app.amqp.queues["ingest"]
        with Connection(masking_broker) as conn:
            conn.Producer().publish(
                json.dumps([[], kwargs("raw"), {}]).encode(),
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                headers={"task": "ingest.upload_url", "id": ids["raw"], "lang": "py"},
                content_type="application/json",
                content_encoding="utf-8",
            )

        def failed(task_id: str) -> Operation | None:
            with session_scope() as s:
                op = s.exec(select(Operation).where(Operation.task_id == task_id)).first()
                return op if op is not None and op.status == "failed" else None

        ops = {how: wait_for(lambda t=task_id: failed(t), timeout=60) for how, task_id in ids.items()}
        received = wait_for(
            lambda: (
                (r := {e["uuid"]: e for e in list(events) if e.get("type") == "task-received"}).keys()
                >= set(ids.values())
                and r
            ),
            timeout=30,
            what="the task-received events",
        )
        wait_for(lambda: all(t in worker.text() for t in ids.values()), timeout=30, what="the worker's log lines")
    finally:
        for receiver in receivers:
            receiver.should_stop = True  # its consume loop looks every second
        worker.stop()
        listener.join(timeout=10)

    log = worker.text()
    assert "DEBUG" in log and "received" in log
    for how, secret in secrets.items():
        assert secret not in log, [line for line in log.splitlines() if secret in line][:3]
        event = received[ids[how]]
        assert secret not in json.dumps(event) and "user:***@cdn.example.com" in event["kwargs"], event
        assert "must not carry credentials" in (ops[how].error or "")
        assert secret not in json.dumps(ops[how].args) and ops[how].args["url"].startswith("https://user:***@")
    worker_events = [e for e in events if e.get("hostname", "").startswith("masked-worker@")]
    assert worker_events and not any(s in json.dumps(worker_events) for s in secrets.values())
