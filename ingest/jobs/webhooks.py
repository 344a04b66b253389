"""The webhook: one event POSTed as JSON, signed so the receiver knows it is ours and fresh.

``X-Acr-Ingest-Signature: sha256=<hex>`` is HMAC-SHA256 with ``ACR_INGEST_WEBHOOK_SECRET`` over
``<timestamp>.<raw body>``, ``<timestamp>`` being ``X-Acr-Ingest-Timestamp`` (Unix seconds): the timestamp
is signed too, so a captured request cannot be replayed later under a new one. The receiver recomputes
it (``verify``; docs/MESSAGES.md shows it in a few lines) and refuses old timestamps and repeated
``event_id``s. Failures are raised as the API client's error types, so the one retry policy
(``retry_policy.decide``) decides: unreachable, timeouts, 5xx and 429 are retried with backoff; any
other answer is final. The request never carries the access token (a session of its own, no client).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import requests

from ingest.api.errors import ClientError, RateLimitedError, TransientError
from ingest.redact import mask_url_credentials
from ingest.settings import Settings

SIGNATURE_HEADER = "X-Acr-Ingest-Signature"
TIMESTAMP_HEADER = "X-Acr-Ingest-Timestamp"
EVENT_HEADER = "X-Acr-Ingest-Event"  # the event_id, for receivers that dedupe before parsing
REPLAY_WINDOW = 300.0  # seconds a receiver should accept a timestamp for (``verify``'s default)


def body_of(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signed: str, *, window: float = REPLAY_WINDOW, now: float | None = None
) -> bool:
    """What a receiver does: the signature matches (compared in constant time) and the timestamp is recent."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= window and hmac.compare_digest(signature(secret, timestamp, body), signed)


def deliver(event: dict[str, Any], settings: Settings, session: requests.Session | None = None) -> dict[str, Any]:
    """POST one event; raises TransientError/RateLimitedError (retry) or ClientError (final)."""
    assert settings.webhook_url and settings.webhook_secret, "webhook delivery without URL and secret"
    url, shown = settings.webhook_url, mask_url_credentials(settings.webhook_url)
    body = body_of(event)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "acr-ingest-webhook/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(settings.webhook_secret.get_secret_value(), timestamp, body),
        EVENT_HEADER: str(event.get("event_id", "")),
    }
    where: dict[str, Any] = {"method": "POST", "url": shown}
    try:
        answer = (session or requests).post(
            url,
            data=body,
            headers=headers,
            timeout=(settings.connect_timeout, settings.webhook_timeout),
            allow_redirects=False,  # a redirect would re-send the signed body somewhere we were not told to
        )
    except requests.ConnectionError as exc:
        raise TransientError(f"webhook unreachable: {type(exc).__name__}", maybe_applied=False, **where) from None
    except requests.Timeout:
        raise TransientError("webhook did not answer in time", **where) from None
    status = answer.status_code
    if 200 <= status < 300:
        return {"delivered": True, "status": status, "event_id": event.get("event_id")}
    if status == 429:
        retry_after = answer.headers.get("Retry-After", "")
        raise RateLimitedError(
            "webhook rate limited",
            retry_after=float(retry_after) if retry_after.isdigit() else None,
            status=status,
            **where,
        )
    if status >= 500 or status == 408:
        raise TransientError("webhook failed", status=status, body=answer.text, **where)
    raise ClientError("webhook refused the event", status=status, body=answer.text, **where)
