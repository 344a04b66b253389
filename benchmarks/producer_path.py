"""The producer's one-job path: ``Producer.upload_url`` called once per job in a loop, no worker running,
as a ratio to a bare ``app.send_task`` loop and to the naive API loop, each database in one run.

    .venv/bin/python -m benchmarks.producer_path [--jobs 2000] [--rabbitmq] [--profile DIR]

What an upstream catalog system pays per track it hands over: validation, the file row, the operation and
its outbox entry in one transaction, the publish, the entry marked sent. Each (database, broker) runs in a
child process of its own (fresh settings and engine), SQLite in a temporary folder and PostgreSQL in a
database made for the run (``--postgres-admin-url``; dropped afterwards), the broker a redis-server of its own
or, with ``--rabbitmq``, a vhost of its own on the local RabbitMQ (publisher confirms on). Figures per child:
jobs/s (wall) and this process's CPU per job, for

- ``send_task``: ``app.send_task(name, kwargs=..., task_id=...)`` N times on the project's Celery config:
  what a producer in another language pays for Celery alone, no database;
- ``upload_url``: ``Producer.upload_url`` N times, each a new ref.

The naive API loop (``AcrCloudClient.upload_url`` against the emulator at ``--latency``, one after another)
runs once, in this process. ``--profile DIR`` runs each child's ``upload_url`` loop under ``py-spy record``
(raw collapsed stacks in DIR) and prints the frames with the most samples. Checks: one file row, one
operation and one sent outbox entry per job, and one message per job on the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from ingest.devtools.processes import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = 8830
TASK = "ingest.upload_url"


# --- child: one database, one broker -------------------------------------------------------------------


def _queued(app: Any) -> int:
    from ingest.worker.app import QUEUE

    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(QUEUE, passive=True).message_count)


def _purge(app: Any) -> None:
    from ingest.worker.app import QUEUE

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)


def _commit_floor(engine: Any, n: int) -> dict[str, float]:
    """A bare driver loop of one single-row INSERT committed per iteration (no SQLAlchemy, no broker): what
    this disk and database allow for a call that is durable when it returns. SQLite with the project's
    pragmas (WAL, synchronous=NORMAL), PostgreSQL in autocommit (one round trip and one WAL flush each)."""
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        cur = driver.cursor()
        cur.execute("DROP TABLE IF EXISTS bench_floor")
        sqlite = engine.url.get_backend_name() == "sqlite"
        key = "INTEGER PRIMARY KEY" if sqlite else "BIGSERIAL PRIMARY KEY"
        cur.execute(f"CREATE TABLE bench_floor (id {key}, ref TEXT UNIQUE, payload TEXT, created_at TEXT)")
        driver.commit()
        if not sqlite:
            driver.autocommit = True
        mark = "?" if sqlite else "%s"
        statement = f"INSERT INTO bench_floor (ref, payload, created_at) VALUES ({mark}, {mark}, {mark})"
        payload = json.dumps({"url": "https://cdn.example.com/p/1.mp3", "title": "Track", "ref": "P-000001"})
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            cur.execute(statement, (f"F-{i}", payload, "2026-12-03T14:00:00"))
            if sqlite:
                driver.commit()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not sqlite:
            driver.autocommit = False
        cur.execute("DROP TABLE bench_floor")
        driver.commit()
    finally:
        raw.close()
    return {"jobs_per_s": round(n / wall, 1), "cpu_ms_per_job": round(cpu * 1000 / n, 3)}


def child(opts: argparse.Namespace) -> dict[str, Any]:
    os.environ.update(ACR_INGEST_BROKER_URL=opts.broker_url, ACR_INGEST_DATABASE_URL=opts.database_url)
    os.environ.pop("ACR_INGEST_DEFAULT_BUCKET", None)
    os.environ.pop("ACR_INGEST_PRODUCER_PUBLISH", None)
    from sqlalchemy import func
    from sqlmodel import SQLModel, col, select

    from ingest.producer import Producer
    from ingest.store.db import get_engine, session_scope
    from ingest.store.models import Operation, OutboxEntry, TrackFile
    from ingest.worker.app import QUEUE

    engine = get_engine()
    SQLModel.metadata.drop_all(engine)
    SQLModel.metadata.create_all(engine)
    producer = Producer(publish="sync")
    background = Producer(producer.app, producer.settings, publish="background")
    app = producer.app
    n = opts.jobs
    out: dict[str, Any] = {"database": engine.url.get_backend_name(), "broker": app.conf.broker_url.split(":")[0]}

    def timed(loop: Any) -> dict[str, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        loop()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"jobs_per_s": round(n / wall, 1), "cpu_ms_per_job": round(cpu * 1000 / n, 3)}

    kwargs = {"url": "https://cdn.example.com/x.mp3", "bucket_id": BUCKET, "title": "t", "ref": "r"}
    # Warm up every path (connections, declares, imports, the publisher's thread), then start from an empty queue.
    app.send_task(TASK, kwargs=kwargs, task_id=str(uuid.uuid4()))
    producer.upload_url("https://cdn.example.com/warm.mp3", title="warm", bucket_id=BUCKET + 1, ref="warm")
    background.upload_url("https://cdn.example.com/warm2.mp3", title="warm", bucket_id=BUCKET + 1, ref="warm2")
    background.flush()
    _purge(app)

    out["commit_floor"] = _commit_floor(engine, n)
    out["send_task"] = timed(
        lambda: [app.send_task(TASK, kwargs={**kwargs, "ref": f"S-{i}"}, task_id=str(uuid.uuid4())) for i in range(n)]
    )
    sent_by_send_task = _queued(app)
    _purge(app)

    def uploads(p: Any, prefix: str) -> Any:
        def loop() -> None:
            for i in range(n):
                p.upload_url(
                    f"https://cdn.example.com/p/{i}.mp3", title=f"Track {i}", bucket_id=BUCKET, ref=f"{prefix}-{i:06d}",
                    user_defined={"artist": f"Artist {i % 97}", "isrc": f"ISRC{i:08d}"},
                )  # fmt: skip
            p.flush()  # background: until the last message is published and marked (nothing in sync mode)

        return loop

    def profiled(name: str, loop: Any) -> dict[str, float]:
        if not opts.profile:
            return timed(loop)
        spy = subprocess.Popen(
            [
                shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                f"{opts.profile}-{name}.txt",
                "--pid",
                str(os.getpid()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches before the loop starts
        try:
            return timed(loop)
        finally:
            spy.send_signal(2)
            spy.wait(timeout=60)

    out["upload_url"] = profiled("sync", uploads(producer, "P"))
    queued_sync = _queued(app)
    _purge(app)
    out["upload_url_background"] = profiled("background", uploads(background, "B"))
    publisher = background._background
    assert publisher is not None
    out["background_mean_batch"] = round(publisher.published / max(publisher.batches, 1), 1)
    background.close()

    with session_scope() as s:
        rows = s.exec(select(func.count()).select_from(TrackFile).where(TrackFile.bucket_id == BUCKET)).one()
        ops = s.exec(select(func.count()).select_from(Operation).where(Operation.bucket_id == BUCKET)).one()
        unsent = s.exec(select(func.count()).select_from(OutboxEntry).where(col(OutboxEntry.sent_at).is_(None))).one()
        entries = s.exec(select(func.count()).select_from(OutboxEntry)).one()
    queued = _queued(app)
    _purge(app)
    out["checks"] = {
        "send_task: one message per job": sent_by_send_task == n,
        "one file row per job": rows == 2 * n,
        "one operation per job": ops == 2 * n,
        "every outbox entry sent": unsent == 0 and entries == 2 * n + 2,  # + the warm-ups'
        "sync: one message per job": queued_sync == n,
        "background: one message per job": queued == n,
    }
    out["queue"] = QUEUE
    return out


# --- parent ----------------------------------------------------------------------------------------------


def naive_rate(n: int, latency: float) -> float:
    from ingest.api.client import AcrCloudClient
    from ingest.devtools.emulator import Emulator

    token = secrets.token_urlsafe(16)
    emu = Emulator(tokens={token})
    emu.faults.latency = latency
    emu.start()
    try:
        with AcrCloudClient(emu.url, token) as client:
            t0 = time.perf_counter()
            for i in range(n):
                client.upload_url(BUCKET, f"https://cdn.example.com/n/{i}.mp3", title=f"naive {i}", audio_id=f"N-{i}")
            return n / (time.perf_counter() - t0)
    finally:
        emu.stop()


def top_frames(path: Path, k: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The frames with the most samples, as shares of all samples: anywhere on the stack (inclusive; the
    benchmark's own and the interpreter's frames left out) and at its top (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            if "runpy" not in frame and "benchmarks/" not in frame:
                inclusive[frame] += int(count)
    if not total:
        return {}
    return {
        "inclusive": [(frame, round(c / total, 3)) for frame, c in inclusive.most_common(k)],
        "self": [(frame, round(c / total, 3)) for frame, c in own.most_common(k)],
    }


def _postgres(admin_url: str) -> tuple[str, Any] | None:
    import psycopg

    name = f"acr_bench_producer_{os.getpid()}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'create database "{name}"')
    except psycopg.Error as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        return None

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')

    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", drop


def _rabbit_vhost(host: str) -> tuple[str, Any] | None:
    name = f"acr_bench_producer_{os.getpid()}"

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)

    if shutil.which("rabbitmqctl") is None or ctl("add_vhost", name).returncode != 0:
        print("RabbitMQ skipped: no rabbitmqctl, or it could not add a vhost", file=sys.stderr)
        return None
    ctl("set_permissions", "-p", name, host.split(":", 1)[0], ".*", ".*", ".*")
    return f"amqp://{host}/{name}", lambda: ctl("delete_vhost", name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--naive-jobs", type=int, default=40, help="uploads of the naive API loop")
    ap.add_argument("--latency", type=float, default=0.05, help="the emulator's latency for the naive loop (s)")
    ap.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--rabbitmq", action="store_true", help="also on RabbitMQ (a vhost of the run's own)")
    ap.add_argument("--rabbitmq-host", default="guest:guest@127.0.0.1:5672")
    ap.add_argument("--profile", metavar="DIR", help="py-spy each child's upload_url loop into DIR")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--database-url", help=argparse.SUPPRESS)
    ap.add_argument("--broker-url", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        print(json.dumps(child(opts)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="acr-bench-producer-"))
    cleanups: list[Any] = []
    redis_server = RedisServer(work / "redis").start()
    cleanups.append(redis_server.stop)
    try:
        databases = [f"sqlite:///{work / 'bench.db'}"]
        if not opts.no_postgres and (pg := _postgres(opts.postgres_admin_url)):
            databases.append(pg[0])
            cleanups.append(pg[1])
        brokers = [redis_server.url(0)]
        if opts.rabbitmq and (rabbit := _rabbit_vhost(opts.rabbitmq_host)):
            brokers.append(rabbit[0])
            cleanups.append(rabbit[1])
        naive = naive_rate(opts.naive_jobs, opts.latency)
        runs = []
        for broker in brokers:
            for database in databases:
                if database.startswith("sqlite"):
                    Path(database.removeprefix("sqlite:///")).unlink(missing_ok=True)
                cmd = [sys.executable, "-m", "benchmarks.producer_path", "--child", "--jobs", str(opts.jobs)]
                cmd += ["--database-url", database, "--broker-url", broker]
                profile = None
                if opts.profile:
                    Path(opts.profile).mkdir(parents=True, exist_ok=True)
                    profile = Path(opts.profile) / f"{database.split(':')[0]}-{broker.split(':')[0]}"
                    cmd += ["--profile", str(profile)]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                run = json.loads(done.stdout.strip().splitlines()[-1])
                bare, floor = run["send_task"], run["commit_floor"]
                for mode in ("upload_url", "upload_url_background"):
                    up = run[mode]
                    up["x_send_task"] = round(up["jobs_per_s"] / bare["jobs_per_s"], 3)
                    up["x_commit_floor"] = round(up["jobs_per_s"] / floor["jobs_per_s"], 3)
                    up["x_naive"] = round(up["jobs_per_s"] / naive, 1)
                if profile is not None:
                    run["top_frames"] = {
                        mode: top_frames(Path(f"{profile}-{mode}.txt"))
                        for mode in ("sync", "background")
                        if Path(f"{profile}-{mode}.txt").exists()
                    }
                runs.append(run)
        result = {
            "jobs": opts.jobs,
            "naive_api_loop_jobs_per_s": round(naive, 1),
            "load_avg": os.getloadavg(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "runs": runs,
        }
        print(json.dumps(result, indent=2))
        print(
            f"\n{'database':<12}{'broker':<8}{'floor/s':>9}{'send_task/s':>12}{'sync/s':>8}{'ms CPU':>7}"
            f"{'background/s':>13}{'ms CPU':>7}{'batch':>6}{'bg x sync':>10}{'bg x floor':>11}{'bg x send_task':>15}"
        )
        for r in runs:
            sync, bg = r["upload_url"], r["upload_url_background"]
            print(
                f"{r['database']:<12}{r['broker']:<8}{r['commit_floor']['jobs_per_s']:>9}"
                f"{r['send_task']['jobs_per_s']:>12}{sync['jobs_per_s']:>8}{sync['cpu_ms_per_job']:>7}"
                f"{bg['jobs_per_s']:>13}{bg['cpu_ms_per_job']:>7}{r['background_mean_batch']:>6}"
                f"{round(bg['jobs_per_s'] / sync['jobs_per_s'], 2):>10}{bg['x_commit_floor']:>11}"
                f"{bg['x_send_task']:>15}"
            )
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "producer_path.json").write_text(json.dumps(result, indent=2))
        return 0 if all(all(r["checks"].values()) for r in runs) else 1
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # one cleanup failing must not keep the others from running
                print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
