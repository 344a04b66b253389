"""Broker messages no task could run: kept (bounded) with the reason, counted and listed for `status`.

Whatever arrives from the broker is stored as inert text: nothing here decodes a pickle or trusts the
headers' types, and every value is made storable by any database (no NUL in text, no NaN in JSON).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ingest.redact import mask_in, mask_url_credentials
from ingest.store.db import session_scope
from ingest.store.models import RejectedMessage
from ingest.store.values import storable_text

log = logging.getLogger("ingest.store.rejected")

# Enough to see what was sent; a 100 MB body must not become a 100 MB row.
MAX_BODY_CHARS = 65_536
MAX_FIELD_CHARS = 255
MAX_HEADERS_CHARS = 16_384


def body_text(body: bytes | str | None) -> tuple[str, int]:
    """The raw body as bounded text (undecodable bytes escaped) and its full size in bytes."""
    if body is None:
        return "", 0
    raw = body.encode("utf-8", "backslashreplace") if isinstance(body, str) else bytes(body)
    text = raw[: MAX_BODY_CHARS * 4].decode("utf-8", "backslashreplace")
    return storable_text(text, MAX_BODY_CHARS), len(raw)


def storable_headers(headers: Any) -> dict[str, Any] | None:
    """The headers as plain JSON (anything odd in them becomes its repr), bounded."""
    if headers is None:
        return None
    try:
        text = json.dumps(headers, default=repr, allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = ""
    if not text or len(text) > MAX_HEADERS_CHARS or not isinstance(headers, dict):
        return {"unreadable": storable_text(repr(headers), MAX_HEADERS_CHARS)}
    value: dict[str, Any] = json.loads(text)
    return value


def record(
    *,
    reason: str,
    body: bytes | str | None,
    headers: Any,
    content_type: str | None,
    queue: str | None,
    task: str | None,
) -> RejectedMessage:
    """Keep one rejected message; raises if the database cannot take it (the caller must not ack then)."""
    text, size = body_text(body)
    text, headers = mask_url_credentials(text), mask_in(headers)  # a URL's password is not kept
    row = RejectedMessage(
        queue=storable_text(queue, MAX_FIELD_CHARS) if queue else None,
        task=storable_text(task, MAX_FIELD_CHARS) if task else None,
        reason=storable_text(reason, 2_000),
        content_type=storable_text(content_type, MAX_FIELD_CHARS) if content_type else None,
        body=text,
        body_bytes=size,
        headers=storable_headers(headers),
    )
    with session_scope() as s:
        s.add(row)
        s.commit()
    log.error("rejected a message on queue %s (task %s): %s; kept as rejected message %s", queue, task, reason, row.id)
    return row


def count(session: Session) -> int:
    return session.exec(select(func.count()).select_from(RejectedMessage)).one()


def latest(session: Session, limit: int = 5) -> list[RejectedMessage]:
    query = select(RejectedMessage).order_by(col(RejectedMessage.id).desc()).limit(limit)
    return list(session.exec(query).all())
