"""The ``acr-ingest`` command: enqueue jobs, run the worker/beat/emulator, and see what happened."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ingest.cli.catalog_import import import_catalog
from ingest.cli.catalog_reconcile import reconcile
from ingest.cli.catalog_sync import sync
from ingest.jobs.errors import InputError
from ingest.settings import get_settings


def _producer() -> Any:
    from ingest.producer import Producer

    return Producer()


def _enqueue(call: Any, **kwargs: Any) -> None:
    """Run a producer call; bad input exits 2 with one line per field, a broker failure exits 1."""
    from ingest.jobs.errors import EnqueueError

    try:
        result = call(**kwargs)
    except InputError as exc:
        for field, message in exc.errors.items():
            click.echo(f"error: {field}: {message}", err=True)
        sys.exit(2)
    except EnqueueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps({k: v for k, v in vars(result).items() if v is not None}))


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def _since(value: str | None) -> datetime | None:
    """ "2026-11-25T10:00", or a duration back from now: 30m, 2h, 1d."""
    if not value:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[-1] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        when = datetime.fromisoformat(value)
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    except ValueError:
        raise click.BadParameter("give an ISO time (2026-11-25T10:00) or a duration (30m, 2h, 1d)") from None


@click.group()
@click.version_option(package_name="acr-ingest")
def main() -> None:
    """Keep ACRCloud buckets in step with your catalog. Settings: ACR_INGEST_* variables (see .env.example)."""


# --- producer commands ----------------------------------------------------------------------------

bucket_opt = click.option("--bucket", "bucket_id", help="Bucket id (default ACR_INGEST_DEFAULT_BUCKET).")
ud_opt = click.option("--user-defined", "user_defined", help='JSON object, e.g. \'{"artist": "A"}\'.')
ref_opt = click.option("--ref", help="Your catalog's id for this track (generated from the source if absent).")


@main.command("upload-url")
@click.argument("url")
@click.option("--title", required=True)
@bucket_opt
@ud_opt
@ref_opt
def upload_url(url: str, **kw: Any) -> None:
    """Have the API fetch URL into the bucket."""
    _enqueue(_producer().upload_url, url=url, **kw)


@main.command("upload-file")
@click.argument("path")
@click.option("--title", required=True)
@click.option("--data-type", default="audio", type=click.Choice(["audio", "fingerprint"]))
@bucket_opt
@ud_opt
@ref_opt
def upload_file(path: str, **kw: Any) -> None:
    """Upload PATH (under ACR_INGEST_MEDIA_ROOT) into the bucket."""
    _enqueue(_producer().upload_file, path=path, **kw)


@main.command("update-meta")
@click.option("--ref")
@click.option("--id", "file_id", help="The API's numeric file id.")
@click.option("--acr-id", "acr_id")
@click.option("--title")
@bucket_opt
@ud_opt
def update_meta(**kw: Any) -> None:
    """Change a file's title and/or user_defined (name it by --ref, --id or --acr-id)."""
    _enqueue(_producer().update_meta, **kw)


def _batch_options(f: Any) -> Any:
    for opt in (
        click.option("--acr-id", "acr_ids", multiple=True, help="acr_id(s), repeat or comma-separate."),
        click.option("--id", "ids", multiple=True, help="API file id(s), repeat or comma-separate."),
        click.option("--ref", "refs", multiple=True, help="Catalog ref(s), repeat or comma-separate."),
        bucket_opt,
    ):
        f = opt(f)
    return f


@main.command("delete")
@_batch_options
def delete(refs: tuple[str, ...], ids: tuple[str, ...], acr_ids: tuple[str, ...], bucket_id: str | None) -> None:
    """Delete files from the bucket (a pending upload is cancelled)."""
    _enqueue(_producer().delete, bucket_id=bucket_id, refs=_split(refs), ids=_split(ids), acr_ids=_split(acr_ids))


@main.command("move")
@click.option("--to", "target_bucket_id", help="Target bucket id (required).")
@_batch_options
def move(
    target_bucket_id: str | None,
    refs: tuple[str, ...],
    ids: tuple[str, ...],
    acr_ids: tuple[str, ...],
    bucket_id: str | None,
) -> None:
    """Move files to another bucket."""
    _enqueue(
        _producer().move,
        target_bucket_id=target_bucket_id,
        bucket_id=bucket_id,
        refs=_split(refs),
        ids=_split(ids),
        acr_ids=_split(acr_ids),
    )


# --- what happened ---------------------------------------------------------------------------------


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Counts by state, held work and recent failures."""
    from ingest.cli.render import counts_line, table
    from ingest.store.db import session_scope
    from ingest.store.models import FileStatus
    from ingest.store.reports import status_report

    with session_scope() as s:
        report = status_report(s)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo("files: " + (counts_line(report["files"], list(FileStatus)) if report["files"] else "none"))
    for kind, counts in sorted(report["operations"].items()):
        click.echo(
            f"{kind}: "
            + counts_line(counts, ("queued", "running", "waiting", "held", "succeeded", "partial", "failed"))
        )
    if report["held"]:
        h = report["held"]
        click.echo(f"HELD since {h['since']}: {h['reason']} — fix the token; work resumes by itself")
    if report["recent_failures"]:
        click.echo("recent failures:")
        click.echo(
            table(
                ("op", "kind", "bucket", "ref", "attempts", "error"),
                [
                    (f["operation_id"], f["kind"], f["bucket_id"], f["ref"], f["attempts"], f["error"])
                    for f in report["recent_failures"]
                ],
                max_width=90,
            )
        )


@main.command("files")
@bucket_opt
@click.option("--status", "status_filter", help="Only files in this local status.")
@click.option("--limit", default=200, show_default=True)
def files_cmd(bucket_id: str | None, status_filter: str | None, limit: int) -> None:
    """The managed files with their id, acr_id and state."""
    from ingest.cli.render import files_table
    from ingest.store.db import session_scope
    from ingest.store.reports import files

    with session_scope() as s:
        click.echo(
            files_table(files(s, bucket_id=int(bucket_id) if bucket_id else None, status=status_filter, limit=limit))
        )


def _filters(f: Any) -> Any:
    f = click.option(
        "--kind", type=click.Choice(["upload_url", "upload_file", "update_meta", "delete_batch", "move_batch"])
    )(f)
    f = click.option("--bucket", "bucket_id", type=int)(f)
    return click.option("--since", help="ISO time or a duration back from now (30m, 2h, 1d).")(f)


@main.command("failures")
@_filters
@click.option("--limit", default=50, show_default=True)
def failures_cmd(kind: str | None, bucket_id: int | None, since: str | None, limit: int) -> None:
    """Operations that failed for good, with their reasons."""
    from ingest.cli.render import table
    from ingest.store.db import session_scope
    from ingest.store.reports import failures

    with session_scope() as s:
        ops = failures(s, kind=kind, bucket_id=bucket_id, since=_since(since), limit=limit)
        click.echo(
            table(
                ("op", "kind", "bucket", "ref", "attempts", "when", "error"),
                [
                    (
                        op.id,
                        op.kind,
                        op.bucket_id,
                        op.args.get("ref"),
                        op.attempts,
                        op.updated_at.isoformat(" ", "seconds"),
                        op.error,
                    )
                    for op in ops
                ],
                max_width=100,
            )
        )


@main.command("retry-failed")
@_filters
def retry_failed(kind: str | None, bucket_id: int | None, since: str | None) -> None:
    """Re-enqueue failed operations (uploads look in the bucket before posting again)."""
    done = _producer().retry_failed(kind=kind, bucket_id=bucket_id, since=_since(since))
    click.echo(f"re-enqueued {len(done)} operation(s)")


# --- processes -------------------------------------------------------------------------------------


@main.command("worker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, help="Processes/threads (default ACR_INGEST_WORKER_CONCURRENCY).")
@click.option("--pool", default="prefork", show_default=True)
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, pool: str, loglevel: str) -> None:
    """Run a Celery worker (extra arguments go to celery)."""
    from ingest.worker.app import app

    argv = [
        "worker",
        f"--pool={pool}",
        f"--loglevel={loglevel}",
        "-E",
        f"--concurrency={concurrency or get_settings().worker_concurrency}",
        *ctx.args,
    ]
    app.worker_main(argv)


@main.command("beat", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.pass_context
def beat(ctx: click.Context, loglevel: str) -> None:
    """Run the beat that schedules the state poll (run exactly one)."""
    from ingest.worker.app import app

    app.start(["beat", f"--loglevel={loglevel}", *ctx.args])


@main.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--token", "tokens", multiple=True, help="Accepted token(s) (default: ACR_INGEST_ACCESS_TOKEN).")
@click.option("--processing-delay", default=2.0, show_default=True, help="Seconds a file stays in state 0.")
@click.option("--rate-limit", type=float, help="Requests per second per token (default unlimited).")
def emulator(host: str, port: int, tokens: tuple[str, ...], processing_delay: float, rate_limit: float | None) -> None:
    """Serve the ACRCloud API emulator on HOST:PORT (base URL http://HOST:PORT/api)."""
    from ingest.devtools.emulator.server import serve

    accepted = set(tokens) or ({t} if (t := get_settings().current_token()) else set())
    if not accepted:
        raise click.UsageError("give --token or set ACR_INGEST_ACCESS_TOKEN")
    click.echo(f"emulator on http://{host}:{port}/api", err=True)
    serve(host=host, port=port, tokens=accepted, processing_delay=processing_delay, rate_limit=rate_limit)


@main.command("demo")
@click.option("--keep", is_flag=True, help="Keep the demo's work folder (database, broker, media).")
@click.option("--timeout", default=120.0, show_default=True)
def demo(keep: bool, timeout: float) -> None:
    """Run the whole path on this machine: emulator, worker, beat, SQLite and a file broker."""
    from ingest.cli.demo import run_demo

    sys.exit(run_demo(keep=keep, timeout=timeout))


# --- catalog scale (ingest/cli/catalog_*.py) --------------------------------------------------------

main.add_command(import_catalog)
main.add_command(reconcile)
main.add_command(sync)


if __name__ == "__main__":
    main()
