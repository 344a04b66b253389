"""Where a worker extracts: a few threads of its own process, at a lower OS priority.

Extraction is the one CPU-heavy thing a worker does (~0.2 s per minute of audio, two orders of magnitude more
than a job's bookkeeping). Run in the job's thread at normal priority, a catalog of it takes the cores from
everything else on the machine, the same worker's updates and polls included. So a job thread hands the file
to a pool of at most one thread per CPU whose threads lowered their own nice value when they started (Linux
keeps one per thread, and the two short-lived threads the library starts per call inherit it): extraction
gets the CPU the rest leave idle. The job thread waits for the result; the library releases the GIL.

One pool per process and nice value, made on first use: a prefork pool process makes its own after the fork
(threads do not survive one).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ingest.fingerprints.extraction import Fingerprint, extract

T = TypeVar("T")
MAX_NICE = 19  # the lowest priority Linux has

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's cpuset, taskset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _forget_after_fork() -> None:
    # The child has the parent's executors but none of their threads, and perhaps a lock held at the fork.
    global _lock
    _lock = threading.Lock()
    _pools.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def lower_priority(nice: int) -> None:
    """Add ``nice`` (capped at 19) to the calling thread's nice value. Raising it needs no privilege; where it
    fails (a seccomp filter, another OS: elsewhere ``setpriority`` means the whole process), the thread
    carries on at normal priority."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def _pool(nice: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(nice)
        if pool is None:
            pool = _pools[nice] = ThreadPoolExecutor(
                max_workers=_usable_cpus(),
                thread_name_prefix=f"fingerprint-nice{nice}",
                initializer=lower_priority,
                initargs=(nice,),
            )
        return pool


def run_in_pool(fn: Callable[..., T], *args: Any, nice: int) -> T:
    """``fn(*args)`` run by one of this process's extraction threads at ``nice``; its result, or its
    exception as it is."""
    return _pool(nice).submit(fn, *args).result()


def extract_in_pool(path: str | os.PathLike[str], *, nice: int) -> Fingerprint:
    """``extract(path)`` in an extraction thread at ``nice`` more than normal (NotDecodable as it is)."""
    return run_in_pool(extract, path, nice=nice)
