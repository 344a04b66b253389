"""Fingerprint uploads through a real worker: every entry point (producer, CLI, catalog import and sync),
the row and `files`/`show` saying what was sent, bad audio failed before any POST, a vanished file uploaded
again as a fingerprint made afresh from its source, and, in a Python where the library cannot be imported,
the one-line refusals at enqueue and at worker start."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ingest.api.client import AcrCloudClient
from ingest.cli.commands import main
from ingest.devtools.emulator.app import UPLOAD
from ingest.fingerprints import extract
from ingest.settings import get_settings
from tests.conftest import IDLE_BROKER, MEDIA
from tests.fingerprint_audio import write_wav
from tests.helpers import file_row, files_in, op_done, operation, wait_for

pytestmark = pytest.mark.usefixtures("worker")
ACR_INGEST = str(Path(sys.executable).with_name("acr-ingest"))


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _ready(bucket: int, ref: str) -> bool:
    row = file_row(bucket, ref)
    return row is not None and row.status == "ready"


def test_every_entry_point_sends_a_fingerprint_and_says_so(producer, emulator, bucket, tmp_path) -> None:
    for i in range(4):
        write_wav(MEDIA / f"fpw-{bucket}-{i}.wav", 3.0 + i, seed=i)
    producer.upload_file(f"fpw-{bucket}-0.wav", title="Via producer", bucket_id=bucket, ref="P", send_as="fingerprint")
    _cli("upload-file", f"fpw-{bucket}-1.wav", "--title", "Via CLI", "--bucket", str(bucket), "--ref", "C", "--as",
         "fingerprint")  # fmt: skip
    catalog = tmp_path / "cat.csv"
    catalog.write_text(
        "ref,title,path,bucket,send_as\n"
        f"I,Via import,fpw-{bucket}-2.wav,{bucket},fingerprint\n"
        f"A,Audio row,fpw-{bucket}-3.wav,{bucket},\n"  # empty: the default, audio
    )
    _cli("import", str(catalog), "--report", str(tmp_path / "report.csv"))
    wait_for(lambda: all(_ready(bucket, r) for r in "PCIA"), timeout=60, what=lambda: files_in(bucket))

    remote = {f["audio_id"]: f for f in emulator.files(bucket)}
    kinds = emulator.data_types(bucket)
    sizes = emulator.received_bytes(bucket)
    for ref, i in (("P", 0), ("C", 1), ("I", 2)):
        fp = extract(MEDIA / f"fpw-{bucket}-{i}.wav")
        row = file_row(bucket, ref)
        assert kinds[remote[ref]["id"]] == "fingerprint" and sizes[remote[ref]["id"]] == len(fp.data)
        assert (row.send_as, row.fingerprint_bytes, row.duration_ms) == ("fingerprint", len(fp.data), fp.duration_ms)
        assert row.remote_id == remote[ref]["id"] and remote[ref]["user_defined"]["_acr_ingest_ref"] == ref
    assert kinds[remote["A"]["id"]] == "audio" and file_row(bucket, "A").send_as == "audio"

    listed = {line.split()[0]: line for line in _cli("files", "--bucket", str(bucket)).splitlines()[2:]}
    assert " fingerprint " in listed["P"] and " audio " in listed["A"]
    shown = _cli("show", "P", "--bucket", str(bucket))
    row = file_row(bucket, "P")
    assert f"sent as   fingerprint made here ({row.fingerprint_bytes:,} bytes, {row.duration_ms / 1000:.1f} s)" in shown
    # --json: the same, as numbers.
    sent = lambda f: (f["send_as"], f["data_type"], f["fingerprint_bytes"], f["duration_ms"])  # noqa: E731
    listed_json = {f["ref"]: f for f in json.loads(_cli("files", "--bucket", str(bucket), "--json"))["files"]}
    assert sent(listed_json["P"]) == ("fingerprint", "audio", row.fingerprint_bytes, row.duration_ms)
    assert sent(listed_json["A"]) == ("audio", "audio", None, None)
    [shown_json] = json.loads(_cli("show", "P", "--bucket", str(bucket), "--json"))["files"]
    assert sent(shown_json) == sent(listed_json["P"]) and shown_json["remote_id"] == row.remote_id
    assert [(o["kind"], o["status"]) for o in shown_json["operations"]] == [("upload_file", "succeeded")]

    # sync: the rows already there are unchanged; a new row's send_as column is planned and applied.
    write_wav(MEDIA / f"fpw-{bucket}-4.wav", 2.0, seed=4)
    with catalog.open("a") as f:
        f.write(f"S,Via sync,fpw-{bucket}-4.wav,{bucket},fingerprint\n")
    plan = json.loads(_cli("sync", str(catalog), "--bucket", str(bucket), "--json"))
    assert plan["unchanged"] == 2 and [(u["ref"], u["send_as"]) for u in plan["uploads"]] == [("S", "fingerprint")]
    _cli("sync", str(catalog), "--bucket", str(bucket), "--apply")
    wait_for(lambda: _ready(bucket, "S"), timeout=30)
    assert emulator.data_types(bucket)[file_row(bucket, "S").remote_id] == "fingerprint"


def test_bad_audio_fails_before_the_api_sees_it(producer, emulator, bucket) -> None:
    (MEDIA / f"fp-bad-{bucket}.wav").write_bytes(b"RIFF" + os.urandom(40_000))  # a header, then noise bytes
    posts = emulator.stats()["by_route"].get(UPLOAD, 0)
    op = producer.upload_file(
        f"fp-bad-{bucket}.wav", title="Broken", bucket_id=bucket, ref="B", send_as="fingerprint"
    ).operation_id
    done = wait_for(lambda: op_done(op), timeout=30)
    assert done.status == "failed" and done.error.startswith("bad input: path: not decodable audio"), done.error
    assert operation(op).attempts == 0  # no API attempt was ever made
    assert emulator.files(bucket) == [] and emulator.stats()["by_route"].get(UPLOAD, 0) == posts
    assert file_row(bucket, "B").status == "failed"


def test_a_vanished_fingerprint_is_extracted_again_from_its_source(producer, emulator, bucket) -> None:
    path = MEDIA / f"fp-van-{bucket}.wav"
    write_wav(path, 3.0, seed=5)
    producer.upload_file(path.name, title="Vanishing", bucket_id=bucket, ref="V", send_as="fingerprint")
    wait_for(lambda: _ready(bucket, "V"), timeout=30)
    first = file_row(bucket, "V")
    write_wav(path, 6.0, seed=6)  # the source changed since: the re-upload must read it as it is now
    with AcrCloudClient.from_settings(get_settings()) as api:
        api.delete_files(bucket, [first.remote_id])
    out = json.loads(_cli("reconcile", "--bucket", str(bucket), "--fix", "--json"))
    assert out["fixed"]["re-uploads"] == 1

    wait_for(lambda: _ready(bucket, "V") and file_row(bucket, "V").remote_id != first.remote_id, timeout=40)
    again = file_row(bucket, "V")
    fp = extract(path)
    assert (again.send_as, again.fingerprint_bytes, again.duration_ms) == ("fingerprint", len(fp.data), fp.duration_ms)
    assert emulator.data_types(bucket) == {again.remote_id: "fingerprint"}
    assert emulator.received_bytes(bucket) == {again.remote_id: len(fp.data)}


@pytest.fixture
def without_library(tmp_path: Path) -> dict[str, str]:
    """The environment of a Python in which ``acrcloud`` cannot be imported (as where it is not installed): a
    package of that name first on the path, whose import fails as a missing one does."""
    shadow = tmp_path / "shadow" / "acrcloud"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'acrcloud'\", name='acrcloud')\n")
    return {**os.environ, "PYTHONPATH": str(shadow.parent), "ACR_INGEST_BROKER_URL": IDLE_BROKER}


HINT = "the fingerprint library is not installed: install the extraction library: pip install 'acr-ingest[fingerprint]'"


def test_without_the_library_a_fingerprint_upload_is_refused_at_enqueue(without_library, bucket) -> None:
    write_wav(MEDIA / f"fp-nolib-{bucket}.wav", 1.0, rate=8000, channels=1)
    run = subprocess.run(
        [ACR_INGEST, "upload-file", f"fp-nolib-{bucket}.wav", "--title", "T", "--bucket", str(bucket), "--as",
         "fingerprint"],
        env=without_library, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert HINT in run.stderr.strip().splitlines()[-1], run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert file_row(bucket, f"auto-{bucket}") is None and files_in(bucket) == []
    # Audio is still sent without it.
    audio = subprocess.run(
        [ACR_INGEST, "upload-file", f"fp-nolib-{bucket}.wav", "--title", "T", "--bucket", str(bucket), "--ref", "N"],
        env=without_library, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert audio.returncode == 0, audio.stderr[-2000:]
    assert file_row(bucket, "N").send_as == "audio"


def test_without_the_library_a_worker_told_to_send_fingerprints_refuses_to_start(without_library) -> None:
    run = subprocess.run(
        [ACR_INGEST, "worker", "--pool=solo"],
        env={**without_library, "ACR_INGEST_UPLOAD_AS": "fingerprint"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert last == f"acr-ingest: not starting: ACR_INGEST_UPLOAD_AS=fingerprint, but {HINT}, or send audio " \
        "(ACR_INGEST_UPLOAD_AS=audio)"  # fmt: skip


def test_without_the_library_a_worker_of_the_fingerprint_queue_alone_refuses_to_start(without_library) -> None:
    """The deployments' fingerprint-worker in an image built without the extra: every job it would take needs the
    library, so it says so at once instead of failing each upload as bad input."""
    run = subprocess.run(
        [ACR_INGEST, "worker", "--pool=solo", "-Q", "ingest.fingerprint"],
        env=without_library,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert last == f"acr-ingest: not starting: this worker consumes only ingest.fingerprint (-Q), uploads sent as " \
        f"fingerprints, but {HINT}, or send audio (ACR_INGEST_UPLOAD_AS=audio)"  # fmt: skip


def test_fingerprint_uploads_have_a_queue_of_their_own(bucket) -> None:
    """One at a time and in bulk: the jobs sent meanwhile (updates, URL uploads, audio) stay in the shared
    queue, which a worker serves in turn with this one, instead of waiting behind a catalog's extraction."""
    import redis

    from ingest.worker.routing import FINGERPRINT_QUEUE, QUEUE
    from tests.helpers import idle_producer

    write_wav(MEDIA / f"fp-q-{bucket}.wav", 1.0, rate=8000, channels=1)
    broker = redis.Redis.from_url(IDLE_BROKER)
    broker.flushdb()
    producer = idle_producer()
    producer.upload_file(f"fp-q-{bucket}.wav", title="F", bucket_id=bucket, ref="F", send_as="fingerprint")
    producer.upload_file(f"fp-q-{bucket}.wav", title="A", bucket_id=bucket + 1, ref="A")
    list(
        producer.upload_many(
            [
                {
                    "path": f"fp-q-{bucket}.wav",
                    "title": "BF",
                    "bucket_id": bucket + 2,
                    "ref": "BF",
                    "send_as": "fingerprint",
                },
                {"path": f"fp-q-{bucket}.wav", "title": "BA", "bucket_id": bucket + 3, "ref": "BA"},
                {"url": "https://cdn.example.com/u.mp3", "title": "U", "bucket_id": bucket + 4, "ref": "U"},
            ]
        )
    )

    def refs(queue: str) -> list[str]:
        kwargs = [json.loads(base64.b64decode(json.loads(raw)["body"]))[1] for raw in broker.lrange(queue, 0, -1)]
        return sorted(k["ref"] for k in kwargs)

    assert refs(FINGERPRINT_QUEUE) == ["BF", "F"]
    assert refs(QUEUE) == ["A", "BA", "U"]
    # The one-message publisher (the outbox sweeper's) routes by the same arguments, whichever it sent first.
    from ingest.jobs.bulk_uploads import Message
    from ingest.worker.bulk_publish import publish_task

    broker.flushdb()
    fingerprint = {"path": "x.wav", "title": "OF", "bucket_id": bucket, "ref": "OF", "send_as": "fingerprint"}
    publish_task(producer.app, Message("ingest.upload_file", {**fingerprint, "send_as": "audio", "ref": "OA"}, "t1"))
    publish_task(producer.app, Message("ingest.upload_file", fingerprint, "t2"))
    assert (refs(FINGERPRINT_QUEUE), refs(QUEUE)) == (["OF"], ["OA"])
    broker.flushdb()
