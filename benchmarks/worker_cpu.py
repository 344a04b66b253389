"""Worker CPU per job of a backlog drain, x a no-op task's on the same workers (issue 19's "<= 2x a no-op").

    .venv/bin/python -m benchmarks.worker_cpu [--jobs 300] [--rounds 3] [--workers 2] [--concurrency 8]

The throughput benchmark's scenarios alone, so that several rounds fit in a few minutes: per round, W workers x C
threads drain N no-op tasks (benchmarks/noop_app.py), then fresh acr-ingest workers and beat (poll every
``--poll-interval``) drain N uploads queued by the producer (``upload_many``: the rows a producer writes, queued
in a second) and N uploads sent by name (``send_task``: the worker writes the rows). The figure is the workers'
CPU (user + system, /proc) from the resume to the last remote id (last no-op run) over N, the poll's cycles in
that window included. The emulator answers after ``--latency`` (50 ms). Reports each round, the medians and
their ratios to the no-op's median. A busy machine moves every figure by tens of percent between runs: compare
two trees by alternating rounds of each (``--rounds 1`` from each tree in turn), and read the ratios.
Uses Redis database 10 (``ACR_BENCH_BROKER_URL``), flushed before and after; SQLite in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
from pathlib import Path
from typing import Any

import redis

from benchmarks.throughput import (
    BROKER,
    RESULTS,
    ROOT,
    bucket_check,
    git_state,
    ingest_uploads,
    noop_tasks,
    profiled,
    wait_ready,
    workers,
)

SCENARIOS = ("noop", "producer", "by_name")
BUCKET = 8900  # + 10 x round (+ 1: sent by name): the progress of a drain is counted per bucket


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker_cpu")
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="drain this many tasks of each scenario's kind first, unmeasured (fresh workers' first jobs build "
        "SQLAlchemy's statement cache, connections and lazy imports: a long-lived worker has them)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy (--gil: where the workers' Python time goes) each scenario's workers into DIR/<scenario>-<round>",
    )
    args = p.parse_args(argv)

    from ingest.devtools.emulator import Emulator

    n, w = args.jobs, args.workers

    def spy(scenario: str, r: int) -> Path | None:
        return args.profile / f"{scenario}-{r + 1}" if args.profile else None

    token = secrets.token_urlsafe(24)
    emu = Emulator(tokens={token})
    emu.faults.latency = args.latency
    emu.start()
    figures: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    redis.Redis.from_url(BROKER).flushdb()
    try:
        with tempfile.TemporaryDirectory(prefix="acr-ingest-bench-wcpu-") as tmp:
            work = Path(tmp)
            os.environ.update(
                {
                    "ACR_INGEST_API_BASE_URL": emu.url,
                    "ACR_INGEST_ACCESS_TOKEN": token,
                    "ACR_INGEST_BROKER_URL": BROKER,
                    "ACR_INGEST_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
                    "ACR_INGEST_POLL_INTERVAL": str(args.poll_interval),
                }
            )
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
            from ingest.settings import reset_settings
            from ingest.store.schema import upgrade

            reset_settings()
            upgrade()
            from benchmarks.noop_app import app as noop_app
            from ingest.producer import Producer

            producer = Producer()
            for r in range(args.rounds):
                with workers("benchmarks.noop_app", "noop", w, args.concurrency, env, work, beat=False) as kids:
                    wait_ready(noop_app, kids, w)
                    if args.warmup:
                        noop_tasks(args.warmup, w, kids, args.timeout, backlog=True)
                    with profiled(spy("noop", r), kids, gil=True):
                        timing = noop_tasks(n, w, kids, args.timeout, backlog=True)
                    figures["noop"].append(_drained(timing.drain_cpu))
                # Each round its own buckets: the rows of earlier rounds stay.
                with workers("ingest.worker.app", "ingest", w, args.concurrency, env, work, beat=True) as kids:
                    wait_ready(producer.app, kids, w)

                    def drain(bucket: int, count: int, tag: str, by_name: bool) -> Any:
                        # Producer jobs queued by upload_many (batches of 50), or sent by name; then drained.
                        bulk = 0 if by_name else 50
                        return ingest_uploads(
                            producer, emu, bucket, count, tag, w, kids, args.timeout, backlog=True, bulk=bulk,
                            by_name=by_name,
                        )  # fmt: skip

                    if args.warmup:  # a bucket of its own, both kinds of job
                        for by_name in (False, True):
                            drain(BUCKET + 10 * r + 5 + by_name, args.warmup, f"W{r:03d}{by_name:d}", by_name)
                    for scenario, by_name in (("producer", False), ("by_name", True)):
                        bucket, tag = BUCKET + 10 * r + by_name, f"{'N' if by_name else 'P'}{r:03d}"
                        with profiled(spy(scenario, r), kids, gil=True):
                            t = drain(bucket, n, tag, by_name)
                        ok, info = bucket_check(emu, bucket, tag, n)
                        if not ok or t.remote_s is None:
                            raise SystemExit(f"round {r + 1} {scenario}: not every upload landed once: {info}")
                        figures[scenario].append(_drained(t.drain_cpu))
                print(
                    f"round {r + 1}: worker CPU ms/job, backlog drain: "
                    + ", ".join(f"{s} {figures[s][-1]:.2f}" for s in SCENARIOS),
                    flush=True,
                )
    finally:
        emu.stop()
        redis.Redis.from_url(BROKER).flushdb()
    medians = {s: round(statistics.median(v), 2) for s, v in figures.items()}
    summary = {
        "jobs": n,
        "rounds": args.rounds,
        "workers": f"{w} x {args.concurrency} threads",
        "code": git_state(),
        "load_average": os.getloadavg(),
        "worker_cpu_ms_per_job": figures,
        "median": medians,
        "x_noop": {s: round(medians[s] / medians["noop"], 2) for s in ("producer", "by_name")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "worker_cpu.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("median", "x_noop", "load_average", "code")}))
    return 0


def _drained(cpu: dict[str, float | None] | None) -> float:
    used = (cpu or {}).get("workers_cpu_ms_per_job")
    if used is None:
        raise SystemExit("no CPU figure (is /proc readable?)")
    return used


if __name__ == "__main__":
    raise SystemExit(main())
