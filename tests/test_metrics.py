"""Our own metrics, scraped while jobs run: a real prefork worker serving the counters of all its pool
processes (ACR_INGEST_METRICS_PORT), and ``acr-ingest metrics`` serving the state read at scrape time
from the tables and the broker, plus the same counters read from the worker's directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from ingest.devtools.processes import ChildProcess, free_port
from ingest.store import auth_hold, rejected_messages
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, TrackFile, utcnow
from tests.conftest import REDIS_URL, WORKDIR
from tests.faults.conftest import WorkerProcess, beat_process, producer_for
from tests.helpers import wait_for

ACR_INGEST = str(Path(sys.executable).with_name("acr-ingest"))  # the installed command, as operators run it
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/14"  # this test's worker and beat
QUIET_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/15"  # no worker consumes it: its queue only grows

Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int) -> Samples:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


@pytest.fixture
def env(emulator: object, tmp_path: Path) -> Iterator[dict[str, str]]:
    for url in (BROKER, QUIET_BROKER):
        redis.Redis.from_url(url).flushdb()
    yield {
        **os.environ,
        "ACR_INGEST_BROKER_URL": BROKER,
        "ACR_INGEST_METRICS_PORT": str(free_port()),
        "ACR_INGEST_METRICS_DIR": str(tmp_path / "counters"),
        # The shared limit, so that the 429s below drain it and calls are deferred (limiter waits).
        "ACR_INGEST_RATE_LIMIT": "50",
    }


def test_metrics_move_while_jobs_run_through_a_prefork_worker(env, emulator, bucket, tmp_path) -> None:
    n = 6
    port = int(env["ACR_INGEST_METRICS_PORT"])
    worker = WorkerProcess("metrics", env, concurrency=2)
    try:
        worker.wait_ready()
        wait_for(lambda: _try_scrape(port) is not None, what="the worker's metrics port")
        before = scrape(port)
        assert value(before, "acr_ingest_jobs_total") == 0
        # Every queue's series is there at 0 before the first task: "nothing taken", which the alert can tell.
        queue_tasks = {lab["queue"]: v for n, lab, v in before if n == "acr_ingest_queue_tasks_total"}
        assert queue_tasks == {"ingest": 0, "ingest.poll": 0, "ingest.fingerprint": 0, "other": 0}

        emulator.set_faults(burst_429=2, retry_after=1)  # the next two API requests answer 429
        producer = producer_for(BROKER)
        for i in range(n):
            producer.upload_url(f"https://cdn.example.com/m{i}.mp3", title=f"M{i}", bucket_id=bucket, ref=f"m{i}")

        done = wait_for(
            lambda: (
                (s := scrape(port))
                and value(s, "acr_ingest_jobs_total", kind="upload_url", outcome="succeeded") == n
                and s
            ),
            timeout=60,
            what=lambda: f"{n} upload_url jobs succeeded: {_ours(scrape(port))}",
        )
        assert value(done, "acr_ingest_api_calls_total", endpoint="upload", status_class="2xx") >= n
        assert value(done, "acr_ingest_api_rate_limited_total") == 2  # exactly the two injected 429s
        assert value(done, "acr_ingest_api_calls_total", status_class="4xx") >= 2
        # The 429s retried without using an attempt, and drained the shared budget: calls were deferred.
        assert value(done, "acr_ingest_retries_total", why="wait") >= 2
        assert value(done, "acr_ingest_limiter_waits_total") >= 1
        assert value(done, "acr_ingest_limiter_wait_seconds_total") > 0
        assert value(done, "acr_ingest_jobs_total", outcome="failed") == 0
        # Each run counted by the queue its message came from, its retries too (they come back to that queue);
        # counted once the task returned, just after its outcome: wait for the last one.
        runs = value(done, "acr_ingest_jobs_total", kind="upload_url")
        assert runs >= n + 2
        taken = wait_for(
            lambda: (s := scrape(port)) and value(s, "acr_ingest_queue_tasks_total", queue="ingest") == runs and s,
            timeout=30,
            what=lambda: f"{runs} runs taken from ingest: {_ours(scrape(port))}",
        )
        assert value(taken, "acr_ingest_queue_tasks_total") == runs
        # Counted in the pool's processes (the main process runs no task), summed by the worker's exporter.
        writers = {p.name for p in (tmp_path / "counters").glob("counter_*.db")}
        assert writers - {f"counter_{worker.pid}.db"}

        exporter_port = free_port()
        exporter = ChildProcess(
            "metrics-exporter",
            [ACR_INGEST, "metrics", "--port", str(exporter_port)],
            log=WORKDIR / f"metrics-exporter-{exporter_port}.log",
            env={**env, "ACR_INGEST_BROKER_URL": QUIET_BROKER},
        )
        try:
            with beat_process(env):  # the poll turns the processing files ready
                state = wait_for(
                    lambda: (
                        (s := _try_scrape(exporter_port, exporter))
                        and value(s, "acr_ingest_files", bucket=str(bucket), state="ready") == n
                        and s
                    ),
                    timeout=60,
                    what=lambda: f"{n} files ready: {_ours(_try_scrape(exporter_port, exporter) or [])}",
                )
                # The beat's polls come from their own queue (no job counter sees them; this one does). Waited
                # for while the beat runs: another test's beat on this database may have polled the files first.
                wait_for(
                    lambda: value(scrape(port), "acr_ingest_queue_tasks_total", queue="ingest.poll") >= 1,
                    timeout=30,
                    what="a poll counted under ingest.poll",
                )
            assert value(state, "acr_ingest_state_up", source="database") == 1
            assert value(state, "acr_ingest_state_up", source="broker") == 1
            # The exporter also sums the worker's counters from the same directory.
            assert value(state, "acr_ingest_jobs_total", kind="upload_url", outcome="succeeded") == n

            _queue_depth_follows_the_broker(exporter_port)
            _hold_and_oldest_processing_show(exporter_port, bucket)
        finally:
            exporter.stop()
    finally:
        worker.stop()


def _queue_depth_follows_the_broker(port: int) -> None:
    assert value(scrape(port), "acr_ingest_queue_depth", queue="ingest") == 0
    idle = producer_for(QUIET_BROKER)
    bucket = 990_001
    for i in range(3):
        idle.update_meta(bucket_id=bucket, file_id=1000 + i, title=f"T{i}")
    samples = scrape(port)
    assert value(samples, "acr_ingest_queue_depth", queue="ingest") == 3
    assert ("acr_ingest_queue_depth", {"queue": "ingest.poll"}) in [(n, lab) for n, lab, _ in samples]


def _hold_and_oldest_processing_show(port: int, bucket: int) -> None:
    assert value(scrape(port), "acr_ingest_auth_held") == 0
    with session_scope() as s:
        auth_hold.hold(s, "a-rejected-token", "Unauthenticated.")
    try:
        assert value(scrape(port), "acr_ingest_auth_held") == 1
    finally:
        with session_scope() as s:
            auth_hold.lift(s)
    assert value(scrape(port), "acr_ingest_auth_held") == 0

    # A message no task could run, kept: the gauge counts the rows.
    before = value(scrape(port), "acr_ingest_rejected_messages")
    rejected_messages.record(
        reason="test: not a task", body=b"{}", headers={}, content_type="application/json", queue="ingest", task=None
    )
    assert value(scrape(port), "acr_ingest_rejected_messages") == before + 1
    assert value(scrape(port), "acr_ingest_api_down") == 0

    # A file posted two minutes ago and still processing (the beat is stopped: nothing polls it away).
    with session_scope() as s:
        row = TrackFile(
            ref="stuck",
            bucket_id=bucket,
            data_type="audio_url",
            title="Stuck",
            source="https://cdn.example.com/stuck.mp3",
            status=FileStatus.PROCESSING,
            remote_id=123_456_789,
            post_started_at=utcnow().replace(microsecond=0) - timedelta(minutes=2),
        )
        s.add(row)
        s.commit()
        row_id = row.id
    try:
        age = value(scrape(port), "acr_ingest_oldest_processing_age_seconds")
        assert 120 <= age < 600
    finally:
        with session_scope() as s:
            stuck = s.get(TrackFile, row_id)
            s.delete(stuck)
            s.commit()


def _try_scrape(port: int, process: ChildProcess | None = None) -> Samples | None:
    if process is not None:
        process.check()
    try:
        return scrape(port)
    except requests.ConnectionError:
        return None


def _ours(samples: Samples) -> list[tuple[str, dict[str, str], float]]:
    return [s for s in samples if s[0].startswith("acr_ingest_")]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_each_task_run_is_counted_by_the_queue_its_message_came_from(
    broker: str, request: pytest.FixtureRequest, emulator, bucket, tmp_path
) -> None:
    """What the queue-not-consumed alert reads, on both brokers: URL uploads from ingest, a fingerprint upload
    from ingest.fingerprint, the beat's polls from ingest.poll (the message's routing key names its queue)."""
    from kombu import Connection, Queue

    from ingest.worker.routing import FINGERPRINT_QUEUE, POLL_QUEUE, QUEUE
    from tests.conftest import MEDIA
    from tests.fingerprint_audio import write_wav

    if broker == "redis":
        url = BROKER
        redis.Redis.from_url(url).flushdb()
    else:
        url = request.getfixturevalue("rabbitmq_url")
        with Connection(url) as conn:  # what an earlier test left queued must not be counted here
            for name in (QUEUE, POLL_QUEUE, FINGERPRINT_QUEUE):
                queue = Queue(name, routing_key=name, durable=True)(conn.default_channel)
                queue.declare()
                queue.purge()
    port = free_port()
    env = {
        **os.environ,
        "ACR_INGEST_BROKER_URL": url,
        "ACR_INGEST_METRICS_PORT": str(port),
        "ACR_INGEST_METRICS_DIR": str(tmp_path / "counters"),
    }
    write_wav(MEDIA / f"qc-{bucket}.wav", 1.0, rate=8000, channels=1)
    worker = WorkerProcess(f"qcount-{broker}", env, concurrency=2)
    try:
        worker.wait_ready()
        producer = producer_for(url)
        for i in range(2):
            producer.upload_url(f"https://cdn.example.com/qc{i}.mp3", title=f"Q{i}", bucket_id=bucket, ref=f"qc{i}")
        producer.upload_file(f"qc-{bucket}.wav", title="QF", bucket_id=bucket, ref="qcf", send_as="fingerprint")
        with beat_process(env):

            def counted() -> Samples | None:
                s = _try_scrape(port)
                if not s or value(s, "acr_ingest_queue_tasks_total", queue=POLL_QUEUE) < 1:
                    return None
                uploads = value(s, "acr_ingest_jobs_total", kind="upload_url", outcome="succeeded")
                fingerprints = value(s, "acr_ingest_jobs_total", kind="upload_file", outcome="succeeded")
                return s if (uploads, fingerprints) == (2, 1) else None

            wait_for(counted, timeout=60, what=lambda: f"uploads and a poll ran: {_ours(_try_scrape(port) or [])}")
        done = wait_for(
            lambda: (
                (s := scrape(port))
                and value(s, "acr_ingest_queue_tasks_total", queue=QUEUE)
                == value(s, "acr_ingest_jobs_total", kind="upload_url")
                and value(s, "acr_ingest_queue_tasks_total", queue=FINGERPRINT_QUEUE) == 1
                and s
            ),
            timeout=30,
            what=lambda: f"the runs counted by queue: {_ours(scrape(port))}",
        )
        assert value(done, "acr_ingest_queue_tasks_total", queue=QUEUE) >= 2
        assert value(done, "acr_ingest_queue_tasks_total", queue="other") == 0
    finally:
        worker.stop()
