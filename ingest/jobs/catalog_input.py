"""Catalog files (CSV or JSON Lines) read as upload jobs, one per row, each validated by the same
validators as every other entry point (``inputs.validate_upload_url`` / ``validate_upload_file``).

Columns (CSV header, or JSONL keys): ``ref``, ``title``, ``url`` or ``path``, optional ``bucket``
(or ``bucket_id``), ``data_type`` (for ``path``: ``audio`` or ``fingerprint``) and ``user_defined``
(a JSON object). Any other column becomes a key of ``user_defined`` (its value as given; empty CSV
cells are left out); such a key overrides the same key of the ``user_defined`` column. Rows are read
one at a time, so a file of any size takes the same memory.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from typing import Any, TextIO

from ingest.jobs.bulk_uploads import Item, Refused
from ingest.jobs.errors import InputError
from ingest.jobs.inputs import validate_upload_file, validate_upload_url
from ingest.settings import Settings

KNOWN = {"ref", "title", "url", "path", "bucket", "bucket_id", "data_type", "user_defined"}


def read_rows(stream: TextIO, fmt: str) -> Iterator[dict[str, Any] | InputError]:
    """The raw rows of a ``csv`` or ``jsonl`` stream (a JSONL line that is not an object is an error)."""
    if fmt == "csv":
        for raw in csv.DictReader(stream):
            yield {k.strip(): v for k, v in raw.items() if k is not None and v is not None and v.strip() != ""}
        return
    for line in stream:
        if not line.strip():
            continue
        try:
            # Without its line end: a line cut short is then reported at its real end, not at "column 1" of
            # the next line that json sees after the newline.
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield InputError({"row": f"is not valid JSON ({exc.msg} at column {exc.colno}); fix the line"})
            continue
        if not isinstance(value, dict):
            yield InputError({"row": f"must be a JSON object, got {type(value).__name__}"})
            continue
        yield value


def format_of(name: str, given: str | None = None) -> str:
    """``csv`` or ``jsonl``: as given, else from the file name (``-``, standard input, defaults to jsonl)."""
    if given:
        return given
    return "csv" if name.lower().endswith(".csv") else "jsonl"


def to_job(row: dict[str, Any], settings: Settings, default_bucket: int | None = None) -> Item:
    """One row as an upload job, or Refused with every field error of the row."""
    ref = row.get("ref")
    ref_text = str(ref).strip() if isinstance(ref, str | int) and not isinstance(ref, bool) else None
    bucket = row.get("bucket_id", row.get("bucket", default_bucket))
    extra = {k: v for k, v in row.items() if k not in KNOWN}
    user_defined: Any = row.get("user_defined")
    if extra:
        if isinstance(user_defined, str):
            with contextlib.suppress(ValueError):  # left as text: the validator names the field
                user_defined = json.loads(user_defined)
        if user_defined is None or isinstance(user_defined, dict):
            user_defined = {**(user_defined or {}), **extra}
    args = {"bucket_id": bucket, "title": row.get("title"), "user_defined": user_defined, "ref": ref}
    try:
        if row.get("url") is not None and row.get("path") is not None:
            raise InputError({"url": "give url or path, not both"})
        if row.get("path") is not None:
            args["path"] = row["path"]
            args["data_type"] = row.get("data_type")
            return validate_upload_file({k: v for k, v in args.items() if v is not None}, settings)
        if row.get("data_type") not in (None, "audio_url"):
            raise InputError({"data_type": "applies to path rows only (audio or fingerprint); leave it out for url"})
        if row.get("url") is None:
            raise InputError({"url": "required: give url (http/https) or path (under ACR_INGEST_MEDIA_ROOT)"})
        args["url"] = row["url"]
        return validate_upload_url({k: v for k, v in args.items() if v is not None}, settings)
    except InputError as exc:
        return Refused(exc, ref_text, _int_or_none(bucket))


def read_catalog(stream: TextIO, fmt: str, settings: Settings, default_bucket: int | None = None) -> Iterator[Item]:
    """Every row of a catalog stream as an upload job or Refused, in order."""
    for row in read_rows(stream, fmt):
        yield Refused(row) if isinstance(row, InputError) else to_job(row, settings, default_bucket)


def _int_or_none(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None
