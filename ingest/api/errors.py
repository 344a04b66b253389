"""Typed errors of the ACRCloud API client.

Every error carries the HTTP method, the URL (which never holds the token: it travels in a header),
the status and a bounded copy of the body for diagnosis. ``str(err)`` is safe to log.
"""

from __future__ import annotations

from typing import Any

BODY_LIMIT = 2_000


class ApiError(Exception):
    """Base of every error the client raises."""

    #: True when the same request may succeed later (the retry policy reads this).
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        method: str = "",
        url: str = "",
    ) -> None:
        self.message = message
        self.status = status
        self.body = body[:BODY_LIMIT]
        self.method = method
        self.url = url
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"{self.method} {self.url}".strip()
        status = f" [{self.status}]" if self.status is not None else ""
        return f"{self.message}{status}" + (f" ({where})" if where else "")


class AuthError(ApiError):
    """401/403: the token is missing, invalid or expired. Retrying with the same token is pointless."""


class NotFoundError(ApiError):
    """404: unknown bucket or file."""


class ValidationError(ApiError):
    """422: the API rejected the input; ``errors`` maps field -> messages."""

    def __init__(self, message: str, *, errors: dict[str, list[str]] | None = None, **kw: Any) -> None:
        self.errors = errors or {}
        super().__init__(message, **kw)

    def __str__(self) -> str:
        base = super().__str__()
        if not self.errors:
            return base
        fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.errors.items())
        return f"{base} — {fields}"


class ClientError(ApiError):
    """Any other 4xx: a request the API will never accept as sent."""


class RateLimitedError(ApiError):
    """429: too many requests; ``retry_after`` seconds (from the header) when the API said."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class TransientError(ApiError):
    """5xx, connection refused/reset, timeout: may succeed later.

    ``maybe_applied`` is True when the request may have reached the server and taken effect
    (a read timeout or a 5xx after sending): a retried upload must look before posting again.
    """

    transient = True

    def __init__(self, message: str, *, maybe_applied: bool = True, **kw: Any) -> None:
        self.maybe_applied = maybe_applied
        super().__init__(message, **kw)


class UnconfirmedUploadError(TransientError):
    """A 2xx to an upload that does not say which file it created (``id``/``acr_id`` missing or null).

    The file almost certainly exists: like a timeout after sending, the caller must look for it (by
    our ref) rather than post again, so it is transient with ``maybe_applied`` True."""

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, maybe_applied=True, **kw)
