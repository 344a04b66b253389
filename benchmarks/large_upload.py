"""One large ``upload_file`` through a worker: its peak RSS growth, and its time as a ratio to ``curl -F``.

    .venv/bin/python -m benchmarks.large_upload --size-mb 1024

Guards for issue 9's "flat memory stays flat": a 1 GB upload must not grow the worker's memory, and must
cost little more than curl sending the same file to the same server. In one run, against the project's
emulator (in this process, on a free loopback port, no latency; it counts file parts, keeps none):

- curl -F: the file and the form fields the worker sends, timed from start to exit (the baseline);
- the client alone: ``AcrCloudClient.upload_file`` in a process of its own, no Celery, no database;
- the worker: one ``ingest.upload_file`` job sent with ``Producer.upload_file`` to a Celery worker
  (threads pool) on a redis-server of its own, SQLite in the temporary folder; timed from the enqueue
  until the file's row has its remote id. The worker's VmHWM (peak RSS) is read after a small warm-up
  job and again after the large ones.

The file is sparse (``truncate``: reading it costs no disk I/O, so the figures are the upload's CPU
cost) unless ``--fill blocks`` writes it as one random 1 MiB block repeated. Everything is made in a
temporary folder and removed afterwards, on Ctrl-C and SIGTERM too. Checks: every request answered,
exactly ``--rounds`` files in each measured bucket with the file's size as the emulator received it,
one per ref, every operation succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CURL_BUCKET, CLIENT_BUCKET, WORKER_BUCKET, WARMUP_BUCKET = 8850, 8851, 8852, 8853
BIG_NAME, WARMUP_NAME = "big.bin", "warmup.bin"
USER_DEFINED = {"artist": "Benchmark Ensemble"}
TICK = 0.02  # how often the worker's row is checked: the timing resolution of the worker path
MIB = 1 << 20


# --- helpers ---------------------------------------------------------------------------------------


def make_file(path: Path, size: int, fill: str) -> None:
    """``sparse``: a hole of ``size`` bytes (reads as zeros, from no disk). ``blocks``: one random MiB repeated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fill == "sparse":
        with path.open("wb") as f:
            f.truncate(size)
        return
    block = os.urandom(MIB)
    with path.open("wb") as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(left, MIB)])


def proc_status_kb(pid: int | str, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status: VmHWM (peak resident set) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def mb(kb: int) -> float:
    return round(kb / 1024, 2)


def git_commit() -> str:
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "ingest")
        return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes to ingest/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- the three paths ---------------------------------------------------------------------------------


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # processes waited for: curl, the client
    return usage.ru_utime + usage.ru_stime


def pid_cpu(pid: int) -> float:
    # utime and stime are fields 14 and 15, after the command name (in parentheses, may hold spaces).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def curl_upload(curl: str, url: str, auth_header: Path, path: Path, ref: str, work: Path) -> tuple[float, float]:
    """``curl -F`` with the fields ``AcrCloudClient.upload_file`` sends; seconds from start to exit, and its CPU."""
    out = work / "curl-answer.json"
    cmd = [
        curl,
        "--silent",
        "--show-error",
        "--output",
        str(out),
        "--write-out",
        "%{http_code}",
        "--header",
        f"@{auth_header}",  # from a file: the token never appears in a process listing
        "--form",
        "data_type=audio",
        "--form",
        f"title=curl {ref}",
        "--form",
        f"user_defined={json.dumps(USER_DEFINED)}",
        "--form",
        f"audio_id={ref}",
        "--form",
        f"file=@{path};type=application/octet-stream",
        f"{url}/buckets/{CURL_BUCKET}/files",
    ]
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    seconds, cpu = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode != 0 or done.stdout.strip() != "200":
        answer = out.read_text(errors="replace")[:500] if out.exists() else ""
        raise RuntimeError(f"curl failed ({done.returncode}, HTTP {done.stdout.strip()}): {done.stderr} {answer}")
    return seconds, cpu


CLIENT_SCRIPT = """
import json, time, sys
from ingest.api.client import AcrCloudClient
from ingest.settings import get_settings
from benchmarks.large_upload import proc_status_kb
big, warmup, bucket, warm_bucket, ref = sys.argv[1:6]
with AcrCloudClient.from_settings(get_settings()) as client:
    client.upload_file(int(warm_bucket), warmup, title="client warm-up", audio_id=ref + "-warmup")
    hwm0 = proc_status_kb("self", "VmHWM")
    t0, cpu0 = time.perf_counter(), time.process_time()
    ud = {"artist": "Benchmark Ensemble"}
    client.upload_file(int(bucket), big, title="client " + ref, user_defined=ud, audio_id=ref)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
hwm1 = proc_status_kb("self", "VmHWM")
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "hwm_before_kb": hwm0, "hwm_after_kb": hwm1}))
"""


def client_upload(env: dict[str, str], big: Path, warmup: Path, ref: str) -> dict[str, Any]:
    """``AcrCloudClient.upload_file`` in a fresh process (after one small upload), timed inside it."""
    cmd = [sys.executable, "-c", CLIENT_SCRIPT, str(big), str(warmup), str(CLIENT_BUCKET), str(WARMUP_BUCKET), ref]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the client process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def remote_id_of(ref: str, bucket: int) -> int | None:
    from sqlmodel import select

    from ingest.store.db import session_scope
    from ingest.store.models import TrackFile

    with session_scope() as s:
        ids = s.exec(select(TrackFile.remote_id).where(TrackFile.bucket_id == bucket, TrackFile.ref == ref)).all()
    return ids[0] if ids and ids[0] is not None else None


def wait_for(done: Callable[[], Any], check: Callable[[], None], timeout: float, what: str) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if (result := done()) is not None:
            return result
        check()
        time.sleep(TICK)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def worker_upload(producer: Any, worker: Any, path: str, ref: str, bucket: int, timeout: float) -> tuple[float, float]:
    """One ``ingest.upload_file`` job; seconds from the enqueue until the row has its remote id, and the
    worker's CPU in that time."""
    cpu, started = pid_cpu(worker.pid), time.perf_counter()
    producer.upload_file(path, title=f"worker {ref}", bucket_id=bucket, ref=ref, user_defined=USER_DEFINED)
    wait_for(lambda: remote_id_of(ref, bucket), worker.check, timeout, f"the remote id of {ref}")
    return time.perf_counter() - started, pid_cpu(worker.pid) - cpu


# --- checks ------------------------------------------------------------------------------------------


def bucket_check(emu: Any, bucket: int, refs: list[str], size: int) -> dict[str, Any]:
    """Exactly one file per ref in the bucket, nothing else, each received whole."""
    files = emu.files(bucket)
    received = emu.received_bytes(bucket)
    per_ref = Counter(f["audio_id"] for f in files)
    sizes = sorted({received.get(f["id"]) for f in files}, key=str)
    return {
        "ok": sorted(per_ref.elements()) == sorted(refs) and sizes == [size],
        "files": len(files),
        "refs": dict(per_ref),
        "received_bytes": sizes,
    }


def worker_db_check(emu: Any, refs: list[str]) -> dict[str, Any]:
    """Every operation of the worker's bucket succeeded, and each row holds the id the emulator gave it."""
    from sqlalchemy import func
    from sqlmodel import select

    from ingest.store.db import session_scope
    from ingest.store.models import Operation, TrackFile

    with session_scope() as s:
        ops = dict(
            s.exec(
                select(Operation.status, func.count())
                .where(Operation.bucket_id == WORKER_BUCKET)
                .group_by(Operation.status)
            ).all()
        )
        rows = {
            ref: rid
            for ref, rid in s.exec(
                select(TrackFile.ref, TrackFile.remote_id).where(TrackFile.bucket_id == WORKER_BUCKET)
            ).all()
        }
    remote = {f["audio_id"]: f["id"] for f in emu.files(WORKER_BUCKET)}
    return {"ok": ops == {"succeeded": len(refs)} and rows == remote, "operations": ops}


# --- driver ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    from ingest.devtools.emulator import Emulator
    from ingest.devtools.processes import ChildProcess, RedisServer, celery_command

    size = args.size_mb * MIB
    media = work / "media"
    big, warmup = media / BIG_NAME, media / WARMUP_NAME
    print(f"[1/4] a {args.size_mb} MiB {args.fill} file in {work}", flush=True)
    if args.fill == "blocks" and shutil.disk_usage(work).free < size + (1 << 30):
        raise SystemExit(f"not enough free space in {work} for a {args.size_mb} MiB file")
    make_file(big, size, args.fill)
    make_file(warmup, args.warmup_mb * MIB, args.fill)
    token = secrets.token_urlsafe(24)
    auth_header = work / "auth-header"
    auth_header.touch(mode=0o600)
    auth_header.write_text(f"Authorization: Bearer {token}\n")

    with ExitStack() as stack:
        emu = Emulator(tokens={token}, processing_delay=0.2).start()  # no faults: no latency
        stack.callback(emu.stop)
        redis_server = RedisServer(work / "redis").start()
        stack.callback(redis_server.stop)
        env = {
            "ACR_INGEST_API_BASE_URL": emu.url,
            "ACR_INGEST_ACCESS_TOKEN": token,
            "ACR_INGEST_BROKER_URL": redis_server.url(0),
            "ACR_INGEST_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
            "ACR_INGEST_MEDIA_ROOT": str(media),
            "ACR_INGEST_DEFAULT_BUCKET": str(WORKER_BUCKET),
        }
        os.environ.update(env)  # before anything here reads the settings: the worker sees the same
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        from ingest.settings import reset_settings

        reset_settings()
        from ingest.store.schema import upgrade

        upgrade()

        print(f"[2/4] worker: celery -A ingest.worker, threads pool x {args.concurrency}", flush=True)
        worker = ChildProcess(
            "bench-bigfile-worker",
            celery_command(
                "worker",
                "--pool=threads",
                f"--concurrency={args.concurrency}",
                "--loglevel=WARNING",
                "--hostname=bench-bigfile@%h",
                "--without-gossip",
                "--without-mingle",
                app="ingest.worker",
            ),
            log=work / "worker.log",
            env=child_env,
            cwd=ROOT,
        )
        stack.callback(worker.stop)
        from ingest.producer import Producer

        producer = Producer()
        wait_for(lambda: producer.app.control.ping(timeout=0.5) or None, worker.check, 90, "the worker's ping")
        idle_hwm = proc_status_kb(worker.pid, "VmHWM")
        wait_for_warmup, _ = worker_upload(producer, worker, WARMUP_NAME, "WARMUP", WARMUP_BUCKET, args.timeout)
        warm_hwm = proc_status_kb(worker.pid, "VmHWM")
        emu_hwm0 = proc_status_kb("self", "VmHWM")

        print(f"[3/4] {args.rounds} round(s): curl -F, the client alone, the worker", flush=True)
        curl_s: list[float] = []
        curl_cpu: list[float] = []
        client: list[dict[str, Any]] = []
        worker_s: list[float] = []
        worker_cpu: list[float] = []
        load = [loadavg()]
        for r in range(1, args.rounds + 1):
            ref = f"BIG-{r}"
            seconds, cpu = curl_upload(args.curl, emu.url, auth_header, big, ref, work)
            curl_s.append(seconds)
            curl_cpu.append(cpu)
            client.append(client_upload(child_env, big, warmup, ref))
            seconds, cpu = worker_upload(producer, worker, BIG_NAME, ref, WORKER_BUCKET, args.timeout)
            worker_s.append(seconds)
            worker_cpu.append(cpu)
            load.append(loadavg())
            print(
                f"      round {r}: curl {curl_s[-1]:.2f} s, client {client[-1]['seconds']:.2f} s, "
                f"worker {worker_s[-1]:.2f} s",
                flush=True,
            )
        end_hwm = proc_status_kb(worker.pid, "VmHWM")
        end_rss = proc_status_kb(worker.pid, "VmRSS")
        emu_hwm1 = proc_status_kb("self", "VmHWM")

        print("[4/4] checks", flush=True)
        refs = [f"BIG-{r}" for r in range(1, args.rounds + 1)]
        checks = {
            "curl: one file per ref, whole": bucket_check(emu, CURL_BUCKET, refs, size),
            "client: one file per ref, whole": bucket_check(emu, CLIENT_BUCKET, refs, size),
            "worker: one file per ref, whole": bucket_check(emu, WORKER_BUCKET, refs, size),
            "worker: every operation succeeded, ids recorded": worker_db_check(emu, refs),
        }
        curl_med = statistics.median(curl_s)
        curl_cpu_med = statistics.median(curl_cpu) or 0.001  # one clock tick: never a division by zero
        client_s = [c["seconds"] for c in client]
        result.update(
            {
                "size_bytes": size,
                "fill": args.fill,
                "rounds": args.rounds,
                "curl_s": [round(s, 3) for s in curl_s],
                "client_s": [round(s, 3) for s in client_s],
                "worker_s": [round(s, 3) for s in worker_s],
                "curl_cpu_s": [round(s, 3) for s in curl_cpu],
                "client_cpu_s": [round(c["cpu_s"], 3) for c in client],
                "worker_cpu_s": [round(s, 3) for s in worker_cpu],
                "client_x_curl": round(statistics.median(client_s) / curl_med, 3),
                "client_cpu_x_curl": round(statistics.median(c["cpu_s"] for c in client) / curl_cpu_med, 3),
                "worker_cpu_x_curl": round(statistics.median(worker_cpu) / curl_cpu_med, 3),
                "worker_x_curl": round(statistics.median(worker_s) / curl_med, 3),
                "curl_mb_per_s": round(size / MIB / curl_med, 1),
                "worker_warmup_s": round(wait_for_warmup, 3),
                "worker_rss_mb": {
                    "hwm_idle": mb(idle_hwm),
                    "hwm_after_warmup": mb(warm_hwm),
                    "hwm_after_large": mb(end_hwm),
                    "rss_after_large": mb(end_rss),
                    "growth_large_mb": mb(end_hwm - warm_hwm),
                    "growth_from_idle_mb": mb(end_hwm - idle_hwm),
                },
                "client_rss_growth_mb": [mb(c["hwm_after_kb"] - c["hwm_before_kb"]) for c in client],
                "emulator_rss_growth_mb": mb(emu_hwm1 - emu_hwm0),
                "load_average": load,
                "checks": checks,
            }
        )


def table(r: dict[str, Any]) -> str:
    rss = r["worker_rss_mb"]
    n = r["rounds"]
    med = statistics.median

    def span(xs: list[float]) -> str:
        return f"{med(xs):.2f}" + (f" ({min(xs):.2f}-{max(xs):.2f})" if n > 1 else "")

    rows = [
        ("curl -F (baseline)", span(r["curl_s"]), "1.00", f"{med(r['curl_cpu_s']):.2f}", "-"),
        (
            "AcrCloudClient.upload_file, own process",
            span(r["client_s"]),
            f"{r['client_x_curl']:.2f}",
            f"{med(r['client_cpu_s']):.2f} ({r['client_cpu_x_curl']:.2f}x)",
            f"+{max(r['client_rss_growth_mb']):.2f} MB",
        ),
        (
            "worker: enqueue -> remote id",
            span(r["worker_s"]),
            f"{r['worker_x_curl']:.2f}",
            f"{med(r['worker_cpu_s']):.2f} ({r['worker_cpu_x_curl']:.2f}x)",
            f"+{rss['growth_large_mb']:.2f} MB (+{rss['growth_from_idle_mb']:.2f} from idle)",
        ),
    ]
    head = ("path", f"seconds (median of {n})", "x curl", "its CPU s (x curl)", "peak RSS growth")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="the file's size in MiB (default 1024)")
    p.add_argument("--fill", choices=("sparse", "blocks"), default="sparse", help="how the file is made")
    p.add_argument("--rounds", type=int, default=3, help="uploads per path, alternated (default 3)")
    p.add_argument("--warmup-mb", type=int, default=1, help="the worker's warm-up upload before the RSS baseline")
    p.add_argument("--concurrency", type=int, default=4, help="the worker's threads (default 4)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one worker upload may take")
    p.add_argument("--curl", default=shutil.which("curl"), help="the curl binary (default: from PATH)")
    args = p.parse_args(argv)
    if not args.curl:
        p.error("curl is not installed (Debian: apt-get install curl); or give --curl PATH")
    if args.size_mb < 1 or args.rounds < 1 or args.warmup_mb < 1:
        p.error("--size-mb, --rounds and --warmup-mb must be at least 1")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    # The worker and redis-server run in sessions of their own, so a signal to this process does not
    # reach them: an exception lets the ExitStack stop them and the finally remove the temporary folder.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="acr-bench-bigfile-"))
    curl_version = subprocess.run([args.curl, "--version"], capture_output=True, text=True, check=False).stdout
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": git_commit(),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "curl": curl_version.split("\n", 1)[0],
        },
    }
    try:
        run(args, work, result)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}); processes stopped, {work} removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(table(result))
    rss = result["worker_rss_mb"]
    print(
        f"\nworker peak RSS {rss['hwm_idle']} MB idle, {rss['hwm_after_warmup']} after a {args.warmup_mb} MiB "
        f"warm-up, {rss['hwm_after_large']} after the large uploads; emulator (this process) peak RSS "
        f"+{result['emulator_rss_growth_mb']} MB; curl {result['curl_mb_per_s']} MiB/s; "
        f"load average {result['load_average'][0]} -> {result['load_average'][-1]}"
    )
    for name, check in result["checks"].items():
        print(f"{'ok  ' if check['ok'] else 'FAIL'} {name}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "large_upload.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{out.relative_to(ROOT)} written; code {result['code']}")
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
