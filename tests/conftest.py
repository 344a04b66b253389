"""Shared fixtures: a Redis of this run's own (a ``redis-server`` on a free port, so two runs on one
machine never collide), the emulator over loopback HTTP, a SQLite database (or
ACR_INGEST_TEST_DATABASE_URL, e.g. PostgreSQL) and a real Celery worker.

The settings are ACR_INGEST_* variables set here, before the Celery app is first configured (it reads
them lazily) and inherited by every worker, beat and Flower the tests start.
"""

from __future__ import annotations

import atexit
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ingest.devtools.processes import ChildProcess, RedisServer, celery_command, free_port
from tests.services import RabbitVhost

TOKEN = "test-token-5b9f0c2d7e"  # recognizable: the secrecy tests search for it everywhere
WORKDIR = Path(tempfile.mkdtemp(prefix="acr-ingest-tests-"))
MEDIA = WORKDIR / "media"
MEDIA.mkdir()
# ACR_INGEST_TEST_REDIS_URL points the tests at a Redis of your choice; by default they start their own.
_REDIS = None if os.environ.get("ACR_INGEST_TEST_REDIS_URL") else RedisServer(WORKDIR / "redis").start()
if _REDIS is not None:
    atexit.register(_REDIS.stop)
REDIS_URL = os.environ.get("ACR_INGEST_TEST_REDIS_URL") or _REDIS.url(11)  # type: ignore[union-attr]
IDLE_BROKER = REDIS_URL.rsplit("/", 1)[0] + "/13"  # a broker database no worker consumes

EMULATOR_PORT = free_port()
TEST_ENV = {
    "ACR_INGEST_API_BASE_URL": f"http://127.0.0.1:{EMULATOR_PORT}/api",
    "ACR_INGEST_ACCESS_TOKEN": TOKEN,
    "ACR_INGEST_BROKER_URL": REDIS_URL,
    "ACR_INGEST_DATABASE_URL": os.environ.get("ACR_INGEST_TEST_DATABASE_URL", f"sqlite:///{WORKDIR / 'test.db'}"),
    "ACR_INGEST_MEDIA_ROOT": str(MEDIA),
    "ACR_INGEST_DEFAULT_BUCKET": "",
    "ACR_INGEST_CONNECT_TIMEOUT": "2",
    "ACR_INGEST_READ_TIMEOUT": "3",
    "ACR_INGEST_BACKOFF_BASE": "0.05",
    "ACR_INGEST_BACKOFF_MAX": "1",
    "ACR_INGEST_MAX_ATTEMPTS": "8",
    "ACR_INGEST_DEPENDENCY_WAIT": "0.3",
    "ACR_INGEST_UNKNOWN_REF_HORIZON": "20",  # follow-ups of unknown refs: retried 1.8 s, then parked until 20 s
    "ACR_INGEST_AUTH_HOLD_RECHECK": "0.5",
    "ACR_INGEST_BREAKER_PROBE_INTERVAL": "0.5",  # an outage the breaker opens on is probed every 0.5 s
    "ACR_INGEST_LEASE_SECONDS": "10",
    "ACR_INGEST_POLL_INTERVAL": "0.5",
    "ACR_INGEST_VISIBILITY_TIMEOUT": "60",
}
for _k, _v in TEST_ENV.items():
    if _v:
        os.environ[_k] = _v
    else:
        os.environ.pop(_k, None)
os.environ.pop("ACR_INGEST_ACCESS_TOKEN_FILE", None)


# Under pytest-xdist (pyproject's addopts) each worker process imports this module: its own WORKDIR,
# redis-server, emulator port and SQLite database. A Redis or database given from outside is one for all.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# The minute-long tests: started first, so that no process is still running one when the rest is done.
LONGEST = ("tests/faults/test_storm.py", "tests/faults/test_by_name_kills.py", "tests/faults/test_outbox.py")


def pytest_configure(config: pytest.Config) -> None:
    """One process when the tests are pointed at a Redis or a database of your own: the worker processes would
    share it (each flushes it and drops the tables at its start)."""
    shared = [k for k in ("ACR_INGEST_TEST_REDIS_URL", "ACR_INGEST_TEST_DATABASE_URL") if os.environ.get(k)]
    if shared and getattr(config.option, "tx", None):
        config.option.dist, config.option.tx = "no", []  # read by xdist's own pytest_configure, which runs last


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups marked here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The inner ring first. The outer ring's session worker and beat (fixtures ``worker``, ``beat``) live until
    the session ends and poll the same database: run after them, a unit test's parked or waiting operation
    was woken by the real poll and run by the session worker under the global settings (an intermittent
    failure of the parked follow-ups' horizon test). Run first, the handlers see no worker at all, as the
    inner ring promises; and it fails fast. Under xdist the inner ring is one group (one process runs it, first),
    then come the nested PostgreSQL run and the longest tests, each taken by the next free process; tests of a
    module that share a module-scoped fixture are a group too, so it is set up once."""
    unit = Path(__file__).resolve().parent / "unit"
    if XDIST_WORKER is None:
        items.sort(key=lambda item: not item.path.is_relative_to(unit))  # stable: each ring keeps its order
        return
    from tests.nested_run import TEST_ID

    def rank(item: pytest.Item) -> int:
        if item.path.is_relative_to(unit):
            return 0
        if item.nodeid == TEST_ID:
            return 1
        longest = [n for n, module in enumerate(LONGEST, 2) if item.nodeid.startswith(module)]
        return longest[0] if longest else len(LONGEST) + 2 + (not item.get_closest_marker("faults"))

    items.sort(key=rank)
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if item.path.is_relative_to(unit):
            item.add_marker(pytest.mark.xdist_group("unit"))
        elif any(
            d.scope in ("module", "class") and d.baseid.startswith(module)
            for defs in getattr(item, "_fixtureinfo").name2fixturedefs.values()  # noqa: B009 (pytest's, no public API)
            for d in defs
        ):
            item.add_marker(pytest.mark.xdist_group(module))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The nested PostgreSQL run (a minute of its own) starts now and runs beside the rest of the suite. Under
    xdist each process collects every test: the one that runs the test starts it (it is sorted first)."""
    from tests.nested_run import NESTED, TEST_ID

    nested = os.environ.get("ACR_INGEST_NESTED_RUN") == "1"
    if not nested and XDIST_WORKER is None and any(item.nodeid == TEST_ID for item in session.items):
        NESTED.start()


# What a test reports for the CI log even when it passes (record_property("ci_line", ...): the storms' and the
# kills' one line). Printed at the end by the process that writes the terminal: under xdist a worker's own
# output is not shown, its reports' properties reach the controller.
_CI_LINES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _CI_LINES.extend(str(value) for key, value in report.user_properties if key == "ci_line")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _CI_LINES:
        terminalreporter.section("fault runs")
        for line in _CI_LINES:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.nested_run import NESTED

    NESTED.stop()


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        for url in (REDIS_URL, IDLE_BROKER):
            redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()
    except redis.RedisError as exc:
        pytest.exit(
            f"Redis is not reachable at {REDIS_URL} ({exc}): unset ACR_INGEST_TEST_REDIS_URL to have "
            "the tests start their own redis-server",
            returncode=3,
        )
    # A database of the tests' own: start from empty tables (a PostgreSQL test database persists), made by
    # the migrations, as `acr-ingest db upgrade` makes them (the workers refuse a schema not at head).
    from sqlalchemy import text
    from sqlmodel import SQLModel

    from ingest.store import schema
    from ingest.store.db import get_engine

    engine = get_engine()
    SQLModel.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {schema.VERSION_TABLE}"))
    schema.upgrade()


@pytest.fixture(autouse=True)
def _no_stranded_operations() -> Iterator[None]:
    """A job a test sent to a broker no worker consumes (IDLE_BROKER, a quiet broker of its own) stays queued
    in the shared database; a minute later the beat's lost-message sweep would resend it to the session
    worker, in whatever test then runs (3 updates left by the metrics test tripped the circuit breaker of the
    retry-failed test, which had set every API answer to 500). Whatever a test leaves queued or waiting is
    marked failed when it ends, so no test's jobs run in another's."""
    from sqlalchemy import func, update
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import col, select

    from ingest.store.db import session_scope
    from ingest.store.models import Operation, OpStatus, utcnow

    try:
        with session_scope() as s:
            first: int | None = (s.exec(select(func.max(Operation.id))).one() or 0) + 1
    except SQLAlchemyError:  # a test of a database that is missing or not migrated: nothing of ours to strand
        first = None
    yield
    if first is None:
        return
    try:
        with session_scope() as s:
            s.execute(
                update(Operation)
                .where(
                    col(Operation.id) >= first,
                    col(Operation.status).in_([OpStatus.QUEUED, OpStatus.WAITING]),
                )
                .values(status=OpStatus.FAILED, error="left unfinished by its test", updated_at=utcnow())
            )
            s.commit()
    except SQLAlchemyError:
        pass


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own (created on first use, deleted at the end): ``amqp://.../<vhost>``."""
    why = RabbitVhost.unavailable()
    if why:
        pytest.skip(why)
    vhost = RabbitVhost().create()
    yield vhost.url()
    vhost.delete()


@pytest.fixture(scope="session")
def emulator() -> Iterator[object]:
    from ingest.devtools.emulator import Emulator

    emu = Emulator(tokens={TOKEN}, processing_delay=0.3).start(host="127.0.0.1", port=EMULATOR_PORT)
    yield emu
    emu.stop()


@pytest.fixture(autouse=True)
def _calm_emulator(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "emulator" in request.fixturenames:
        emu = request.getfixturevalue("emulator")
        emu.faults.reset()
        emu.set_tokens({TOKEN})


@pytest.fixture(scope="session")
def celery_app() -> object:
    from ingest.worker.app import app

    return app


@pytest.fixture(scope="session")
def beat() -> Iterator[ChildProcess]:
    """The real ``celery beat`` (a child process) sending ingest.poll_states every poll interval."""
    proc = ChildProcess(
        "beat",
        celery_command("beat", "--loglevel=INFO", f"--schedule={WORKDIR / 'beat-schedule'}"),
        log=WORKDIR / "beat.log",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def worker(celery_app: object, emulator: object, beat: object) -> Iterator[object]:
    """A real Celery worker (threads pool) consuming from the real Redis, calling the emulator over HTTP."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app, pool="threads", concurrency=8, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as w:
        yield w


# Ten apart: tests name ``bucket + 1`` ... ``bucket + 4`` for more buckets of their own (the fingerprint queue
# test's jobs stay queued there, then marked failed). One apart, those were the next tests' buckets, and a test
# that counts its bucket's operations found them whenever it came next (xdist's order, not the file's).
BUCKET_STEP = 10
_buckets = itertools.count(1000 + (os.getpid() % 1000) * 1000 * BUCKET_STEP, BUCKET_STEP)


@pytest.fixture
def bucket() -> int:
    """A bucket id of this test's own, and the next nine, so tests sharing the emulator and database never
    collide."""
    return next(_buckets)


@pytest.fixture
def producer(celery_app: object) -> object:
    from ingest.producer import Producer

    return Producer(celery_app)  # type: ignore[arg-type]


@pytest.fixture
def media() -> Path:
    return MEDIA
