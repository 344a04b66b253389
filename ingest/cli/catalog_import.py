"""``acr-ingest import``: a whole catalog file enqueued in batches, with a per-row report.

Outcomes per row: queued (an upload), unchanged, update (another title/user_defined), resent (its
upload's message had not reached the broker), refused (with the field error). Exit status: 0 when no
row was refused, 2 when some were (the good rows are enqueued all the same), 1 when the broker failed.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

from ingest.jobs.bulk_uploads import Item, Outcome, Refused, RowOutcome
from ingest.jobs.catalog_input import CatalogCheck, check_catalog, format_of, read_catalog
from ingest.jobs.errors import InputError
from ingest.settings import get_settings

REPORT_FIELDS = ("row", "bucket_id", "ref", "outcome", "error")


@contextmanager
def open_input(name: str) -> Iterator[TextIO]:
    if name == "-":
        yield io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
        return
    with open(name, encoding="utf-8-sig", newline="") as f:
        yield f


@contextmanager
def checked_input(name: str, fmt: str) -> Iterator[tuple[str, CatalogCheck]]:
    """The file to read (standard input spooled to a temporary file first) once it has been read through and
    found whole: ``InputError`` refuses it before any row is acted on (not UTF-8, no header, a quote never
    closed...: ``catalog_input.read_rows``). Yields the name to open and what the check found."""
    with contextlib.ExitStack() as stack:
        path = name
        if name == "-":
            spooled = stack.enter_context(tempfile.NamedTemporaryFile(prefix="acr-ingest-stdin-", suffix=f".{fmt}"))
            shutil.copyfileobj(sys.stdin.buffer, spooled)
            spooled.flush()
            path = spooled.name
        check_text(path, "standard input" if name == "-" else name)
        with open_input(path) as stream:
            check = check_catalog(stream, fmt)
        yield path, check


def check_text(name: str, shown: str | None = None) -> int:
    """Lines in the file that are not blank, counted without parsing. Refuses (``InputError``) a file that
    is not UTF-8 text before any row is acted on: read as it comes, a Latin-1 byte would stop the import
    midway with its earlier rows enqueued."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with open(name, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as exc:
                raise InputError(
                    {
                        "file": f"{shown or name} is not UTF-8 text (byte 0x{line[exc.start]:02x} on line {number}, "
                        "perhaps Latin-1 or Windows-1252): save it as UTF-8 and run again"
                    }
                ) from None
            lines += bool(line.strip())
    return lines


class ReportWriter:
    """The per-row report as CSV or JSON Lines (by the file name), written as rows are decided."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed in close())
        self._jsonl = path.suffix.lower() in (".jsonl", ".json")
        self._csv = csv.writer(self._file)
        if not self._jsonl:
            self._csv.writerow(REPORT_FIELDS)

    def write(self, o: RowOutcome) -> None:
        values = (o.index, o.bucket_id, o.ref, o.outcome.value, o.error)
        if self._jsonl:
            self._file.write(json.dumps(dict(zip(REPORT_FIELDS, values, strict=True)), ensure_ascii=False) + "\n")
        else:
            self._csv.writerow(["" if v is None else v for v in values])

    def close(self) -> None:
        self._file.close()


class Progress:
    """A rich progress bar (rate, ETA) on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, total: int | None, *, interval: float = 2.0) -> None:
        self.total, self.interval, self.done = total, interval, 0
        self.started = self._last = time.monotonic()
        self._bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("import"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("import", total=total, rate="-")

    def advance(self, n: int, counts: Counter[str]) -> None:
        self.done += n
        now = time.monotonic()
        rate = self.done / max(now - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{rate:,.0f}")
        elif now - self._last >= self.interval:
            self._last = now
            of = f"/{self.total}" if self.total is not None else ""
            eta = f", ETA {(self.total - self.done) / rate:.0f} s" if self.total and rate else ""
            click.echo(f"import: {self.done}{of} rows, {rate:,.0f} rows/s{eta}; {_counts(counts)}", err=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{o.value} {counts[o.value]}" for o in Outcome if counts[o.value]) or "nothing yet"


def _default_report(name: str) -> Path:
    return Path("import-report.csv") if name == "-" else Path(f"{name}.report.csv")


def _show_status(name: str, fmt: str, bucket_id: int | None) -> None:
    """Each row counted once: by the status of its ref, or ``refused`` for a row the import refuses (bad
    input, a ref given again, a ref held for another source), so the counts add up to the import's."""
    from ingest.jobs.bulk_uploads import existing_rows
    from ingest.jobs.managed_files import plan_upload
    from ingest.store.db import session_scope
    from ingest.store.ref_status import NOT_IMPORTED

    settings = get_settings()
    counts: Counter[str] = Counter()

    def count(batch: list[Item]) -> None:
        jobs = [item for item in batch if not isinstance(item, Refused)]
        with session_scope() as s:
            held = existing_rows(s, jobs)
        counts["refused"] += len(batch) - len(jobs)
        for job in jobs:
            row = held.get((job.bucket_id, job.ref))
            try:
                plan_upload(row, job)
            except InputError:
                counts["refused"] += 1
                continue
            counts[NOT_IMPORTED if row is None else str(row.status)] += 1

    batch: list[Item] = []
    with open_input(name) as stream:
        for item in read_catalog(stream, fmt, settings, bucket_id):
            batch.append(item)
            if len(batch) >= 1000:
                count(batch)
                batch = []
    count(batch)
    counts = +counts
    total = sum(counts.values())
    click.echo(f"{total} rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))


@click.command("import")
@click.argument("source", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="Default: by the file name (- is jsonl).")
@click.option("--bucket", "bucket_id", type=int, help="Bucket of rows that name none.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Per-row report.")
@click.option("--dry-run", is_flag=True, help="Validate and plan every row; write and enqueue nothing.")
@click.option("--status", "status_only", is_flag=True, help="Show how far the file's rows have got, and stop.")
@click.option("--batch-size", default=1000, show_default=True, help="Rows per transaction and publish.")
def import_catalog(
    source: str,
    fmt: str | None,
    bucket_id: int | None,
    report_path: Path | None,
    dry_run: bool,
    status_only: bool,
    batch_size: int,
) -> None:
    """Enqueue every row of FILE (.csv, .jsonl, or - for standard input): one upload per ref.

    Re-running the same file is a no-op; a changed title or user_defined becomes an update. Writes a
    per-row report (FILE.report.csv unless --report; .jsonl for JSON Lines) and exits 2 if any row was
    refused.
    """
    from ingest.jobs.errors import EnqueueError
    from ingest.producer import Producer

    fmt = format_of(source, fmt)
    # Read through before the report is created: a missing, unreadable or broken file leaves nothing behind.
    with checked_input(source, fmt) as (path, check):
        if note := check.note():
            click.echo(note, err=True)
        if status_only:
            _show_status(path, fmt, bucket_id)
            return
        settings = get_settings()
        report = ReportWriter(report_path or _default_report(source))
        progress = Progress(check.rows)
        counts: Counter[str] = Counter()
        started = time.monotonic()
        failed: EnqueueError | None = None
        try:
            with open_input(path) as stream:
                outcomes = Producer(settings=settings).upload_many(
                    read_catalog(stream, fmt, settings, bucket_id), batch_size=batch_size, dry_run=dry_run
                )
                pending = 0
                for o in outcomes:
                    report.write(o)
                    counts[o.outcome.value] += 1
                    pending += 1
                    if pending >= 500:
                        progress.advance(pending, counts)
                        pending = 0
                progress.advance(pending, counts)
        except EnqueueError as exc:
            failed = exc
        finally:
            progress.stop()
            report.close()
    seconds = time.monotonic() - started
    rows = sum(counts.values())
    verb = "planned (dry run)" if dry_run else "imported"
    click.echo(
        f"{verb} {rows} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s): {_counts(counts)}; "
        f"report: {report.path}",
        err=True,
    )
    if failed is not None:
        click.echo(f"error: {failed}", err=True)
        sys.exit(1)
    if counts[Outcome.REFUSED.value]:
        click.echo(f"error: {counts[Outcome.REFUSED.value]} row(s) refused: see {report.path}", err=True)
        sys.exit(2)
