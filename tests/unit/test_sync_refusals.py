"""``acr-ingest sync --apply`` never acts on a manifest it could not read in full: a refused row may name a ref
the bucket holds, and ``--prune`` would delete it. The plan is shown, nothing is enqueued, exit 2."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from sqlmodel import select

from ingest.cli.commands import main
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, TrackFile
from tests.helpers import file_row


def _held(bucket: int, ref: str) -> None:
    with session_scope() as s:
        s.add(
            TrackFile(
                ref=ref,
                bucket_id=bucket,
                data_type="audio_url",
                title=ref,
                source=f"https://cdn.example.com/{ref}.mp3",
                status=FileStatus.READY,
                remote_id=abs(hash((bucket, ref))) % 10**9,
            )
        )
        s.commit()


def test_a_manifest_with_a_refused_row_is_never_applied(bucket, tmp_path: Path) -> None:
    for ref in ("CAT-1", "CAT-2"):
        _held(bucket, ref)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        '{"ref": "CAT-1", "title": "CAT-1", "url": "https://cdn.example.com/CAT-1.mp3"}\n'
        '{"ref": "CAT-2", "title": "CAT-2", "url": "https://cdn.example.com/CAT-2.mp3"\n'  # no closing brace
    )
    result = CliRunner().invoke(main, ["sync", str(manifest), "--bucket", str(bucket), "--prune", "--apply"])
    assert result.exit_code == 2, result.output
    assert "applied:" not in result.stdout
    last = result.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: nothing applied: 1 row(s) refused"), result.stderr
    # The line's real column: the end of the 77-character line, not "column 1" of the next.
    assert "at column 78" in result.stdout, result.stdout
    assert file_row(bucket, "CAT-2").status == FileStatus.READY  # type: ignore[union-attr]
    with session_scope() as s:
        assert s.exec(select(Operation).where(Operation.bucket_id == bucket)).all() == []

    as_json = CliRunner().invoke(main, ["sync", str(manifest), "--bucket", str(bucket), "--prune", "--apply", "--json"])
    assert as_json.exit_code == 2 and '"applied"' not in as_json.stdout
