"""CPU of one upload job in this thread: ``run_job`` + ``handle_upload`` as a worker runs them, minus Celery.

    .venv/bin/python -m benchmarks.job_cpu [--jobs 200] [--database-url ...] [--cprofile]

Each job's operation and file row are written first, as the producer leaves them; only ``run_job`` is timed,
with ``time.thread_time`` (the in-process emulator answers in threads of its own, not counted). The shared
budget is off (no Redis needed). Compare runs of two commits alternately: a busy machine moves the figure.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BUCKET = 8820


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.job_cpu")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    p.add_argument("--cprofile", action="store_true", help="also print a cProfile of the jobs (thread CPU)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="also run the jobs on this many threads at once (as a worker's pool) against an emulator in its own "
        "process, and report this process's CPU per job: what threads sharing one interpreter and one database add",
    )
    args = p.parse_args(argv)

    from ingest.devtools.emulator import Emulator

    token = secrets.token_urlsafe(16)
    emu = Emulator(tokens={token}).start()
    work = Path(tempfile.mkdtemp(prefix="acr-ingest-jobcpu-"))
    os.environ.update(
        {
            "ACR_INGEST_API_BASE_URL": emu.url,
            "ACR_INGEST_ACCESS_TOKEN": token,
            "ACR_INGEST_DATABASE_URL": args.database_url or f"sqlite:///{work / 'jobs.db'}",
            "ACR_INGEST_RATE_LIMIT_MODE": "off",
        }
    )
    from ingest.api.client import AcrCloudClient
    from ingest.jobs.context import JobContext
    from ingest.jobs.inputs import VALIDATORS
    from ingest.jobs.managed_files import prepare_upload_row
    from ingest.jobs.runner import ensure_operation, run_job
    from ingest.jobs.uploads import handle_upload
    from ingest.settings import get_settings, reset_settings
    from ingest.store.db import session_scope
    from ingest.store.schema import upgrade

    reset_settings()
    upgrade()
    settings = get_settings()
    client = AcrCloudClient(settings.base_url, settings.current_token)
    run_tag = uuid.uuid4().hex[:8]

    clients: dict[str, Any] = {}

    def one(i: int, profile: cProfile.Profile | None = None, client_url: str | None = None) -> float:
        task_id, ref = str(uuid.uuid4()), f"job-{run_tag}-{i}"
        job_args = {"url": f"https://cdn.example.com/{ref}.mp3", "bucket_id": BUCKET, "title": ref, "ref": ref}
        with session_scope() as s:  # as the producer leaves it
            file_id = prepare_upload_row(s, None, VALIDATORS["upload_url"](job_args, settings)).id
            op = ensure_operation(s, "upload_url", job_args, task_id)
            op.file_id = file_id
            s.add(op)
        job_client = client
        if client_url is not None:  # one client per base URL, shared by the threads (a worker's is)
            job_client = clients.get(client_url) or clients.setdefault(
                client_url, AcrCloudClient(client_url, settings.current_token, pool_maxsize=32)
            )
        ctx = JobContext(task_id=task_id, settings=settings, client=job_client)
        started = time.thread_time()
        if profile is not None:
            profile.enable()
        out = run_job("upload_url", job_args, ctx, handle_upload)
        if profile is not None:
            profile.disable()
        if out["status"] != "succeeded":
            raise SystemExit(f"job {i} ended {out}")
        return time.thread_time() - started

    for i in range(20):  # connections, caches and the gates warm
        one(i)
    spent = sum(one(i) for i in range(20, 20 + args.jobs))
    print(
        f"CPU per upload job (this thread, no Celery, {settings.database_url.split(':')[0]}): "
        f"{spent / args.jobs * 1000:.2f} ms over {args.jobs} jobs"
    )
    if args.threads:
        _threaded(args.threads, args.jobs, one, token)
    if args.cprofile:
        profile = cProfile.Profile(time.thread_time)
        for i in range(20 + args.jobs, 20 + 2 * args.jobs):
            one(i, profile)
        stats = pstats.Stats(profile)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)  # where the time is spent, not only under what
        if os.environ.get("JOB_CPU_CALLERS"):
            stats.print_callers(os.environ["JOB_CPU_CALLERS"])
    client.close()
    emu.stop()
    return 0


def _threaded(threads: int, jobs: int, one: Any, token: str) -> None:
    """The same jobs on ``threads`` threads, the emulator in a child process (its CPU is not ours)."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from ingest.devtools.processes import free_port
    from ingest.settings import get_settings, reset_settings

    port = free_port()
    cmd = [sys.executable, "-m", "ingest.devtools.emulator", "--port", str(port), "--token", token]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ["ACR_INGEST_API_BASE_URL"] = f"http://127.0.0.1:{port}/api"
        reset_settings()
        import socket

        deadline = time.monotonic() + 20
        while True:  # listening yet?
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        base = 10_000
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: one(i, client_url=get_settings().base_url), range(base, base + 2 * threads)))
            started_cpu, started = time.process_time(), time.perf_counter()
            list(pool.map(lambda i: one(i, client_url=get_settings().base_url), range(base + 100, base + 100 + jobs)))
            cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
        print(
            f"CPU per upload job ({threads} threads, emulator in its own process): {cpu / jobs * 1000:.2f} ms "
            f"({jobs / wall:.0f} jobs/s)"
        )
    finally:
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
