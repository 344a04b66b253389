"""The retry table (README, ingest/retry_policy.py), row by row."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from ingest.api.errors import AuthError, ClientError, NotFoundError, RateLimitedError, TransientError, ValidationError
from ingest.jobs.errors import InputError
from ingest.jobs.retry_policy import RATE_LIMIT_ATTEMPT_FACTOR, Action, backoff, decide
from ingest.settings import Settings

S = Settings(
    _env_file=None, max_attempts=5, backoff_base=2, backoff_max=60, auth_hold_recheck=30, visibility_timeout=3600
)


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("Server Error", status=500),
        TransientError("read timeout", maybe_applied=True),
        TransientError("connection refused", maybe_applied=False),
        OperationalError("select 1", {}, Exception("database is locked")),
    ],
)
def test_transient_errors_retry_with_capped_full_jitter_until_attempts_run_out(exc: Exception) -> None:
    for attempt in range(1, S.max_attempts):
        d = decide(exc, attempt, 0, S)
        assert d.action is Action.RETRY and d.counts
        assert 0 <= d.countdown <= min(S.backoff_max, S.backoff_base * 2**attempt)
    last = decide(exc, S.max_attempts, 0, S)
    assert last.action is Action.FAIL and last.reason.startswith(f"gave up after {S.max_attempts} attempts")


def test_429_obeys_retry_after_and_uses_no_attempt() -> None:
    d = decide(RateLimitedError("Too Many Attempts.", status=429, retry_after=20), 1, 1, S)
    assert d.action is Action.RETRY and not d.counts and 20 <= d.countdown <= 40
    no_header = decide(RateLimitedError("x", status=429), 1, 3, S)
    assert 0 <= no_header.countdown <= S.backoff_base * 2**3  # no Retry-After: backoff on the 429 count
    capped = decide(RateLimitedError("x", status=429, retry_after=10_000), 1, 1, S)
    assert capped.countdown == S.backoff_max  # never longer than the cap (the visibility timeout rule)
    limit = RATE_LIMIT_ATTEMPT_FACTOR * S.max_attempts
    assert decide(RateLimitedError("x", status=429), 1, limit, S).action is Action.FAIL


def test_a_rejected_token_holds_instead_of_failing() -> None:
    d = decide(AuthError("Unauthenticated.", status=401), 1, 0, S)
    assert (d.action, d.countdown, d.counts) == (Action.HOLD, S.auth_hold_recheck, False)


@pytest.mark.parametrize(
    "exc",
    [
        NotFoundError("No query results", status=404),
        ValidationError("The given data was invalid.", status=422, errors={"title": ["required"]}),
        ClientError("Conflict", status=409),
        KeyError("a bug"),
    ],
)
def test_permanent_errors_fail_at_once_with_their_reason(exc: Exception) -> None:
    d = decide(exc, 1, 0, S)
    assert d.action is Action.FAIL and d.reason
    if isinstance(exc, ValidationError):
        assert "title: required" in d.reason


def test_bad_input_fails_at_once_naming_the_field_and_uses_no_attempt() -> None:
    d = decide(InputError({"url": "must be an absolute http:// or https:// URL"}), 1, 0, S)
    assert (
        d.action is Action.FAIL
        and not d.counts
        and d.reason == ("bad input: url: must be an absolute http:// or https:// URL")
    )


def test_backoff_grows_then_stays_under_the_cap() -> None:
    import random

    rng = random.Random(7)
    samples = [max(backoff(n, S, rng) for _ in range(200)) for n in range(10)]
    assert samples[0] <= 2 and samples[3] <= 16 and max(samples) <= S.backoff_max
    assert samples[9] > 30  # full jitter reaches toward the cap


def test_a_session_broken_by_an_interrupted_flush_is_retried_not_failed() -> None:
    from sqlalchemy.exc import PendingRollbackError

    exc = PendingRollbackError("This Session's transaction has been rolled back ... Original exception was: -241")
    decision = decide(exc, 1, 0, Settings(_env_file=None))
    assert decision.action is Action.RETRY and decision.counts
