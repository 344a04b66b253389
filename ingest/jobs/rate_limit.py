"""One request budget shared by every worker: a token bucket in Redis (a Lua script, so the check and
the take are one atomic step on the server's clock), drained for ``Retry-After`` when the API
answers 429, so all workers back off together.

Celery's own ``rate_limit`` is per worker instance; this is per account, however many workers run.
"""

from __future__ import annotations

import logging
import random

import redis

from ingest.jobs.errors import RetryLater
from ingest.settings import Settings

log = logging.getLogger("ingest.jobs.rate_limit")

# KEYS[1]: the bucket hash. ARGV: rate (tokens/s), burst (capacity), penalty seconds (0: take a token).
# Returns the seconds to wait (0 when a token was taken), as a string to keep the fraction.
_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local penalty = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if penalty > 0 then
  -- the API said 429: nobody gets a token until Retry-After has passed
  tokens = math.min(tokens, -penalty * rate)
elseif tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate + penalty) + 60)
return tostring(wait)
"""


class SharedRateLimit:
    """``gate`` for the API client: takes a token or defers the job (RetryLater, no thread blocked)."""

    def __init__(self, client: redis.Redis, *, rate: float, burst: int, key: str = "acr-ingest:ratelimit") -> None:
        self.rate = rate
        self.burst = burst
        self.key = key
        self._script = client.register_script(_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedRateLimit | None:
        if not settings.rate_limit:
            return None
        url = settings.rate_limit_redis_url or settings.broker_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "ACR_INGEST_RATE_LIMIT needs Redis: set ACR_INGEST_RATE_LIMIT_REDIS_URL "
                f"(the broker {url.split('://')[0]}:// cannot hold a shared budget)"
            )
        burst = settings.rate_limit_burst or max(1, int(settings.rate_limit))
        return cls(redis.Redis.from_url(url), rate=settings.rate_limit, burst=burst)

    def _call(self, penalty: float) -> float:
        return float(self._script(keys=[self.key], args=[self.rate, self.burst, penalty]))

    def __call__(self, operation: str) -> None:
        wait = self._call(0)
        if wait > 0:
            # A little spread, so deferred jobs do not all come back in the same instant.
            raise RetryLater(wait + random.uniform(0, wait), f"shared rate limit: {operation} deferred {wait:.2f}s")

    def penalize(self, retry_after: float) -> None:
        """The API answered 429: drain the shared budget for ``retry_after`` seconds."""
        self._call(max(retry_after, 1.0 / self.rate))
        log.info("API rate limited: every worker holds off for %.1fs", retry_after)
