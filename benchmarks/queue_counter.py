"""What counting each task run by its queue adds to a worker's CPU per task (``acr_ingest_queue_tasks_total``).

    .venv/bin/python -m benchmarks.queue_counter [--calls 200000]

In one process, prometheus_client in multiprocess mode on a temporary directory (as a worker's pool child):
Celery's ``task_postrun`` signal sent as the tracer sends it, with our receiver connected and without any, and
the outcome counter every job already increments (``count_job``). Reported per call in thread CPU and as
ratios within the run; benchmarks/job_cpu.py gives the CPU of a whole job to set it against.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace


class _Task:  # hashable, as a task is: the signal caches receivers per sender
    request = SimpleNamespace(delivery_info={"exchange": "", "routing_key": "ingest"})


def _per_call(fn: Callable[[], None], calls: int) -> float:
    for _ in range(1000):  # warm
        fn()
    started = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - started) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.queue_counter")
    p.add_argument("--calls", type=int, default=200_000)
    args = p.parse_args(argv)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="acr-ingest-bench-metrics-")

    from celery.signals import task_postrun

    from ingest.worker import observe
    from ingest.worker.metrics import count_job, queue_counters

    queue_counters()
    task = _Task()

    def send() -> None:
        task_postrun.send(sender=task, task_id="x", task=task, args=(), kwargs={}, retval=None, state="SUCCESS")

    with_receiver = _per_call(send, args.calls)
    task_postrun.disconnect(observe._count_by_queue)
    # The tracer skips the send when no receiver is connected: then the baseline is no signal at all.
    bare = _per_call(send, args.calls) if task_postrun.receivers else 0.0
    task_postrun.connect(observe._count_by_queue)
    outcome = _per_call(lambda: count_job("upload_url", "succeeded"), args.calls)
    added = with_receiver - bare
    print(f"task_postrun sent, our receiver counting by queue: {with_receiver * 1e6:.2f} us per task")
    print(f"without it (other receivers: {len(task_postrun.receivers) - 1}): {bare * 1e6:.2f} us per task")
    print(f"count_job (the per-job outcome counter, for scale): {outcome * 1e6:.2f} us per job")
    print(f"added per task x count_job: {added / outcome:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
