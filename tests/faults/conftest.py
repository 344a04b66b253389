"""Fault tests run real worker processes (``celery -A ingest.worker worker``) that can be killed, on a broker
of their own (a database of the run's private Redis, or the run's RabbitMQ vhost), against the session's
emulator and database. ``on_both_brokers`` runs a test once on each."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from ingest.devtools.processes import ChildProcess, celery_command
from tests.conftest import REDIS_URL, WORKDIR
from tests.helpers import purged_rabbitmq, wait_for

FAULT_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/12"
BROKERS = ("redis", "rabbitmq")
# Runs the test on each broker: the fixture fault_broker takes the parameter (default: Redis).
on_both_brokers = pytest.mark.parametrize("fault_broker", BROKERS, indirect=True)
FAULT_ENV = {
    # The visibility timeout and the Redis heartbeat keep their defaults: a killed worker's messages come
    # back by liveness (about 10 s on Redis, at once on RabbitMQ), as in production.
    "ACR_INGEST_LEASE_SECONDS": "8",
    "ACR_INGEST_SOFT_SHUTDOWN_TIMEOUT": "3",
}


class WorkerProcess(ChildProcess):
    """A real ``celery worker`` in its own process group: SIGKILL takes the main process and its pool children."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        loglevel: str = "INFO",
        queues: str | None = None,
    ) -> None:
        super().__init__(
            name,
            celery_command(
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                f"--loglevel={loglevel}",
                f"--hostname={name}@%h",
                "--without-gossip",
                "--without-mingle",
                *([f"--queues={queues}"] if queues else []),  # None: every queue the app declares
            ),
            log=WORKDIR / f"worker-{name}-{time.monotonic_ns()}.log",
            env=env,
        )

    def ready(self) -> bool:
        self.check()
        return " ready." in self.text()

    def wait_ready(self, timeout: float = 30) -> WorkerProcess:
        wait_for(self.ready, timeout=timeout, what=f"worker {self.name} ready")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.signal(sig)


@pytest.fixture
def fault_broker(request: pytest.FixtureRequest) -> str:
    """The broker URL of this test, emptied: Redis (database 12 of the run's Redis) or the run's RabbitMQ vhost."""
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        redis.Redis.from_url(FAULT_BROKER).flushdb()
        return FAULT_BROKER
    assert kind == "rabbitmq", kind
    return purged_rabbitmq(request.getfixturevalue("rabbitmq_url"))


@pytest.fixture
def fault_env(emulator: object, fault_broker: str) -> dict[str, str]:
    return {**os.environ, **FAULT_ENV, "ACR_INGEST_BROKER_URL": fault_broker}


@pytest.fixture
def spawn_worker(fault_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(name: str, *, env: dict[str, str] | None = None, **kw: object) -> WorkerProcess:
        w = WorkerProcess(name, {**fault_env, **(env or {})}, **kw)  # type: ignore[arg-type]
        started.append(w)
        return w

    yield spawn
    stop_all(started, timeout=20)


def stop_all(procs: list[WorkerProcess], *, timeout: float) -> None:
    """SIGTERM to every worker at once, then SIGKILL to any still running at the deadline: each warm shutdown
    waits for its running tasks, and one after the other they added seconds to every test. One signal each
    (``ChildProcess.stop`` signals again, and a second SIGTERM is Celery's cold shutdown)."""
    for w in procs:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in procs:
        try:
            w.proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            w.signal(signal.SIGKILL)
            w.proc.wait()


@contextmanager
def beat_process(env: dict[str, str]) -> Iterator[ChildProcess]:
    """One beat: the state poll that turns processing files ready."""
    stamp = time.monotonic_ns()
    proc = ChildProcess(
        "beat",
        celery_command("beat", "--loglevel=INFO", f"--schedule={WORKDIR / f'fault-beat-schedule-{stamp}'}"),
        log=WORKDIR / f"fault-beat-{stamp}.log",
        env=env,
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fault_beat(fault_env: dict[str, str]) -> Iterator[ChildProcess]:
    with beat_process(fault_env) as proc:
        yield proc


@pytest.fixture
def fault_producer(fault_env: dict[str, str]) -> object:
    return producer_for(fault_env["ACR_INGEST_BROKER_URL"])


def producer_for(broker_url: str, **overrides: object) -> object:
    from ingest.producer import Producer
    from ingest.settings import get_settings
    from ingest.worker.app import create_app

    settings = get_settings().model_copy(update={"broker_url": broker_url, **overrides})
    return Producer(create_app(settings), settings)
