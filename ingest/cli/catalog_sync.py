"""``acr-ingest sync MANIFEST --bucket ID``: show the plan that makes the bucket hold exactly the
manifest (ingest/jobs/catalog_sync.py); ``--apply`` enqueues exactly that plan."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any

import click

from ingest.jobs.catalog_sync import SyncPlan
from ingest.settings import get_settings

SHOWN = 10


def _apply(plan: SyncPlan) -> dict[str, int]:
    from ingest.jobs.batches import chunks
    from ingest.producer import Producer

    producer = Producer()
    limit = producer.settings.max_ids_per_job
    # Uploads and updates are the import's decisions again (upload_many re-plans each ref under its
    # own transaction), so a ref changed since the plan was shown is still handled right.
    sent = sum(1 for o in producer.upload_many([*plan.uploads, *plan.updates]) if o.outcome != "unchanged")
    by_source: dict[int, list[str]] = defaultdict(list)
    for src, ref in plan.moves:
        by_source[src].append(ref)
    for src, refs in sorted(by_source.items()):
        for chunk in chunks(refs, limit):
            producer.move(bucket_id=src, target_bucket_id=plan.bucket_id, refs=chunk)
    for chunk in chunks(plan.deletes, limit):
        producer.delete(bucket_id=plan.bucket_id, refs=chunk)
    return {"uploads and updates": sent, "moves": len(plan.moves), "deletes": len(plan.deletes)}


def _summary(plan: SyncPlan) -> None:
    d = plan.as_dict()
    click.echo(
        f"bucket {plan.bucket_id}: {len(plan.uploads)} upload(s), {len(plan.updates)} update(s), "
        f"{len(plan.moves)} move(s), {len(plan.deletes)} delete(s); {plan.unchanged} unchanged, "
        f"{len(plan.refused)} refused"
    )
    labels = {
        "uploads": lambda e: f"+ {e['ref']}  {e['title']!r}  {e['source']}",
        "updates": lambda e: f"~ {e['ref']}  title {e['title']!r}",
        "moves": lambda e: f"> {e['ref']}  from bucket {e['from_bucket']}",
        "deletes": lambda e: f"- {e['ref']}",
        "refused": lambda e: f"! row {e['row']} {e['ref'] or ''}: {e['error']}",
    }
    for key, fmt in labels.items():
        for e in d[key][:SHOWN]:
            click.echo("  " + fmt(e))
        if len(d[key]) > SHOWN:
            click.echo(f"  ... and {len(d[key]) - SHOWN} more {key} (--json lists all)")


@click.command("sync")
@click.argument("manifest", metavar="MANIFEST")
@click.option("--bucket", "bucket_id", type=int, help="The bucket to sync (default ACR_INGEST_DEFAULT_BUCKET).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="Default: by the file name (- is jsonl).")
@click.option("--prune", is_flag=True, help="Also delete the bucket's refs that the manifest does not name.")
@click.option("--apply", "apply_plan", is_flag=True, help="Enqueue the plan (without it, only show it).")
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
def sync(manifest: str, bucket_id: int | None, fmt: str | None, prune: bool, apply_plan: bool, as_json: bool) -> None:
    """Plan (and with --apply enqueue) the uploads, updates, moves and, with --prune, deletes that make
    the bucket hold exactly MANIFEST (.jsonl, .csv, or - for standard input). Exits 2 if a row was refused;
    then --apply enqueues nothing (a refused row may name a ref that --prune would delete)."""
    from ingest.cli.catalog_import import checked_input, open_input
    from ingest.jobs.catalog_input import format_of, read_catalog
    from ingest.jobs.catalog_sync import plan_sync
    from ingest.store.db import session_scope

    settings = get_settings()
    bucket = bucket_id or settings.default_bucket
    if bucket is None:
        raise click.UsageError("give --bucket (or set ACR_INGEST_DEFAULT_BUCKET)")
    fmt = format_of(manifest, fmt)
    with checked_input(manifest, fmt) as (path, check):  # a file that would lose rows is refused whole
        if note := check.note():
            click.echo(note, err=True)
        with open_input(path) as stream, session_scope() as s:
            plan = plan_sync(s, read_catalog(stream, fmt, settings, bucket), bucket, prune=prune)
    out: dict[str, Any] = plan.as_dict()
    # A refused row may name a ref the bucket holds: applied, the plan would prune (or leave stale) a file the
    # manifest meant to keep. A plan with refused rows is shown, never applied.
    refuse_apply = apply_plan and bool(plan.refused)
    if apply_plan and not refuse_apply:
        out["applied"] = _apply(plan)
    if as_json:
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        _summary(plan)
        if "applied" in out:
            click.echo("applied: " + ", ".join(f"{k} {v}" for k, v in out["applied"].items()))
        elif not plan.empty and not refuse_apply:
            click.echo("(nothing enqueued: add --apply)")
    if refuse_apply:
        click.echo(
            f"error: nothing applied: {len(plan.refused)} row(s) refused (listed above); fix or remove them "
            "in the manifest and run again",
            err=True,
        )
    if plan.refused:
        sys.exit(2)
