"""One request budget shared by every worker: a token bucket in Redis whose rate is either fixed
(``ACR_INGEST_RATE_LIMIT``) or learned from the API's own answers (the default).

Learning, all in one Lua script so every worker's view of the budget is one atomic state on the server's clock:

- **The limit the API announces.** ``X-RateLimit-Limit`` counts calls per window, and the page does not say
  how long the window is (Laravel's default is a minute). Once ``X-RateLimit-Remaining`` stops falling from
  one answer to the next while we keep calling, calls are leaving the window: it is no longer than the time
  since we started, so ``limit / that time`` (at most ``limit`` per second) is a rate the API accepts. The
  budget then runs at 97 % of it and follows the header if the vendor changes it; no probing, no 429.
- **Where it starts**: from the state in Redis when there is one (what was learned, kept a day); from scratch,
  the first answer on an empty window sets the rate to 0.85 x the headroom x ``X-RateLimit-Limit`` per second
  (as if the window were a second, the shortest there is; below the headroom, as the window is not timed yet),
  instead of slow-starting from ``initial`` (5/s cost a 12-second run a quarter of its calls). A longer window
  runs out at that rate and its 429 sends the budget to AIMD under ``limit / Retry-After``.
- **AIMD when the headers are missing or wrong** (a 429 while trusting them): slow start (the rate doubles
  each second of full use) until a 429 or a nearly spent ``Remaining`` marks a ceiling, then back under it
  within seconds and a slow probe beyond it (+1 %/s), so a raised limit is found again.
- **``Remaining`` at 0** says the window is full, not how long it is: it neither times the window nor feeds
  the estimate of the rate (which it would pull down to the rate in use, a spiral seen as 16/s of 20/s); it
  only lowers our share (raised again by answers with a few calls left).
- **Every 429**, in either mode, drains the bucket until ``Retry-After`` has passed (all workers back off at
  once); in the learned mode it also lowers the rate, once per ``Retry-After`` window however many workers
  were refused, and to at most ``limit / Retry-After`` (the window's calls are spent until it ends).

One Redis call per API call: a success is not sent on its own but credited with the next ``take`` (with the
last rate-limit headers seen); only a 429 is sent at once. A token is *reserved*: a caller whose slot is less
than ``RATE_LIMIT_MAX_INLINE_WAIT`` away waits for it in its thread (no broker round trip, and no herd of
threads waking for the same token); a longer wait becomes one countdown (``RetryLater``).

Celery's own ``rate_limit`` is per worker instance; this is per account, however many workers run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from ingest.api.client import retry_after_seconds
from ingest.jobs.errors import RetryLater
from ingest.settings import Settings

log = logging.getLogger("ingest.jobs.rate_limit")

# Share of the limit the API announces that the budget uses once it trusts it: evenly spaced calls at 97 %
# never fill a sliding window, and leave room for the jitter of many threads.
HEADROOM = 0.97

# KEYS[1]: the bucket hash. ARGV[1]: the verb ("take", "observe", "peek"), ARGV[2..5] the configuration,
# then the verb's arguments. The hash: tokens, at (last refill), rate (tokens/s), ceiling (0 = unknown),
# calm (no decrease before), trusted (the announced limit per second in use, 0 = none), first and rprev
# (when the headers were first seen while learning, and the last Remaining), share (of the trusted limit),
# fresh (1: learning began on an empty window), gen (429 episodes so far: a slot reserved before one is void).
_SCRIPT = """
local key = KEYS[1]
local verb = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fixed = tonumber(ARGV[2])       -- > 0: a fixed rate, nothing learned
local initial = tonumber(ARGV[3])
local max_rate = tonumber(ARGV[4])
local burst_s = tonumber(ARGV[5])     -- bucket size in seconds of the rate (at least one token)
local headroom = tonumber(ARGV[6])
local s = redis.call('HMGET', key, 'tokens', 'at', 'rate', 'ceiling', 'calm', 'trusted', 'first', 'rprev', 'share',
  'fresh', 'gen')
local rate = tonumber(s[3]) or initial
if fixed > 0 then rate = fixed end
local burst = math.max(1, rate * burst_s)
local tokens = tonumber(s[1]) or burst
local at = tonumber(s[2]) or now
local ceiling = tonumber(s[4]) or 0
local calm = tonumber(s[5]) or 0
local trusted = tonumber(s[6]) or 0
local first = tonumber(s[7]) or 0
local rprev = tonumber(s[8]) or -1
local share = tonumber(s[9]) or headroom
local fresh = tonumber(s[10]) or 0
local gen = tonumber(s[11]) or 0
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)

local function grow(n)                -- n answers without trouble, no usable headers
  for _ = 1, math.min(n, 1000) do
    if ceiling == 0 then
      rate = rate * 2 ^ (1 / rate)        -- slow start: doubles every second of full use
    elseif rate < 0.95 * ceiling then
      rate = rate + 0.05 * ceiling / rate -- back under the ceiling within a few seconds
    else
      rate = rate + 0.01 * ceiling / rate -- probe: +1 % a second; a raised limit is found again
    end
  end
end

local function credit(n, limit, remaining)  -- n successes; the headers of the latest (-1: none)
  if n <= 0 or fixed > 0 then return end
  if limit > 0 and remaining >= 0 then
    -- While callers queue for tokens, calls leave at the rate, so the (limit - remaining) calls in the window
    -- took (limit - remaining) / rate seconds: the API allows about limit * rate / (limit - remaining) a second
    -- (at most limit: no window is taken for shorter than a second). 0: cannot tell, and a window at its edge
    -- says only that it is full (taken for an estimate, it pulls the limit down to the rate in use).
    local edge = math.floor(limit * 0.02)
    local estimate = 0
    if tokens < 0 and remaining < limit and remaining > edge then
      estimate = math.min(limit, limit * rate / (limit - remaining))
    end
    if trusted > 0 then                   -- rprev holds the announced limit: follow a change of it
      if rprev > 0 and limit ~= rprev then trusted = trusted * limit / rprev end
      rprev = limit
      if estimate > 0 then trusted = 0.9 * trusted + 0.1 * estimate end
    elseif first == 0 or rprev < 0 then
      first = now
      rprev = remaining
      fresh = (remaining >= limit - 2) and 1 or 0   -- an empty window: its length can be timed from here
      if fresh == 1 and ceiling == 0 then
        -- Nothing learned yet: start from what the header announces, as if its window were one second (none is
        -- shorter), instead of slow-starting up to it. The window is timed below; a longer one runs out and its
        -- first 429 sends the budget to AIMD under limit / Retry-After.
        rate = math.max(rate, 0.85 * headroom * limit)
        tokens = math.max(tokens, 0)      -- the slots queued at the starting rate go now, not at its pace
      end
    elseif remaining >= rprev and remaining > edge and now - first >= 0.5 then
      -- Remaining stopped falling: calls leave the window as fast as they enter it. Only a window watched
      -- from empty is timed (it filled in no longer than this); one already busy (after a 429) is not, and
      -- the budget stays with AIMD.
      if fresh == 1 then
        local bound = limit / math.max(1, now - first)
        estimate = (estimate > 0) and math.min(estimate, bound) or bound
      else
        estimate = 0
      end
      if estimate > 0 then
        trusted = estimate
        ceiling = trusted
        rprev = limit
      else
        rprev = remaining
      end
    else
      rprev = remaining
    end
    if trusted > 0 then                   -- our share of it: less at the edge, back to the headroom after
      if remaining <= edge then
        share = math.max(0.5, share * 0.998)
      elseif remaining >= math.max(2, limit * 0.05) then
        share = math.min(headroom, share + 0.0005 * n)
      end
      rate = share * trusted
    elseif remaining <= edge then
      ceiling = rate                      -- at the edge: remember it, and ease off before a 429
      rate = rate * 0.99
    elseif fresh == 0 or first == 0 then
      grow(n)
    end
  elseif trusted == 0 then
    grow(n)
  end
  rate = math.min(rate, max_rate)
end

local result = 0
if verb == 'take' then
  local before = rate
  credit(tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
  -- Slots already reserved keep their times: the debt is in seconds of the old rate, not in tokens.
  if tokens < 0 and rate ~= before then tokens = tokens * rate / before end
  local inline = tonumber(ARGV[10])
  -- While the rate is still being found (slow start), reserve only half a second ahead: slots reserved at
  -- a rate about to double would hold the callers to it for seconds.
  if fixed <= 0 and trusted == 0 and ceiling == 0 then inline = math.min(inline, 0.5) end
  local wait = (tokens >= 1) and 0 or (1 - tokens) / rate
  if wait <= inline then
    tokens = tokens - 1                   -- reserved: the caller goes at once or sleeps until its slot
    result = wait
  else
    result = -wait                        -- not reserved: negative, the caller asks again or defers
  end
elseif verb == 'observe' then
  local status = tonumber(ARGV[7])
  local limit = tonumber(ARGV[8])         -- -1: no header
  local retry_after = tonumber(ARGV[9])   -- -1: no header
  if status == 429 then
    if now >= calm then                   -- one episode, however many workers were refused
      gen = gen + 1                       -- slots reserved before it are void
    end
    if fixed <= 0 and now >= calm then    -- one decrease per episode
      calm = now + math.max(retry_after, 1)
      if trusted > 0 and retry_after <= 2 then
        share = math.max(0.5, share * 0.93)  -- a short window after all: others use it too, or calls bunch up
        rate = share * trusted
      else                                -- no trusted limit, or a long window: AIMD from here
        rate = rate * 0.85
        if limit > 0 and retry_after > 0 then rate = math.min(rate, 0.9 * limit / math.max(retry_after, 1)) end
        rate = math.max(0.05, rate)
        ceiling = rate                    -- trouble began above this: only probe beyond it
        trusted = 0
        first = 0
        rprev = -1
      end
    end
    tokens = math.min(tokens, -math.max(retry_after, 0.05) * rate)
    if fixed > 0 then calm = math.max(calm, now + math.max(retry_after, 0.05)) end
  end
end
redis.call('HSET', key, 'tokens', tokens, 'at', now, 'rate', rate, 'ceiling', ceiling, 'calm', calm,
  'trusted', trusted, 'first', first, 'rprev', rprev, 'share', share, 'fresh', fresh, 'gen', gen)
redis.call('EXPIRE', key, 86400)
return {tostring(result), tostring(rate), tostring(ceiling), gen}
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
        max_inline_wait: float = 3.0,
        headroom: float = HEADROOM,
        key: str = "acr-ingest:ratelimit",
    ) -> None:
        self.fixed = rate
        self.initial = initial
        self.max_rate = max_rate
        # 0: a bucket of one token, so requests leave evenly spaced and arrive within the API's window.
        self.burst_seconds = burst_seconds
        self.max_inline_wait = max_inline_wait
        self.headroom = headroom
        self.key = key
        self._script = client.register_script(_SCRIPT)
        self._last_warning = 0.0
        # Successes not yet told to the budget, and the latest rate-limit headers: sent with the next take.
        self._lock = threading.Lock()
        self._successes = 0
        self._limit_header = -1.0
        self._remaining_header = -1.0
        # The newest 429 episode any call of this process has seen: a thread waking for a slot reserved before
        # it takes another (the budget was drained for Retry-After meanwhile).
        self._generation = 0

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
        config = [fixed, self.initial, self.max_rate, self.burst_seconds, self.headroom]
        try:
            wait, rate, ceiling, generation = self._script(keys=[self.key], args=[verb, *config, *args])
            self._generation = max(self._generation, int(generation))
        except redis.RedisError as exc:
            # The budget's Redis is away (often the broker, restarting): let the call go rather than fail the
            # job. The API's own 429s and Retry-After remain the backstop until the budget is back.
            now = time.monotonic()
            if now - self._last_warning > 30:
                self._last_warning = now
                log.warning("shared rate limit unavailable, calling without it: %s", exc)
            return 0.0, Budget(self.fixed or self.initial, None)
        return float(wait), Budget(float(rate), float(ceiling) or None)

    def _take(self) -> tuple[float, int]:
        with self._lock:
            credit = (self._successes, self._limit_header, self._remaining_header)
            self._successes = 0
        wait, _ = self._call("take", *credit, self.max_inline_wait)
        return wait, self._generation

    def __call__(self, operation: str) -> None:
        """Take a token: at once, after a short wait in this thread for the slot reserved, or by deferring the job."""
        deadline = time.monotonic() + self.max_inline_wait
        while True:
            asked = time.monotonic()
            wait, generation = self._take()
            if wait == 0:
                return
            if wait > 0:  # a slot reserved: sleep until it, cheaper than a trip through the broker
                time.sleep(wait)
                if self._generation == generation:  # no 429 seen since it was reserved: it is still good
                    return
                continue
            wait = -wait  # nothing reserved: too far ahead for now
            if asked + wait > deadline:
                # A little spread, so deferred jobs do not all come back in the same instant.
                raise RetryLater(wait + random.uniform(0, wait), f"shared rate limit: {operation} deferred {wait:.2f}s")
            time.sleep(min(wait, 0.25))  # the rate is still being learned: ask again shortly

    def observe(self, operation: str, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from one answer of the API (its status and rate-limit headers); no answer teaches nothing.
        A 429 is told to every worker at once; a success goes with this process's next take."""
        if status is None:
            return
        if status == 429:
            self._call(
                "observe",
                429,
                _number(headers.get("X-RateLimit-Limit")),
                retry_after_seconds(headers.get("Retry-After")) or 1.0,
            )
            return
        if status >= 400 or self.fixed is not None:
            return
        limit, remaining = _number(headers.get("X-RateLimit-Limit")), _number(headers.get("X-RateLimit-Remaining"))
        with self._lock:
            self._successes += 1
            if limit > 0 and remaining >= 0:
                self._limit_header, self._remaining_header = limit, remaining

    def budget(self) -> Budget:
        return self._call("peek")[1]


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else -1.0
    except ValueError:
        return -1.0
