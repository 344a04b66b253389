"""A producer in another language, proven: a Node script (tests/node/send_tasks.mjs, its one dependency
installed here by ``npm ci`` from tests/node/package-lock.json) sends every job task by name as a raw
Celery protocol-2 message to the real broker; a real worker records and does each of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlmodel import col, select

from ingest.cli.demo import write_tone
from ingest.jobs.identity import visible
from ingest.store.db import session_scope
from ingest.store.models import Operation
from tests.conftest import REDIS_URL
from tests.helpers import file_row, wait_for

pytestmark = pytest.mark.usefixtures("worker")
NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            "node and npm are not installed: the Node producer test needs them (Debian: apt-get install nodejs npm)"
        )
    if not (NODE_DIR / "node_modules" / "redis").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300
        )
    return node


def _ops(task_ids: list[str]) -> dict[str, Operation]:
    with session_scope() as s:
        return {op.task_id: op for op in s.exec(select(Operation).where(col(Operation.task_id).in_(task_ids)))}


def test_every_task_sent_from_node_is_recorded_and_done(node, emulator, bucket, media: Path) -> None:
    target = bucket + 700_000
    write_tone(media / f"node-{bucket}.wav", 330.0, seconds=0.3)
    a = {"url": "https://cdn.example.com/node/a.mp3", "title": "From Node", "user_defined": {"artist": "JS"}}
    b = {"url": "https://cdn.example.com/node/b.mp3", "title": "Short-lived"}
    messages = [
        ("ingest.upload_url", {**a, "bucket_id": bucket, "ref": "N-A"}),
        ("ingest.upload_url", {**b, "bucket_id": str(bucket), "ref": "N-B"}),  # digits as a string are fine
        ("ingest.upload_file", {"path": f"node-{bucket}.wav", "title": "Tone", "bucket_id": bucket, "ref": "N-F"}),
        ("ingest.update_meta", {"bucket_id": bucket, "ref": "N-A", "title": "Renamed from Node"}),
        ("ingest.delete_batch", {"bucket_id": bucket, "refs": ["N-B"]}),
        ("ingest.move_batch", {"bucket_id": bucket, "target_bucket_id": target, "refs": ["N-F"]}),
    ]
    sent = [{"task": task, "id": str(uuid.uuid4()), "kwargs": kwargs} for task, kwargs in messages]
    out = subprocess.run(
        [node, "send_tasks.mjs", REDIS_URL],
        cwd=NODE_DIR,
        input="".join(json.dumps(m) + "\n" for m in sent),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"sent": len(sent)}

    ids = [m["id"] for m in sent]

    def all_done() -> dict[str, Operation] | None:
        found = _ops(ids)
        finished = all(op.status in ("succeeded", "partial") for op in found.values())
        return found if len(found) == len(ids) and finished else None

    ops = wait_for(
        all_done,
        timeout=60,
        what=lambda: f"every Node task done: {[(o.kind, o.status, o.error) for o in _ops(ids).values()]}",
    )
    assert sorted(op.kind for op in ops.values()) == sorted(t.removeprefix("ingest.") for t, _ in messages)

    def settled() -> bool:
        here = {f["audio_id"]: f for f in emulator.files(bucket)}
        there = {f["audio_id"]: f for f in emulator.files(target)}
        return (
            sorted(here) == ["N-A"]
            and here["N-A"]["title"] == "Renamed from Node"
            and visible(here["N-A"]["user_defined"]) == {"artist": "JS"}
            and sorted(there) == ["N-F"]
        )

    wait_for(settled, timeout=60, what=lambda: f"the bucket as the Node jobs asked: {emulator.files(bucket)}")
    assert file_row(bucket, "N-B").status in ("deleted", "cancelled")
    assert file_row(target, "N-F").status in ("processing", "ready")
