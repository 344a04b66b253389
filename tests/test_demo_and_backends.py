"""The README's first command, and the end-to-end suite again on PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("ACR_INGEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
    assert len(rows) == 13
    assert sum(" ready" in r for r in rows) == 12
    bad = [r for r in rows if "Corrupt Master" in r]
    assert len(bad) == 1 and " error " in bad[0] and "state -1" in bad[0]
    assert all(re.search(r"\s\d+\s+[0-9a-f]{32}\s", r) for r in rows)  # real ids and acr_ids
    assert "OK" in demo.stdout.splitlines()[-1]
    assert "[" in demo.stdout and "s] queued" in demo.stdout  # progress lines
    assert sorted(os.listdir(tmp_path)) == []  # nothing left behind (no kombu control/ folder, no database)


def _postgres_reachable() -> bool:
    try:
        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.mark.skipif(os.environ.get("ACR_INGEST_NESTED_RUN") == "1", reason="already the nested run")
def test_the_end_to_end_suite_passes_on_postgresql() -> None:
    if not _postgres_reachable():
        pytest.skip(f"no PostgreSQL at {PG_URL} (set ACR_INGEST_TEST_POSTGRES_URL)")
    env = {
        **_clean_env(),
        "ACR_INGEST_TEST_DATABASE_URL": PG_URL,
        "ACR_INGEST_NESTED_RUN": "1",
        # a broker database of its own, so this run's worker and the outer session's never meet
        "ACR_INGEST_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_end_to_end.py", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert re.search(r"\b1[0-9] passed\b", run.stdout)
