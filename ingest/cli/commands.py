"""The ``acr-ingest`` command: enqueue jobs, run the worker/beat/emulator, and see what happened."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ingest.cli.catalog_import import import_catalog
from ingest.cli.catalog_reconcile import reconcile
from ingest.cli.catalog_sync import sync
from ingest.cli.db import db
from ingest.cli.history import show
from ingest.cli.ops import config, flower, health
from ingest.cli.render import json_option
from ingest.jobs.errors import InputError
from ingest.settings import get_settings
from ingest.store.models import FileStatus


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


class IngestGroup(click.Group):
    """The command group whose commands never end in a traceback: whatever a command lets through becomes one
    line on stderr and exit status 2 (usage, configuration) or 1 (a dependency down), ingest/cli/errors.py.
    ``--debug`` or ACR_INGEST_DEBUG=1 lets it through with its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            from ingest.cli.errors import debug_from_env, explain

            if ctx.params.get("debug") or debug_from_env():
                raise
            line, code = explain(exc)
            click.echo(f"error: {line}", err=True)
            ctx.exit(code)


@click.group(cls=IngestGroup)
@click.version_option(package_name="acr-ingest")
@click.option("--debug", is_flag=True, help="Show the traceback of a failure (also ACR_INGEST_DEBUG=1).")
def main(debug: bool) -> None:
    """Keep ACRCloud buckets in step with your catalog. Settings: ACR_INGEST_* variables (see .env.example)."""
    from ingest.settings import unknown_variables

    for line in unknown_variables():
        click.echo(line, err=True)


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
@click.option(
    "--as",
    "send_as",
    type=click.Choice(["audio", "fingerprint"]),
    help="Send the audio itself or its fingerprint, made on the worker (default ACR_INGEST_UPLOAD_AS).",
)
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
@json_option
def status(as_json: bool) -> None:
    """Counts by state, held work and recent failures."""
    from ingest.cli.render import counts_line, echo_json, table
    from ingest.store.db import session_scope
    from ingest.store.models import FileStatus
    from ingest.store.reports import status_report

    with session_scope() as s:
        report = status_report(s)
    if as_json:
        echo_json(report)
        return
    click.echo("files: " + (counts_line(report["files"], list(FileStatus)) if report["files"] else "none"))
    for kind, counts in sorted(report["operations"].items()):
        click.echo(
            f"{kind}: "
            + counts_line(counts, ("queued", "running", "waiting", "held", "succeeded", "partial", "failed"))
        )
    if report["waiting_for_uploads"]:
        w = report["waiting_for_uploads"]
        click.echo(
            f"waiting for uploads: {w['operations']} follow-up(s) naming {w['refs']} ref(s) not seen yet, since "
            f"{w['since']}; applied when the uploads land, else reported as unknown_ref from {w['first_horizon']}"
        )
    if report["api_down"]:
        d = report["api_down"]
        click.echo(
            f"API DOWN since {d['since']} (circuit breaker open): {d['reason']} — work is held, no attempts used; "
            f"probed every ACR_INGEST_BREAKER_PROBE_INTERVAL s (last {d['last_probe']}), resumes by itself"
        )
    if report["unpublished"]:
        click.echo(f"not yet published: {report['unpublished']} job(s) (the broker was away; the poll sends them)")
    if report["held"]:
        h = report["held"]
        click.echo(f"HELD since {h['since']}: {h['reason']} — fix the token; work resumes by itself")
    if report["recent_failures"]:
        shown, total = len(report["recent_failures"]), report["failures_total"]
        click.echo(
            "recent failures:"
            if total <= shown
            else f"recent failures ({shown} of {total}; acr-ingest failures lists them all):"
        )
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
    rejected = report["rejected_messages"]
    if rejected["count"]:
        latest = len(rejected["latest"])
        click.echo(
            f"rejected messages (taken off the queue, kept in rejected_messages): {rejected['count']}"
            + (
                f" (the latest {latest} shown; the rest in the rejected_messages table)"
                if rejected["count"] > latest
                else ""
            )
        )
        click.echo(
            table(
                ("id", "at", "queue", "task", "reason"),
                [(m["id"], m["at"], m["queue"], m["task"], m["reason"]) for m in rejected["latest"]],
                max_width=90,
            )
        )


@main.command("files")
@click.option("--bucket", "bucket_id", type=int, help="Only files of this bucket.")
@click.option(
    "--status",
    "status_filter",
    type=click.Choice([s.value for s in FileStatus]),
    help="Only files in this local status.",
)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--all", "show_all", is_flag=True, help="Every matching file (no limit).")
@json_option
def files_cmd(bucket_id: int | None, status_filter: str | None, limit: int, show_all: bool, as_json: bool) -> None:
    """The managed files with their id, acr_id, state and what each was sent as."""
    from ingest.cli.render import cut_note, echo_json, files_table
    from ingest.store.db import session_scope
    from ingest.store.reports import file_record, files, files_query, total

    with session_scope() as s:
        rows = files(s, bucket_id=bucket_id, status=status_filter, limit=None if show_all else limit)
        cut = len(rows) == limit and not show_all  # perhaps more match: count them
        matching = total(s, files_query(bucket_id=bucket_id, status=status_filter)) if cut else len(rows)
        if as_json:  # `total` and `shown` say what the text's "showing N of M" says
            echo_json({"files": [file_record(r) for r in rows], "shown": len(rows), "total": matching})
            return
    click.echo(files_table(rows))
    if note := cut_note(len(rows), matching, "files"):
        click.echo(note)


def _filters(f: Any) -> Any:
    f = click.option(
        "--kind", type=click.Choice(["upload_url", "upload_file", "update_meta", "delete_batch", "move_batch"])
    )(f)
    f = click.option("--bucket", "bucket_id", type=int)(f)
    f = click.option("--reason", help="Only failures whose error contains this text (any case).")(f)
    return click.option("--since", help="ISO time or a duration back from now (30m, 2h, 1d).")(f)


@main.command("failures")
@_filters
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0))
@click.option("--all", "show_all", is_flag=True, help="Every matching operation (no limit).")
@json_option
def failures_cmd(
    kind: str | None,
    bucket_id: int | None,
    since: str | None,
    reason: str | None,
    limit: int,
    show_all: bool,
    as_json: bool,
) -> None:
    """Operations that failed for good, and batches that were partly done, with their reasons."""
    from ingest.cli.render import cut_note, echo_json, table
    from ingest.store.db import session_scope
    from ingest.store.history import arg_ref
    from ingest.store.reports import failure_record, failures, failures_query, total

    query = failures_query(kind=kind, bucket_id=bucket_id, since=_since(since), reason=reason)
    with session_scope() as s:
        ops = failures(
            s, kind=kind, bucket_id=bucket_id, since=_since(since), reason=reason, limit=None if show_all else limit
        )
        shown_total = total(s, query) if len(ops) == limit and not show_all else len(ops)
        if as_json:  # `total` and `shown` say what the text's "showing N of M" says
            echo_json({"failures": [failure_record(op) for op in ops], "shown": len(ops), "total": shown_total})
            return
        click.echo(
            table(
                ("op", "kind", "status", "bucket", "ref", "attempts", "when", "error"),
                [
                    (
                        op.id,
                        op.kind,
                        op.status,
                        op.bucket_id,
                        arg_ref(op.args),
                        op.attempts,
                        op.updated_at.isoformat(" ", "seconds"),
                        op.error,
                    )
                    for op in ops
                ],
                max_width=100,
            )
        )
    if note := cut_note(len(ops), shown_total, "failures"):
        click.echo(note)


@main.command("retry-failed")
@_filters
@click.option("--include-bad-input", is_flag=True, help="Also re-send failures for bad input (they fail again as is).")
def retry_failed(
    kind: str | None, bucket_id: int | None, since: str | None, reason: str | None, include_bad_input: bool
) -> None:
    """Re-enqueue failed operations (uploads look in the bucket before posting again)."""
    from ingest.jobs.errors import EnqueueError

    try:
        done = _producer().retry_failed(
            kind=kind, bucket_id=bucket_id, since=_since(since), reason=reason, include_bad_input=include_bad_input
        )
    except EnqueueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"re-enqueued {len(done)} operation(s)")


# --- processes -------------------------------------------------------------------------------------


@main.command("worker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, help="Processes/threads (default ACR_INGEST_WORKER_CONCURRENCY).")
@click.option("--pool", default="prefork", show_default=True)
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, pool: str, loglevel: str) -> None:
    """Run a Celery worker (extra arguments go to celery). Without -Q it serves every queue; the deployments run
    two kinds: -Q ingest,ingest.poll, and -Q ingest.fingerprint for the uploads sent as fingerprints."""
    from ingest.worker.app import app

    argv = [
        *_log_format_args(),
        "worker",
        f"--pool={pool}",
        f"--loglevel={loglevel}",
        "-E",
        f"--concurrency={concurrency or get_settings().worker_concurrency}",
        *ctx.args,
    ]
    app.worker_main(with_node_name(argv))


def with_node_name(argv: list[str]) -> list[str]:
    """``argv`` with a node name unique on this host (``ingest-<pid>@<host>``) unless it names one.

    Celery's default, ``celery@<host>``, is the same for every worker on a host: ``inspect`` and Flower
    then see one node where several run, and remote-control replies are mixed up.
    """
    if any(arg in ("-n", "--hostname") or arg.startswith(("--hostname=", "-n")) for arg in argv):
        return argv
    return [*argv, f"--hostname=ingest-{os.getpid()}@%h"]


@main.command("beat", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.pass_context
def beat(ctx: click.Context, loglevel: str) -> None:
    """Run the beat that schedules the state poll (run exactly one)."""
    from ingest.worker.app import app

    app.start([*_log_format_args(), "beat", f"--loglevel={loglevel}", *ctx.args])


def _log_format_args() -> list[str]:
    """JSON logs: warnings from before Celery's logging set-up as JSON too, and no start-up banner
    (Celery prints it outside logging)."""
    from ingest.worker.logs import log_early

    log_format = get_settings().log_format
    log_early(log_format)
    return ["--quiet"] if log_format == "json" else []


@main.command("metrics")
@click.option("--host", help="Address to listen on (default ACR_INGEST_METRICS_HOST).")
@click.option("--port", default=9464, show_default=True)
@click.option(
    "--counters-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also serve the counters of the workers writing there (default ACR_INGEST_METRICS_DIR, if set).",
)
def metrics(host: str | None, port: int, counters_dir: Path | None) -> None:
    """Serve Prometheus metrics: state read at scrape time (files, queues, hold), and workers' counters.

    Run one per deployment; metric names are in docs/METRICS.md.
    """
    import threading

    from ingest.worker.app import app
    from ingest.worker.metrics_server import build_registry, serve

    settings = get_settings()
    folder = counters_dir or settings.metrics_dir
    if folder is not None and not folder.is_dir():
        raise click.BadParameter(f"{folder} is not a directory (the workers' ACR_INGEST_METRICS_DIR)")
    serve(build_registry(counters_dir=folder, app=app), host or settings.metrics_host, port)
    click.echo(f"metrics on http://{host or settings.metrics_host}:{port}/metrics", err=True)
    threading.Event().wait()  # the server runs in a daemon thread; SIGTERM/SIGINT end the process


@main.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--token", "tokens", multiple=True, help="Accepted token(s) (default: ACR_INGEST_ACCESS_TOKEN).")
@click.option("--processing-delay", default=2.0, show_default=True, help="Seconds a file stays in state 0.")
@click.option("--rate-limit", type=float, help="Requests per second per token (default unlimited).")
@click.option(
    "--profile",
    default="lenient",
    show_default=True,
    help="How to answer where the vendor page is silent (docs/API.md lists the profiles), e.g. strict.",
)
def emulator(
    host: str, port: int, tokens: tuple[str, ...], processing_delay: float, rate_limit: float | None, profile: str
) -> None:
    """Serve the ACRCloud API emulator on HOST:PORT (base URL http://HOST:PORT/api)."""
    from ingest.devtools.emulator.profiles import get_profile
    from ingest.devtools.emulator.server import serve

    try:
        get_profile(profile)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from None

    accepted = set(tokens) or ({t} if (t := get_settings().current_token()) else set())
    if not accepted:
        raise click.UsageError("give --token or set ACR_INGEST_ACCESS_TOKEN")
    click.echo(f"emulator on http://{host}:{port}/api", err=True)
    serve(
        host=host,
        port=port,
        tokens=accepted,
        processing_delay=processing_delay,
        rate_limit=rate_limit,
        profile=profile,
    )


@main.command("probe")
@click.option("--bucket", "bucket_id", type=int, help="A SCRATCH bucket id: the probe writes and deletes files there.")
@click.option("--move-to", type=int, help="A second scratch bucket for the move (default: the same bucket).")
@click.option("--wait", default=120.0, show_default=True, help="Seconds to wait for the files to be processed.")
@click.option("--yes", is_flag=True, help="Do not ask before writing to the bucket.")
@click.option("--show", is_flag=True, help="Show the saved report (ACR_INGEST_PROBE_REPORT) and exit.")
def probe(bucket_id: int | None, move_to: int | None, wait: float, yes: bool, show: bool) -> None:
    """Find out how the real API answers where its page is silent; saves a report (docs/API.md)."""
    from ingest.api.client import AcrCloudClient
    from ingest.cli.probe import run_probe, save, summary

    settings = get_settings()
    path = settings.probe_report
    if show:
        if not path.is_file():
            raise click.ClickException(f"no probe report at {path}: run `acr-ingest probe --bucket ID` first")
        for line in summary(json.loads(path.read_text(encoding="utf-8"))):
            click.echo(line)
        return
    if bucket_id is None:
        raise click.UsageError("give --bucket ID (a scratch bucket), or --show")
    if not yes:
        click.confirm(
            f"Upload two 1 s test files to bucket {bucket_id} at {settings.base_url}, update, move and delete them?",
            abort=True,
        )
    with AcrCloudClient.from_settings(settings) as client:
        report = run_probe(client, bucket_id, move_to=move_to, wait=wait, echo=lambda m: click.echo(m, err=True))
    save(report, path)
    for line in summary(report):
        click.echo(line)
    click.echo(f"report saved to {path}", err=True)
    if report.get("aborted") or report.get("left_behind"):
        sys.exit(1)


@main.command("demo")
@click.option("--keep", is_flag=True, help="Keep the demo's work folder (database, broker, media).")
@click.option("--timeout", default=120.0, show_default=True)
def demo(keep: bool, timeout: float) -> None:
    """Run the whole path on this machine: emulator, worker, beat, SQLite and a file broker."""
    from ingest.cli.demo import run_demo

    sys.exit(run_demo(keep=keep, timeout=timeout))


# Groups and commands kept in modules of their own (catalog scale: ingest/cli/catalog_*.py).
for _command in (db, health, config, show, flower, import_catalog, reconcile, sync):
    main.add_command(_command)

if __name__ == "__main__":
    main()
