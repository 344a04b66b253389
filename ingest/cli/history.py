"""``acr-ingest show REF``: what happened to one file — its row and every operation that touched it."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from ingest.cli.render import echo_json, json_option, printable, sent_as, table
from ingest.store.history import FileHistory


def _when(value: datetime | None) -> str:
    return value.isoformat(" ", "seconds") if value else ""


def render_history(h: FileHistory) -> str:
    f = h.file
    state = "" if f.remote_state is None else f" (remote state {f.remote_state})"
    lines = [
        f"file {f.id}: ref {printable(f.ref)} in bucket {f.bucket_id}",
        f"  title     {printable(f.title)}",
        f"  status    {f.status}{state}",
        f"  id        {f.remote_id if f.remote_id is not None else '-'}",
        f"  acr_id    {f.acr_id or '-'}",
        f"  source    {printable(f.source)} ({f.data_type})",
        f"  sent as   {sent_as(f)}",
        f"  attempts  {f.attempts}",
        f"  created   {_when(f.created_at)}    updated {_when(f.updated_at)}",
    ]
    if f.reason:
        lines.append(f"  reason    {printable(f.reason)}")
    lines.append(f"operations ({len(h.operations)}, oldest first):")
    rows = [
        (
            op.id,
            op.kind,
            op.bucket_id,
            op.status,
            op.attempts,
            op.throttled,
            _when(op.created_at),
            _when(op.finished_at),
            ", ".join(f"{name} {outcome}" for name, outcome in outcomes.items()),
            op.error,
        )
        for op, outcomes in h.operations
    ]
    headers = ("op", "kind", "bucket", "status", "attempts", "429s", "created", "finished", "outcome", "reason")
    lines.append(table(headers, rows, max_width=100))
    return "\n".join(lines)


@click.command("show")
@click.argument("ref", required=False)
@click.option("--id", "remote_id", type=int, help="The API's numeric file id.")
@click.option("--acr-id", "acr_id")
@click.option("--op", "op_id", type=int, help="An operation id: the file(s) it touched.")
@click.option("--bucket", "bucket_id", type=int, help="Only the file in this bucket (a ref may be in several).")
@json_option
def show(
    ref: str | None, remote_id: int | None, acr_id: str | None, op_id: int | None, bucket_id: int | None, as_json: bool
) -> None:
    """One file's row and every operation that touched it, in order, with status, attempts, reasons and each
    batch's outcome for it. Name it by REF, --id, --acr-id or --op. --json: {"files": [...]}, one per row matched
    (a ref may be in several buckets, a batch may name several files)."""
    from ingest.store.db import session_scope
    from ingest.store.history import find_files, history
    from ingest.store.reports import history_record

    given = [v for v in (ref, remote_id, acr_id, op_id) if v is not None]
    if len(given) != 1:
        raise click.UsageError("name exactly one: REF, --id, --acr-id or --op")
    with session_scope() as s:
        rows = find_files(s, ref=ref, remote_id=remote_id, acr_id=acr_id, op_id=op_id, bucket_id=bucket_id)
        if not rows:
            click.echo(f"error: no managed file matches {printable(str(given[0]))}", err=True)
            sys.exit(1)
        if as_json:
            echo_json({"files": [history_record(history(s, row)) for row in rows]})
            return
        click.echo("\n\n".join(render_history(history(s, row)) for row in rows))
