"""Several ``acr-ingest worker`` on one host: each is a node of its own that ``inspect`` (and Flower) sees."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ingest.cli.commands import with_node_name
from ingest.devtools.processes import ChildProcess
from ingest.settings import get_settings
from ingest.worker.app import create_app
from tests.conftest import REDIS_URL, WORKDIR
from tests.helpers import wait_for

NAMES_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/22"  # no other test's worker consumes it
ACR_INGEST = Path(sys.executable).with_name("acr-ingest")


@pytest.fixture
def two_workers() -> Iterator[list[ChildProcess]]:
    redis.Redis.from_url(NAMES_BROKER).flushdb()
    env = {**os.environ, "ACR_INGEST_BROKER_URL": NAMES_BROKER}
    workers = [
        ChildProcess(
            f"named-{i}",
            [str(ACR_INGEST), "worker", "--pool=solo", "--without-gossip", "--without-mingle"],
            log=WORKDIR / f"named-worker-{i}-{time.monotonic_ns()}.log",
            env=env,
        )
        for i in range(2)
    ]
    try:
        for w in workers:
            wait_for(lambda w=w: w.check() or " ready." in w.text(), timeout=60, what=f"{w.name} ready")
        yield workers
    finally:
        for w in workers:
            w.stop()


def test_two_workers_on_one_host_both_answer_inspect_ping(two_workers: list[ChildProcess]) -> None:
    app = create_app(get_settings().model_copy(update={"broker_url": NAMES_BROKER}))

    def nodes() -> set[str]:
        replies = app.control.inspect(timeout=2).ping() or {}
        return set(replies) if len(replies) >= 2 else set()

    answered = wait_for(nodes, timeout=60, what="two nodes answering ping")
    assert len(answered) == 2, answered
    assert answered == {f"ingest-{w.pid}@{os.uname().nodename}" for w in two_workers}
    assert all("DuplicateNodenameWarning" not in w.text() for w in two_workers)


def test_a_node_name_given_is_kept() -> None:
    for given in (["-n", "a@%h"], ["--hostname", "a@%h"], ["--hostname=a@%h"], ["-na@%h"]):
        assert with_node_name(["worker", *given]) == ["worker", *given]
    assert with_node_name(["worker", "--pool=solo"])[-1] == f"--hostname=ingest-{os.getpid()}@%h"
