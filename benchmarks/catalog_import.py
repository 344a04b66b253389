"""The catalog import at scale: rows/s and memory of ``Producer.upload_many`` over a generated catalog,
as a ratio to enqueueing the same rows one at a time (``Producer.upload_url``), in one run.

    .venv/bin/python -m benchmarks.catalog_import --rows 100000
    .venv/bin/python -m benchmarks.catalog_import --database-url postgresql+psycopg://127.0.0.1/test

No worker runs: this is the producer alone (CSV parse, validation, planning, bulk insert, pipelined
publish). It starts a redis-server of its own (ingest.devtools.processes.RedisServer) and a SQLite
database in a temporary folder; both are removed afterwards. Checks: one row and one message per ref.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ingest.devtools.processes import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _write_catalog(path: Path, rows: int, bucket: int) -> None:
    with path.open("w") as f:
        f.write("ref,title,url,bucket,artist,isrc\n")
        for i in range(rows):
            f.write(f"CAT-{i:07d},Track {i},https://cdn.example.com/a/{i}.mp3,{bucket},Artist {i % 997},ISRC{i:08d}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=2_000, help="rows enqueued one at a time (the baseline)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--database-url", help="default: SQLite in the temporary folder (a PostgreSQL one is emptied)")
    ap.add_argument(
        "--cprofile", metavar="FILE", help="cProfile the import (slower): stats to FILE, top frames printed"
    )
    opts = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="acr-bench-import-"))
    redis_server = RedisServer(work / "redis").start()
    try:
        os.environ.update(
            ACR_INGEST_BROKER_URL=redis_server.url(0),
            ACR_INGEST_DATABASE_URL=opts.database_url or f"sqlite:///{work / 'bench.db'}",
        )
        os.environ.pop("ACR_INGEST_DEFAULT_BUCKET", None)
        import redis
        from sqlmodel import SQLModel

        from ingest.jobs.catalog_input import read_catalog
        from ingest.producer import Producer
        from ingest.settings import get_settings
        from ingest.store.db import get_engine

        settings = get_settings()
        engine = get_engine()
        SQLModel.metadata.drop_all(engine)
        SQLModel.metadata.create_all(engine)
        broker = redis.Redis.from_url(redis_server.url(0))
        producer = Producer(settings=settings)

        # Baseline: the same kind of rows through the one-at-a-time producer.
        t0 = time.perf_counter()
        for i in range(opts.baseline_rows):
            producer.upload_url(
                f"https://cdn.example.com/b/{i}.mp3", title=f"Track {i}", bucket_id=1, ref=f"B-{i}",
                user_defined={"artist": f"Artist {i % 997}", "isrc": f"ISRC{i:08d}"},
            )  # fmt: skip
        one_rate = opts.baseline_rows / (time.perf_counter() - t0)
        broker.delete("ingest")

        catalog = work / "catalog.csv"
        _write_catalog(catalog, opts.rows, bucket=2)
        rss: list[tuple[int, float]] = [(0, _rss_mb())]
        counts: dict[str, int] = {}
        profile = cProfile.Profile() if opts.cprofile else None
        t0, cpu0 = time.perf_counter(), time.process_time()
        if profile:
            profile.enable()
        with catalog.open(newline="") as f:
            for o in producer.upload_many(read_catalog(f, "csv", settings), batch_size=opts.batch_size):
                counts[o.outcome.value] = counts.get(o.outcome.value, 0) + 1
                if o.index % (opts.rows // 10 or 1) == 0:
                    rss.append((o.index, _rss_mb()))
        if profile:
            profile.disable()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if profile:
            profile.dump_stats(opts.cprofile)
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).strip_dirs()
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(25)
            print(out.getvalue(), file=sys.stderr)
        bulk_rate = opts.rows / seconds
        queued = broker.llen("ingest")

        t0 = time.perf_counter()
        with catalog.open(newline="") as f:
            rerun = sum(1 for o in producer.upload_many(read_catalog(f, "csv", settings)) if o.outcome == "unchanged")
        rerun_rate = opts.rows / (time.perf_counter() - t0)

        from sqlalchemy import func
        from sqlmodel import Session, select

        from ingest.store.models import TrackFile

        with Session(engine) as s:
            db_rows = s.exec(select(func.count()).select_from(TrackFile).where(TrackFile.bucket_id == 2)).one()
        growth = rss[-1][1] - rss[1][1] if len(rss) > 2 else 0.0
        result: dict[str, Any] = {
            "rows": opts.rows,
            "database": engine.url.get_backend_name(),
            "one_at_a_time_rows_per_s": round(one_rate, 1),
            "import_seconds": round(seconds, 2),
            "import_rows_per_s": round(bulk_rate, 1),
            "ratio_to_one_at_a_time": round(bulk_rate / one_rate, 1),
            # The machine is shared: rows per CPU second of this process says what one free core would do.
            "import_rows_per_cpu_s": round(opts.rows / cpu, 1),
            "rerun_rows_per_s": round(rerun_rate, 1),
            "rss_mb_at": [(n, round(mb, 1)) for n, mb in rss],
            "rss_growth_mb_from_10pct_to_end": round(growth, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "checks": {
                "all queued": counts == {"queued": opts.rows},
                "one row per ref": db_rows == opts.rows,
                "one message per ref": queued == opts.rows,
                "re-run unchanged": rerun == opts.rows,
            },
        }
        print(json.dumps(result, indent=2))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "catalog_import.json").write_text(json.dumps(result, indent=2))
        return 0 if all(result["checks"].values()) else 1
    finally:
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
