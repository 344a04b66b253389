"""One request budget shared by every worker: a token bucket in Redis whose rate is either fixed
(``ACR_INGEST_RATE_LIMIT``) or learned from the API's own answers (the default).

Learning (AIMD with a memory of where trouble began), all in one Lua script so every worker's view of the
budget is one atomic state on the server's clock:

- every answer is observed: a 429 lowers the rate multiplicatively (once per ``Retry-After`` window, however
  many workers were refused at once), remembers the lowered rate as the ceiling and drains the bucket until
  ``Retry-After`` has passed;
- an answer whose ``X-RateLimit-Remaining`` is nearly spent also marks the ceiling and eases the rate off a
  little, without a 429: the budget hovers just under the edge instead of running into it;
- any other success raises the rate: quickly while no ceiling is known (slow start) or while well below it,
  then by a small probe, so a limit the vendor raises is found again.

Waiting for a token costs no broker round trip when the wait is short: the calling thread waits (up to
``RATE_LIMIT_MAX_INLINE_WAIT``); a longer wait becomes one countdown (``RetryLater``).

Celery's own ``rate_limit`` is per worker instance; this is per account, however many workers run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from ingest.jobs.errors import RetryLater
from ingest.settings import Settings

log = logging.getLogger("ingest.jobs.rate_limit")

# KEYS[1]: the bucket hash. ARGV[1]: the verb ("take", "observe", "penalize"), then its arguments.
# The hash: tokens, at (last refill), rate (tokens/s), ceiling (0 = unknown), calm (no decrease before).
_SCRIPT = """
local key = KEYS[1]
local verb = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fixed = tonumber(ARGV[2])       -- > 0: a fixed rate, nothing learned
local initial = tonumber(ARGV[3])
local max_rate = tonumber(ARGV[4])
local burst_s = tonumber(ARGV[5])     -- bucket size in seconds of the rate (at least one token)
local s = redis.call('HMGET', key, 'tokens', 'at', 'rate', 'ceiling', 'calm')
local rate = tonumber(s[3]) or initial
if fixed > 0 then rate = fixed end
local burst = math.max(1, rate * burst_s)
local tokens = tonumber(s[1]) or burst
local at = tonumber(s[2]) or now
local ceiling = tonumber(s[4]) or 0
local calm = tonumber(s[5]) or 0
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local result = 0
if verb == 'take' then
  if tokens >= 1 then tokens = tokens - 1 else result = (1 - tokens) / rate end
elseif verb == 'penalize' then
  local seconds = tonumber(ARGV[6])
  tokens = math.min(tokens, -seconds * rate)
elseif verb == 'observe' and fixed <= 0 then
  local status = tonumber(ARGV[6])
  local limit = tonumber(ARGV[7])         -- -1: no header
  local remaining = tonumber(ARGV[8])     -- -1: no header
  local retry_after = tonumber(ARGV[9])   -- -1: no header
  if status == 429 then
    if now >= calm then                   -- one decrease per episode, however many workers were refused
      rate = math.max(0.05, rate * 0.85)
      ceiling = rate                      -- trouble began above this: only probe beyond it
      calm = now + math.max(retry_after, 1)
    end
    if retry_after > 0 then tokens = math.min(tokens, -retry_after * rate) end
  elseif status < 400 then
    if remaining >= 0 and limit > 0 and remaining <= math.floor(limit * 0.02) then
      ceiling = rate                      -- at the edge: remember it, and ease off before a 429
      rate = rate * 0.99
    elseif ceiling == 0 then
      rate = rate * 2 ^ (1 / rate)        -- slow start: doubles every second of full use
    elseif rate < 0.95 * ceiling then
      rate = rate + 0.05 * ceiling / rate -- back under the ceiling within a few seconds
    else
      rate = rate + 0.01 * ceiling / rate -- probe: +1 % a second; a raised limit is found again
    end
    rate = math.min(rate, max_rate)
  end
end
redis.call('HSET', key, 'tokens', tokens, 'at', now, 'rate', rate, 'ceiling', ceiling, 'calm', calm)
redis.call('EXPIRE', key, 86400)
return {tostring(result), tostring(rate), tostring(ceiling)}
"""


@dataclass(frozen=True)
class Budget:
    """What the shared bucket holds now (for status and metrics)."""

    rate: float
    ceiling: float | None


class SharedRateLimit:
    """``gate`` and ``observe`` for the API client: takes a token (waiting briefly or deferring the job) and
    learns from every answer. ``rate`` fixed, or None to learn it starting at ``initial``."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        rate: float | None = None,
        initial: float = 5.0,
        max_rate: float = 1000.0,
        burst_seconds: float = 0.0,
        max_inline_wait: float = 1.0,
        key: str = "acr-ingest:ratelimit",
    ) -> None:
        self.fixed = rate
        self.initial = initial
        self.max_rate = max_rate
        # 0: a bucket of one token, so requests leave evenly spaced and arrive within the API's window.
        self.burst_seconds = burst_seconds
        self.max_inline_wait = max_inline_wait
        self.key = key
        self._script = client.register_script(_SCRIPT)
        self._last_warning = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedRateLimit | None:
        mode = settings.rate_limit_mode
        if mode == "off":
            return None
        url = settings.rate_limit_redis_url or settings.broker_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            if mode == "fixed" or settings.rate_limit_redis_url:
                raise ValueError(
                    "the shared rate limit needs Redis: set ACR_INGEST_RATE_LIMIT_REDIS_URL "
                    f"(the broker {url.split('://')[0]}:// cannot hold a shared budget)"
                )
            log.warning("no Redis for the shared rate limit (ACR_INGEST_RATE_LIMIT_REDIS_URL): 429s only")
            return None
        burst = 0.0
        if mode == "fixed" and settings.rate_limit_burst:
            burst = settings.rate_limit_burst / (settings.rate_limit or 1.0)
        return cls(
            redis.Redis.from_url(url),
            rate=settings.rate_limit if mode == "fixed" else None,
            initial=settings.rate_limit_initial,
            max_rate=settings.rate_limit_max,
            burst_seconds=burst,
            max_inline_wait=settings.rate_limit_max_inline_wait,
        )

    def _call(self, verb: str, *args: float) -> tuple[float, Budget]:
        fixed = self.fixed or 0.0
        try:
            wait, rate, ceiling = self._script(
                keys=[self.key], args=[verb, fixed, self.initial, self.max_rate, self.burst_seconds, *args]
            )
        except redis.RedisError as exc:
            # The budget's Redis is away (often the broker, restarting): let the call go rather than fail the
            # job. The API's own 429s and Retry-After remain the backstop until the budget is back.
            now = time.monotonic()
            if now - self._last_warning > 30:
                self._last_warning = now
                log.warning("shared rate limit unavailable, calling without it: %s", exc)
            return 0.0, Budget(self.fixed or self.initial, None)
        return float(wait), Budget(float(rate), float(ceiling) or None)

    def __call__(self, operation: str) -> None:
        """Take a token: at once, after a short wait in this thread, or by deferring the job."""
        deadline = time.monotonic() + self.max_inline_wait
        while True:
            wait, _ = self._call("take")
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                # A little spread, so deferred jobs do not all come back in the same instant.
                raise RetryLater(wait + random.uniform(0, wait), f"shared rate limit: {operation} deferred {wait:.2f}s")
            time.sleep(wait)  # a short, bounded wait for a token: cheaper than a trip through the broker

    def observe(self, operation: str, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from one answer of the API (its status and rate-limit headers); no answer teaches nothing."""
        if status is None or (self.fixed is not None and status != 429):
            return
        self._call(
            "observe",
            status,
            _number(headers.get("X-RateLimit-Limit")),
            _number(headers.get("X-RateLimit-Remaining")),
            _number(headers.get("Retry-After")),
        )

    def penalize(self, retry_after: float) -> None:
        """The API answered 429: nobody gets a token until ``retry_after`` seconds have passed."""
        _, budget = self._call("penalize", max(retry_after, 0.05))
        log.info("API rate limited: every worker holds off for %.1fs (rate now %.2f/s)", retry_after, budget.rate)

    def budget(self) -> Budget:
        return self._call("peek")[1]


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else -1.0
    except ValueError:  # an HTTP date in Retry-After: the penalty from the client's parsed value covers it
        return -1.0
