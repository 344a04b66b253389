"""The shared token bucket in Redis, what the client's gate does with it, and how it learns the API's limit."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from ingest.api.client import AcrCloudClient
from ingest.api.errors import RateLimitedError
from ingest.devtools.emulator import Emulator
from ingest.devtools.processes import free_port
from ingest.jobs.errors import RetryLater
from ingest.jobs.rate_limit import REDIS_TIMEOUT, SharedRateLimit
from ingest.settings import Settings
from tests.conftest import REDIS_URL


def _limit(name: str, **kw: float) -> SharedRateLimit:
    client = redis.Redis.from_url(REDIS_URL)
    key = f"test:ratelimit:{name}"
    client.delete(key)
    return SharedRateLimit(client, key=key, **kw)


def _hammer(
    client: AcrCloudClient | list[AcrCloudClient], *, seconds: float, threads: int = 8
) -> tuple[float, list[tuple[float, int]]]:
    """``threads`` threads per client (one client and limiter = one worker process) listing a page for
    ``seconds`` through it (its gate takes the slot, its observer learns); a deferred call sleeps as a deferred
    job would, without the broker. Returns when they stopped and each answered call's (time, status)."""
    clients = client if isinstance(client, list) else [client]
    stop = time.monotonic() + seconds
    calls: list[tuple[float, int]] = []
    lock = threading.Lock()

    def hammer(api: AcrCloudClient) -> None:
        while time.monotonic() < stop:
            try:
                api.list_page(1)
                status = 200
            except RetryLater as wait:
                time.sleep(min(wait.countdown, 0.5))
                continue
            except RateLimitedError:
                status = 429
            with lock:
                calls.append((time.monotonic(), status))

    workers = [threading.Thread(target=hammer, args=(api,)) for api in clients for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return stop, calls


def test_the_burst_is_granted_then_the_next_caller_is_deferred_not_blocked() -> None:
    limit = _limit("burst", rate=5, burst_seconds=0.4, max_inline_wait=0)
    limit("upload")
    limit("upload")
    with pytest.raises(RetryLater) as deferred:
        limit("upload")
    assert 0 < deferred.value.countdown <= 2 * (1 / 5) + 0.05  # about one token's time, plus spread
    assert "shared rate limit" in deferred.value.reason and not deferred.value.counts


def test_a_short_wait_is_waited_in_the_thread_not_sent_through_the_broker() -> None:
    limit = _limit("inline", rate=5, max_inline_wait=1.0)
    started = time.monotonic()
    for _ in range(4):  # one token at a time: three waits of a fifth of a second, no RetryLater
        limit("get")
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_429_drains_the_budget_for_every_worker_for_retry_after() -> None:
    limit = _limit("penalty", rate=5)
    other_worker = SharedRateLimit(redis.Redis.from_url(REDIS_URL), rate=5, key=limit.key, max_inline_wait=0)
    limit.observe("upload", 429, {"Retry-After": "3"})  # what the client's observer passes on
    with pytest.raises(RetryLater) as deferred:
        other_worker("get")
    assert deferred.value.countdown >= 3.0


def test_the_mode_follows_the_settings() -> None:
    def made(**kw: object) -> SharedRateLimit | None:
        return SharedRateLimit.from_settings(Settings(_env_file=None, broker_url=REDIS_URL, **kw))  # type: ignore[arg-type]

    auto = made()
    assert auto is not None and auto.fixed is None  # on by default, learning
    fixed = made(rate_limit=7.5)
    assert fixed is not None and fixed.fixed == 7.5
    assert made(rate_limit_mode="off") is None
    # A broker that cannot hold the budget: a fixed limit is refused, the learned one steps aside.
    with pytest.raises(ValueError, match="ACR_INGEST_RATE_LIMIT_REDIS_URL"):
        SharedRateLimit.from_settings(Settings(_env_file=None, rate_limit=5, broker_url="filesystem:///tmp/x"))
    assert SharedRateLimit.from_settings(Settings(_env_file=None, broker_url="filesystem:///tmp/x")) is None
    with pytest.raises(ValueError, match="RATE_LIMIT"):
        Settings(_env_file=None, rate_limit_mode="fixed")


def test_with_no_setting_the_limit_is_learned_from_the_apis_answers() -> None:
    """Eight threads against an API allowing 20 requests a second: the budget finds the limit from the
    headers and 429s, then uses nearly all of it while the API refuses almost nothing."""
    token = "learning-token"
    emu = Emulator(tokens={token}, rate_limit=20, buckets=[1]).start(host="127.0.0.1", port=0)
    limit = _limit("learn")  # auto, starting at 5/s
    client = AcrCloudClient(emu.url, token, gate=limit, observers=[limit.observe], pool_maxsize=8)
    stop, calls = _hammer(client, seconds=12)
    client.close()
    emu.stop()
    late = [s for at, s in calls if at > stop - 8]  # the last eight seconds: learned by then
    ok = sum(s == 200 for s in late)
    refused = sum(s == 429 for _, s in calls)
    assert ok >= 0.85 * 20 * 8, f"used {ok / 8:.1f}/s of 20/s"
    # The announced limit is trusted once Remaining stops falling: no 429 is needed to find it.
    assert refused <= 1, f"{refused} of {len(calls)} calls refused"
    assert 16 <= limit.budget().rate <= 20


def test_a_budget_whose_redis_is_away_lets_calls_through_instead_of_failing_jobs() -> None:
    gone = SharedRateLimit(redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), max_inline_wait=0)
    gone("upload")  # no exception: the API's own 429s are the backstop while the budget is away
    gone.observe("upload", 429, {"Retry-After": "1"})
    assert gone.budget().ceiling is None


def test_a_budget_whose_redis_never_answers_lets_calls_through_after_its_timeout() -> None:
    """A Redis that accepts connections and never answers (a partition): each call waits for the budget's
    timeout, then goes as when Redis refuses, instead of hanging the worker's thread for good."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel completes the handshake; nobody reads
        port = silent.getsockname()[1]
        settings = Settings(_env_file=None, rate_limit_redis_url=f"redis://127.0.0.1:{port}/0")
        limit = SharedRateLimit.from_settings(settings)
        assert limit is not None
        # Our own timeouts, not whatever the Redis client's version defaults to (redis-py 8: 5 s; earlier: none).
        kwargs = limit.client.connection_pool.connection_kwargs
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (REDIS_TIMEOUT, REDIS_TIMEOUT)
        done = threading.Event()
        caller = threading.Thread(target=lambda: (limit("upload"), done.set()), daemon=True)
        caller.start()
        assert done.wait(timeout=15 * REDIS_TIMEOUT), "the call hung on a Redis that never answers"


def test_a_limit_counted_over_a_long_window_is_not_taken_for_a_per_second_limit() -> None:
    """The page does not say how long the window of X-RateLimit-Limit is (Laravel's default is a minute). An API
    allowing 30 calls in any 3 seconds (10/s) must not be sent 30/s once Remaining stops falling: the budget
    settles under 10/s, finding the window from the Retry-After of one episode of 429s."""
    token = "window-token"
    emu = Emulator(tokens={token}, rate_limit=10, rate_window=3.0, buckets=[1]).start(host="127.0.0.1", port=0)
    limit = _limit("window")
    client = AcrCloudClient(emu.url, token, gate=limit, observers=[limit.observe], pool_maxsize=8)
    stop, calls = _hammer(client, seconds=15)
    client.close()
    emu.stop()
    late = [s for at, s in calls if at > stop - 6]
    ok = sum(s == 200 for s in late)
    refused = sum(s == 429 for _, s in calls)
    assert ok >= 0.6 * 10 * 6, f"used {ok / 6:.1f}/s of 10/s"
    # One episode: the first call that only a one-second window would let go, and those already under way.
    assert refused <= 4, f"{refused} of {len(calls)} calls refused"
    assert limit.budget().rate <= 11, "the budget took a 3-second window's limit for a per-second one"


def test_with_no_setting_workers_use_the_whole_announced_limit_from_their_first_call_and_none_is_refused() -> None:
    """Four workers (a limiter and a client each) of four threads against an API allowing 20 calls in any
    second, answering after 50 ms (the benchmark's latency): from an empty budget, and again on what it learned.
    The first window's calls all go at once (the old budget started at 82 % of the limit), fewer than 0.5 % of
    the calls are refused (the log counts each call from its answer, which comes after the API counted it), and
    nearly the whole limit is used (loosely: the machine may be busy; benchmarks/ measures it)."""
    token = "shared-token"
    emu = Emulator(tokens={token}, rate_limit=20, buckets=[1]).start(host="127.0.0.1", port=0)
    emu.faults.latency = 0.05
    key = _limit("whole").key  # cleared
    limits = [SharedRateLimit(redis.Redis.from_url(REDIS_URL), key=key) for _ in range(4)]
    clients = [AcrCloudClient(emu.url, token, gate=li, observers=[li.observe], pool_maxsize=4) for li in limits]
    try:
        for run, seconds in (("from scratch", 8.0), ("learned", 6.0)):
            time.sleep(1.1)  # the API's window empties (it still holds the last second of the run before)
            started = time.monotonic()
            _, calls = _hammer(clients, seconds=seconds, threads=4)
            accepted = sorted(at for at, s in calls if s == 200)
            refused = sum(s == 429 for _, s in calls)
            assert refused <= 0.005 * len(calls), f"{run}: {refused} of {len(calls)} calls refused"
            first_window = sum(at < accepted[0] + 1 for at in accepted)
            assert first_window >= 0.95 * 20, f"{run}: {first_window} calls in the first second, of 20"
            used = len(accepted) / (accepted[-1] - started)
            assert used >= 0.8 * 20, f"{run}: used {used:.1f}/s of 20/s"
        assert limits[0].budget().rate == 20  # the whole limit, over a window confirmed as one second
    finally:
        for c in clients:
            c.close()
        emu.stop()
