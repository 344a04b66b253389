"""CPU per job of our Redis transport's reliable fetch against kombu's own transport, in one run.

    .venv/bin/python -m benchmarks.redis_fetch [--jobs 2000] [--rounds 3] [--concurrency 8]

The same no-op task (benchmarks/noop_app.py: the project's Celery configuration, acks late, prefetch 1)
runs on one worker process with each transport in turn, ``--rounds`` times alternately (a busy machine moves
the figures; alternation spreads that over both). Each round measures the worker's CPU (user + system,
from /proc) per job for tasks sent while the worker consumes (the fetch mostly blocks in ``BLMOVE``) and
for a backlog queued first (the fetch's ``LMOVE`` script finds a message at once). Reports the median of
each and the ratio ours / kombu's. Uses Redis database 10 of the local Redis (flushed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import redis

from benchmarks.throughput import BROKER, ROOT, CpuMeter, noop_tasks, wait_ready, workers

TRANSPORTS = ("kombu", "ours")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.redis_fetch")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)

    redis.Redis.from_url(BROKER).flushdb()
    figures: dict[str, dict[str, list[float]]] = {t: {"pipelined": [], "backlog": []} for t in TRANSPORTS}
    with tempfile.TemporaryDirectory(prefix="acr-ingest-bench-fetch-") as tmp:
        work = Path(tmp)
        # Workers refuse to start on a database without the schema, even for a no-op task.
        os.environ.update(ACR_INGEST_BROKER_URL=BROKER, ACR_INGEST_DATABASE_URL=f"sqlite:///{work / 'bench.db'}")
        from ingest.settings import reset_settings
        from ingest.store.schema import upgrade

        reset_settings()
        upgrade()
        for r in range(args.rounds):
            for transport in TRANSPORTS:
                env = {
                    **os.environ,
                    "ACR_INGEST_BENCH_TRANSPORT": transport,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                }
                from benchmarks.noop_app import app

                with workers(
                    "benchmarks.noop_app", f"fetch-{transport}", 1, args.concurrency, env, work, beat=False
                ) as kids:
                    wait_ready(app, kids, 1)
                    for mode in ("pipelined", "backlog"):
                        cpu = CpuMeter(kids).start()
                        timing = noop_tasks(args.jobs, 1, kids, args.timeout, backlog=mode == "backlog")
                        if timing.remote_s is None:
                            raise SystemExit(f"{transport} {mode}: not every task ran within {args.timeout} s")
                        used = cpu.stop(args.jobs)["workers_cpu_ms_per_job"]
                        assert used is not None
                        figures[transport][mode].append(used)
                        print(f"round {r + 1} {transport:5} {mode:9}: {used:.3f} ms CPU/job", flush=True)
    redis.Redis.from_url(BROKER).flushdb()
    summary = {
        mode: {
            **{t: round(statistics.median(figures[t][mode]), 3) for t in TRANSPORTS},
            "ours/kombu": round(
                statistics.median(figures["ours"][mode]) / statistics.median(figures["kombu"][mode]), 3
            ),
        }
        for mode in ("pipelined", "backlog")
    }
    print(json.dumps({"jobs": args.jobs, "rounds": args.rounds, "median_worker_cpu_ms_per_job": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
