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

BUCKET = 8820


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.job_cpu")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    p.add_argument("--cprofile", action="store_true", help="also print a cProfile of the jobs (thread CPU)")
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

    def one(i: int, profile: cProfile.Profile | None = None) -> float:
        task_id, ref = str(uuid.uuid4()), f"job-{run_tag}-{i}"
        job_args = {"url": f"https://cdn.example.com/{ref}.mp3", "bucket_id": BUCKET, "title": ref, "ref": ref}
        with session_scope() as s:  # as the producer leaves it
            file_id = prepare_upload_row(s, None, VALIDATORS["upload_url"](job_args, settings)).id
            op = ensure_operation(s, "upload_url", job_args, task_id)
            op.file_id = file_id
            s.add(op)
        ctx = JobContext(task_id=task_id, settings=settings, client=client)
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


if __name__ == "__main__":
    raise SystemExit(main())
