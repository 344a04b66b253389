"""Fault tests run real worker processes (``celery -A tasks.app worker``) that can be killed, on a broker
database of their own, against the session's emulator and database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.conftest import REDIS_URL, WORKDIR
from tests.helpers import wait_for

FAULT_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/12"
FAULT_ENV = {
    "ACR_INGEST_BROKER_URL": FAULT_BROKER,
    # Small on purpose, so a killed worker's message comes back within seconds (production: 3600 / 10).
    "ACR_INGEST_VISIBILITY_TIMEOUT": "6",
    "ACR_INGEST_REDELIVERY_CHECK_INTERVAL": "1",
    "ACR_INGEST_LEASE_SECONDS": "8",
    "ACR_INGEST_SOFT_SHUTDOWN_TIMEOUT": "3",
}


class WorkerProcess:
    """A worker in its own process group: SIGKILL takes the main process and its pool children."""

    def __init__(self, name: str, env: dict[str, str], *, pool: str = "prefork", concurrency: int = 2,
                 loglevel: str = "INFO") -> None:
        self.name = name
        self.log = WORKDIR / f"worker-{name}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", f"--pool={pool}",
             f"--concurrency={concurrency}", f"--loglevel={loglevel}", f"--hostname={name}@%h", "--without-gossip",
             "--without-mingle"],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited:\n{self.text()[-3000:]}")
        return " ready." in self.text()

    def wait_ready(self, timeout: float = 30) -> WorkerProcess:
        wait_for(self.ready, timeout=timeout, what=f"worker {self.name} ready")
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        self.kill(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            return self.proc.wait()


@pytest.fixture
def fault_env(emulator: object) -> dict[str, str]:
    redis.Redis.from_url(FAULT_BROKER).flushdb()
    return {**os.environ, **FAULT_ENV}


@pytest.fixture
def spawn_worker(fault_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(name: str, *, env: dict[str, str] | None = None, **kw: object) -> WorkerProcess:
        w = WorkerProcess(name, {**fault_env, **(env or {})}, **kw)  # type: ignore[arg-type]
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop(timeout=20)


@contextmanager
def beat_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """One beat: the state poll that turns processing files ready."""
    stamp = time.monotonic_ns()
    log = (WORKDIR / f"fault-beat-{stamp}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "--loglevel=INFO",
                             f"--schedule={WORKDIR / f'fault-beat-schedule-{stamp}'}"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def fault_beat(fault_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with beat_process(fault_env) as proc:
        yield proc


@pytest.fixture
def fault_producer(fault_env: dict[str, str]) -> object:
    return producer_for(FAULT_BROKER)


def producer_for(broker_url: str, **overrides: object) -> object:
    from ingest.producer import Producer
    from ingest.settings import get_settings
    from tasks.app import create_app

    settings = get_settings().model_copy(update={"broker_url": broker_url, **overrides})
    return Producer(create_app(settings), settings)


