"""The end-to-end suite again on PostgreSQL, as a pytest of its own, started as soon as collection ends (under
xdist: when the one process that runs its test takes it, first), so its minute runs beside the rest of the suite
instead of after it (it has its own redis-server, emulator port and database: nothing is shared with the outer
run)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from tests.services import PostgresDatabase

ROOT = Path(__file__).resolve().parents[1]
TEST_ID = "tests/test_demo_and_backends.py::test_the_end_to_end_suite_passes_on_postgresql"


def clean_env() -> dict[str, str]:
    """This environment without our settings, nor the marks of an xdist worker (the nested run is not one)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ACR_INGEST_", "PYTEST_XDIST_"))}


class NestedRun:
    def __init__(self) -> None:
        self.database = PostgresDatabase()
        self.unavailable: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._dropped = False

    def start(self) -> None:
        if self._proc is not None or self.unavailable:
            return
        if why := self.database.unavailable():
            self.unavailable = why
            return
        self.database.create()  # a database of this run's own, dropped at the end: the shared `test` one is untouched
        env = {
            **clean_env(),
            "ACR_INGEST_TEST_DATABASE_URL": self.database.url(),
            "ACR_INGEST_NESTED_RUN": "1",
            # no ACR_INGEST_TEST_REDIS_URL: the nested run starts a redis-server of its own
        }
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (read and closed by result, after the run)
        self._proc = subprocess.Popen(
            # One process (-n 0): its tests share the one PostgreSQL database made here.
            [sys.executable, "-m", "pytest", "tests/test_end_to_end.py", "-q", "-p", "no:cacheprovider", "-n", "0"],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def result(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the run (started now if it was not): its exit status and output."""
        self.start()
        assert self._proc is not None and self._out is not None, self.unavailable
        try:
            code = self._proc.wait(timeout=timeout)
        finally:
            self.stop()
        with self._out:
            self._out.seek(0)
            return code, self._out.read().decode(errors="replace")

    def stop(self) -> None:
        """Kill a run nobody waited for (an interrupted session) and drop its database."""
        if self._proc is None or self._dropped:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, 9)
            self._proc.wait()
        self.database.drop()
        self._dropped = True


NESTED = NestedRun()
