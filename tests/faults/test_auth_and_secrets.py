"""A rejected token holds work (nothing fails, one error logged) until a valid one is configured; the
token never shows up in logs, messages, events, Flower or the tables."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis
import requests
from click.testing import CliRunner
from sqlalchemy import text

from ingest.cli.commands import main
from ingest.devtools.processes import free_port
from ingest.store import auth_hold
from ingest.store.db import get_engine, session_scope
from ingest.store.models import FileStatus
from tests.conftest import TOKEN, WORKDIR
from tests.faults.conftest import FAULT_BROKER
from tests.helpers import files_in, holding_the_poll_lease, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat")]


def _held() -> object:
    with session_scope() as s:
        return auth_hold.current(s)


def test_rejected_token_holds_work_and_a_new_token_resumes_it(
    spawn_worker, fault_producer, emulator, bucket, tmp_path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired-token-0000")
    before_401 = emulator.stats()["by_status"].get("401", 0)
    worker = spawn_worker(
        "auth",
        env={"ACR_INGEST_ACCESS_TOKEN_FILE": str(token_file), "ACR_INGEST_AUTH_HOLD_RECHECK": "0.5"},
        concurrency=2,
    ).wait_ready()
    # A session beat of an earlier test (same database, a valid token) would probe the API and lift the hold
    # while this test holds its token: the hold would then be logged twice.
    with holding_the_poll_lease("test-auth-hold"):
        refs = [f"a{i}" for i in range(10)]
        ops = [
            fault_producer.upload_url(f"https://cdn.example.com/{r}.mp3", title=r, bucket_id=bucket, ref=r).operation_id
            for r in refs
        ]

        hold = wait_for(_held, what="the hold")
        held_at = time.monotonic()

        def all_held() -> bool:
            with session_scope() as s:
                rows = s.execute(text(f"select status from operations where id in ({','.join(map(str, ops))})")).all()
            return all(r[0] == "held" for r in rows)

        wait_for(all_held, what="every job held")
        # Nothing failed, and the API was not hammered: about one probe per recheck interval.
        assert {r.status for r in files_in(bucket)} <= {FileStatus.QUEUED, FileStatus.UPLOADING}
        rejected = emulator.stats()["by_status"].get("401", 0) - before_401
        assert rejected <= len(refs) + (time.monotonic() - held_at) / 0.5 + 4
        status = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
        assert status["held"] and "Unauthenticated" in status["held"]["reason"]
        assert "Unauthenticated" in hold.reason  # type: ignore[attr-defined]

    token_file.write_text(TOKEN)  # an operator puts a valid token in place; no restart
    wait_for(
        lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * len(refs),
        timeout=60,
        what="every upload ready after the new token",
    )
    assert _held() is None
    assert worker.text().count("ACRCloud rejected the access token") == 1
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == sorted(refs)


def test_the_token_never_leaks(spawn_worker, fault_env, fault_producer, emulator, bucket) -> None:
    """A full run at DEBUG with faults (so errors and retries are logged) and Flower watching; then
    every log, broker key, event, Flower answer and table row is searched for the token."""
    port = free_port()
    flower_log = WORKDIR / f"flower-{port}.log"
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ingest.worker", "flower", f"--port={port}", "--address=127.0.0.1"],
        env={**fault_env, "FLOWER_BASIC_AUTH": "ops:secret-pass"},
        stdout=flower_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        # Uploads here are up to two calls each failing ~40% of the time: enough attempts that none
        # runs out (8 would fail one of the 8 uploads in roughly one run out of ten).
        worker = spawn_worker("secrets", concurrency=2, loglevel="DEBUG", env={"ACR_INGEST_MAX_ATTEMPTS": "40"})
        worker.wait_ready()
        auth = ("ops", "secret-pass")
        base = f"http://127.0.0.1:{port}"

        def flower_tasks() -> str:
            try:
                return requests.get(f"{base}/api/tasks", auth=auth, timeout=5).text
            except requests.RequestException:
                return ""

        # Events are not kept for a late listener: on a busy machine Flower may connect after the jobs ran.
        # The beat's poll every 0.5 s shows when Flower receives the worker's events.
        wait_for(lambda: "ingest.poll_states" in flower_tasks(), timeout=60, what="flower receiving events")
        emulator.set_faults(error_rate=0.3, created_then_error_rate=0.2)
        for i in range(8):
            fault_producer.upload_url(
                f"https://cdn.example.com/x{i}.mp3", title=f"X{i}", bucket_id=bucket, ref=f"x{i}", user_defined={"n": i}
            )
        fault_producer.update_meta(bucket_id=bucket, ref="x0", title="X0 renamed")
        fault_producer.delete(bucket_id=bucket, refs=["x1", "nope"])
        emulator.set_tokens({"other"})  # and some 401s on the way
        wait_for(_held, what="a 401 hold")
        emulator.set_tokens({TOKEN})
        wait_for(
            # x1's delete cancels its upload when it comes before the POST: "cancelled" is settled too.
            lambda: sum(r.status in ("ready", "deleted", "cancelled") for r in files_in(bucket)) == 8,
            timeout=120,
            what=lambda: f"the run finished ({[(r.ref, r.status, r.reason) for r in files_in(bucket)]})",
        )
        wait_for(lambda: "ingest.upload_url" in flower_tasks(), timeout=60, what="flower saw the uploads")
        flower_views = [
            requests.get(f"{base}{path}", auth=auth, timeout=5).text
            for path in ("/api/tasks", "/api/workers", "/tasks", "/metrics")
        ]
        assert "ingest.upload_url" in flower_views[0]
    finally:
        flower.terminate()
        flower.wait(timeout=20)

    captured = {
        "worker log": worker.text(),
        "flower log": flower_log.read_text(errors="replace"),
        "flower": "\n".join(flower_views),
        "broker": _dump_redis(FAULT_BROKER),
        "tables": _dump_tables(),
    }
    assert "x0" in captured["tables"] and "DEBUG" in captured["worker log"]  # we searched real content
    leaks = [where for where, content in captured.items() if TOKEN in content]
    assert leaks == []


def _dump_redis(url: str) -> str:
    r = redis.Redis.from_url(url)
    out = []
    for key in r.scan_iter():
        kind = r.type(key).decode()
        value = {
            "string": lambda k: r.get(k),
            "list": lambda k: r.lrange(k, 0, -1),
            "hash": r.hgetall,
            "set": r.smembers,
            "zset": lambda k: r.zrange(k, 0, -1),
        }.get(kind, lambda k: b"")(key)
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def _dump_tables() -> str:
    engine = get_engine()
    with engine.connect() as conn:
        names = ["track_files", "operations", "auth_holds", "leases"]
        return "\n".join(repr(row) for name in names for row in conn.execute(text(f"select * from {name}")))
