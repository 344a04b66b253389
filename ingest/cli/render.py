"""Plain-text tables and summaries for the terminal (status, files, the demo), and the listings' --json."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import click

from ingest.store.models import TrackFile

FILE_COLUMNS = ("ref", "bucket", "title", "sent as", "id", "acr_id", "state", "status", "reason")


# The listings' machine-readable form: one JSON document on stdout (control characters escaped by JSON itself).
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def printable(text: str) -> str:
    """Control, format (bidi overrides, zero-width) and line/paragraph-separator characters escaped
    (``\\n``, ``\\u202e``): a title or reason can neither break a table line nor drive the terminal."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in text
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 48) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else printable(str(value))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([line.rstrip(), rule, *body])


def files_table(rows: Sequence[TrackFile]) -> str:
    return table(
        FILE_COLUMNS,
        [
            (r.ref, r.bucket_id, r.title, r.send_as, r.remote_id, r.acr_id, r.remote_state, r.status, r.reason)
            for r in rows
        ],
        max_width=60,
    )


def sent_as(row: TrackFile) -> str:
    """Which kind the upload posted, with a fingerprint's size and duration once it was made."""
    if row.send_as != "fingerprint" or row.fingerprint_bytes is None:
        return row.send_as
    seconds = f", {row.duration_ms / 1000:.1f} s" if row.duration_ms is not None else ""
    made = " made here" if row.data_type == "audio" else ""
    return f"fingerprint{made} ({row.fingerprint_bytes:,} bytes{seconds})"


def cut_note(shown: int, total: int, what: str, more: str = "--limit N or --all for more") -> str | None:
    """The line a listing cut at its limit ends with (``showing 200 of 1234 files; ...``), or None."""
    if total <= shown:
        return None
    return f"showing {shown} of {total} {what}; {more}"


def counts_line(counts: dict[str, int], order: Sequence[str]) -> str:
    parts = [f"{name} {counts.get(name, 0)}" for name in order]
    parts += [f"{k} {v}" for k, v in sorted(counts.items()) if k not in order]
    return " · ".join(parts)
