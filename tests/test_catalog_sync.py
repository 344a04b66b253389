"""``acr-ingest sync`` end to end: the plan (uploads, updates, moves, deletes only with --prune) is the
same twice, --apply enqueues exactly it through a real worker, and once settled the plan is empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ingest.cli.commands import main
from ingest.jobs.identity import visible
from tests.helpers import file_row, files_in, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _url(ref: str) -> str:
    return f"https://cdn.example.com/sync/{ref}.mp3"


def _sync(manifest: Path, bucket: int, *extra: str, code: int = 0) -> dict:
    result = CliRunner().invoke(
        main, ["sync", str(manifest), "--bucket", str(bucket), "--json", *extra], catch_exceptions=False
    )
    assert result.exit_code == code, result.output
    return json.loads(result.output)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sync_plans_applies_and_settles(producer, emulator, bucket, tmp_path) -> None:
    other = bucket + 500_000  # a bucket of this test's own for the move
    for ref, title, b in (
        ("K-1", "One", bucket),
        ("K-2", "Two", bucket),
        ("K-old", "Old", bucket),
        ("K-3", "Three", other),
    ):
        producer.upload_url(_url(ref), title=title, bucket_id=b, ref=ref)
    wait_for(
        lambda: all(r.status == "ready" for r in files_in(bucket) + files_in(other))
        and len(files_in(bucket)) == 3 and len(files_in(other)) == 1,
        timeout=40,
    )  # fmt: skip
    rows = [
        {"ref": "K-1", "title": "One", "url": _url("K-1")},
        {"ref": "K-2", "title": "Two (v2)", "url": _url("K-2"), "user_defined": {"label": "L"}},
        {"ref": "K-3", "title": "Three", "url": _url("K-3")},
        {"ref": "K-4", "title": "Four", "url": _url("K-4")},
    ]
    manifest = _write(tmp_path / "manifest.jsonl", rows)

    plan = _sync(manifest, bucket)
    assert [u["ref"] for u in plan["uploads"]] == ["K-4"]
    assert [(u["ref"], u["title"]) for u in plan["updates"]] == [("K-2", "Two (v2)")]
    assert plan["moves"] == [{"ref": "K-3", "from_bucket": other}]
    assert plan["deletes"] == [] and plan["unchanged"] == 1  # no deletes without --prune
    pruned = _sync(manifest, bucket, "--prune")
    assert pruned["deletes"] == [{"ref": "K-old"}]
    assert _sync(manifest, bucket, "--prune") == pruned  # planning twice gives the same plan

    applied = _sync(manifest, bucket, "--prune", "--apply")
    assert {k: v for k, v in applied.items() if k != "applied"} == pruned
    assert applied["applied"] == {"uploads and updates": 2, "moves": 1, "deletes": 1}

    def settled() -> bool:
        remote = {f["audio_id"]: f for f in emulator.files(bucket)}
        return (
            sorted(remote) == ["K-1", "K-2", "K-3", "K-4"]
            and remote["K-2"]["title"] == "Two (v2)"
            and visible(remote["K-2"]["user_defined"]) == {"label": "L"}
            and emulator.files(other) == []
            and all(file_row(bucket, r).status == "ready" for r in ("K-1", "K-2", "K-3", "K-4"))
            and file_row(bucket, "K-old").status == "deleted"
        )

    wait_for(settled, timeout=60, what=lambda: f"the plan applied: {emulator.files(bucket)}")
    again = _sync(manifest, bucket, "--prune")
    assert (again["uploads"], again["updates"], again["moves"], again["deletes"]) == ([], [], [], [])
    assert again["unchanged"] == 4


def test_sync_refuses_bad_rows_and_exits_2(bucket, tmp_path) -> None:
    manifest = _write(
        tmp_path / "bad.jsonl",
        [
            {"ref": "A", "title": "A", "url": _url("A")},
            {"ref": "A", "title": "A again", "url": _url("A")},
            {"ref": "B", "title": "B", "url": _url("B"), "bucket": bucket + 1},
            {"ref": "C", "url": _url("C")},
        ],
    )
    plan = _sync(manifest, bucket, code=2)
    assert [(r["row"], r["error"].split(":")[0]) for r in plan["refused"]] == [(2, "ref"), (3, "bucket"), (4, "title")]
    assert [u["ref"] for u in plan["uploads"]] == ["A"]
