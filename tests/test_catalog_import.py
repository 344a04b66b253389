"""``acr-ingest import`` end to end: a catalog file -> batched rows and publishes -> a real worker -> the
emulator; the per-row report, re-runs, updates, --dry-run, --status, and a broker that fails midway."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import select

from ingest.cli.commands import main
from ingest.jobs.bulk_uploads import UNSENT, Outcome
from ingest.jobs.catalog_input import read_catalog
from ingest.jobs.errors import EnqueueError
from ingest.jobs.identity import visible
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import Operation
from tests.helpers import file_row, files_in, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _catalog(path: Path, bucket: int, titles: dict[str, str], bad: bool = True) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "title", "url", "bucket", "artist"])
        for ref, title in titles.items():
            w.writerow([ref, title, f"https://cdn.example.com/{bucket}/{ref}.mp3", bucket, f"Artist {ref}"])
        if bad:
            w.writerow(["BAD", "", "not-a-url", bucket, ""])
    return path


def _report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _import(*args: str):
    return CliRunner().invoke(main, ["import", *args], catch_exceptions=False)


def _all_ready(emulator, bucket: int, n: int) -> bool:
    rows = files_in(bucket)
    return len(rows) == n and all(r.status == "ready" for r in rows) and len(emulator.files(bucket)) == n


def test_import_report_rerun_update_dry_run_and_status(emulator, bucket, tmp_path) -> None:
    titles = {f"C-{i}": f"Track {i}" for i in range(12)}
    cat = _catalog(tmp_path / "catalog.csv", bucket, titles)

    dry = _import(str(cat), "--dry-run", "--report", str(tmp_path / "dry.csv"))
    assert dry.exit_code == 2  # a refused row
    assert files_in(bucket) == []  # a dry run writes nothing
    assert [r["outcome"] for r in _report(tmp_path / "dry.csv")] == ["queued"] * 12 + ["refused"]

    first = _import(str(cat))
    assert first.exit_code == 2
    report = _report(Path(f"{cat}.report.csv"))
    assert [(r["row"], r["ref"], r["outcome"]) for r in report[:2]] == [("1", "C-0", "queued"), ("2", "C-1", "queued")]
    refused = report[-1]
    assert (refused["row"], refused["ref"], refused["outcome"]) == ("13", "BAD", "refused")
    assert "title:" in refused["error"] and "url:" in refused["error"]
    wait_for(lambda: _all_ready(emulator, bucket, 12), timeout=60, what="12 imported files ready")
    remote = {f["audio_id"]: f for f in emulator.files(bucket)}
    assert remote["C-3"]["title"] == "Track 3" and visible(remote["C-3"]["user_defined"]) == {"artist": "Artist C-3"}

    again = _import(str(cat), "--report", str(tmp_path / "again.jsonl"))
    assert again.exit_code == 2
    assert (tmp_path / "again.jsonl").read_text().count('"outcome": "unchanged"') == 12

    titles["C-5"] = "Track 5 (remaster)"
    _catalog(cat, bucket, titles, bad=False)
    changed = _import(str(cat))
    assert changed.exit_code == 0, changed.output
    outcomes = {r["ref"]: r["outcome"] for r in _report(Path(f"{cat}.report.csv"))}
    assert outcomes.pop("C-5") == "update" and set(outcomes.values()) == {"unchanged"}
    wait_for(
        lambda: {f["audio_id"]: f["title"] for f in emulator.files(bucket)}["C-5"] == "Track 5 (remaster)",
        timeout=30,
        what="the changed title in the bucket",
    )
    assert len(emulator.files(bucket)) == 12  # an update, not another upload

    status = _import(str(cat), "--status")
    assert status.exit_code == 0 and "12 rows: ready 12" in status.output


def test_stdin_jsonl_import(emulator, bucket) -> None:
    lines = "".join(
        f'{{"ref": "S-{i}", "title": "Std {i}", "url": "https://cdn.example.com/s{i}.mp3", "bucket": {bucket}}}\n'
        for i in range(3)
    )
    result = CliRunner().invoke(main, ["import", "-", "--report", "/dev/null"], input=lines, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    wait_for(lambda: _all_ready(emulator, bucket, 3), timeout=30, what="3 files from stdin ready")


def test_a_broker_failing_midway_loses_nothing_and_a_rerun_sends_the_rest(producer, emulator, bucket) -> None:
    """The rows are written before the publish: the unsent ones stay queued and marked, and re-running the
    same items sends them with their own task ids (no second row, no second file)."""
    from ingest.producer import Producer
    from ingest.worker.app import create_app
    from tests.conftest import WORKDIR

    lines = "".join(
        f'{{"ref": "B-{i}", "title": "T {i}", "url": "https://cdn.example.com/b{i}.mp3", "bucket": {bucket}}}\n'
        for i in range(6)
    )
    settings = get_settings().model_copy(update={"broker_url": f"redis+socket://{WORKDIR}/no-such-broker.sock"})
    dead = Producer(create_app(settings), settings)
    dead.app.conf.update(task_publish_retry=False)
    with pytest.raises(EnqueueError, match="a batch of 6 messages"):
        list(dead.upload_many(read_catalog(io.StringIO(lines), "jsonl", settings), batch_size=100))
    rows = files_in(bucket)
    assert [r.status for r in rows] == ["queued"] * 6
    with session_scope() as s:
        unsent = list(s.exec(select(Operation).where(Operation.bucket_id == bucket)))
        assert [o.error for o in unsent] == [UNSENT] * 6
        task_ids = {o.task_id for o in unsent}

    outcomes = list(producer.upload_many(read_catalog(io.StringIO(lines), "jsonl", get_settings())))
    assert [o.outcome for o in outcomes] == [Outcome.RESENT] * 6
    assert {o.task_id for o in outcomes} == task_ids
    wait_for(lambda: _all_ready(emulator, bucket, 6), timeout=40, what="the resent uploads ready")
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == [f"B-{i}" for i in range(6)]
    assert file_row(bucket, "B-0").remote_id is not None


def test_dry_run_real_run_and_status_count_every_row_once_and_agree(emulator, bucket, tmp_path) -> None:
    """A ref given twice (once with another URL) and a ref held for another source: the dry run, the import and
    --status refuse the same rows, and each count adds up to the file's rows (they said 1991/9, 1990/10
    and 9 refused for a ref given twice)."""
    held = _import(str(_catalog(tmp_path / "held.csv", bucket, {"HELD": "Held"}, bad=False)))
    assert held.exit_code == 0, held.output
    titles = {f"D-{i}": f"Track {i}" for i in range(20)}
    cat = _catalog(tmp_path / "agree.csv", bucket, titles)  # 20 good rows and a bad one
    with cat.open("a", newline="") as f:
        csv.writer(f).writerows(
            [
                ["D-3", "Track 3", "https://cdn.example.com/other/D-3.mp3", bucket, ""],  # D-3 again
                ["HELD", "Held", "https://cdn.example.com/other/HELD.mp3", bucket, ""],  # another source
            ]
        )

    def counts(args: list[str], report: Path) -> dict[str, int]:
        result = _import(str(cat), *args, "--report", str(report))
        assert result.exit_code == 2, result.output
        rows = _report(report)
        assert [int(r["row"]) for r in rows] == list(range(1, 24))  # every row, once, in order
        return {o: sum(r["outcome"] == o for r in rows) for o in {r["outcome"] for r in rows}}

    dry = counts(["--dry-run"], tmp_path / "dry.csv")
    assert dry == {"queued": 20, "refused": 3}
    real = counts([], tmp_path / "real.csv")
    assert real == dry
    refused = {r["ref"]: r["error"] for r in _report(tmp_path / "real.csv") if r["outcome"] == "refused"}
    assert refused["D-3"] == "ref: already given in row 4; keep one row per ref" and "HELD" in refused
    status = _import(str(cat), "--status")
    assert status.exit_code == 0
    summary = status.output.strip().splitlines()[-1]
    assert summary.startswith("23 rows: ") and "refused 3" in summary, summary
