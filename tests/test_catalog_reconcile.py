"""``acr-ingest reconcile`` end to end: a bucket seeded with a twin, a hand-added file, a leftover of a
deleted ref, the file of a failed upload, a vanished file and a hand-edited title; --fix through a real
worker; then reconcile finds nothing of ours to fix."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ingest.api.client import AcrCloudClient
from ingest.cli.commands import main
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, TrackFile
from tests.helpers import file_row, files_in, op_done, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _reconcile(bucket: int, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["reconcile", "--bucket", str(bucket), "--json", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _url(bucket: int, ref: str) -> str:
    return f"https://cdn.example.com/rec/{bucket}/{ref}.mp3"


def test_reconcile_finds_every_class_and_fix_repairs_ours(producer, emulator, bucket) -> None:
    refs = [f"R-{i}" for i in range(4)]
    for ref in refs:
        producer.upload_url(_url(bucket, ref), title=f"Title {ref}", bucket_id=bucket, ref=ref)
    wait_for(lambda: all(r.status == "ready" for r in files_in(bucket)) and len(files_in(bucket)) == 4, timeout=40)
    deleted = producer.delete(bucket_id=bucket, refs=["R-3"])
    wait_for(lambda: op_done(deleted.operation_id), timeout=30)
    with session_scope() as s:  # an upload that failed for us, though its POST created the file
        s.add(
            TrackFile(
                ref="F-1", bucket_id=bucket, data_type="audio_url", title="Failed one", source=_url(bucket, "F-1"),
                status=FileStatus.FAILED, reason="read timeout",
            )
        )  # fmt: skip
    rows = {r.ref: r for r in files_in(bucket)}
    with AcrCloudClient.from_settings(get_settings()) as api:
        twin = api.upload_url(bucket, _url(bucket, "R-0"), title="Title R-0", audio_id="R-0")
        hand = api.upload_url(bucket, "https://cdn.example.com/by-hand.mp3", title="Added by hand")
        leftover = api.upload_url(bucket, _url(bucket, "R-3"), title="Title R-3", audio_id="R-3")
        failed = api.upload_url(bucket, _url(bucket, "F-1"), title="Failed one", audio_id="F-1")
        api.delete_files(bucket, [rows["R-1"].remote_id])
        api.update_file(bucket, rows["R-2"].remote_id, title="Edited by hand")

    found = _reconcile(bucket)
    assert found["counts"] == {
        "unknown": 1, "twin": 1, "leftover": 1, "adoptable": 1, "vanished": 1, "metadata": 1, "state": 0,
    }  # fmt: skip
    ex = found["examples"]
    assert (ex["twin"][0]["file_id"], ex["unknown"][0]["file_id"]) == (twin.id, hand.id)
    assert (ex["leftover"][0]["file_id"], ex["adoptable"][0]["file_id"]) == (leftover.id, failed.id)
    assert ex["vanished"][0]["ref"] == "R-1" and ex["metadata"][0]["ref"] == "R-2"
    assert _reconcile(bucket)["counts"] == found["counts"]  # looking changes nothing

    fixed = _reconcile(bucket, "--fix")["fixed"]
    assert fixed == {
        "adopted": 1, "states recorded": 0, "files to delete": 2, "metadata updates": 1, "re-uploads": 1,
    }  # fmt: skip

    def settled() -> bool:
        remote = emulator.files(bucket)
        by_ref: dict[str | None, list] = {}
        for f in remote:
            by_ref.setdefault(f["audio_id"] or None, []).append(f)
        r1 = file_row(bucket, "R-1")
        return (
            sorted(k or "" for k in by_ref) == ["", "F-1", "R-0", "R-1", "R-2"]
            and all(len(v) == 1 for v in by_ref.values())
            and by_ref["R-2"][0]["title"] == "Title R-2"
            and r1.status == "ready"
            and r1.remote_id == by_ref["R-1"][0]["id"]
            and file_row(bucket, "F-1").remote_id == failed.id
        )

    wait_for(settled, timeout=60, what=lambda: f"the fixes applied: {emulator.files(bucket)}")
    after = _reconcile(bucket)
    assert after["counts"] == {d: (1 if d == "unknown" else 0) for d in found["counts"]}  # never ours to delete

    _reconcile(bucket, "--fix", "--delete-unknown")
    wait_for(lambda: hand.id not in {f["id"] for f in emulator.files(bucket)}, timeout=30)
    assert set(_reconcile(bucket)["counts"].values()) == {0}
