"""One request budget shared by every worker, in Redis: either a fixed rate (``ACR_INGEST_RATE_LIMIT``, a token
bucket) or learned from the API's own answers (the default), all in one Lua script on the server's clock.

**Learned, when the API announces its limit** (``X-RateLimit-Limit``/``X-RateLimit-Remaining`` on its answers):
the budget keeps a log of our calls (a sorted set beside the state) and lets a call go while fewer than the
announced limit are in the last *window* seconds, counted from when each call was **answered**. The API counts a
call when it receives it, which is before we have its answer, so two calls counted as apart by their answers are
at least that far apart at the API whatever the network's and the threads' jitter: near-exact use of the limit
(a window's calls at twice the limit's pace, then each as the oldest leaves the window), and no 429 from our own
calls. A call not yet answered counts as in the window. Each is counted from its answer less the quickest answer
seen (once 50 were): the part of that time before the API counts a call is spent by the next one too.

- **The window's length** is not on the vendor's page (Laravel's default is a minute). It is taken to be one
  second, the shortest there is, until a call that only that assumption let through is answered (then it is
  known); a 429 before that says it is longer: it becomes the time from the first call of the episode to the end
  of the 429's ``Retry-After`` (the API's window ended no later), so a long window costs one 429, once.
- **Where it starts**: from the state in Redis when there is one (limit, window and the log, kept a day), else
  with one call; its answer's headers start the log, which lets the rest of the window go at once.
- **A 429 once the window is known** (another client uses the account, or the API counts otherwise): our share of
  the limit goes down 10 %, and back up one call per window without a 429.
- **No headers** (an API that does not announce a limit): AIMD on a token bucket instead, slow start (the rate
  doubles each second of full use) until a 429 marks a ceiling, then back under it and a slow probe beyond it.
- **Every 429**, in either mode, holds every worker until ``Retry-After`` has passed and voids the slots reserved
  before it; the budget changes once per episode however many workers were refused.

One Redis call per API call: an answer is not sent on its own but with the next ``take`` of its process (a call
answered but not yet told counts as unanswered: a little later, never early); a 429 is sent at once, and so is
the first answer with headers (it starts the log for every worker). A slot is *reserved*: a caller whose slot is
less than ``RATE_LIMIT_MAX_INLINE_WAIT`` away waits for it in its thread (no broker round trip, and no herd of
threads waking for the same slot); a longer wait becomes one countdown (``RetryLater``). A slot that depends on
a call not yet answered is not reserved: the caller asks again about when that call should have its answer.

Celery's own ``rate_limit`` is per worker instance; this is per account, however many workers run.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from ingest.api.client import retry_after_seconds
from ingest.jobs.errors import RetryLater
from ingest.settings import Settings

log = logging.getLogger("ingest.jobs.rate_limit")
REDIS_TIMEOUT = 2.0  # seconds for the budget's Redis to connect or answer

# KEYS[1]: the state (a hash), KEYS[2]: the log of calls (a sorted set: an answered call scored by when it was
# answered, one not yet answered by PENDING or PROBE + when it was sent or its reserved slot; PROBE: let through
# only because the window is taken to be no longer than assumed, so its answer confirms the window).
# ARGV[1] the verb ("take", "credit", "refused", "peek"), ARGV[2..6] the configuration, ARGV[7..12] the call's id
# (or ""), the answers < 400 since the last call, the latest success's X-RateLimit-Limit and -Remaining (-1: none),
# Retry-After and X-RateLimit-Limit of a 429 (refused), the number of answered calls that follow as (id, seconds
# since answered, 1 = an HTTP answer | 0 = none).
# The hash: tokens, at, rate, ceiling (the bucket and its AIMD), calm (every call waits until), gen (429 episodes
# so far: a slot reserved before one is void), seen (an answer was told), limit (announced; 0: the bucket
# decides), cap (our share of it), window, wsure (1: the window is confirmed), first (the episode's first call),
# lat (seconds from sending to the answer, averaged), raised (when cap last went up), lmin and samples (the
# quickest answer seen, of how many), next (the earliest the next call goes: calls are spaced).
_SCRIPT = """
local key, calls = KEYS[1], KEYS[2]
local verb = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fixed = tonumber(ARGV[2])       -- > 0: a fixed rate, nothing learned
local initial = tonumber(ARGV[3])
local max_rate = tonumber(ARGV[4])
local burst_s = tonumber(ARGV[5])     -- bucket size in seconds of the rate (at least one token)
local inline = tonumber(ARGV[6])
local id = ARGV[7]
local ok = tonumber(ARGV[8])
local hlimit = tonumber(ARGV[9])
local hremaining = tonumber(ARGV[10])
local retry_after = tonumber(ARGV[11])
local refused_limit = tonumber(ARGV[12])  -- X-RateLimit-Limit of the 429 (-1: none)
local answered = tonumber(ARGV[13])
local PENDING, PROBE, MAX_PENDING = 1e10, 2e10, 120

local s = redis.call('HMGET', key, 'tokens', 'at', 'rate', 'ceiling', 'calm', 'gen', 'seen', 'limit', 'cap',
  'window', 'wsure', 'first', 'lat', 'raised', 'lmin', 'samples', 'next')
if not s[2] then redis.call('DEL', calls) end  -- no state (expired or deleted): nor a log
local rate = tonumber(s[3]) or initial
if fixed > 0 then rate = fixed end
local burst = math.max(1, rate * burst_s)
local tokens = tonumber(s[1]) or burst
local at = tonumber(s[2]) or now
local ceiling = tonumber(s[4]) or 0
local calm = tonumber(s[5]) or 0
local gen = tonumber(s[6]) or 0
local seen = tonumber(s[7]) or 0
local limit = tonumber(s[8]) or 0
local cap = tonumber(s[9]) or 0
local window = tonumber(s[10]) or 1
local wsure = tonumber(s[11]) or 0
local first = tonumber(s[12]) or 0
local lat = tonumber(s[13]) or 0.1
local raised = tonumber(s[14]) or 0
local lmin = tonumber(s[15]) or -1
local samples = tonumber(s[16]) or 0
local nxt = tonumber(s[17]) or 0
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
  rate = math.min(rate, max_rate)
end

if fixed <= 0 then
  -- The answers told with this call: the log holds when each was answered (a little late: safe).
  for i = 0, answered - 1 do
    local cid, age, http = ARGV[14 + 3 * i], tonumber(ARGV[15 + 3 * i]), ARGV[16 + 3 * i]
    local score = tonumber(redis.call('ZSCORE', calls, cid))
    if score and score >= PENDING then
      local sent = score - ((score >= PROBE) and PROBE or PENDING)
      local when = now - age
      if when > sent then lat = 0.9 * lat + 0.1 * math.min(when - sent, 10) end
      if http == '1' and when >= sent then
        if lmin < 0 or when - sent < lmin then lmin = when - sent end
        samples = math.min(samples + 1, 1000)
      end
      if score >= PROBE and http == '1' then wsure = 1 end  -- the API took a call the window's length let go
      -- Counted from the latest the API can have received it: its answer less the quickest answer seen (the
      -- part of that time before the API counts a call is spent by the next call too, after its send); from
      -- the answer itself until enough were seen for the quickest to be near the true one (a measured time
      -- includes our own delays, and too long a one would count calls from too early).
      redis.call('ZADD', calls, (samples >= 50) and math.max(sent, when - lmin) or when, cid)
    end
    seen = 1
  end
  if hlimit > 0 and hremaining >= 0 then
    if limit == 0 then                    -- the headers start the log (an episode of an unknown window)
      limit, cap, raised = hlimit, hlimit, now
      if wsure == 0 then window = 1 end
    elseif hlimit ~= limit then           -- the vendor changed it: follow, keeping our share
      cap = math.max(1, math.floor(cap * hlimit / limit + 0.5))
      limit = hlimit
    end
  elseif ok > 0 and limit > 0 then        -- a success without headers: the API stopped announcing a limit
    rate = math.min(max_rate, math.max(0.05, cap / window))
    ceiling, limit, tokens = 0, 0, math.max(tokens, 0)  -- slow start from there: it may have none now
  end
  if limit == 0 then grow(ok) end
end

local keep = math.max(10, 2 * window + 1)
redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - keep)
redis.call('ZREMRANGEBYSCORE', calls, PENDING, PENDING + now - MAX_PENDING)  -- lost: the worker died
redis.call('ZREMRANGEBYSCORE', calls, PROBE, PROBE + now - MAX_PENDING)

local result = 0
local margin = 0.02 + 0.005 * window
if verb == 'take' then
  if fixed <= 0 then redis.call('ZREM', calls, id) end  -- a slot reserved before a 429 is asked for again
  local count = (fixed <= 0) and redis.call('ZCARD', calls) or 0
  if count == 0 and wsure == 0 then first = now end
  if now < calm then
    result = -(calm - now)                -- a 429's Retry-After: everyone waits
  elseif fixed <= 0 and limit > 0 then
    if cap < limit and now - raised >= window then cap, raised = cap + 1, now end
    local allowed = math.max(1, math.min(cap, math.floor(max_rate * window)))
    local horizon = now - window - margin
    local inside = redis.call('ZCOUNT', calls, '(' .. horizon, '+inf')
    local mark = (wsure == 0 and count >= allowed) and PROBE or PENDING
    -- When the log lets a call go, at the earliest: now, or when the call (inside - allowed) from the oldest
    -- leaves the window; -1: that call is not answered yet (or not told).
    local free = now
    if inside >= allowed then
      local e = redis.call('ZRANGEBYSCORE', calls, '(' .. horizon, '+inf', 'WITHSCORES', 'LIMIT', inside - allowed, 1)
      local score = tonumber(e[2])
      if score < PENDING then
        free = score + window + margin
        mark = (wsure == 0) and PROBE or PENDING
      else
        local sent = score - ((score >= PROBE) and PROBE or PENDING)
        result = -math.max(0.02, sent + lat + window + margin - now)  -- ask again when it should be answered
        free = -1
      end
    end
    if free >= 0 then
      -- Calls go at most twice the limit's pace: a window's worth at once would leave a worker's threads
      -- short at every turn of the window (each slot then waits for a thread, and the next window with it).
      local go = math.max(free, nxt)
      if go - now <= inline then
        nxt = go + window / (2 * allowed)
        redis.call('ZADD', calls, mark + go, id)
        result = go - now
      else
        result = -(go - now)
      end
    end
  elseif fixed <= 0 and seen == 0 and redis.call('ZCOUNT', calls, PENDING + now - 5, '+inf') > 0 then
    result = -0.02                        -- nothing known yet: one call, whose answer says what the API allows
  else
    -- While the rate is still being found (slow start), reserve only half a second ahead: slots reserved at
    -- a rate about to double would hold the callers to it for seconds.
    if fixed <= 0 and ceiling == 0 then inline = math.min(inline, 0.5) end
    local wait = (tokens >= 1) and 0 or (1 - tokens) / rate
    if wait <= inline then
      tokens = tokens - 1                 -- reserved: the caller goes at once or sleeps until its slot
      result = wait
      if fixed <= 0 then redis.call('ZADD', calls, PENDING + now + wait, id) end
    else
      result = -wait                      -- not reserved: negative, the caller asks again or defers
    end
  end
elseif verb == 'refused' then
  if fixed <= 0 then redis.call('ZREM', calls, id) end  -- the API does not count what it refused
  if now >= calm then                     -- one episode, however many workers were refused
    gen = gen + 1                         -- slots reserved before it are void
    if fixed <= 0 then
      if limit > 0 and wsure == 0 then    -- the window is longer than assumed: it ended by Retry-After
        window = math.min(3600, math.max(window * 1.25, now + retry_after - math.max(first, now - keep)))
      elseif limit > 0 then               -- someone else uses the account, or the API counts otherwise
        cap, raised = math.max(1, math.floor(cap * 0.9)), now
      else                                -- no headers: AIMD from here
        rate = rate * 0.85
        if refused_limit > 0 and retry_after > 0 then
          rate = math.min(rate, 0.9 * refused_limit / math.max(retry_after, 1))
        end
        rate = math.max(0.05, rate)
        ceiling = rate                    -- trouble began above this: only probe beyond it
      end
    end
    calm = now + math.max(retry_after, (fixed > 0) and 0.05 or 1)
  end
  tokens = math.min(tokens, -math.max(retry_after, 0.05) * rate)
end
redis.call('HSET', key, 'tokens', tokens, 'at', now, 'rate', rate, 'ceiling', ceiling, 'calm', calm, 'gen', gen,
  'seen', seen, 'limit', limit, 'cap', cap, 'window', window, 'wsure', wsure, 'first', first, 'lat', lat,
  'raised', raised, 'lmin', lmin, 'samples', samples, 'next', nxt)
redis.call('EXPIRE', key, 86400)
redis.call('EXPIRE', calls, 86400)
if limit > 0 then
  rate = math.min(cap, max_rate * window) / window
  ceiling = limit / window
end
return {tostring(result), tostring(rate), tostring(ceiling), gen, (limit > 0) and 1 or 0}
"""


@dataclass(frozen=True)
class Budget:
    """What the shared budget allows now (for status and metrics): calls per second, and the most the API
    announced (None: not known)."""

    rate: float
    ceiling: float | None


class SharedRateLimit:
    """``gate`` and ``observe`` for the API client: takes a slot (waiting briefly or deferring the job) and
    learns from every answer. ``rate`` fixed, or None to learn it (``initial``: the start when the API
    announces no limit)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        rate: float | None = None,
        initial: float = 5.0,
        max_rate: float = 1000.0,
        burst_seconds: float = 0.0,
        max_inline_wait: float = 3.0,
        key: str = "acr-ingest:ratelimit",
    ) -> None:
        self.fixed = rate
        self.initial = initial
        self.max_rate = max_rate
        # 0: a bucket of one token, so requests leave evenly spaced and arrive within the API's window.
        self.burst_seconds = burst_seconds
        self.max_inline_wait = max_inline_wait
        self.key = key
        self.client = client
        self._script = client.register_script(_SCRIPT)
        self._last_warning = 0.0
        # Answers not yet told to the budget, (call id, when answered, had an HTTP answer), the answers < 400
        # among them and the latest success's rate-limit headers: sent with the next take.
        self._lock = threading.Lock()
        self._answered: list[tuple[str, float, bool]] = []
        self._under_way = 0  # this process's calls between the gate and their answer
        self._successes = 0
        self._limit_header = -1.0
        self._remaining_header = -1.0
        # The call each thread's gate let through, for its observe (the client calls both in the caller's thread).
        self._local = threading.local()
        self._ids = itertools.count()
        self._process = f"{os.getpid()}.{secrets.token_hex(3)}"
        self._windowed = False  # the budget counts calls in the API's window (it announced its limit)
        self._told_once = False
        # The newest 429 episode any call of this process has seen: a thread waking for a slot reserved before
        # it takes another (every worker is held for Retry-After meanwhile).
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
            # Timeouts: a Redis that accepts and never answers (a partition, a stopped VM) must not hang every
            # API call of every worker; a timed-out call goes through as when Redis refuses.
            redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT),
            rate=settings.rate_limit if mode == "fixed" else None,
            initial=settings.rate_limit_initial,
            max_rate=settings.rate_limit_max,
            burst_seconds=burst,
            max_inline_wait=settings.rate_limit_max_inline_wait,
        )

    def _call(
        self, verb: str, call: str = "", retry_after: float = -1.0, refused_limit: float = -1.0
    ) -> tuple[float, Budget]:
        with self._lock:
            answered, self._answered = self._answered, []
            ok, self._successes = self._successes, 0
            headers = (self._limit_header, self._remaining_header)
        now = time.monotonic()
        told = [v for c, when, http in answered for v in (c, now - when, int(http))]
        config = [self.fixed or 0.0, self.initial, self.max_rate, self.burst_seconds, self.max_inline_wait]
        args = [verb, *config, call, ok, *headers, retry_after, refused_limit, len(answered), *told]
        try:
            wait, rate, ceiling, generation, windowed = self._script(keys=[self.key, f"{self.key}:calls"], args=args)
            self._generation = max(self._generation, int(generation))
            self._windowed = bool(windowed)
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
        """Take a slot: at once, after a short wait in this thread for the slot reserved, or by deferring the job."""
        call = f"{self._process}.{next(self._ids)}"
        self._local.call = call
        with self._lock:
            self._under_way += 1
        deadline = time.monotonic() + self.max_inline_wait
        while True:
            asked = time.monotonic()
            wait, _ = self._call("take", call)
            generation = self._generation
            if wait == 0:
                return
            if wait > 0:  # a slot reserved: sleep until it, cheaper than a trip through the broker
                time.sleep(wait)
                if self._generation == generation:  # no 429 seen since it was reserved: it is still good
                    return
                continue
            wait = -wait  # nothing reserved: too far ahead for now
            if asked + wait > deadline:
                self._local.call = ""
                with self._lock:
                    self._under_way -= 1
                # A little spread, so deferred jobs do not all come back in the same instant.
                raise RetryLater(wait + random.uniform(0, wait), f"shared rate limit: {operation} deferred {wait:.2f}s")
            time.sleep(min(wait, 0.25))  # ask again shortly: the slot depends on a call not answered yet

    def observe(self, operation: str, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from one answer of the API (its status and rate-limit headers; None: no answer, the call is
        taken as answered now). A 429 is told to every worker at once; the rest goes with this process's next
        take."""
        if self.fixed is not None and status != 429:
            return
        call, self._local.call = getattr(self._local, "call", ""), ""
        if status == 429:
            if call:
                with self._lock:
                    self._under_way -= 1
            retry_after = retry_after_seconds(headers.get("Retry-After")) or 1.0
            self._call("refused", call, retry_after, _number(headers.get("X-RateLimit-Limit")))
            return
        limit, remaining = _number(headers.get("X-RateLimit-Limit")), _number(headers.get("X-RateLimit-Remaining"))
        now = time.monotonic()
        with self._lock:
            if call:
                self._answered.append((call, now, status is not None))
                self._under_way -= 1
            if status is not None and status < 400:
                self._successes += 1
                self._limit_header, self._remaining_header = limit, remaining
            # Told with the next take, unless none may come soon: no other call of this process under way (it
            # goes idle, or stops), or an answer waited long already (the other calls are slow uploads).
            idle = bool(self._answered) and (self._under_way <= 0 or now - self._answered[0][1] > 0.25)
        if idle or not self._told_once or (not self._windowed and limit > 0 and remaining >= 0):
            # This process's first answer, and the first limit announced, are told at once too: every worker
            # waits for the first answer, and counts the window from the limit it announces.
            self._told_once = True
            self._call("credit")

    def budget(self) -> Budget:
        return self._call("peek")[1]


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else -1.0
    except ValueError:
        return -1.0
