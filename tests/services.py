"""Services of the test run's own on the machine's shared servers: a RabbitMQ vhost and a PostgreSQL
database, each created for one run and removed at its end (the private redis-server is in conftest), so two
runs on one machine, or a run and a developer's data, never meet."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

RABBITMQ_HOST = os.environ.get("ACR_INGEST_TEST_RABBITMQ", "guest:guest@127.0.0.1:5672")
POSTGRES_ADMIN_URL = os.environ.get(
    "ACR_INGEST_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def run_name() -> str:
    """A name no other run uses (the pid alone repeats across machines' containers)."""
    return f"acr_ingest_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class RabbitVhost:
    """A vhost of this run on the local RabbitMQ (``rabbitmqctl add_vhost`` + ``set_permissions``)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or run_name()
        self.created = False

    @staticmethod
    def unavailable() -> str | None:
        """Why there is no RabbitMQ to use here, or None."""
        if shutil.which("rabbitmqctl") is None:
            return "rabbitmqctl is not installed (Debian: apt-get install rabbitmq-server)"
        probe = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            return f"RabbitMQ is not running (start it: rabbitmq-server -detached): {probe.stderr.strip()[:200]}"
        return None

    def _ctl(self, *args: str) -> None:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")

    def create(self) -> RabbitVhost:
        user = RABBITMQ_HOST.split(":", 1)[0]
        self._ctl("add_vhost", self.name)
        self.created = True
        self._ctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")
        return self

    def url(self) -> str:
        return f"amqp://{RABBITMQ_HOST}/{self.name}"

    def delete(self) -> None:
        if self.created:
            self._ctl("delete_vhost", self.name)
            self.created = False


class PostgresDatabase:
    """A database of this run on the local PostgreSQL, dropped (connections and all) at the end."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL, name: str | None = None) -> None:
        self.admin_url = admin_url
        self.name = name or run_name()
        self.created = False

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def unavailable(self) -> str | None:
        import psycopg

        try:
            self._execute("select 1")
        except psycopg.Error as exc:
            return f"no PostgreSQL at {self.admin_url} ({exc}); set ACR_INGEST_TEST_POSTGRES_ADMIN_URL"
        return None

    def create(self) -> PostgresDatabase:
        self._execute(f'create database "{self.name}"')
        self.created = True
        return self

    def url(self) -> str:
        """The SQLAlchemy URL of this database."""
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{self.name}"

    def drop(self) -> None:
        if self.created:
            self._execute(f'drop database if exists "{self.name}" with (force)')
            self.created = False
