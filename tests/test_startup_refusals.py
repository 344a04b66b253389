"""Processes that would start "ready" and do nothing right refuse to start, in one line: a worker without a
token or with a database that does not exist, a second beat beside the first (the beat holds a lease)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.devtools.processes import ChildProcess
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import Lease
from ingest.worker.startup import beat_lease_name
from tests.conftest import IDLE_BROKER, WORKDIR
from tests.databases import PG_ADMIN_URL, postgres_reachable
from tests.helpers import wait_for

ACR_INGEST = str(Path(sys.executable).with_name("acr-ingest"))


def _run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ACR_INGEST, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("token", ["", "   "])
def test_a_worker_without_a_token_refuses_to_start(token: str) -> None:
    run = _run("worker", "--pool=solo", ACR_INGEST_ACCESS_TOKEN=token, ACR_INGEST_BROKER_URL=IDLE_BROKER)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert _last_line(run.stderr) == (
        "acr-ingest: not starting: no API token: set ACR_INGEST_ACCESS_TOKEN (or ACR_INGEST_ACCESS_TOKEN_FILE) to the "
        "Console API token"
    ), run.stderr[-3000:]


def test_a_worker_with_an_empty_token_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    run = _run(
        "worker",
        "--pool=solo",
        ACR_INGEST_ACCESS_TOKEN="",
        ACR_INGEST_ACCESS_TOKEN_FILE=str(tmp_path / "token"),
        ACR_INGEST_BROKER_URL=IDLE_BROKER,
    )
    assert run.returncode != 0 and "the token file ACR_INGEST_ACCESS_TOKEN_FILE" in _last_line(run.stderr)


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_a_database_that_does_not_exist_is_refused_not_started_anyway(process: str, tmp_path: Path) -> None:
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN_URL).set(database=f"no_such_db_{os.getpid()}").render_as_string(hide_password=False)
    args = ["--pool=solo"] if process == "worker" else [f"--schedule={tmp_path / 'schedule'}"]
    run = _run(process, *args, ACR_INGEST_DATABASE_URL=url, ACR_INGEST_BROKER_URL=IDLE_BROKER)
    assert run.returncode != 0, run.stderr[-3000:]
    line = _last_line(run.stderr)
    assert "acr-ingest: not starting: the database of ACR_INGEST_DATABASE_URL" in line and "createdb" in line, line
    assert "starting anyway" not in run.stderr


def test_a_second_beat_is_refused_while_the_first_runs_and_starts_once_it_stops(tmp_path: Path) -> None:
    """Both beats on the test's own broker (an idle one: no worker consumes what they send)."""
    env = {**os.environ, "ACR_INGEST_BROKER_URL": IDLE_BROKER}
    first = ChildProcess(
        "first-beat",
        [ACR_INGEST, "beat", f"--schedule={tmp_path / 'first'}"],
        log=WORKDIR / f"first-beat-{time.monotonic_ns()}.log",
        env=env,
    )
    name = beat_lease_name(get_settings().model_copy(update={"broker_url": IDLE_BROKER}))

    def held_by(pid: int) -> bool:
        with session_scope() as s:
            lease = s.get(Lease, name)
            return lease is not None and f":{pid}:" in lease.owner

    try:
        wait_for(lambda: first.check() or held_by(first.pid), timeout=60, what="the first beat holding its lease")
        second = _run("beat", f"--schedule={tmp_path / 'second'}", ACR_INGEST_BROKER_URL=IDLE_BROKER)
        assert second.returncode != 0
        line = _last_line(second.stderr)
        # (In the beat, Celery's logging carries what the process prints: the line has a log prefix.)
        assert "acr-ingest: not starting: another beat (" in line and "run exactly one beat" in line, line
        assert "Traceback" not in second.stderr
        assert first.alive()
    finally:
        first.stop()
    # Stopped, it let the lease go: the next beat starts at once.
    again = ChildProcess(
        "next-beat",
        [ACR_INGEST, "beat", f"--schedule={tmp_path / 'next'}"],
        log=WORKDIR / f"next-beat-{time.monotonic_ns()}.log",
        env=env,
    )
    try:
        wait_for(lambda: again.check() or held_by(again.pid), timeout=60, what="the next beat holding the lease")
    finally:
        again.stop()
