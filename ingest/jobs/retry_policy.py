"""What is retried and what is not: one function decides, from the error, in one place.

| error                                   | action | delay                                            |
|-----------------------------------------|--------|--------------------------------------------------|
| 429 RateLimitedError                    | retry  | Retry-After + up to one more; not counted        |
| 5xx, reset, read timeout (TransientError)| retry | full-jitter exponential backoff, capped          |
| connect timeout / refused               | retry  | full-jitter exponential backoff, capped          |
| either, API down for all (breaker open) | pause  | 1-1.5 x ``breaker_probe_interval``; not counted  |
| database busy/unavailable (OperationalError)| retry | full-jitter exponential backoff, capped      |
| 401/403 AuthError                       | hold   | re-check every ``auth_hold_recheck`` s; not counted|
| 404 NotFoundError, 422 ValidationError, other 4xx | fail | —                                      |
| InputError (our own validation)         | fail   | —                                                |
| anything else (a bug)                   | fail   | —  (kept with its reason for a human)            |

Counted retries stop after ``max_attempts`` attempts: the job is then failed with its last reason.
429s are the API telling us when to come back, so they do not use up attempts, but they are capped at
``RATE_LIMIT_ATTEMPT_FACTOR * max_attempts`` so a permanently throttled job still ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ingest.api.errors import ApiError, AuthError, RateLimitedError
from ingest.jobs.errors import InputError
from ingest.settings import Settings

RATE_LIMIT_ATTEMPT_FACTOR = 10
# How a failure for bad input is recorded (``retry-failed`` leaves these alone unless asked).
BAD_INPUT_PREFIX = "bad input: "


class Action(StrEnum):
    RETRY = "retry"
    HOLD = "hold"
    PAUSE = "pause"  # the API is down for everyone (circuit breaker open): wait without using an attempt
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    action: Action
    countdown: float = 0.0
    counts: bool = True  # does this retry use up one of max_attempts?
    reason: str = ""


def backoff(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (AWS architecture blog)."""
    # The exponent is capped: a job retried for days while the database is away must not overflow.
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** min(max(attempt, 0), 32)))
    return (rng or random).uniform(0, ceiling)


def database_unavailable(exc: BaseException) -> bool:
    """The database is down, unreachable, locked or out of connections: transient, never the job's fault.
    A session left mid-transaction by an interrupted flush (a pool child signalled while writing) counts too:
    the next delivery starts with a fresh one."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError):
        return True
    if isinstance(exc, PendingRollbackError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, ApiError | InputError):
        return str(exc)
    if isinstance(exc, DBAPIError):
        # The driver's own message: SQLAlchemy's adds the statement and its parameters (job data).
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        return f"{type(exc).__name__}: {first}"
    return f"{type(exc).__name__}: {exc}"


def is_outage_failure(exc: BaseException) -> bool:
    """A failure that says the API may be down for everyone (counted by the circuit breaker): 5xx,
    connection refused/reset, timeouts. Not a 429 (the API answers, and says when to come back)."""
    return isinstance(exc, ApiError) and exc.transient and not isinstance(exc, RateLimitedError)


def outage_countdown(settings: Settings) -> float:
    """When a job held by the open breaker comes back: spread over half an interval more, so the held
    jobs do not all return in the same instant (only one of them may probe anyway)."""
    return settings.breaker_probe_interval * random.uniform(1.0, 1.5)


def decide(
    exc: BaseException, attempts: int, rate_limited: int, settings: Settings, *, api_down: bool = False
) -> Decision:
    """``attempts``: counted attempts so far including this one; ``rate_limited``: 429s so far;
    ``api_down``: the circuit breaker is open (this failure may have opened it)."""
    reason = reason_of(exc)
    if isinstance(exc, InputError):
        return Decision(Action.FAIL, counts=False, reason=f"{BAD_INPUT_PREFIX}{reason}")
    if isinstance(exc, AuthError):
        return Decision(Action.HOLD, settings.auth_hold_recheck, counts=False, reason=reason)
    if isinstance(exc, RateLimitedError):
        if rate_limited >= RATE_LIMIT_ATTEMPT_FACTOR * settings.max_attempts:
            return Decision(Action.FAIL, reason=f"still rate limited after {rate_limited} tries: {reason}")
        if exc.retry_after is None:
            wait = backoff(rate_limited, settings)
        else:
            # The API said when: come back then, spread over one more such window so the waiting
            # jobs do not all return in the same instant. Growing it with each 429 (as backoff does)
            # would starve the queue under a steady limit.
            wait = exc.retry_after + random.uniform(0, max(exc.retry_after, 1.0))
        return Decision(Action.RETRY, min(wait, settings.backoff_max), False, reason)
    if api_down and is_outage_failure(exc):
        return Decision(
            Action.PAUSE,
            outage_countdown(settings),
            counts=False,
            reason=f"held: the API is down for everyone: {reason}",
        )
    if (isinstance(exc, ApiError) and exc.transient) or database_unavailable(exc):
        if attempts >= settings.max_attempts:
            return Decision(Action.FAIL, reason=f"gave up after {attempts} attempts: {reason}")
        return Decision(Action.RETRY, backoff(attempts, settings), True, reason)
    return Decision(Action.FAIL, reason=reason)
