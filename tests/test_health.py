"""`acr-ingest health` fails for each missing dependency (broker, database unreachable or behind, API, token)
and passes when all are there; `acr-ingest config` never shows the token or a URL's password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from ingest.api.client import AcrCloudClient
from ingest.devtools.emulator import Emulator
from ingest.devtools.processes import free_port
from ingest.jobs.rate_limit import SharedRateLimit
from ingest.settings import Settings, get_settings
from ingest.worker.health import Check, check_api, run_checks
from tests.conftest import REDIS_URL, TOKEN


def _checks(**overrides: Any) -> dict[str, Check]:
    settings = get_settings().model_copy(update=overrides)
    return {c.name: c for c in run_checks(settings)}


def _failed(checks: dict[str, Check]) -> set[str]:
    return {name for name, c in checks.items() if not c.ok}


def test_all_fine(emulator: object) -> None:
    checks = _checks()
    assert _failed(checks) == set(), checks
    assert set(checks) == {"broker", "database", "api", "token"}
    assert "at schema" in checks["database"].detail


def test_broker_down(emulator: object) -> None:
    checks = _checks(broker_url=f"redis://:brokerpw@127.0.0.1:{free_port()}/0")
    assert _failed(checks) == {"broker"}
    assert "unreachable" in checks["broker"].detail and "brokerpw" not in checks["broker"].detail


def test_database_unreachable(emulator: object) -> None:
    checks = _checks(database_url=f"postgresql+psycopg://acr:dbpw@127.0.0.1:{free_port()}/acr")
    assert _failed(checks) == {"database"}
    assert "unreachable" in checks["database"].detail and "dbpw" not in checks["database"].detail


def test_database_behind(emulator: object, tmp_path: Path) -> None:
    checks = _checks(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    assert _failed(checks) == {"database"}
    assert "acr-ingest db upgrade" in checks["database"].detail


def test_api_down(emulator: object) -> None:
    checks = _checks(api_base_url=f"http://127.0.0.1:{free_port()}/api")
    assert _failed(checks) == {"api"}


def test_token_rejected_or_missing(emulator: object) -> None:
    rejected = _checks(access_token=SecretStr("not-the-token-77"))
    assert _failed(rejected) == {"token"} and "rejected" in rejected["token"].detail
    assert "not-the-token-77" not in str(rejected)
    missing = _checks(access_token=None)
    assert _failed(missing) == {"token"} and "ACR_INGEST_ACCESS_TOKEN" in missing["token"].detail


def test_the_api_probe_waits_for_a_slot_of_the_workers_shared_budget() -> None:
    """A readiness probe (one GET a minute per pod) is a call like the workers': counted in their budget, so it
    waits for a free slot instead of being the call over the limit that gets a 429 and holds every worker."""
    token = "health-budget-token"
    emu = Emulator(tokens={token}, rate_limit=1, buckets=[1]).start(host="127.0.0.1", port=0)
    budget = REDIS_URL.rsplit("/", 1)[0] + "/29"  # a budget of this test's own
    redis.Redis.from_url(budget).flushdb()
    settings = get_settings().model_copy(
        update={
            "api_base_url": emu.url,
            "access_token": SecretStr(token),
            "default_bucket": 1,
            "rate_limit_mode": "auto",
            "rate_limit_redis_url": budget,
        }
    )
    try:
        worker_budget = SharedRateLimit.from_settings(settings)
        assert worker_budget is not None
        worker = AcrCloudClient(emu.url, token, gate=worker_budget, observers=[worker_budget.observe])
        worker.list_page(1, per_page=1)  # a worker's call: the second's only slot is taken
        worker.close()
        checks = {c.name: c for c in check_api(settings)}
        assert checks["token"].ok and checks["token"].detail.startswith("accepted"), checks
        assert emu.stats()["faults"].get("rate_limited", 0) == 0  # the API refused nothing
    finally:
        emu.stop()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli.commands", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_exits_non_zero_and_says_what_failed(emulator: object) -> None:
    good = _cli("health")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.count("ok  ") == 4
    bad = _cli("health", ACR_INGEST_ACCESS_TOKEN="wrong-token-123")
    assert bad.returncode == 1
    assert "FAIL  token" in bad.stdout and "unhealthy: token" in bad.stderr
    for out in (good, bad):
        assert TOKEN not in out.stdout + out.stderr and "wrong-token-123" not in out.stdout + out.stderr


def test_config_masks_the_token_and_url_passwords() -> None:
    run = _cli(
        "config",
        ACR_INGEST_BROKER_URL="redis://:redispw@127.0.0.1:6379/0",
        ACR_INGEST_DATABASE_URL="postgresql+psycopg://acr:dbpw@db:5432/acr",
    )
    assert run.returncode == 0, run.stderr
    assert TOKEN not in run.stdout and "redispw" not in run.stdout and "dbpw" not in run.stdout
    # The settings, one KEY=value a line (the API-assumptions section after them is indented text).
    lines = dict(line.split("=", 1) for line in run.stdout.split("\n\napi assumptions")[0].splitlines())
    assert lines["ACR_INGEST_ACCESS_TOKEN"] == "***"
    assert lines["ACR_INGEST_BROKER_URL"] == "redis://:***@127.0.0.1:6379/0"
    assert lines["ACR_INGEST_DATABASE_URL"] == "postgresql+psycopg://acr:***@db:5432/acr"
    # Every setting is listed (a new one shows up without touching the command).
    assert {f"ACR_INGEST_{name.upper()}" for name in Settings.model_fields} <= set(lines)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("https://u:p%40ss@cdn/x.mp3 and https://plain/y", "https://u:***@cdn/x.mp3 and https://plain/y"),
        ("sqlite:///var/acr.db", "sqlite:///var/acr.db"),
    ],
)
def test_url_passwords_are_masked(text: str, masked: str) -> None:
    from ingest.redact import mask_url_credentials

    assert mask_url_credentials(text) == masked
