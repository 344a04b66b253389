"""Plain-text tables and summaries for the terminal (status, files, the demo)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from ingest.store.models import TrackFile

FILE_COLUMNS = ("ref", "bucket", "title", "id", "acr_id", "state", "status", "reason")


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
        [(r.ref, r.bucket_id, r.title, r.remote_id, r.acr_id, r.remote_state, r.status, r.reason) for r in rows],
        max_width=60,
    )


def cut_note(shown: int, total: int, what: str, more: str = "--limit N or --all for more") -> str | None:
    """The line a listing cut at its limit ends with (``showing 200 of 1234 files; ...``), or None."""
    if total <= shown:
        return None
    return f"showing {shown} of {total} {what}; {more}"


def counts_line(counts: dict[str, int], order: Sequence[str]) -> str:
    parts = [f"{name} {counts.get(name, 0)}" for name in order]
    parts += [f"{k} {v}" for k, v in sorted(counts.items()) if k not in order]
    return " · ".join(parts)
