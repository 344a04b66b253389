"""Two worker processes share one request budget: together they stay under the API's own limit."""

from __future__ import annotations

import pytest

from ingest.store.models import FileStatus
from tests.conftest import TOKEN
from tests.faults.conftest import FAULT_BROKER
from tests.helpers import files_in, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat")]


def test_workers_share_one_budget_and_never_hit_the_apis_limit(spawn_worker, fault_producer, emulator, bucket) -> None:
    # 8/s against the API's 12/s: the margin covers requests granted a little apart arriving together.
    # A token of their own: the emulator limits per token, so other tests' workers polling in the
    # background (with the session token) do not spend this account's budget.
    env = {
        "ACR_INGEST_RATE_LIMIT": "8",
        "ACR_INGEST_RATE_LIMIT_BURST": "1",
        "ACR_INGEST_RATE_LIMIT_REDIS_URL": FAULT_BROKER,
        "ACR_INGEST_ACCESS_TOKEN": "rate-limited-account",
    }
    emulator.set_tokens({TOKEN, "rate-limited-account"})
    for name in ("rl-a", "rl-b"):  # 16 threads that would otherwise send as fast as they can
        spawn_worker(name, env=env, pool="threads", concurrency=8).wait_ready()
    emulator.rate_limit = 12  # the API's ceiling, a little above our budget
    before = emulator.stats()["by_status"].get("429", 0)
    try:
        refs = [f"rl{i}" for i in range(40)]
        for ref in refs:
            fault_producer.upload_url(f"https://cdn.example.com/{ref}.mp3", title=ref, bucket_id=bucket, ref=ref)
        wait_for(
            lambda: [r.status for r in files_in(bucket)] == [FileStatus.READY] * len(refs),
            timeout=90,
            what="every upload ready",
        )
        rejected = emulator.stats()["by_status"].get("429", 0) - before
    finally:
        emulator.rate_limit = None
    assert rejected == 0
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == sorted(refs)
