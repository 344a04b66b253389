"""The README's first command, and the end-to-end suite again on PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.fingerprints import unavailable_reason
from tests.services import PostgresDatabase

ROOT = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ACR_INGEST_")}


def test_the_demo_runs_the_whole_path_and_ends_with_every_file(tmp_path: Path) -> None:
    """`acr-ingest demo` with nothing configured: emulator, worker, beat, SQLite, file broker."""
    demo = subprocess.run(
        [sys.executable, "-m", "ingest.cli.commands", "demo", "--timeout", "90"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    rows = [line for line in demo.stdout.splitlines() if re.match(r"^CAT-\d{4}\s", line)]
    assert unavailable_reason() is None  # the test extra installs the fingerprint library: the demo uses it
    assert len(rows) == 14
    assert sum(" ready" in r for r in rows) == 12
    bad = [r for r in rows if "Corrupt Master" in r]
    assert len(bad) == 1 and " error " in bad[0] and "state -1" in bad[0]
    # Half the files went as fingerprints; the corrupt local master failed on the worker, never posted.
    assert sum(" fingerprint " in r for r in rows) == 5 and sum(" audio " in r for r in rows) == 5
    (local,) = [r for r in rows if "Corrupt Local Master" in r]
    assert " failed " in local and "not decodable audio" in local
    posted = [r for r in rows if r is not local]
    assert all(re.search(r"\s\d+\s+[0-9a-f]{32}\s", r) for r in posted)  # real ids and acr_ids
    assert "OK" in demo.stdout.splitlines()[-1]
    assert "[" in demo.stdout and "s] queued" in demo.stdout  # progress lines
    assert sorted(os.listdir(tmp_path)) == []  # nothing left behind (no kombu control/ folder, no database)


@pytest.mark.skipif(os.environ.get("ACR_INGEST_NESTED_RUN") == "1", reason="already the nested run")
def test_the_end_to_end_suite_passes_on_postgresql() -> None:
    database = PostgresDatabase()
    if why := database.unavailable():
        pytest.skip(why)
    database.create()  # a database of this run's own, dropped at the end: the shared `test` one is untouched
    env = {
        **_clean_env(),
        "ACR_INGEST_TEST_DATABASE_URL": database.url(),
        "ACR_INGEST_NESTED_RUN": "1",
        # no ACR_INGEST_TEST_REDIS_URL: the nested run starts a redis-server of its own
    }
    try:
        run = _run_end_to_end(env)
    finally:
        database.drop()
    assert run.returncode == 0, run.stdout[-4000:]
    assert re.search(r"\b1[0-9] passed\b", run.stdout)


def _run_end_to_end(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_end_to_end.py", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
