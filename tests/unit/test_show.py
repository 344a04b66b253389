"""`acr-ingest show`, `files` and `failures` over the rows the handlers write: one ref's whole history in order,
the bucket column and filter, partial batches among the failures, text that cannot break a line or drive
the terminal, and `show`/`files`/`failures --json` giving the same data (a cut listing's total included)."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner, Result

from ingest.cli.commands import main
from ingest.store.db import session_scope
from ingest.store.models import OpStatus, TrackFile
from tests.helpers import file_row
from tests.unit.support import op_of, record, run, run_to_end, url_args

UNKNOWN_ID = 999_999_999
RAW_ESCAPES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _ops_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"^\d+\s+(upload_url|update_meta|delete_batch)\s", line)]


def test_show_tells_one_refs_whole_history(make_ctx, emulator, bucket) -> None:
    ref = f"CAT-{bucket}"
    run("upload_url", url_args(bucket, ref, title="First Title"), make_ctx())
    run("update_meta", {"bucket_id": bucket, "ref": ref, "title": "Second Title"}, make_ctx())
    row = file_row(bucket, ref)
    assert row is not None and row.remote_id is not None
    delete = make_ctx()
    out, _ = run_to_end("delete_batch", {"bucket_id": bucket, "ids": [row.remote_id, UNKNOWN_ID]}, delete)
    assert out["status"] == OpStatus.PARTIAL
    delete_op = op_of(delete)
    # A batch of an unrelated bucket naming the same API id meant another file: not in this file's history.
    record("delete_batch", {"bucket_id": bucket + 5, "ids": [row.remote_id]}, make_ctx())

    shown = _cli("show", ref)
    assert shown.exit_code == 0, shown.output
    assert f"ref {ref} in bucket {bucket}" in shown.output and "status    deleted" in shown.output
    lines = _ops_lines(shown.output)
    assert [line.split()[1] for line in lines] == ["upload_url", "update_meta", "delete_batch"], shown.output
    assert [line.split()[3] for line in lines] == ["succeeded", "succeeded", "partial"]
    assert [line.split()[4] for line in lines] == ["1", "1", "1"]  # the run that succeeded counts (it said 0)
    # The batch's outcome for this file, not for the other name it carried.
    assert f"id:{row.remote_id} deleted" in lines[2] and str(UNKNOWN_ID) not in lines[2].split("deleted")[0]
    assert "1 of 2 not done" in lines[2]

    # The same history by the API's id, by acr_id and by the batch's operation id. The inner ring's emulators
    # (one per profile) each number ids from 1 into the one database: an id alone may name other tests' files.
    for how in (["--id", str(row.remote_id)], ["--acr-id", str(row.acr_id)], ["--op", str(delete_op.id)]):
        again = _cli("show", *how, "--bucket", str(bucket))
        assert again.exit_code == 0 and _ops_lines(again.output) == lines, (how, again.output)

    # --json: the same file and the same operations, in the same order, under stable keys.
    doc = json.loads(_cli("show", ref, "--json").output)
    [shown_file] = doc["files"]
    assert {k: shown_file[k] for k in ("ref", "bucket_id", "status", "remote_id", "acr_id", "send_as", "title")} == {
        "ref": ref,
        "bucket_id": bucket,
        "status": "deleted",
        "remote_id": row.remote_id,
        "acr_id": row.acr_id,
        "send_as": row.send_as,
        "title": "Second Title",
    }
    assert shown_file["row_id"] == row.id and shown_file["fingerprint_bytes"] is None
    ops = shown_file["operations"]
    assert [o["operation_id"] for o in ops] == [int(line.split()[0]) for line in lines]
    assert [(o["kind"], o["status"], o["attempts"]) for o in ops] == [
        ("upload_url", "succeeded", 1),
        ("update_meta", "succeeded", 1),
        ("delete_batch", "partial", 1),
    ]
    assert ops[2]["outcomes"] == {f"id:{row.remote_id}": "deleted"} and ops[2]["finished_at"]
    assert json.loads(_cli("show", "--op", str(delete_op.id), "--json").output) == doc

    missing = _cli("show", "no-such-ref")
    assert missing.exit_code == 1 and "no managed file matches" in missing.output
    missing_json = _cli("show", "no-such-ref", "--json")
    assert missing_json.exit_code == 1 and "no managed file matches" in missing_json.output
    assert _cli("show", ref, "--id", "1").exit_code == 2  # name exactly one

    failures = _cli("failures", "--bucket", str(bucket))
    assert failures.exit_code == 0
    assert any(
        line.split()[:3] == [str(delete_op.id), "delete_batch", "partial"] for line in failures.output.splitlines()
    )
    # --json: the partial batch, its reason and its counts, as the text shows them.
    [partial] = json.loads(_cli("failures", "--bucket", str(bucket), "--json").output)["failures"]
    assert (partial["operation_id"], partial["kind"], partial["status"], partial["bucket_id"]) == (
        delete_op.id,
        "delete_batch",
        "partial",
        bucket,
    )
    assert partial["attempts"] == 1 and partial["error"] and partial["error"][:40] in failures.output


def test_files_shows_the_bucket_honours_it_and_refuses_an_unknown_status(make_ctx, emulator, bucket) -> None:
    other = bucket + 500_000
    run("upload_url", url_args(bucket, "mine"), make_ctx())
    run("upload_url", url_args(other, "theirs"), make_ctx())

    listed = _cli("files", "--bucket", str(bucket))
    assert listed.exit_code == 0
    header, _rule, *rows = listed.output.splitlines()
    assert header.split()[:3] == ["ref", "bucket", "title"]
    assert [r.split()[:2] for r in rows] == [["mine", str(bucket)]]

    by_status = _cli("files", "--bucket", str(other), "--status", "processing")
    assert [r.split()[0] for r in by_status.output.splitlines()[2:]] == ["theirs"], by_status.output
    assert _cli("files", "--bucket", str(other), "--status", "ready").output.splitlines()[2:] == []
    bad = _cli("files", "--status", "bogus")
    assert bad.exit_code == 2 and "'bogus' is not one of" in bad.output and "'ready'" in bad.output


def test_control_and_bidi_characters_are_shown_escaped(make_ctx, emulator, bucket) -> None:
    run("upload_url", url_args(bucket, "evil"), make_ctx())
    with session_scope() as s:
        row = s.get(TrackFile, file_row(bucket, "evil").id)  # type: ignore[union-attr]
        assert row is not None
        # As if a title or a reason came from somewhere that did not check it (the API, an older version).
        row.title = "Night\u202eTrain\x1b[2J"
        row.reason = "line one\nline two\r\u2028three"
        s.add(row)

    for args in (["files", "--bucket", str(bucket)], ["show", "evil", "--bucket", str(bucket)]):
        out = _cli(*args).output
        assert not RAW_ESCAPES.search(out), (args, out)
        assert "Night\\u202eTrain\\x1b[2J" in out
        assert "line one\\nline two\\r\\u2028three" in out
        # JSON escapes them too, and gives them back as they are.
        raw = _cli(*args, "--json").output
        assert not RAW_ESCAPES.search(raw), (args, raw)
        [doc] = json.loads(raw)["files"]
        assert (doc["title"], doc["reason"]) == ("Night\u202eTrain\x1b[2J", "line one\nline two\r\u2028three")
    rows = _cli("files", "--bucket", str(bucket)).output.splitlines()
    assert len(rows) == 3  # header, rule, one line for the file: the multi-line reason stayed on it


def test_a_listing_cut_at_its_limit_says_so(make_ctx, emulator, bucket) -> None:
    for ref in ("cut-1", "cut-2", "cut-3"):
        run("upload_url", url_args(bucket, ref), make_ctx())
        run("delete_batch", {"bucket_id": bucket, "ids": [f"bad-{ref}"]}, make_ctx())  # failed: bad input

    cut = _cli("files", "--bucket", str(bucket), "--limit", "2")
    assert cut.output.splitlines()[-1] == "showing 2 of 3 files; --limit N or --all for more", cut.output
    for whole in (_cli("files", "--bucket", str(bucket)), _cli("files", "--bucket", str(bucket), "--all")):
        assert "showing" not in whole.output and len(whole.output.splitlines()) == 2 + 3, whole.output
    # --json keeps what "showing 2 of 3" says.
    cut_json = json.loads(_cli("files", "--bucket", str(bucket), "--limit", "2", "--json").output)
    assert (cut_json["shown"], cut_json["total"]) == (2, 3)
    assert [f["ref"] for f in cut_json["files"]] == ["cut-1", "cut-2"]
    assert [f["ref"] for f in json.loads(_cli("files", "--bucket", str(bucket), "--json").output)["files"]] == [
        "cut-1",
        "cut-2",
        "cut-3",
    ]
    whole_json = json.loads(_cli("files", "--bucket", str(bucket), "--all", "--json").output)
    assert (whole_json["shown"], whole_json["total"], len(whole_json["files"])) == (3, 3, 3)

    failed = _cli("failures", "--bucket", str(bucket), "--limit", "2")
    assert failed.output.splitlines()[-1] == "showing 2 of 3 failures; --limit N or --all for more", failed.output
    assert "showing" not in _cli("failures", "--bucket", str(bucket), "--all").output
    # failures --json: the text's rows (newest first) under stable keys, and what "showing 2 of 3" says.
    failed_json = json.loads(_cli("failures", "--bucket", str(bucket), "--limit", "2", "--json").output)
    assert (failed_json["shown"], failed_json["total"], len(failed_json["failures"])) == (2, 3, 2)
    text_rows = [line.split()[:6] for line in failed.output.splitlines()[2:-1]]
    assert [
        [str(f["operation_id"]), f["kind"], f["status"], str(f["bucket_id"]), str(f["attempts"])]
        for f in failed_json["failures"]
    ] == [[r[0], r[1], r[2], r[3], r[4]] for r in text_rows]
    for f in failed_json["failures"]:
        assert f.keys() == {"operation_id", "kind", "status", "bucket_id", "ref", "attempts", "at", "error"}
        assert f["ref"] is None and f["error"].startswith("bad input: ") and "bad-cut-" in f["error"]
    whole_failed = json.loads(_cli("failures", "--bucket", str(bucket), "--all", "--json").output)
    assert (whole_failed["shown"], whole_failed["total"]) == (3, 3)
    assert [f["operation_id"] for f in whole_failed["failures"]][:2] == [
        f["operation_id"] for f in failed_json["failures"]
    ]
    none = json.loads(_cli("failures", "--bucket", str(bucket), "--reason", "no such reason", "--json").output)
    assert none == {"failures": [], "shown": 0, "total": 0}

    report = json.loads(_cli("status", "--json").output)
    status = _cli("status").output
    shown = len(report["recent_failures"])
    if report["failures_total"] > shown:  # the other tests' failures share the database
        assert f"recent failures ({shown} of {report['failures_total']}; acr-ingest failures lists them all):" in status
    else:
        assert "recent failures:" in status


def test_reconcile_says_its_table_shows_examples_only(emulator, bucket) -> None:
    from ingest.api.client import AcrCloudClient
    from ingest.settings import get_settings

    with AcrCloudClient.from_settings(get_settings()) as api:  # files added by hand: none of them ours
        for i in range(7):
            api.upload_url(bucket, f"https://cdn.example.com/hand-{i}.mp3", title=f"Hand {i}")
    out = _cli("reconcile", "--bucket", str(bucket)).output
    assert "unknown 7" in out
    assert out.splitlines()[-1].startswith("showing 5 examples of 7 findings (at most 5 a class; unknown 7)"), out
