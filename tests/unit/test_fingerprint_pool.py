"""The extraction threads (ingest/fingerprints/pool.py): they run at the nice they were given, as the kernel
reports it per thread, hand back the library's results and errors unchanged, and a forked child (a prefork
pool process) gets threads of its own."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ingest.fingerprints import NotDecodable, extract, extract_in_pool
from ingest.fingerprints.pool import run_in_pool
from ingest.settings import Settings
from tests.conftest import MEDIA
from tests.fingerprint_audio import write_wav

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")


def _kernel_nice(tid: int) -> int:
    """Field 19 of /proc/self/task/<tid>/stat: the thread's nice value (the name before it may hold spaces)."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19 - 3])  # fields 1 and 2 (pid, name) are left of the split


def _here() -> tuple[int, int, int]:
    tid = threading.get_native_id()
    return tid, _kernel_nice(tid), os.getpriority(os.PRIO_PROCESS, tid)


def test_an_extraction_thread_runs_at_the_configured_nice_and_the_callers_thread_does_not() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    nice = Settings(_env_file=None).fingerprint_nice
    assert nice == 10  # the default
    tid, in_proc, in_syscall = run_in_pool(_here, nice=nice)
    assert tid != threading.get_native_id()
    assert in_proc == in_syscall == min(19, base + nice)
    assert _here()[1:] == (base, base)  # the job's thread (here, the test's) keeps its priority
    # Another value is another set of threads; 0 leaves them at the worker's priority.
    assert run_in_pool(_here, nice=3)[1] == min(19, base + 3)
    assert run_in_pool(_here, nice=0)[1] == base
    assert run_in_pool(_here, nice=nice)[1] == min(19, base + nice)  # the first set again, still lowered


def test_results_and_errors_come_back_unchanged() -> None:
    write_wav(MEDIA / "pool-4s.wav", 4.0, seed=11)
    (MEDIA / "pool-junk.wav").write_bytes(os.urandom(40_000))
    assert extract_in_pool(MEDIA / "pool-4s.wav", nice=10) == extract(MEDIA / "pool-4s.wav")
    with pytest.raises(NotDecodable, match="not decodable audio"):
        extract_in_pool(MEDIA / "pool-junk.wav", nice=10)
    with pytest.raises(FileNotFoundError):
        run_in_pool(open, MEDIA / "no-such-file.wav", nice=10)


def test_a_forked_child_makes_threads_of_its_own() -> None:
    # Threads do not survive a fork: a child using the parent's executor would wait for ever.
    parent_tid = run_in_pool(_here, nice=10)[0]
    ready = False
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanups
        try:
            os.write(write_end, json.dumps(run_in_pool(_here, nice=10)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        answer = os.read(read_end, 1000) if ready else b""
    finally:
        os.close(read_end)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer, "the child's extraction thread never answered"
    tid, in_proc, _ = json.loads(answer)
    assert tid not in (parent_tid, pid)
    assert in_proc == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
