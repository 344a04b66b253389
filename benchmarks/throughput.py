"""Throughput of acr-ingest against its own emulator, as ratios to simpler baselines measured in the same run.

    .venv/bin/python -m benchmarks.throughput --jobs 300 --workers 2 --concurrency 8

Scenarios (see benchmarks/README.md): a naive sequential upload loop; the same uploads through the producer
and real worker processes; the same workers running a no-op task (the Celery + Redis ceiling); uploads
against a rate-limited emulator. Uses Redis database 10 only (flushed before and after), a SQLite database
in a temporary folder, and stops every process it starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks.profile import recording, render, top_frames
from ingest.devtools.processes import ChildProcess, celery_command

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Ours alone: the test suite uses 11-15. ACR_BENCH_BROKER_URL points a run at a Redis of its own, so two benchmarks
# run at once by different people do not flush each other's queues.
BROKER = os.environ.get("ACR_BENCH_BROKER_URL", "redis://127.0.0.1:6379/10")
NAIVE_BUCKET, PIPELINED_BUCKET, BACKLOG_BUCKET, LIMIT_BUCKET, SHARED_BUCKET = 8800, 8801, 8802, 8830, 8804
PIPELINED_BULK_BUCKET, POOL_BUCKET, BY_NAME_BUCKET, BY_NAME_BACKLOG_BUCKET = 8805, 8806, 8807, 8808
BULK_BATCH = 50  # upload_many's batch in the bulk pipelined scenario: small, so workers start at once
BUCKETS = (
    NAIVE_BUCKET,
    PIPELINED_BUCKET,
    BACKLOG_BUCKET,
    SHARED_BUCKET,
    PIPELINED_BULK_BUCKET,
    BY_NAME_BUCKET,
    BY_NAME_BACKLOG_BUCKET,
)
LIMITER_KEY = "acr-ingest:ratelimit"  # the shared budget's state (SharedRateLimit's key), in db 10 here
USER_DEFINED = {"artist": "Benchmark Ensemble"}
TICK = 0.05  # how often completion is checked: the timing resolution of the worker scenarios
CODE: dict[str, dict[str, Any]] = {}  # git state when each set of processes started


@dataclass
class Row:
    scenario: str
    count: int
    seconds: float | None
    rate: float | None
    unit: str
    ratio: float | None = None
    ratio_of: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


@dataclass
class Timing:
    enqueue_s: float
    remote_s: float | None = None  # every upload has a remote id (no-op tasks: every task ran)
    ready_s: float | None = None
    stats_at_remote: dict[str, Any] | None = None
    first_s: float | None = None  # the first upload with a remote id (first no-op task run)
    # Seconds until half and 90 % had a remote id: shows a long tail (retries waiting out their backoff).
    half_s: float | None = None
    p90_s: float | None = None
    # Backlog runs: the workers' CPU from the resume to the last remote id (last no-op run), the drain alone.
    drain_cpu: dict[str, float | None] | None = None

    def drain_rate(self, n: int) -> float | None:
        """(n - 1) / (last - first): the steady rate, without the time a resumed worker takes to start."""
        if self.remote_s is None or self.first_s is None or self.remote_s <= self.first_s:
            return None
        return (n - 1) / (self.remote_s - self.first_s)


def _rate(count: int, seconds: float | None) -> float | None:
    return count / seconds if seconds else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _url(tag: str, i: int) -> str:
    # Nothing with "invalid"/"broken" in it: the emulator would put those files in state -1.
    return f"https://cdn.example.com/bench/{tag.lower()}/{i:05d}.mp3"


# --- processes ---------------------------------------------------------------------------------------


@contextmanager
def workers(
    app_module: str, label: str, count: int, concurrency: int, env: dict[str, str], work: Path, *, beat: bool
) -> Iterator[list[ChildProcess]]:
    kids: list[ChildProcess] = []
    CODE[label] = git_state()  # what these processes import
    try:
        for n in range(1, count + 1):
            name = f"bench-{label}-{n}"
            kids.append(
                ChildProcess(
                    name,
                    celery_command(
                        "worker",
                        "--pool=threads",
                        f"--concurrency={concurrency}",
                        "--loglevel=WARNING",
                        f"--hostname={name}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        app=app_module,
                    ),
                    log=work / f"{name}.log",
                    env=env,
                    cwd=ROOT,
                )
            )
        if beat:
            name = f"beat-{label}"
            kids.append(
                ChildProcess(
                    name,
                    celery_command("beat", "--loglevel=WARNING", f"--schedule={work / name}", app=app_module),
                    log=work / f"{name}.log",
                    env=env,
                    cwd=ROOT,
                )
            )
        yield kids
    finally:
        # Beat first: otherwise it publishes polls that no worker is left to consume.
        for kid in reversed(kids):
            kid.stop()


@contextmanager
def profiled(out: Path | None, kids: list[ChildProcess], *, gil: bool = False) -> Iterator[list[Path]]:
    """py-spy on the workers while the body runs (``--profile``); nothing without it."""
    if out is None:
        yield []
        return
    with recording({k.name: k.proc.pid for k in kids if not k.name.startswith("beat")}, out, gil=gil) as files:
        yield files


def wait_ready(app: Any, kids: list[ChildProcess], count: int, timeout: float = 90) -> float:
    """Block until ``count`` workers answer a control ping; returns the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        for kid in kids:
            kid.check()
        replies = app.control.ping(timeout=0.5) or []
        if len({host for reply in replies for host in reply}) >= count:
            return time.perf_counter() - started
    raise RuntimeError(f"workers not ready after {timeout:.0f} s")


def wait_until(done: Callable[[], bool], kids: list[ChildProcess], timeout: float, tick: float = TICK) -> float | None:
    """The ``perf_counter()`` at which ``done()`` held, or None on timeout; a dead worker ends it at once."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if done():
            return time.perf_counter()
        for kid in kids:
            kid.check()
        time.sleep(tick)
    return None


def cpu_seconds(kids: list[ChildProcess]) -> float | None:
    """CPU time (user + system) the processes have used so far; None where /proc is missing."""
    total = 0.0
    try:
        for kid in kids:
            # Fields after the command name, which is in parentheses and may hold spaces: utime, stime are 14, 15.
            fields = Path(f"/proc/{kid.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


class CpuMeter:
    """CPU used by the workers and by this process (emulator + producer) between start() and stop()."""

    def __init__(self, kids: list[ChildProcess]) -> None:
        self.kids = [k for k in kids if not k.name.startswith("beat")]

    def start(self) -> CpuMeter:
        self.w0, self.s0 = cpu_seconds(self.kids), time.process_time()
        return self

    def stop(self, jobs: int) -> dict[str, float | None]:
        w1, s1 = cpu_seconds(self.kids), time.process_time()
        workers_ms = None if w1 is None or self.w0 is None else round((w1 - self.w0) * 1000 / jobs, 2)
        return {"workers_cpu_ms_per_job": workers_ms, "driver_cpu_ms_per_job": round((s1 - self.s0) * 1000 / jobs, 2)}


def pause(app: Any, count: int) -> None:
    """Workers stop taking jobs from the ``ingest`` queue (the poll's own queue goes on): a backlog builds."""
    from ingest.worker.app import QUEUE  # not at the top: importing ingest.worker.app reads the settings

    replies = app.control.cancel_consumer(QUEUE, reply=True, limit=count, timeout=10)
    if len(replies or []) < count:
        raise RuntimeError(f"only {len(replies or [])} of {count} workers paused")


def resume(app: Any, count: int) -> None:
    from ingest.worker.app import QUEUE

    replies = app.control.add_consumer(QUEUE, reply=True, limit=count, timeout=10)
    if len(replies or []) < count:
        raise RuntimeError(f"only {len(replies or [])} of {count} workers resumed")


# --- scenarios -----------------------------------------------------------------------------------------


def naive_loop(base_url: str, token: str, n: int) -> float:
    """One client, one request after another, nothing recorded: what a one-off script would do."""
    from ingest.api.client import AcrCloudClient

    with AcrCloudClient(base_url, token) as client:
        started = time.perf_counter()
        for i in range(n):
            client.upload_url(
                NAIVE_BUCKET, _url("naive", i), title=f"naive {i}", user_defined=USER_DEFINED, audio_id=f"NAIVE-{i:05d}"
            )
        return time.perf_counter() - started


def thread_pool(base_url: str, token: str, n: int, threads: int) -> float:
    """What a user would write instead of a queue: ``ThreadPoolExecutor(threads)`` posting the uploads with one
    ``requests.Session`` per thread, every answer checked (a 2xx naming the new file). Nothing recorded."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    local = threading.local()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def post(i: int) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = {
            "data_type": "audio_url",
            "title": f"pool {i}",
            "url": _url("pool", i),
            "user_defined": USER_DEFINED,
            "audio_id": f"POOL-{i:05d}",
        }
        resp = session.post(f"{base_url}/buckets/{POOL_BUCKET}/files", json=body, headers=headers, timeout=30)
        resp.raise_for_status()
        data = resp.json()
        data = data.get("data", data)
        if not data.get("id") or not data.get("acr_id"):
            raise RuntimeError(f"upload {i} answered without an id: {resp.text[:200]}")
        return int(data["id"])

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(post, range(n)))
    elapsed = time.perf_counter() - started
    if len(set(ids)) != n:
        raise RuntimeError(f"thread pool: {len(set(ids))} distinct ids for {n} uploads")
    return elapsed


def noop_tasks(n: int, workers: int, kids: list[ChildProcess], timeout: float, *, backlog: bool) -> Timing:
    """``n`` no-op tasks, sent while the workers consume, or queued first and then drained (``backlog``)."""
    from benchmarks.noop_app import COUNTER_KEY, NOOP_TASK, app

    r = redis.Redis.from_url(BROKER)
    r.delete(COUNTER_KEY)
    if backlog:
        pause(app, workers)
    started = time.perf_counter()
    for _ in range(n):
        app.send_task(NOOP_TASK)
    timing = Timing(time.perf_counter() - started)
    meter = CpuMeter(kids)
    if backlog:
        started = time.perf_counter()
        meter.start()
        resume(app, workers)
    # A fine tick: these runs last well under a second.
    first = wait_until(lambda: int(r.get(COUNTER_KEY) or 0) >= 1, kids, timeout, tick=0.005)
    done = wait_until(lambda: int(r.get(COUNTER_KEY) or 0) >= n, kids, timeout, tick=0.005)
    if backlog:
        timing.drain_cpu = meter.stop(n)
    timing.first_s = None if first is None else first - started
    timing.remote_s = None if done is None else done - started
    return timing


@dataclass
class Progress:
    total: int
    remote: int  # processing or ready: the API has the file
    ready: int
    final_bad: int  # failed, error, cancelled: will never be ready


def progress(bucket: int) -> Progress:
    from sqlalchemy import case, func
    from sqlmodel import select

    from ingest.store.db import session_scope
    from ingest.store.models import FileStatus, TrackFile

    status: Any = TrackFile.status
    with session_scope() as s:
        total, remote, ready, bad = s.exec(
            select(
                func.count(),
                func.sum(case((status.in_([FileStatus.PROCESSING, FileStatus.READY]), 1), else_=0)),
                func.sum(case((status == FileStatus.READY, 1), else_=0)),
                func.sum(case((status.in_([FileStatus.FAILED, FileStatus.ERROR, FileStatus.CANCELLED]), 1), else_=0)),
            ).where(TrackFile.bucket_id == bucket)
        ).one()
    return Progress(total, remote or 0, ready or 0, bad or 0)


def ingest_uploads(
    producer: Any,
    emu: Any,
    bucket: int,
    n: int,
    tag: str,
    workers: int,
    kids: list[ChildProcess],
    timeout: float,
    *,
    backlog: bool = False,
    bulk: int = 0,
    by_name: bool = False,
) -> Timing:
    """``n`` URL uploads through the producer; seconds until every row has a remote id and until every row
    is ready. Pipelined (default): the workers consume while the producer enqueues and the clock starts at
    the first enqueue, so the producer is part of the path. ``backlog``: all are queued first and the clock
    starts when the workers resume: what the workers alone can do. ``bulk``: enqueued with
    ``Producer.upload_many`` in batches of that many (validated as they are built), as a catalog import does.
    ``by_name``: sent as another system sends them, ``send_task("ingest.upload_url", kwargs=...)``, no producer
    rows: the worker writes them."""
    if backlog:
        pause(producer.app, workers)
    started = time.perf_counter()
    if bulk:
        from ingest.jobs.inputs import validate_upload_url

        def job(i: int) -> Any:
            args = {"url": _url(tag, i), "title": f"{tag} {i}", "bucket_id": bucket, "ref": f"{tag}-{i:05d}"}
            return validate_upload_url({**args, "user_defined": USER_DEFINED}, producer.settings)

        for _ in producer.upload_many((job(i) for i in range(n)), batch_size=bulk):
            pass
    elif by_name:
        for i in range(n):
            kwargs = {"url": _url(tag, i), "title": f"{tag} {i}", "bucket_id": bucket, "ref": f"{tag}-{i:05d}"}
            producer.app.send_task("ingest.upload_url", kwargs={**kwargs, "user_defined": USER_DEFINED})
    else:
        for i in range(n):
            producer.upload_url(
                _url(tag, i), title=f"{tag} {i}", bucket_id=bucket, ref=f"{tag}-{i:05d}", user_defined=USER_DEFINED
            )
    timing = Timing(time.perf_counter() - started)
    meter = CpuMeter(kids)
    if backlog:
        started = time.perf_counter()
        meter.start()
        resume(producer.app, workers)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        p = progress(bucket)
        now = time.perf_counter() - started
        if timing.first_s is None and p.remote >= 1:
            timing.first_s = now
        if timing.half_s is None and p.remote >= n / 2:
            timing.half_s = now
        if timing.p90_s is None and p.remote >= 0.9 * n:
            timing.p90_s = now
        if timing.remote_s is None and p.remote >= n:
            timing.remote_s, timing.stats_at_remote = now, emu.stats()
            if backlog:
                timing.drain_cpu = meter.stop(n)
        if p.ready >= n:
            timing.ready_s = now
            break
        if p.ready + p.final_bad >= n:  # some will never be ready: stop waiting, the checks report it
            break
        for kid in kids:
            kid.check()
        time.sleep(TICK)
    return timing


def forget_buckets() -> None:
    """Remove the benchmark's buckets' rows (an earlier run's, in a database given with --database-url)."""
    from sqlalchemy import delete
    from sqlmodel import col

    from ingest.store.db import session_scope
    from ingest.store.models import Operation, TrackFile

    ours = [*BUCKETS, *(LIMIT_BUCKET + k for k in range(1, 45))]
    with session_scope() as s:
        s.execute(delete(Operation).where(col(Operation.bucket_id).in_(ours)))
        s.execute(delete(TrackFile).where(col(TrackFile.bucket_id).in_(ours)))


def bucket_check(emu: Any, bucket: int, tag: str, n: int) -> tuple[bool, dict[str, Any]]:
    """Exactly one file per ref in the emulator's bucket, and every operation succeeded."""
    from sqlalchemy import func
    from sqlmodel import select

    from ingest.store.db import session_scope
    from ingest.store.models import Operation

    per_ref = Counter(f["audio_id"] for f in emu.files(bucket))
    expected = {f"{tag}-{i:05d}" for i in range(n)}
    with session_scope() as s:
        ops = dict(
            s.exec(
                select(Operation.status, func.count()).where(Operation.bucket_id == bucket).group_by(Operation.status)
            ).all()
        )
    ok = set(per_ref) == expected and all(c == 1 for c in per_ref.values()) and ops == {"succeeded": n}
    return ok, {
        "bucket_files": sum(per_ref.values()),
        "refs_duplicated": sum(c > 1 for c in per_ref.values()),
        "refs_missing": len(expected - set(per_ref)),
        "operations": ops,
    }


def stats_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}

    return {
        "requests": after["requests"] - before["requests"],
        "by_route": diff(after["by_route"], before["by_route"]),
        "by_status": diff(after["by_status"], before["by_status"]),
    }


def rate_limited(
    report: Report,
    key: str,
    label: str,
    emu: Any,
    producer: Any,
    bucket: int,
    m: int,
    limit: float,
    workers: int,
    kids: list[ChildProcess],
    timeout: float,
    *,
    backlog: bool = False,
) -> list[Row]:
    """``m`` uploads against an emulator limited to ``limit`` requests/s: the API requests it accepted per
    second while uploads were being sent (that is when the limit binds), the 429s, and the checks. ``backlog``:
    queued first, then the workers resume, so the limit binds from the first call (not after the producer
    got ahead of it), and the clock runs from the first upload with an id (the workers' wake-up excluded)."""
    tag = key.upper()
    before, cpu = emu.stats(), CpuMeter(kids).start()
    t = ingest_uploads(producer, emu, bucket, m, tag, workers, kids, timeout, backlog=backlog)
    after, used = emu.stats(), cpu.stop(m)
    window = stats_delta(t.stats_at_remote or after, before)
    accepted = window["requests"] - window["by_status"].get("429", 0)
    seconds = t.remote_s
    if backlog:
        seconds = None if t.remote_s is None or t.first_s is None else t.remote_s - t.first_s
        accepted -= 1  # the first upload's call came before the clock started
    api_rate = _rate(accepted, seconds)
    whole = stats_delta(after, before)
    ok, info = bucket_check(emu, bucket, tag, m)
    report.checks[f"{label}: one file per ref, no job failed, all ready"] = ok and t.ready_s is not None
    report.details[key] = {
        "limit_per_s": limit,
        "uploads": m,
        "enqueue_s": round(t.enqueue_s, 3),
        "half_remote_s": t.half_s,
        "p90_remote_s": t.p90_s,
        "remote_s": t.remote_s,
        "ready_s": t.ready_s,
        "backlog": backlog,
        "first_remote_s": t.first_s,
        "accepted_requests_per_s": api_rate,
        "status_429": whole["by_status"].get("429", 0),
        "api_until_remote": window,
        "api_until_ready": whole,
        **used,
        **info,
    }
    return [
        Row(
            f"{label}: accepted API requests",
            accepted,
            seconds,
            api_rate,
            "req/s",
            _ratio(api_rate, limit),
            "x limit",
        ),
        Row(
            f"{label}: uploads -> ready",
            m,
            t.ready_s,
            _rate(m, t.ready_s),
            "files/s",
            _ratio(_rate(m, t.ready_s), limit),
            "x limit",
        ),
    ]


# --- driver --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, report: Report) -> None:
    from ingest.devtools.emulator import Emulator

    n, w, threads = args.jobs, args.workers, args.workers * args.concurrency
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:

        def emulator(limit: float | None = None, port: int = 0) -> Emulator:
            # Every scenario, the baseline too, sees the same API latency.
            fresh = Emulator(tokens={token}, processing_delay=args.processing_delay, rate_limit=limit)
            fresh.faults.latency = args.latency
            return fresh.start(port=port)

        # As the vendor's Laravel does, the API announces its limit on every answer (X-RateLimit-Limit), one the
        # run never reaches; --announced-limit 0: an API that announces none (the budget's AIMD slow start).
        emu = emulator(args.announced_limit or None)
        stack.callback(lambda: emu.stop())  # late binding: stops the restarted emulator too
        env = {
            "ACR_INGEST_API_BASE_URL": emu.url,
            "ACR_INGEST_ACCESS_TOKEN": token,
            "ACR_INGEST_BROKER_URL": BROKER,
            "ACR_INGEST_DATABASE_URL": args.database_url or f"sqlite:///{work / 'bench.db'}",
            "ACR_INGEST_POLL_INTERVAL": str(args.poll_interval),
            "ACR_INGEST_DEFAULT_BUCKET": str(PIPELINED_BUCKET),
        }
        # Before anything reads the settings: the producer here and the workers must see the same values.
        os.environ.update(env)
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        from ingest.settings import reset_settings

        reset_settings()
        from ingest.store.schema import upgrade

        upgrade()  # the tables, once, before the workers (which refuse a schema not at head)
        forget_buckets()  # a database of the caller's (--database-url) may hold an earlier run's rows
        report.details["settings"] = {k: v for k, v in env.items() if k != "ACR_INGEST_ACCESS_TOKEN"}
        report.details["announced_limit"] = args.announced_limit

        print(f"[1/4] naive loop: {n} sequential upload_url calls", flush=True)
        cpu = CpuMeter([]).start()
        naive_s = naive_loop(emu.url, token, n)
        report.details["naive"] = cpu.stop(n)  # this process: the client and the in-process emulator
        naive = _rate(n, naive_s)
        report.add(Row("naive loop (1 thread, no DB/broker)", n, naive_s, naive, "files/s", 1.0, "baseline"))
        cpu = CpuMeter([]).start()
        pool_s = thread_pool(emu.url, token, n, args.pool_threads)
        report.details["thread_pool"] = cpu.stop(n)
        pool = _rate(n, pool_s)
        report.add(
            Row(
                f"{args.pool_threads}-thread pool script (no DB/broker)",
                n,
                pool_s,
                pool,
                "files/s",
                _ratio(pool, naive),
                "x naive",
            )
        )

        # The no-op workers run another app, so they go (and are stopped) before the ingest workers start.
        print(f"[2/4] no-op ceiling: {n} tasks on {w} workers x {args.concurrency} threads", flush=True)
        from benchmarks.noop_app import app as noop_app

        with workers("benchmarks.noop_app", "noop", w, args.concurrency, child_env, work, beat=False) as kids:
            report.details["noop_worker_start_s"] = round(wait_ready(noop_app, kids, w), 2)
            cpu = CpuMeter(kids).start()
            noop_pipe = noop_tasks(n, w, kids, args.timeout, backlog=False)
            report.details["noop_pipelined"] = {"publish_s": round(noop_pipe.enqueue_s, 3), **cpu.stop(n)}
            cpu.start()
            noop_back = noop_tasks(n, w, kids, args.timeout, backlog=True)
            report.details["noop_backlog"] = {
                "resume_to_first_s": noop_back.first_s,
                **cpu.stop(n),
                "drain_workers_cpu_ms_per_job": (noop_back.drain_cpu or {}).get("workers_cpu_ms_per_job"),
            }
        report.checks["no-op: every task ran"] = None not in (noop_pipe.remote_s, noop_back.remote_s)
        redis.Redis.from_url(BROKER).flushdb()

        print(
            f"[3/4] acr-ingest: 3 x {n} uploads through the producer, {w} workers x {args.concurrency} threads + beat",
            flush=True,
        )
        from ingest.producer import Producer

        producer = Producer()
        with workers("ingest.worker.app", "ingest", w, args.concurrency, child_env, work, beat=True) as kids:
            report.details["ingest_worker_start_s"] = round(wait_ready(producer.app, kids, w), 2)
            for label, bucket, tag, backlog, bulk, by_name in (
                ("pipelined", PIPELINED_BUCKET, "PIPE", False, 0, False),
                ("pipelined_bulk", PIPELINED_BULK_BUCKET, "BULK", False, BULK_BATCH, False),
                ("by_name", BY_NAME_BUCKET, "NAME", False, 0, True),
                ("backlog", BACKLOG_BUCKET, "BACK", True, 0, False),
                ("by_name_backlog", BY_NAME_BACKLOG_BUCKET, "NAMB", True, 0, True),
            ):
                before, cpu = emu.stats(), CpuMeter(kids).start()
                spy = args.profile if (backlog and (not by_name or args.profile_by_name)) else None
                with profiled(spy and spy / label, kids, gil=args.profile_gil) as spied:
                    t = ingest_uploads(
                        producer,
                        emu,
                        bucket,
                        n,
                        tag,
                        w,
                        kids,
                        args.timeout,
                        backlog=backlog,
                        bulk=bulk,
                        by_name=by_name,
                    )
                used = cpu.stop(n)
                if spied:
                    report.details[f"profile_{label}"] = render(*top_frames(spied, 40))
                ok, info = bucket_check(emu, bucket, tag, n)
                report.checks[f"acr-ingest {label}: one file per ref, every job succeeded, all ready"] = (
                    ok and t.ready_s is not None
                )
                report.details[f"ingest_{label}"] = {
                    "enqueue_s": round(t.enqueue_s, 3),
                    "first_remote_s": t.first_s,
                    "remote_s": t.remote_s,
                    "ready_s": t.ready_s,
                    **used,
                    "api": stats_delta(emu.stats(), before),
                    **info,
                    "drain_workers_cpu_ms_per_job": (t.drain_cpu or {}).get("workers_cpu_ms_per_job"),
                }
                if backlog and by_name:
                    named_back = t
                elif backlog:
                    back = t
                elif bulk:
                    pipe_bulk = t
                elif by_name:
                    named = t
                else:
                    pipe = t

            port = emu.port

        # No rate-limit setting at all (the learned shared budget, the default), each worker count on fresh
        # workers and beat, a fresh emulator limited to R req/s on the same port and a budget learned from scratch.
        m, limit = args.limited_jobs, args.rate_limit
        limited: list[Row] = []
        for k in args.limited_workers:
            print(f"[4/4] rate limit: {m} uploads against {limit:g} requests/s, {k} worker(s), no setting", flush=True)
            emu.stop()
            emu = emulator(limit, port)
            redis.Redis.from_url(BROKER).delete(LIMITER_KEY)
            with workers("ingest.worker.app", f"limited{k}", k, args.concurrency, child_env, work, beat=True) as kids:
                wait_ready(producer.app, kids, k)
                limited += rate_limited(
                    report,
                    f"rate_limit_w{k}",
                    f"rate limit {limit:g}/s, {k} worker(s)",
                    emu,
                    producer,
                    LIMIT_BUCKET + k,
                    m,
                    limit,
                    k,
                    kids,
                    args.timeout,
                )
                # Again on the budget that run learned (kept in Redis for a day): what restarted workers and
                # every later batch start from.
                limited += rate_limited(
                    report,
                    f"rate_limit_w{k}_learned",
                    f"rate limit {limit:g}/s, {k} worker(s), learned",
                    emu,
                    producer,
                    LIMIT_BUCKET + 10 + k,
                    m,
                    limit,
                    k,
                    kids,
                    args.timeout,
                )
                # The same two as a backlog: the producer (sharing this process and the 2 cores) no longer sets
                # the pace, the limit binds from the first call. From scratch: the budget deleted, and the API's
                # window left to empty first.
                for learned in (False, True):
                    if not learned:
                        redis.Redis.from_url(BROKER).delete(LIMITER_KEY)
                        time.sleep(1.5)
                    suffix = "_learned" if learned else ""
                    limited += rate_limited(
                        report,
                        f"rate_limit_w{k}_backlog{suffix}",
                        f"rate limit {limit:g}/s, {k} worker(s), backlog{', learned' if learned else ''}",
                        emu,
                        producer,
                        LIMIT_BUCKET + 20 + 10 * learned + k,
                        m,
                        limit,
                        k,
                        kids,
                        args.timeout,
                        backlog=True,
                    )

        if args.shared_limit:
            # The project's own answer to a rate limit (ACR_INGEST_RATE_LIMIT, a token bucket in Redis db 10
            # here) needs workers started with it: fresh workers, beat and emulator.
            print(f"[4b] rate limit with ACR_INGEST_RATE_LIMIT={args.shared_limit:g}: {m} uploads", flush=True)
            redis.Redis.from_url(BROKER).delete(LIMITER_KEY)
            emu.stop()
            emu = emulator(limit, port)
            # A fresh database too (SQLite): the rows of [4/4] have verifications due in ~2 minutes (every
            # re-posted upload gets one), which would spend this scenario's API budget.
            fresh = {"ACR_INGEST_DATABASE_URL": args.database_url or f"sqlite:///{work / 'shared.db'}"}
            os.environ.update(fresh)
            reset_settings()
            upgrade()
            producer = Producer()
            shared_env = {**child_env, **fresh, "ACR_INGEST_RATE_LIMIT": f"{args.shared_limit:g}"}
            with workers("ingest.worker.app", "shared", w, args.concurrency, shared_env, work, beat=True) as kids:
                wait_ready(producer.app, kids, w)
                limited += rate_limited(
                    report,
                    "shared_rate_limit",
                    f"rate limit {limit:g}/s, shared budget {args.shared_limit:g}/s",
                    emu,
                    producer,
                    SHARED_BUCKET,
                    m,
                    limit,
                    w,
                    kids,
                    args.timeout,
                )

    pipe_rate, back_rate, noop_back_rate = _rate(n, pipe.remote_s), back.drain_rate(n), noop_back.drain_rate(n)

    def span(t: Timing) -> float | None:
        return None if t.remote_s is None or t.first_s is None else t.remote_s - t.first_s

    rows = [
        Row(
            "acr-ingest: producer enqueue (DB row + publish)",
            n,
            pipe.enqueue_s,
            _rate(n, pipe.enqueue_s),
            "jobs/s",
            _ratio(_rate(n, pipe.enqueue_s), naive),
            "x naive",
        ),
        Row(
            f"acr-ingest pipelined -> remote id ({threads} thr)",
            n,
            pipe.remote_s,
            pipe_rate,
            "files/s",
            _ratio(pipe_rate, naive),
            "x naive",
        ),
        Row(
            f"acr-ingest pipelined -> remote id, x the {args.pool_threads}-thread pool",
            n,
            pipe.remote_s,
            pipe_rate,
            "files/s",
            _ratio(pipe_rate, pool),
            "x pool",
        ),
        Row(
            f"acr-ingest pipelined -> ready (poll {args.poll_interval:g} s)",
            n,
            pipe.ready_s,
            _rate(n, pipe.ready_s),
            "files/s",
            _ratio(_rate(n, pipe.ready_s), naive),
            "x naive",
        ),
        Row(
            f"producer upload_many (batches of {BULK_BATCH}), workers running",
            n,
            pipe_bulk.enqueue_s,
            _rate(n, pipe_bulk.enqueue_s),
            "jobs/s",
            _ratio(_rate(n, pipe_bulk.enqueue_s), naive),
            "x naive",
        ),
        Row(
            "acr-ingest pipelined, upload_many -> remote id",
            n,
            pipe_bulk.remote_s,
            _rate(n, pipe_bulk.remote_s),
            "files/s",
            _ratio(_rate(n, pipe_bulk.remote_s), naive),
            "x naive",
        ),
        Row(
            "acr-ingest pipelined, upload_many -> ready",
            n,
            pipe_bulk.ready_s,
            _rate(n, pipe_bulk.ready_s),
            "files/s",
            _ratio(_rate(n, pipe_bulk.ready_s), naive),
            "x naive",
        ),
        Row(
            "acr-ingest sent by name (send_task) -> remote id",
            n,
            named.remote_s,
            _rate(n, named.remote_s),
            "files/s",
            _ratio(_rate(n, named.remote_s), naive),
            "x naive",
        ),
        Row(
            f"acr-ingest backlog drain -> remote id ({threads} thr)",
            n - 1,
            span(back),
            back_rate,
            "files/s",
            _ratio(back_rate, naive),
            "x naive",
        ),
        Row(
            "acr-ingest sent by name, backlog drain -> remote id",
            n - 1,
            span(named_back),
            named_back.drain_rate(n),
            "files/s",
            _ratio(named_back.drain_rate(n), naive),
            "x naive",
        ),
        Row(
            f"no-op tasks pipelined ({threads} thr)",
            n,
            noop_pipe.remote_s,
            _rate(n, noop_pipe.remote_s),
            "tasks/s",
            _ratio(pipe_rate, _rate(n, noop_pipe.remote_s)),
            "acr-ingest / no-op",
        ),
        Row(
            f"no-op tasks backlog drain ({threads} thr)",
            n - 1,
            span(noop_back),
            noop_back_rate,
            "tasks/s",
            _ratio(back_rate, noop_back_rate),
            "acr-ingest / no-op",
        ),
        *limited,
    ]
    for row in rows:
        report.add(row)


def table(report: Report) -> str:
    def num(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = ("scenario", "count", "seconds", "rate", "ratio")
    body = [
        (
            r.scenario,
            str(r.count),
            num(r.seconds, ".2f"),
            f"{num(r.rate, '.1f')} {r.unit}",
            f"{num(r.ratio, '.2f')} {r.ratio_of}".strip(),
        )
        for r in report.rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(wd) if i in (1, 2) else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), "  ".join("-" * wd for wd in widths), *map(line, body)])


def notes(report: Report) -> str:
    """What the table cannot show: the tail and the API calls under a rate limit, and CPU per job."""

    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    d, out = report.details, []
    unlimited_cpu = d["ingest_pipelined"]["workers_cpu_ms_per_job"]
    for key in [k for k in d if k.startswith("rate_limit_w")] + ["shared_rate_limit"]:
        if (lim := d.get(key)) is None:
            continue
        calls = lim["api_until_ready"]["requests"]
        share = lim["status_429"] / calls if calls else 0.0
        cpu = lim["workers_cpu_ms_per_job"]
        out.append(
            f"{key}: {lim['accepted_requests_per_s'] or 0:.1f} accepted req/s = "
            f"{(lim['accepted_requests_per_s'] or 0) / lim['limit_per_s']:.2f} of the limit; 429s {share:.2%} of "
            f"{calls} calls; workers' CPU {cpu} ms/upload = "
            f"{(cpu or 0) / unlimited_cpu if unlimited_cpu else 0:.2f}x the unlimited pipelined run"
        )
        out.append(
            f"{key}: half the uploads had an id after {sec(lim['half_remote_s'])}, 90 % after "
            f"{sec(lim['p90_remote_s'])}, all after {sec(lim['remote_s'])}; {lim['status_429']} x 429; "
            f"API calls until then {lim['api_until_remote']['by_route']}; {lim['bucket_files']} files in the "
            f"bucket for {lim['uploads']} refs; operations {lim['operations']}"
        )
    out.append(
        f"CPU ms per job: naive loop (client + emulator) {d['naive']['driver_cpu_ms_per_job']}; no-op workers "
        f"{d['noop_backlog']['workers_cpu_ms_per_job']}; acr-ingest workers "
        f"{d['ingest_backlog']['workers_cpu_ms_per_job']} (backlog), producer + emulator "
        f"{d['ingest_pipelined']['driver_cpu_ms_per_job']} (pipelined), workers "
        f"{d['ingest_pipelined']['workers_cpu_ms_per_job']} (pipelined); no-op ratio (backlog) "
        f"{_ratio(d['ingest_backlog']['workers_cpu_ms_per_job'], d['noop_backlog']['workers_cpu_ms_per_job']) or 0:.1f}"
        "x"
    )

    def per_job(key: str) -> float | None:
        return d[key]["workers_cpu_ms_per_job"]

    def versus(key: str, noop: str) -> str:
        return f"{per_job(key)} / {per_job(noop)} = {_ratio(per_job(key), per_job(noop)) or 0:.1f}x"

    out.append(
        "worker CPU ms per job x a no-op task: pipelined "
        f"{versus('ingest_pipelined', 'noop_pipelined')}; sent by name {versus('ingest_by_name', 'noop_pipelined')}; "
        f"backlog {versus('ingest_backlog', 'noop_backlog')}; sent by name, backlog "
        f"{versus('ingest_by_name_backlog', 'noop_backlog')}"
    )

    def drained(key: str) -> float | None:
        return d[key].get("drain_workers_cpu_ms_per_job")

    def drain_versus(key: str) -> str:
        noop = drained("noop_backlog")
        return f"{drained(key)} / {noop} = {_ratio(drained(key), noop) or 0:.1f}x"

    # The figures above count from before the enqueue to the last file ready: for a backlog that includes the
    # seconds the producer takes to queue it, in which the paused workers still poll every --poll-interval.
    out.append(
        "worker CPU ms per job during the drain alone (resume -> last remote id) x the no-op's drain: producer jobs "
        f"{drain_versus('ingest_backlog')}; sent by name {drain_versus('ingest_by_name_backlog')}"
    )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="acr-ingest throughput as ratios to baselines measured in the same run",
    )
    p.add_argument("--jobs", type=int, default=300, help="uploads (and no-op tasks) per scenario")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=8, help="threads per worker")
    p.add_argument("--rate-limit", type=float, default=20.0, help="emulator limit in the last scenario, requests/s")
    p.add_argument(
        "--limited-workers",
        type=lambda v: [int(x) for x in v.split(",") if x.strip() and int(x) > 0],
        default=[2],
        help="worker counts for the rate-limit scenario, e.g. 1,2,4 (each on fresh workers; 0: skip it)",
    )
    p.add_argument(
        "--database-url", default=None, help="e.g. postgresql+psycopg://postgres@127.0.0.1:5432/bench (default SQLite)"
    )
    p.add_argument("--limited-jobs", type=int, default=200, help="uploads in the rate-limit scenario")
    p.add_argument(
        "--shared-limit",
        type=float,
        default=0.0,
        help="also run the rate-limit scenario on workers with ACR_INGEST_RATE_LIMIT=this (0: skip)",
    )
    p.add_argument("--latency", type=float, default=0.05, help="emulator latency of every request, s")
    p.add_argument(
        "--announced-limit",
        type=float,
        default=1000.0,
        help="the limit the emulator announces (X-RateLimit-Limit) outside the rate-limit scenario, requests/s; "
        "0: none (the default limiter then starts from RATE_LIMIT_INITIAL, 5/s, and doubles each second)",
    )
    p.add_argument("--pool-threads", type=int, default=16, help="threads of the thread-pool baseline script")
    p.add_argument(
        "--profile", type=Path, default=None, help="py-spy the workers during the backlog drain into this folder"
    )
    p.add_argument(
        "--profile-by-name", action="store_true", help="with --profile: also py-spy the backlog of jobs sent by name"
    )
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (where Python spends CPU; no waits)",
    )
    p.add_argument("--processing-delay", type=float, default=0.2, help="emulator processing time, s")
    p.add_argument("--poll-interval", type=float, default=0.5, help="ACR_INGEST_POLL_INTERVAL, s")
    p.add_argument("--timeout", type=float, default=300.0, help="give up waiting on a scenario after this, s")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (worker logs, database)")
    return p.parse_args(argv)


def git_state() -> dict[str, Any]:
    """The code being measured. The project changes under a benchmark: every result names its commit and
    a hash of any uncommitted change to ingest/ and tasks/."""

    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip()

    try:
        diff = git("diff", "HEAD", "--", "ingest", "tasks")
        return {
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else None,
        }
    except (OSError, subprocess.SubprocessError):
        return {}


def _interrupt(signum: int, _frame: object) -> None:
    # The workers run in sessions of their own, so a signal to this process does not reach them:
    # turn SIGTERM/SIGHUP into an exception so the finally blocks stop them and remove the temp folder.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    broker = redis.Redis.from_url(BROKER)
    broker.flushdb()  # leftovers of an interrupted run would be consumed here and skew the counts
    work = Path(tempfile.mkdtemp(prefix="acr-ingest-bench-"))
    report = Report()
    CODE["driver"] = git_state()
    started = time.perf_counter()
    try:
        run(args, work, report)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}); workers stopped", file=sys.stderr)
        return 130
    finally:
        broker.flushdb()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    import celery

    d = report.details
    d["machine"] = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
    }
    d["args"] = vars(args)
    d["total_s"] = round(time.perf_counter() - started, 1)
    d["code"] = CODE
    states = {(c.get("commit"), c.get("uncommitted")) for c in CODE.values()}
    print()
    print(table(report))
    print()
    print(notes(report))
    for key in [k for k in d if k.startswith("profile_")]:
        print(f"\nworkers' profile, {key.removeprefix('profile_')}:\n{d[key]}")
    for name, ok in report.checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": [asdict(r) for r in report.rows],
                "checks": report.checks,
                "details": report.details,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    code = ", ".join(f"{c}{f' + uncommitted {u}' if u else ''}" for c, u in sorted(states, key=str))
    print(f"\n{out.relative_to(ROOT)} written; whole run {d['total_s']} s on {os.cpu_count()} cores; code {code}")
    if len(states) > 1:
        print("WARNING: the code changed during the run (see details.code): scenarios are not comparable")
    return 0 if all(report.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
