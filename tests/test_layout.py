"""The shape of the house: both ways of naming the Celery app start a worker, and the generic top-level
``tasks`` alias is not installed into site-packages."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from ingest.devtools.processes import ChildProcess, celery_command
from tests.conftest import IDLE_BROKER, WORKDIR
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("app", ["tasks", "ingest.worker"])
def test_celery_finds_the_app_by_either_name(app: str) -> None:
    name = f"layout-{app.replace('.', '-')}"
    worker = ChildProcess(
        name,
        celery_command(
            "worker", "--pool=solo", "--loglevel=INFO", f"--hostname={name}@%h", "--without-gossip", app=app
        ),
        log=WORKDIR / f"{name}.log",
        env={**os.environ, "ACR_INGEST_BROKER_URL": IDLE_BROKER},
        cwd=ROOT,
    )
    try:
        wait_for(
            lambda: worker.check() or " ready." in worker.text(), timeout=60, what=f"`celery -A {app} worker` ready"
        )
        assert "ingest.upload_url" in worker.text()  # the worker lists the tasks it registered
    finally:
        assert worker.stop() == 0, worker.text()[-2000:]


def test_only_the_ingest_package_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["ingest*"]
