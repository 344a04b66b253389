"""The shared token bucket in the real Redis, and what the client's gate does with it."""

from __future__ import annotations

import pytest
import redis

from ingest.jobs.errors import RetryLater
from ingest.jobs.rate_limit import SharedRateLimit
from ingest.settings import Settings
from tests.conftest import REDIS_URL


@pytest.fixture
def limit(request: pytest.FixtureRequest) -> SharedRateLimit:
    client = redis.Redis.from_url(REDIS_URL)
    key = f"test:ratelimit:{request.node.name}"
    client.delete(key)
    return SharedRateLimit(client, rate=5, burst=2, key=key)


def test_the_burst_is_granted_then_the_next_caller_is_deferred_not_blocked(limit: SharedRateLimit) -> None:
    limit("upload")
    limit("upload")
    with pytest.raises(RetryLater) as deferred:
        limit("upload")
    assert 0 < deferred.value.countdown <= 2 * (1 / 5) + 0.05  # about one token's time, plus spread
    assert "shared rate limit" in deferred.value.reason and not deferred.value.counts


def test_a_429_drains_the_budget_for_every_worker_for_retry_after(limit: SharedRateLimit) -> None:
    other_worker = SharedRateLimit(redis.Redis.from_url(REDIS_URL), rate=5, burst=2, key=limit.key)
    limit.penalize(3.0)
    with pytest.raises(RetryLater) as deferred:
        other_worker("get")
    assert deferred.value.countdown >= 3.0


def test_no_limit_configured_means_no_gate_and_a_non_redis_broker_is_refused() -> None:
    assert SharedRateLimit.from_settings(Settings(_env_file=None, rate_limit=None)) is None
    with pytest.raises(ValueError, match="ACR_INGEST_RATE_LIMIT_REDIS_URL"):
        SharedRateLimit.from_settings(Settings(_env_file=None, rate_limit=5, broker_url="filesystem:///tmp/x"))
    made = SharedRateLimit.from_settings(Settings(_env_file=None, rate_limit=7.5, broker_url=REDIS_URL))
    assert made is not None and (made.rate, made.burst) == (7.5, 7)
