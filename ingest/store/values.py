"""What the tables can hold, in one place: the range of an id column and values any database stores.

PostgreSQL refuses NUL in text, NaN/Infinity in JSON and integers past BIGINT; a value it refuses
must be caught before the write (a failed insert of an operation row loses the job it records).
"""

from __future__ import annotations

import json
from typing import Any

# The API's ids (bucket and file ids) are kept in BIGINT columns.
BIGINT_MAX = 2**63 - 1


def storable_text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, NUL and lone surrogates escaped (no database takes them)."""
    cut = value[:limit].replace("\x00", "\\x00")
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def db_id_or_none(value: Any) -> int | None:
    """``value`` if it is an integer an id column holds, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= BIGINT_MAX:
        return value
    return None


def storable_json(value: dict[str, Any], limit: int = 65_536) -> dict[str, Any]:
    """``value`` if every database can store it as JSON, else a bounded, inert description of it."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"unstorable": storable_text(f"{type(exc).__name__}: {exc}", 500)}
    if len(text) > limit:
        return {"unstorable": f"{len(text)} characters of JSON; the first {limit} shown", "text": text[:limit]}
    return value
