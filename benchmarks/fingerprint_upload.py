"""A catalog of generated WAV masters uploaded as audio and as fingerprints, through real workers, at an
emulated uplink; with a batch of updates and URL uploads (which need the state poll) sent meanwhile.

    .venv/bin/python -m benchmarks.fingerprint_upload --files 50 --mbit 100

In one run, against the project's emulator (in this process; every uploaded file part read no faster than
``--mbit`` megabits per second, shared by all uploads at once: ``Faults.upload_bytes_per_second``), a
redis-server and a SQLite database of its own, one Celery worker (``--pool``, ``--concurrency``) and a beat
(state poll every second):

- **idle**: the probe alone: ``--updates`` update_meta jobs on files already ready, and ``--polled`` URL
  uploads, whose rows turn ready only through the poll. Timed from their enqueue until every update
  succeeded / every URL row is ready;
- **audio**: the whole catalog enqueued with ``send_as=audio``; the probe enqueued ``--probe-after`` seconds
  later, while the uploads run;
- **fingerprint**: the same catalog (another bucket) with ``send_as=fingerprint``, the probe likewise; with
  ``--nice N``, twice (``--rounds`` times each, alternating): by a worker whose extraction threads run at nice 0
  (``ACR_INGEST_FINGERPRINT_NICE=0``) and by one restarted with nice N. Without it, once, at the setting's value.

``--fp-worker SLOTS`` runs two workers instead of one: the first for ``ingest`` and ``ingest.poll``, the second
(SLOTS slots) for ``ingest.fingerprint`` alone, as a deployment that keeps extraction off the other jobs' slots.

Per catalog: bytes the emulator received, wall time from the first enqueue until every row has its remote id,
and the worker's CPU (its process: all threads) per file. The rate limit is off (``ACR_INGEST_RATE_LIMIT_MODE
=off``, 429s only): the uplink is what is measured. Checks: one file per ref of the right kind, every
operation succeeded, each fingerprint row's size is what the emulator received. Everything is made in a
temporary folder and removed afterwards; results in ``benchmarks/results/fingerprint_upload.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from array import array
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RATE = 44_100
CHUNK_S = 10  # the masters are made of 10 s chunks of a pool, each a gliding tone under noise
PROBE_BUCKET, AUDIO_BUCKET, FP_BUCKET = 8870, 8871, 8900  # fingerprint runs: 8900, 8901, ...
POLLED_BUCKET = 8800  # the probe's URL uploads: one bucket per round, 8801, 8802, ...
TICK = 0.05


def chunk(seed: int) -> bytes:
    """CHUNK_S seconds of 16-bit stereo: a tone gliding around a seed-dependent pitch, plus noise."""
    rnd = random.Random(seed)
    base = 180.0 + 37.0 * seed
    out = array("h", bytes(4 * RATE * CHUNK_S))
    phase = 0.0
    for i in range(RATE * CHUNK_S):
        phase += 2 * math.pi * base * (1 + 0.4 * math.sin(i / RATE / 2.5)) / RATE
        v = int(9000 * math.sin(phase)) + rnd.randint(-1500, 1500)
        out[2 * i] = v
        out[2 * i + 1] = v
    return out.tobytes()


def make_catalog(media: Path, n: int, low: float, high: float, seed: int) -> list[tuple[str, float]]:
    """``n`` WAVs of ``low``..``high`` seconds, each its own sequence of the pool's chunks."""
    pool = [chunk(s) for s in range(12)]
    rnd = random.Random(seed)
    made = []
    frame = 4  # bytes per stereo frame
    for i in range(n):
        seconds = rnd.uniform(low, high)
        left = int(seconds * RATE) * frame
        name = f"master-{i:03d}.wav"
        with wave.open(str(media / name), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(RATE)
            while left > 0:
                part = rnd.choice(pool)[:left]
                w.writeframes(part)
                left -= len(part)
        made.append((name, seconds))
    return made


def pid_cpu(pid: int) -> float:
    """CPU seconds of a worker: its process (every thread) and its pool's child processes (prefork)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # the worker, or a child of it
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def wait_until(done: Callable[[], bool], check: Callable[[], None], timeout: float, what: str) -> float:
    """Seconds (perf_counter) at which ``done`` first held; RuntimeError at the deadline."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if done():
            return time.perf_counter()
        check()
        time.sleep(TICK)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _rows(bucket: int) -> list[Any]:
    from sqlmodel import select

    from ingest.store.db import session_scope
    from ingest.store.models import TrackFile

    with session_scope() as s:
        return list(s.exec(select(TrackFile).where(TrackFile.bucket_id == bucket)).all())


def _ops_done(op_ids: list[int]) -> bool:
    from sqlmodel import col, select

    from ingest.store.db import session_scope
    from ingest.store.models import Operation

    with session_scope() as s:
        statuses = s.exec(select(Operation.status).where(col(Operation.id).in_(op_ids))).all()
    return len(statuses) == len(op_ids) and all(st in ("succeeded", "failed") for st in statuses)


class Workers:
    """The worker processes of one configuration: one for every queue, or (``--fp-worker``) one for the
    ordinary queues and one for ``ingest.fingerprint``."""

    def __init__(self, procs: list[Any]) -> None:
        self.procs = procs

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def cpu(self) -> float:
        return sum(pid_cpu(p.pid) for p in self.procs)


class Probe:
    """The updates and URL uploads sent while a catalog uploads; their latencies."""

    def __init__(self, producer: Any, worker: Any, n_updates: int, n_polled: int, timeout: float) -> None:
        self.producer, self.worker = producer, worker
        self.n_updates, self.n_polled, self.timeout = n_updates, n_polled, timeout
        self.round = 0

    def seed(self) -> None:
        for i in range(self.n_updates):
            self.producer.upload_url(f"https://cdn.example.com/p/{i}.mp3", title=f"P {i}", bucket_id=PROBE_BUCKET,
                                     ref=f"P-{i}")  # fmt: skip
        wait_until(
            lambda: sum(r.status == "ready" for r in _rows(PROBE_BUCKET)) == self.n_updates,
            self.worker.check,
            self.timeout,
            "the probe's files",
        )

    def run(self, phase: str) -> dict[str, float]:
        self.round += 1
        bucket = POLLED_BUCKET + self.round
        start = time.perf_counter()
        ops = [
            self.producer.update_meta(bucket_id=PROBE_BUCKET, ref=f"P-{i}", title=f"P {i} round {self.round}")
            for i in range(self.n_updates)
        ]
        for i in range(self.n_polled):
            self.producer.upload_url(f"https://cdn.example.com/{phase}/{i}.mp3", title=f"{phase} {i}",
                                     bucket_id=bucket, ref=f"{phase}-{i}")  # fmt: skip
        enqueued = time.perf_counter()
        ids = [op.operation_id for op in ops]
        updated = wait_until(lambda: _ops_done(ids), self.worker.check, self.timeout, f"{phase}: the updates")
        ready = wait_until(
            lambda: sum(r.status == "ready" for r in _rows(bucket)) == self.n_polled,
            self.worker.check,
            self.timeout,
            f"{phase}: the polled URL uploads",
        )
        return {
            "enqueue_s": round(enqueued - start, 3),
            "updates_done_s": round(updated - start, 3),
            "polled_ready_s": round(ready - start, 3),
        }


def upload_catalog(
    producer: Any, worker: Any, probe: Probe, emu: Any, catalog: list[tuple[str, float]], bucket: int,
    send_as: str, probe_after: float, timeout: float, phase: str,
) -> dict[str, Any]:  # fmt: skip
    cpu0, start = worker.cpu(), time.perf_counter()
    for i, (name, _) in enumerate(catalog):
        producer.upload_file(name, title=f"Track {i}", bucket_id=bucket, ref=f"T-{i:03d}", send_as=send_as,
                             user_defined={"artist": "Benchmark Ensemble"})  # fmt: skip
    enqueued = time.perf_counter()
    time.sleep(max(0.0, probe_after - (enqueued - start)))  # the probe goes in while the uploads run
    probe_at = time.perf_counter() - start
    in_flight = sum(r.remote_id is None for r in _rows(bucket))
    latencies: dict[str, Any] = {}
    # In a thread of its own: the catalog's end is watched here meanwhile, neither waits for the other.
    prober = threading.Thread(target=lambda: latencies.update(probe.run(phase)), name="probe")
    prober.start()
    done = wait_until(
        lambda: all(r.remote_id is not None for r in _rows(bucket)) and len(_rows(bucket)) == len(catalog),
        worker.check,
        timeout,
        f"{phase}: every remote id",
    )
    cpu = worker.cpu() - cpu0
    prober.join(timeout)
    if not latencies:
        raise RuntimeError(f"{phase}: the probe did not finish")
    received = emu.received_bytes(bucket)
    kinds = emu.data_types(bucket)
    rows = _rows(bucket)
    ok = (
        len(received) == len(catalog)
        and set(kinds.values()) == {send_as}
        and sorted(f["audio_id"] for f in emu.files(bucket)) == sorted(r.ref for r in rows)
        and all(r.send_as == send_as for r in rows)
        and (send_as == "audio" or all(received[r.remote_id] == r.fingerprint_bytes for r in rows))
    )
    return {
        "wall_s": round(done - start, 3),
        "enqueue_s": round(enqueued - start, 3),
        "bytes_sent": sum(received.values()),
        "worker_cpu_s": round(cpu, 3),
        "worker_cpu_per_file_s": round(cpu / len(catalog), 4),
        "probe_sent_at_s": round(probe_at, 3),
        "uploads_unfinished_when_probed": in_flight,
        "probe": latencies,
        "check_ok": ok,
    }


def effective_nice() -> int:
    from ingest.settings import get_settings

    return get_settings().fingerprint_nice


def run(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    from ingest.devtools.emulator import Emulator
    from ingest.devtools.processes import ChildProcess, RedisServer, celery_command

    media = work / "media"
    media.mkdir()
    print(f"[1/5] {args.files} WAV masters of {args.min_s:.0f}-{args.max_s:.0f} s in {work}", flush=True)
    t0 = time.perf_counter()
    catalog = make_catalog(media, args.files, args.min_s, args.max_s, args.seed)
    audio_bytes = sum((media / n).stat().st_size for n, _ in catalog)
    print(f"      {audio_bytes / 1e6:.0f} MB, {sum(s for _, s in catalog) / 60:.0f} min of audio "
          f"({time.perf_counter() - t0:.0f} s to make)", flush=True)  # fmt: skip
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        emu = Emulator(tokens={token}, processing_delay=0.5).start()
        stack.callback(emu.stop)
        redis_server = RedisServer(work / "redis").start()
        stack.callback(redis_server.stop)
        env = {
            "ACR_INGEST_API_BASE_URL": emu.url,
            "ACR_INGEST_ACCESS_TOKEN": token,
            "ACR_INGEST_BROKER_URL": redis_server.url(0),
            "ACR_INGEST_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
            "ACR_INGEST_MEDIA_ROOT": str(media),
            "ACR_INGEST_RATE_LIMIT_MODE": "off",
            "ACR_INGEST_POLL_INTERVAL": "1",
            "ACR_INGEST_WORKER_CONCURRENCY": str(args.concurrency),
        }
        os.environ.update(env)
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        from ingest.settings import reset_settings

        reset_settings()
        from ingest.store.schema import upgrade

        upgrade()
        print(f"[2/5] worker ({args.pool} x {args.concurrency}) and beat", flush=True)
        started = 0

        def start_worker(nice: int | None) -> Workers:
            """Workers whose extraction threads run at ``nice`` (None: the setting as configured)."""
            nonlocal started
            env = child_env if nice is None else {**child_env, "ACR_INGEST_FINGERPRINT_NICE": str(nice)}
            kinds = [("all", [], args.concurrency)]
            if args.fp_worker:
                kinds = [("jobs", ["-Q", "ingest,ingest.poll"], args.concurrency),
                         ("fp", ["-Q", "ingest.fingerprint"], args.fp_worker)]  # fmt: skip
            procs = []
            for kind, queues, slots in kinds:
                started += 1
                w = ChildProcess(
                    f"bench-fp-worker-{started}",
                    celery_command("worker", f"--pool={args.pool}", f"--concurrency={slots}", *queues,
                                   "--loglevel=WARNING", f"--hostname=bench-{kind}{started}@%h", "--without-gossip",
                                   "--without-mingle", app="ingest.worker"),
                    log=work / f"worker-{started}.log", env=env, cwd=ROOT,
                )  # fmt: skip
                stack.callback(w.stop)
                procs.append(w)
            return Workers(procs)

        nices: list[int | None] = [None] if args.nice is None else [0, args.nice] * args.rounds
        worker = start_worker(nices[0])
        beat = ChildProcess(
            "bench-fp-beat",
            celery_command("beat", "--loglevel=WARNING", f"--schedule={work / 'beat-schedule'}", app="ingest.worker"),
            log=work / "beat.log", env=child_env, cwd=ROOT,
        )  # fmt: skip
        stack.callback(beat.stop)
        from ingest.producer import Producer

        producer = Producer()

        def pinged(w: Workers) -> None:
            n = len(w.procs)
            wait_until(lambda: len(producer.app.control.ping(timeout=0.5)) >= n, w.check, 90, "the workers' ping")

        pinged(worker)
        probe = Probe(producer, worker, args.updates, args.polled, args.timeout)
        probe.seed()

        print("[3/5] idle: the probe alone (after one warm-up round)", flush=True)
        probe.run("warm-up")
        idle = probe.run("idle")
        emu.faults.upload_bytes_per_second = args.mbit * 1e6 / 8
        print(f"[4/5] audio, then fingerprints, at {args.mbit:g} Mbit/s", flush=True)
        audio = upload_catalog(producer, worker, probe, emu, catalog, AUDIO_BUCKET, "audio", args.probe_after,
                               args.timeout, "audio")  # fmt: skip
        print(f"      audio: {audio['wall_s']:.1f} s, {audio['bytes_sent'] / 1e6:.0f} MB", flush=True)
        fp_runs: list[dict[str, Any]] = []
        for k, nice in enumerate(nices):
            if k:  # the setting is read at start: another worker for another nice
                worker.stop()
                worker = probe.worker = start_worker(nice)
                emu.faults.upload_bytes_per_second = 0
                pinged(worker)
                probe.run(f"warm-up-{k}")
                emu.faults.upload_bytes_per_second = args.mbit * 1e6 / 8
            fp = upload_catalog(producer, worker, probe, emu, catalog, FP_BUCKET + k, "fingerprint",
                                args.probe_after, args.timeout, f"fingerprint-{k}")  # fmt: skip
            fp["fingerprint_nice"] = effective_nice() if nice is None else nice
            fp_runs.append(fp)
            print(f"      fingerprint (nice {fp['fingerprint_nice']}): {fp['wall_s']:.1f} s, "
                  f"{fp['bytes_sent'] / 1e3:.0f} KB", flush=True)  # fmt: skip
        emu.faults.upload_bytes_per_second = 0
        fp = fp_runs[0]

        print("[5/5] ratios", flush=True)
        for run_ in fp_runs:
            run_["ratios"] = ratios(idle, audio, run_)
        result.update(
            {
                "files": args.files,
                "audio_minutes": round(sum(s for _, s in catalog) / 60, 1),
                "audio_bytes_on_disk": audio_bytes,
                "uplink_mbit": args.mbit,
                "pool": args.pool,
                "concurrency": args.concurrency,
                "fp_worker_slots": args.fp_worker,
                "idle_probe": idle,
                "audio": audio,
                "fingerprint": fp,
                "fingerprint_runs": fp_runs,
                **fp["ratios"],
            }
        )


def ratios(idle: dict[str, float], audio: dict[str, Any], fp: dict[str, Any]) -> dict[str, float]:
    """One fingerprint run against the audio catalog and the idle probe."""
    return {
        "bytes_ratio_audio_over_fp": round(audio["bytes_sent"] / fp["bytes_sent"], 1),
        "wall_ratio_audio_over_fp": round(audio["wall_s"] / fp["wall_s"], 2),
        "cpu_per_file_ratio_fp_over_audio": round(
            fp["worker_cpu_per_file_s"] / max(audio["worker_cpu_per_file_s"], 1e-3), 2
        ),
        "updates_ratio_fp_over_audio": round(fp["probe"]["updates_done_s"] / audio["probe"]["updates_done_s"], 2),
        "polled_ratio_fp_over_audio": round(fp["probe"]["polled_ready_s"] / audio["probe"]["polled_ready_s"], 2),
        "updates_ratio_fp_over_idle": round(fp["probe"]["updates_done_s"] / idle["updates_done_s"], 2),
        "polled_ratio_fp_over_idle": round(fp["probe"]["polled_ready_s"] / idle["polled_ready_s"], 2),
    }


def table(r: dict[str, Any]) -> str:
    a, idle = r["audio"], r["idle_probe"]
    lines = [
        f"{r['files']} masters, {r['audio_minutes']} min of 44.1 kHz stereo WAV, uplink {r['uplink_mbit']} Mbit/s, "
        f"worker {r['pool']} x {r['concurrency']}"
        + (f", fingerprints' own worker x {r['fp_worker_slots']}" if r.get("fp_worker_slots") else ""),
        f"{'':16}{'bytes sent':>12}{'ratio':>8}{'wall':>9}{'ratio':>8}{'CPU/file':>10}{'ratio':>7}"
        f"{'updates':>9}{'polled':>8}  check",
        f"{'idle probe':16}{'':>12}{'':>8}{'':>9}{'':>8}{'':>10}{'':>7}"
        f"{idle['updates_done_s']:>8.2f}s{idle['polled_ready_s']:>7.2f}s",
        f"{'audio':16}{a['bytes_sent'] / 1e6:>10.1f}MB{'':>8}{a['wall_s']:>8.1f}s{'':>8}"
        f"{a['worker_cpu_per_file_s']:>9.3f}s{'':>7}{a['probe']['updates_done_s']:>8.2f}s"
        f"{a['probe']['polled_ready_s']:>7.2f}s  {'ok' if a['check_ok'] else 'FAILED'}",
    ]
    for f in r["fingerprint_runs"]:
        x = f["ratios"]
        lines.append(
            f"{'fp, nice ' + str(f['fingerprint_nice']):16}{f['bytes_sent'] / 1e6:>10.2f}MB"
            f"{x['bytes_ratio_audio_over_fp']:>7}x{f['wall_s']:>8.1f}s{x['wall_ratio_audio_over_fp']:>7}x"
            f"{f['worker_cpu_per_file_s']:>9.3f}s{x['cpu_per_file_ratio_fp_over_audio']:>6}x"
            f"{f['probe']['updates_done_s']:>8.2f}s{f['probe']['polled_ready_s']:>7.2f}s"
            f"  {'ok' if f['check_ok'] else 'FAILED'}"
        )
    lines.append("ratios: audio over fingerprint (bytes, wall), fingerprint over audio (CPU per file); probe: seconds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--min-s", type=float, default=30.0)
    ap.add_argument("--max-s", type=float, default=120.0)
    ap.add_argument("--mbit", type=float, default=100.0, help="the emulated uplink, megabits per second")
    ap.add_argument("--pool", default="threads", choices=["threads", "prefork"])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--updates", type=int, default=20, help="update_meta jobs in each probe")
    ap.add_argument("--polled", type=int, default=10, help="URL uploads (ready only through the poll) per probe")
    ap.add_argument("--probe-after", type=float, default=2.0, help="seconds after the catalog's first enqueue")
    ap.add_argument(
        "--nice",
        type=int,
        default=None,
        metavar="N",
        help="run the fingerprint catalog twice: extraction at nice 0, then at nice N",
    )
    ap.add_argument(
        "--fp-worker",
        type=int,
        default=0,
        metavar="SLOTS",
        help="a second worker of SLOTS slots for ingest.fingerprint alone; the first serves the rest",
    )
    ap.add_argument("--rounds", type=int, default=1, help="with --nice: that pair this many times, alternating")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="acr-bench-fp-"))
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        run(args, work, result)
    finally:
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fingerprint_upload.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    ok = result["audio"]["check_ok"] and all(f["check_ok"] for f in result["fingerprint_runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
