"""py-spy on the benchmark's worker processes: a sampled profile of one scenario and its top frames.

    .venv/bin/python -m benchmarks.throughput --profile benchmarks/results/profile

records each ingest worker during the backlog drain (the workers' own work, no producer in the way) as
py-spy's collapsed stacks (``<worker>.txt``, for a flame graph: ``flamegraph.pl`` or speedscope) and prints
the frames that hold the most samples. py-spy must be installed (``pip install py-spy``; it attaches with
ptrace, so run as root or with ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# "func (path/to/module.py:123)": the line is dropped so one function is one frame.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class FrameShare:
    frame: str
    inclusive: float  # share of samples with this frame anywhere on the stack
    own: float  # share of samples with this frame on top


@contextmanager
def recording(pids: dict[str, int], out: Path, rate: int = 200, *, gil: bool = False) -> Iterator[list[Path]]:
    """py-spy records each process (name -> pid) while the body runs; yields the raw files being written.
    ``gil``: only the thread holding the GIL is sampled, so waits in C (a socket, SQLite's lock) drop out."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("--profile needs py-spy on PATH (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    spies, files = [], []
    for name, pid in pids.items():
        path = out / f"{name}.txt"
        cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(path)]
        if gil:
            cmd.append("--gil")
        spies.append(subprocess.Popen([*cmd, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        files.append(path)
    time.sleep(0.5)  # attaching takes a moment; the scenario starts right after
    try:
        yield files
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()


def _frame(text: str) -> str:
    m = _FRAME.match(text.strip())
    if m is None:
        return text.strip()
    file = m["file"]
    for marker in ("site-packages/", "/ingest/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1] if marker != "/ingest/" else "ingest/" + file.split(marker, 1)[1]
            break
    return f"{m['func']} ({file})"


def top_frames(files: list[Path], n: int = 25) -> tuple[int, list[FrameShare]]:
    """(samples, the ``n`` frames with the most inclusive samples) over all the files."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the thread
            if not frames:
                continue
            total += count
            for frame in set(frames):
                inclusive[frame] += count
            own[frames[-1]] += count
    shares = [FrameShare(f, c / total, own[f] / total) for f, c in inclusive.most_common(n)] if total else []
    return total, shares


def render(total: int, shares: list[FrameShare]) -> str:
    lines = [f"{total} samples; inclusive %, own %, frame"]
    lines += [f"{s.inclusive * 100:5.1f}  {s.own * 100:5.1f}  {s.frame}" for s in shares]
    return "\n".join(lines)
