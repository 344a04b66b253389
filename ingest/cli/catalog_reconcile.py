"""``acr-ingest reconcile``: compare a whole bucket with our tables; ``--fix`` applies the documented
policy (ingest/jobs/reconcile.py) through the normal jobs."""

from __future__ import annotations

import json
from typing import Any

import click

from ingest.cli.render import table
from ingest.jobs.reconcile import Drift, Report
from ingest.settings import get_settings


def _fix(report: Report, delete_unknown: bool) -> dict[str, int]:
    from ingest.jobs.batches import chunks
    from ingest.jobs.reconcile import fix_in_tables
    from ingest.producer import Producer
    from ingest.store.db import session_scope
    from ingest.store.models import TrackFile

    producer = Producer()
    settings = producer.settings
    bucket = report.bucket_id
    done = {"adopted": 0, "states recorded": 0, "files to delete": 0, "metadata updates": 0, "re-uploads": 0}
    with session_scope() as s:
        resend = fix_in_tables(s, report)
    done["adopted"] = report.counts[Drift.ADOPTABLE.value]
    done["states recorded"] = report.counts[Drift.STATE.value]

    doomed = (Drift.TWIN, Drift.LEFTOVER, Drift.UNKNOWN) if delete_unknown else (Drift.TWIN, Drift.LEFTOVER)
    ids = sorted({f.file_id for f in report.findings if f.drift in doomed and f.file_id is not None})
    for chunk in chunks(ids, settings.max_ids_per_job):
        producer.delete(bucket_id=bucket, ids=chunk)
    done["files to delete"] = len(ids)

    meta = [f for f in report.findings if f.drift is Drift.METADATA] + resend
    vanished = [f for f in report.findings if f.drift is Drift.VANISHED]
    with session_scope() as s:
        rows = {f.row_id: s.get(TrackFile, f.row_id) for f in meta + vanished}
    for f in meta:
        row = rows[f.row_id]
        if row is not None:
            producer.update_meta(bucket_id=bucket, ref=row.ref, title=row.title, user_defined=row.user_defined)
            done["metadata updates"] += 1
    for f in vanished:
        row = rows[f.row_id]
        if row is None:
            continue
        common: dict[str, Any] = {"title": row.title, "bucket_id": bucket, "user_defined": row.user_defined}
        if row.data_type == "audio_url":
            producer.upload_url(row.source, ref=row.ref, **common)
        else:
            # As it was sent before: a fingerprint is made again from the source as it is now.
            send_as = row.send_as if row.data_type == "audio" else None
            producer.upload_file(row.source, ref=row.ref, data_type=row.data_type, send_as=send_as, **common)
        done["re-uploads"] += 1
    return done


@click.command("reconcile")
@click.option("--bucket", "bucket_id", type=int, help="Bucket id (default ACR_INGEST_DEFAULT_BUCKET).")
@click.option("--fix", is_flag=True, help="Apply the policy: adopt, delete our twins, re-send metadata, re-upload.")
@click.option("--delete-unknown", is_flag=True, help="With --fix: also delete files that carry no ref of ours.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reconcile(bucket_id: int | None, fix: bool, delete_unknown: bool, as_json: bool) -> None:
    """Page through the whole bucket and compare it with our tables: files we do not know, our twins and
    leftovers, files of failed uploads, rows whose file is gone, metadata or state that drifted."""
    from ingest.api.client import AcrCloudClient
    from ingest.jobs.reconcile import EXAMPLES, scan
    from ingest.store.db import session_scope

    settings = get_settings()
    bucket = bucket_id or settings.default_bucket
    if bucket is None:
        raise click.UsageError("give --bucket (or set ACR_INGEST_DEFAULT_BUCKET)")
    if delete_unknown and not fix:
        raise click.UsageError("--delete-unknown applies with --fix")
    with AcrCloudClient.from_settings(settings) as client, session_scope() as s:
        report = scan(s, client, bucket, settings.list_page_size)
    out: dict[str, Any] = report.as_dict()
    if fix:
        out["fixed"] = _fix(report, delete_unknown)
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"bucket {bucket}: {report.files} files listed, {report.rows} of our rows with a file id checked")
    click.echo("  ".join(f"{k} {v}" for k, v in out["counts"].items()))
    examples = [
        (drift, e["ref"], e["file_id"], e["row_id"], e["detail"]) for drift, es in out["examples"].items() for e in es
    ]
    if examples:
        click.echo(table(("class", "ref", "file id", "row", "detail"), examples, max_width=60))
        cut = {k: n for k, n in out["counts"].items() if n > len(out["examples"].get(k, []))}
        if cut:  # the table is examples; the counts line above is complete
            click.echo(
                f"showing {len(examples)} examples of {sum(out['counts'].values())} findings (at most {EXAMPLES} a "
                f"class; {', '.join(f'{k} {n}' for k, n in cut.items())}); --fix applies to all of them"
            )
    if fix:
        click.echo("fixed: " + ", ".join(f"{k} {v}" for k, v in out["fixed"].items()))
