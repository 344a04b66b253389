"""CPU of one state-poll cycle over N processing files, and its API calls (issue 9: 10,000 files under 2 s).

    .venv/bin/python -m benchmarks.poll_cycle --files 10000 [--database-url postgresql+psycopg://...]

N files are put straight into the in-process emulator's store (half still processing, half ready) and as
``processing`` rows into a fresh database; then one cycle of ``poll_states`` runs in this thread. Reported:
this thread's CPU seconds (the emulator's threads are not counted), the wall time, the GETs by ids (must be
ceil(N / chunk)) and the rows it marked ready. Checked: every ready file is ``ready`` in the table, every
other one still ``processing``.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import tempfile
import time
from pathlib import Path

BUCKET = 8810


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.poll_cycle")
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="acr-ingest-poll-"))
    token = secrets.token_urlsafe(16)
    from ingest.devtools.emulator import Emulator

    emu = Emulator(tokens={token}).start()
    os.environ.update(
        {
            "ACR_INGEST_API_BASE_URL": emu.url,
            "ACR_INGEST_ACCESS_TOKEN": token,
            "ACR_INGEST_DATABASE_URL": args.database_url or f"sqlite:///{work / 'poll.db'}",
            "ACR_INGEST_RATE_LIMIT_MODE": "off",
        }
    )
    from sqlalchemy import delete, func, insert
    from sqlmodel import select

    from ingest.api.client import AcrCloudClient
    from ingest.devtools.emulator.app import GET_IDS as GET_IDS_ROUTE
    from ingest.jobs.context import JobContext
    from ingest.jobs.polling import poll_states
    from ingest.settings import get_settings, reset_settings
    from ingest.store.db import session_scope
    from ingest.store.models import FileStatus, TrackFile
    from ingest.store.schema import upgrade

    reset_settings()
    upgrade()
    settings = get_settings()
    store = emu._app.store  # straight in: 10,000 POSTs would measure the emulator, not the poll
    ready_ids = set()
    rows = []
    for i in range(args.files):
        ready = i % 2 == 0
        f = store.create(
            bucket_id=BUCKET,
            title=f"poll {i}",
            audio_id=f"POLL-{i:05d}",
            user_defined={},
            duration=1.0,
            final_state=1,
            processing_delay=0.0 if ready else 3600.0,
        )
        if ready:
            ready_ids.add(f["id"])
        rows.append(
            {
                "ref": f"POLL-{i:05d}",
                "bucket_id": BUCKET,
                "data_type": "audio_url",
                "title": f"poll {i}",
                "user_defined": {},
                "source": f"https://cdn.example.com/poll/{i}.mp3",
                "remote_id": f["id"],
                "acr_id": f["acr_id"],
                "remote_state": 0,
                "status": FileStatus.PROCESSING,
            }
        )
    with session_scope() as s:
        s.execute(delete(TrackFile).where(TrackFile.bucket_id == BUCKET))
        s.execute(insert(TrackFile), rows)

    with AcrCloudClient(settings.base_url, settings.current_token) as client:
        ctx = JobContext(task_id="poll-bench", settings=settings, client=client)
        before = emu.stats()["by_route"].get(GET_IDS_ROUTE, 0)
        cpu, wall = time.thread_time(), time.perf_counter()
        counts = poll_states(ctx, bucket_id=BUCKET)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        gets = emu.stats()["by_route"].get(GET_IDS_ROUTE, 0) - before

    with session_scope() as s:
        by_status = dict(
            s.exec(
                select(TrackFile.status, func.count()).where(TrackFile.bucket_id == BUCKET).group_by(TrackFile.status)
            ).all()
        )
    emu.stop()
    expected_gets = math.ceil(args.files / settings.ids_chunk_size)
    ok = (
        gets == expected_gets
        and by_status.get(FileStatus.READY, 0) == len(ready_ids)
        and by_status.get(FileStatus.PROCESSING, 0) == args.files - len(ready_ids)
    )
    print(
        f"{args.files} processing files ({len(ready_ids)} ready at the API), {settings.database_url.split(':')[0]}: "
        f"one cycle {cpu:.2f} s CPU (this thread), {wall:.2f} s wall, {gets} GETs by ids "
        f"(ceil(n/{settings.ids_chunk_size}) = {expected_gets}); rows now {by_status}; counts {counts}"
    )
    print("ok" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
