"""``acr-ingest demo``: the whole path on one machine with nothing to install.

The emulator (in this process, real HTTP on loopback), a worker and a beat (child processes), SQLite,
and kombu's filesystem transport as the broker. A dozen generated WAV files and URLs are enqueued, plus
one URL the emulator treats as bad audio, and the run ends with a table of every file. Where the fingerprint
library is installed, half the files go as fingerprints made on the worker, and a corrupt local master sent
that way fails before the API sees it (``path: not decodable audio``).
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import struct
import tempfile
import time
import wave
from pathlib import Path

import click

from ingest.cli.render import counts_line, files_table
from ingest.devtools.processes import ChildProcess, celery_command

BUCKET = 8891
FILES = [
    ("Morning Raga", 220.0),
    ("Harbour Lights", 247.0),
    ("Copper Sky", 262.0),
    ("Paper Boats", 294.0),
    ("Night Train", 330.0),
    ("Glass Garden", 349.0),
    ("Slow Tide", 392.0),
    ("Northern Line", 440.0),
]
URLS = [
    ("Blue Hour", "https://cdn.example.com/catalog/blue-hour.mp3"),
    ("Saltwater", "https://cdn.example.com/catalog/saltwater.mp3"),
    ("Ember", "https://cdn.example.com/catalog/ember.mp3"),
    ("Cartographer", "https://cdn.example.com/catalog/cartographer.mp3"),
]
BAD_URL = ("Corrupt Master", "https://cdn.example.com/catalog/broken-master.mp3")
# A local master that is no audio (its bytes are text), sent as a fingerprint: refused on the worker.
BAD_FILE = ("Corrupt Local Master", "corrupt-local-master.wav")


def write_tone(path: Path, freq: float, seconds: float = 2.0, rate: int = 8000) -> None:
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(int(rate * seconds))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def run_demo(*, keep: bool = False, timeout: float = 120.0) -> int:
    from ingest.devtools.emulator import Emulator

    work = Path(tempfile.mkdtemp(prefix="acr-ingest-demo-"))
    media = work / "media"
    media.mkdir()
    for title, freq in FILES:
        write_tone(media / f"{title.lower().replace(' ', '-')}.wav", freq)
    (media / BAD_FILE[1]).write_bytes(b"this master was truncated to text by a broken export\n" * 200)
    token = secrets.token_urlsafe(32)
    emulator = Emulator(tokens={token}, processing_delay=1.5).start()
    env = {
        **os.environ,
        "ACR_INGEST_API_BASE_URL": emulator.url,
        "ACR_INGEST_ACCESS_TOKEN": token,
        "ACR_INGEST_BROKER_URL": f"filesystem://{work / 'broker'}",
        "ACR_INGEST_DATABASE_URL": f"sqlite:///{work / 'demo.db'}",
        "ACR_INGEST_MEDIA_ROOT": str(media),
        "ACR_INGEST_DEFAULT_BUCKET": str(BUCKET),
        "ACR_INGEST_POLL_INTERVAL": "1",
        "ACR_INGEST_DEPENDENCY_WAIT": "1",
    }
    os.environ.update(env)
    from ingest.settings import reset_settings

    reset_settings()
    from ingest.store.schema import upgrade

    upgrade()  # the embedded mode makes its own tables, before the worker and beat check them
    click.echo(f"acr-ingest demo — work folder {work}")
    click.echo(f"  emulator  {emulator.url} (processing takes 1.5 s)")
    click.echo("  broker    kombu filesystem transport · database SQLite (WAL) · worker (4 threads) · beat")
    worker = ChildProcess(
        "worker",
        celery_command(
            "worker", "--pool=threads", "--concurrency=4", "--loglevel=warning", "--without-gossip", "--without-mingle"
        ),
        log=work / "worker.log",
        env=env,
        cwd=work,
    )
    beat = ChildProcess(
        "beat",
        celery_command("beat", "--loglevel=warning", f"--schedule={work / 'beat-schedule'}"),
        log=work / "beat.log",
        env=env,
        cwd=work,
    )
    try:
        return _drive(work, timeout, worker)
    finally:
        beat.stop()
        worker.stop()
        emulator.stop()
        if keep:
            click.echo(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _drive(work: Path, timeout: float, worker: ChildProcess) -> int:
    from ingest.fingerprints import unavailable_reason
    from ingest.producer import Producer
    from ingest.store.db import session_scope
    from ingest.store.models import FileStatus
    from ingest.store.reports import file_counts, files

    producer = Producer()
    fingerprints = unavailable_reason() is None
    for n, (title, _freq) in enumerate(FILES, 1):
        producer.upload_file(
            f"{title.lower().replace(' ', '-')}.wav",
            title=title,
            ref=f"CAT-{n:04d}",
            user_defined={"artist": "Demo Ensemble", "album": "Loopback Sessions"},
            send_as="fingerprint" if fingerprints and n > len(FILES) // 2 else "audio",
        )
    for n, (title, url) in enumerate([*URLS, BAD_URL], len(FILES) + 1):
        producer.upload_url(url, title=title, ref=f"CAT-{n:04d}", user_defined={"artist": "Demo Ensemble"})
    total = len(FILES) + len(URLS) + 1
    if fingerprints:
        # Recorded, then failed by the worker: no retry, nothing posted.
        producer.upload_file(BAD_FILE[1], title=BAD_FILE[0], ref=f"CAT-{total + 1:04d}", send_as="fingerprint")
        total += 1
    click.echo(
        f"enqueued {total} uploads ({len(FILES) + fingerprints} files"
        + (f", {len(FILES) // 2 + 1} of them as fingerprints" if fingerprints else "")
        + f", {len(URLS) + 1} URLs)\n"
    )

    start = time.monotonic()
    last = ""
    done = False
    while time.monotonic() - start < timeout:
        with session_scope() as s:
            counts = file_counts(s)
        line = counts_line(counts, list(FileStatus)[:6])  # the states an upload passes through
        if line != last:
            click.echo(f"[{time.monotonic() - start:5.1f}s] {line}")
            last = line
        if sum(counts.get(k, 0) for k in ("ready", "error", "failed")) == total:
            done = True
            break
        if not worker.alive():
            click.echo(f"the worker exited ({worker.proc.returncode}); see {work / 'worker.log'}", err=True)
            break
        time.sleep(0.25)  # a progress display's refresh rate, not a wait on a result

    with session_scope() as s:
        rows = files(s)
    click.echo("")
    click.echo(files_table(rows))
    ready = sum(r.status == "ready" for r in rows)
    errors = [r for r in rows if r.status == "error"]
    failed = [r for r in rows if r.status == "failed"]
    bad_local = int(fingerprints)  # the corrupt local master: failed on the worker, never posted
    ok = (
        done
        and ready == total - 1 - bad_local
        and len(errors) == 1
        and len(failed) == bad_local
        and all("not decodable audio" in (r.reason or "") and r.remote_id is None for r in failed)
        and all(r.remote_id and r.acr_id for r in rows if r.status != "failed")
    )
    expected = f"{total - 1 - bad_local} ready and the bad master in error" + (
        ", the corrupt local master failed as not decodable audio" if bad_local else ""
    )
    click.echo(
        f"\n{ready} ready, {len(errors)} error, {len(failed)} failed (expected: {expected}) "
        f"in {time.monotonic() - start:.1f}s — {'OK' if ok else 'NOT AS EXPECTED'}"
    )
    return 0 if ok else 1
