"""The inner ring: the job handlers and the poll called directly with a ``JobContext``, no broker, no worker.

What they share with the outer ring (``tests/conftest.py``, loaded for these tests too): the
ACR_INGEST_* settings set there at import time, among them the run's own temporary SQLite database
(``WORKDIR/test.db``, or ACR_INGEST_TEST_DATABASE_URL) whose tables ``pytest_sessionstart`` creates, the
session's emulator over loopback HTTP and the per-test ``bucket``. Nothing here starts Celery: the
``worker``, ``beat``, ``celery_app`` and ``producer`` fixtures are refused for tests in this directory.

Every test here is marked ``unit`` (``pytest tests/unit`` or ``pytest -m unit`` runs them alone) and has
a 30 s timeout: the whole directory runs in seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from ingest.api.client import AcrCloudClient
from ingest.jobs.context import JobContext
from ingest.jobs.polling import LEASE
from ingest.settings import get_settings
from ingest.store import auth_hold, leases
from ingest.store.db import session_scope
from ingest.store.models import CircuitBreaker
from tests.conftest import TEST_ENV
from tests.helpers import wait_for
from tests.unit.support import POLL_OWNER

HERE = Path(__file__).resolve().parent
CELERY_FIXTURES = {"worker", "beat", "celery_app", "producer", "celery_worker", "celery_session_worker"}
UNIT_TIMEOUT = 30


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: the inner ring (tests/unit): handlers called directly, no broker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(HERE):
            continue
        celery = CELERY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if celery:
            raise pytest.UsageError(f"{item.nodeid}: the inner ring runs without Celery; drop {sorted(celery)}")
        item.add_marker(pytest.mark.unit)
        item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))


@pytest.fixture(scope="session", autouse=True)
def _the_tests_own_database() -> None:
    """The handlers open sessions on ``get_settings().database_url``: make sure it is the run's own."""
    assert get_settings().database_url == TEST_ENV["ACR_INGEST_DATABASE_URL"], (
        f"the unit tests must run on the test database set by tests/conftest.py, not {get_settings().database_url!r}"
    )
    assert get_settings().base_url == TEST_ENV["ACR_INGEST_API_BASE_URL"]


@pytest.fixture(autouse=True)
def _no_other_poll() -> Iterator[None]:
    """Hold the state poll's lease for the test. A full run puts this directory first (tests/conftest.py), before
    the outer ring starts its session worker and beat; a run that selects outer tests first may still have
    them alive here (same process, same database and emulator), and their poll would mark these tests' rows
    ready behind their backs and add requests to the emulator's counters. With the lease held, it skips.
    ``support.poll`` polls under this lease and takes it back afterwards."""
    with session_scope() as s:
        wait_for(lambda: leases.acquire(s, LEASE, POLL_OWNER, 60), timeout=20, what="the state-poll lease")
    yield
    with session_scope() as s:
        leases.release(s, LEASE, POLL_OWNER)


@pytest.fixture(autouse=True)
def _no_auth_hold_left() -> Iterator[None]:
    """The 401 hold is one row for every job: a test that sets it must not hold the ones after it."""
    yield
    with session_scope() as s:
        auth_hold.lift(s)


@pytest.fixture(autouse=True)
def _no_open_breaker_left() -> Iterator[None]:
    """The circuit breaker is one row for every job, like the auth hold: leave it closed and reset."""
    yield
    with session_scope() as s:
        s.execute(delete(CircuitBreaker))
        s.commit()


@pytest.fixture
def make_ctx(emulator: Any) -> Iterator[Callable[..., JobContext]]:
    """``make_ctx(**settings_overrides)``: a JobContext of a new task id (a new message; reuse the same
    context for a retry or a redelivery of the same one).

    The overrides change what the job decides (waits, chunk size, attempts, the token); the client keeps
    the session's HTTP timeouts, so a loaded machine never turns a slow loopback answer into a timeout
    the test did not ask for.
    """
    clients: list[AcrCloudClient] = []

    def make(**overrides: Any) -> JobContext:
        base = get_settings()
        settings = base.model_copy(update=overrides) if overrides else base
        client = AcrCloudClient(
            settings.base_url,
            settings.current_token,
            connect_timeout=base.connect_timeout,
            read_timeout=base.read_timeout,
        )
        clients.append(client)
        return JobContext(task_id=str(uuid.uuid4()), settings=settings, client=client)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ctx(make_ctx: Callable[..., JobContext]) -> JobContext:
    return make_ctx()


@pytest.fixture(scope="session")
def _profile_emulators() -> Iterator[dict[str, Any]]:
    """One emulator per profile, started on first use and kept for the session (each answers alike)."""
    started: dict[str, Any] = {}
    yield started
    for emu in started.values():
        emu.stop()


@pytest.fixture
def profile(request: pytest.FixtureRequest) -> str:
    """The emulator profile a test runs under: ``@pytest.mark.parametrize("profile", [...], indirect=True)``."""
    return str(getattr(request, "param", "lenient"))


@pytest.fixture
def api(profile: str, _profile_emulators: dict[str, Any], make_ctx: Callable[..., JobContext]) -> Iterator[Any]:
    """``api.emu`` (the emulator answering in ``profile``) and ``api.ctx(**overrides)`` (a JobContext
    whose client calls it). The lenient profile gets an instance of its own too, so these tests never
    count requests on the session emulator."""
    from ingest.devtools.emulator import Emulator
    from tests.conftest import TOKEN

    emu = _profile_emulators.get(profile)
    if emu is None:
        emu = Emulator(tokens={TOKEN}, processing_delay=0.1, profile=profile).start(host="127.0.0.1", port=0)
        _profile_emulators[profile] = emu

    class Api:
        def __init__(self) -> None:
            self.emu = emu
            self.profile = profile

        def ctx(self, **overrides: Any) -> JobContext:
            return make_ctx(api_base_url=emu.url, **overrides)

    yield Api()
    emu.faults.reset()
