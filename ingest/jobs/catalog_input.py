"""Catalog files (CSV or JSON Lines) read as upload jobs, one per row, each validated by the same
validators as every other entry point (``inputs.validate_upload_url`` / ``validate_upload_file``).

Columns (CSV header, or JSONL keys): ``ref``, ``title``, ``url`` or ``path``, optional ``bucket``
(or ``bucket_id``), ``data_type`` (for ``path``: ``audio`` or ``fingerprint``), ``send_as`` (for an audio
``path``: ``audio`` or ``fingerprint``, default ACR_INGEST_UPLOAD_AS) and ``user_defined`` (a JSON object).
Any other column becomes a key of ``user_defined`` (its value as given; empty CSV cells are left out); such
a key overrides the same key of the ``user_defined`` column. Rows are read one at a time; only the (bucket,
ref) of each row is kept, to refuse a ref given twice.

Nothing of a file is read silently wrong: a CSV without a header row, separated by ``;``, with a column
named twice, a column without a name or a misspelt one (``tittle``), a quote that is never closed or a
quoted value that takes in lines reading as rows of their own refuses the whole file (``InputError`` on
``file`` or ``header``, raised by ``read_rows``; ``check_catalog`` reads the file through first, so nothing
is acted on). A row with more values than the header, a JSONL object naming a key twice or a misspelt key,
and a ref given again are refused rows (each in the report, once). A quoted value over several lines whose
lines do not read as rows (a note in an extra column) is legal CSV and kept; in ``title`` or ``ref`` its
row is refused by that field.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from ingest.jobs.bulk_uploads import Item, Refused
from ingest.jobs.errors import InputError
from ingest.jobs.inputs import hidden_character, validate_upload_file, validate_upload_url
from ingest.settings import Settings

KNOWN = {"ref", "title", "url", "path", "bucket", "bucket_id", "data_type", "send_as", "user_defined"}


SHOWN_COLUMNS = 10  # extra columns named in a note, at most


@functools.lru_cache(maxsize=1024)
def misspelt(name: str) -> str | None:
    """The column ``name`` was likely meant to be (``Title``, ``tittle``, ``bucketid``), or None."""
    if name in KNOWN:
        return None
    plain = name.strip().lower().replace(" ", "_").replace("-", "_")
    if plain in KNOWN:
        return plain
    close = difflib.get_close_matches(plain, sorted(KNOWN), n=1, cutoff=0.8)
    return close[0] if close else None


def _misspelt_text(name: str, meant: str) -> str:
    return (
        f"{name!r} is not a column; did you mean {meant!r}? (other columns become user_defined keys: to keep "
        "this one as a key, put it in the user_defined column)"
    )


def _header(names: list[str], line: str) -> list[str]:
    """The CSV header's column names, or InputError refusing the file (nothing read from it is used)."""
    names = [n.strip() for n in names]
    shown = line if len(line) <= 120 else line[:117] + "..."
    if len(names) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in names[0]:
                raise InputError(
                    {
                        "header": f"{shown!r} is one column: the file is separated by {name}, not commas; "
                        "save it as CSV with ',' as the separator"
                    }
                )
    if not KNOWN.intersection(names) and not any(misspelt(n) for n in names):
        raise InputError(
            {
                "header": f"the first line {shown!r} names none of the columns (ref, title, url, path, bucket...): "
                "it reads as a data row; add a header row first, e.g. ref,title,url,bucket"
            }
        )
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if not name:
            raise InputError({"header": f"column {number} has no name; name it, or remove the column"})
        if hidden := hidden_character(name):  # it would pass for a column of ours on screen, and be another
            raise InputError({"header": f"column {number} ({name!r}) contains {hidden}; remove it"})
        if name in seen:
            raise InputError(
                {"header": f"column {name!r} is named twice (columns {seen[name]} and {number}); keep one"}
            )
        seen[name] = number
        if meant := misspelt(name):
            raise InputError({"header": _misspelt_text(name, meant)})
    if "url" not in seen and "path" not in seen:
        raise InputError({"header": f"no url or path column (the columns: {', '.join(names)}); every row needs one"})
    return names


def _swallowed_row(lines: list[str], columns: int) -> bool:
    """Whether a line a quoted value ran over reads as a row of its own (as many values as the header has
    columns): then a quote was left open and took in rows, where a multi-line note holds just text."""
    return any(len(next(csv.reader([line]), [])) >= columns for line in lines)


def _csv_rows(stream: TextIO) -> Iterator[dict[str, Any] | InputError]:
    # The raw lines of the current record, to tell a legal multi-line quoted cell from a quote left open.
    record: list[str] = []

    def lines() -> Iterator[str]:
        for line in stream:
            record.append(line)
            yield line

    reader = csv.reader(lines(), strict=True)
    names: list[str] | None = None
    while True:
        start = reader.line_num + 1
        record.clear()
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                reason = "a quote opened on this line is never closed: it takes in the rest of the file; close it"
            else:
                reason = f'{exc}; quote a value that contains quotes as ""like this""'
            raise InputError({"file": f"line {start}: {reason}"}) from None
        if reader.line_num > start and (names is None or _swallowed_row(record[1:], len(names))):
            raise InputError(
                {
                    "file": f"line {start}: a quoted value runs on to line {reader.line_num} (a quote not closed?), "
                    "taking in the rows between: close the quote"
                }
            )
        if not values:
            continue  # a blank line is not a row
        if names is None:
            names = _header(values, ",".join(values))
            continue
        if len(values) > len(names):
            yield InputError(
                {
                    "row": f"has {len(values)} values, the header {len(names)} columns: quote a value that "
                    'contains a comma ("like, this")'
                }
            )
            continue
        yield {k: v for k, v in zip(names, values, strict=False) if v.strip() != ""}
    if names is None:
        raise InputError({"file": "is empty: a CSV catalog starts with a header row, e.g. ref,title,url,bucket"})


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(twice)
    return out


def read_rows(stream: TextIO, fmt: str) -> Iterator[dict[str, Any] | InputError]:
    """The raw rows of a ``csv`` or ``jsonl`` stream: a dict, or InputError for a row refused (a JSONL line
    that is not an object...). A fault that loses rows (see the module's docstring) raises InputError."""
    if fmt == "csv":
        yield from _csv_rows(stream)
        return
    for line in stream:
        if not line.strip():
            continue
        try:
            # Without its line end: a line cut short is then reported at its real end, not at "column 1" of
            # the next line that json sees after the newline.
            value = json.loads(line.rstrip("\r\n"), object_pairs_hook=_pairs)
        except _DuplicateKey as exc:
            yield InputError({"row": f"names the key {exc.args[0]!r} twice; keep one"})
            continue
        except json.JSONDecodeError as exc:
            yield InputError({"row": f"is not valid JSON ({exc.msg} at column {exc.colno}); fix the line"})
            continue
        if not isinstance(value, dict):
            yield InputError({"row": f"must be a JSON object, got {type(value).__name__}"})
            continue
        yield value


@dataclass
class CatalogCheck:
    """What reading a whole catalog file through found: its rows, and the columns that become user_defined keys."""

    rows: int = 0
    extra: set[str] = field(default_factory=set)

    def note(self) -> str | None:
        if not self.extra:
            return None
        names = sorted(self.extra)
        shown = ", ".join(names[:SHOWN_COLUMNS]) + (
            f" and {len(names) - SHOWN_COLUMNS} more" if len(names) > SHOWN_COLUMNS else ""
        )
        return f"note: {'column' if len(names) == 1 else 'columns'} {shown} become user_defined keys of their rows"


def check_catalog(stream: TextIO, fmt: str) -> CatalogCheck:
    """Read a catalog through (structure only, no validation): InputError if the file must be refused."""
    check = CatalogCheck()
    for row in read_rows(stream, fmt):
        check.rows += 1
        if isinstance(row, dict) and len(check.extra) < 1000:
            check.extra.update(str(k) for k in row if k not in KNOWN and not misspelt(str(k)))
    return check


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
    for key in extra:
        if isinstance(key, str) and (meant := misspelt(key)):
            return Refused(InputError({key: _misspelt_text(key, meant)}), ref_text, _int_or_none(bucket))
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
            args["send_as"] = row.get("send_as")
            return validate_upload_file({k: v for k, v in args.items() if v is not None}, settings)
        if row.get("data_type") not in (None, "audio_url"):
            raise InputError({"data_type": "applies to path rows only (audio or fingerprint); leave it out for url"})
        if row.get("send_as") is not None:
            raise InputError({"send_as": "applies to path rows only (the API fetches a url itself); leave it out"})
        if row.get("url") is None:
            raise InputError({"url": "required: give url (http/https) or path (under ACR_INGEST_MEDIA_ROOT)"})
        args["url"] = row["url"]
        return validate_upload_url({k: v for k, v in args.items() if v is not None}, settings)
    except InputError as exc:
        return Refused(exc, ref_text, _int_or_none(bucket))


def read_catalog(stream: TextIO, fmt: str, settings: Settings, default_bucket: int | None = None) -> Iterator[Item]:
    """Every row of a catalog stream as an upload job or Refused, in order. A (bucket, ref) given again is
    refused on its later row: which of two rows is meant cannot be told, and a dry run (which writes nothing)
    would plan it otherwise than the import does."""
    # By the pair's 64-bit hash (~100 bytes a row, not the ref's text): two pairs sharing one is a 1 in 10^7
    # chance in a file of a million rows.
    first_row: dict[int, int] = {}
    for number, row in enumerate(read_rows(stream, fmt), start=1):
        item = Refused(row) if isinstance(row, InputError) else to_job(row, settings, default_bucket)
        if not isinstance(item, Refused):
            key = hash((item.bucket_id, item.ref))
            if key not in first_row:
                first_row[key] = number
            elif isinstance(row, dict) and row.get("ref") is None:
                source = "url" if row.get("url") is not None else "path"
                item = _again(
                    item,
                    source,
                    f"the same as row {first_row[key]} (a row without a ref is named by its {source}); "
                    "keep one row per file",
                )
            else:
                item = _again(item, "ref", f"already given in row {first_row[key]}; keep one row per ref")
        yield item


def _again(item: Item, field_name: str, message: str) -> Refused:
    return Refused(InputError({field_name: message}), item.ref, item.bucket_id)


def _int_or_none(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None
