"""``upload_many`` (the catalog import's publish) on each broker, consumed by real worker processes: every
row's job is received under the task id the producer chose and ends with exactly one file; an update in a
later batch reaches the bucket; nothing is left unsent in the outbox."""

from __future__ import annotations

import io

import pytest
from sqlmodel import col, select

from ingest.jobs.bulk_uploads import Outcome
from ingest.jobs.catalog_input import read_catalog
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import FileStatus, Operation, OpStatus, OutboxEntry
from tests.faults.conftest import on_both_brokers
from tests.helpers import files_in, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("fault_beat"), on_both_brokers]


def _rows(bucket: int, titles: dict[str, str]) -> io.StringIO:
    return io.StringIO(
        "".join(
            f'{{"ref": "{ref}", "title": "{title}", "url": "https://cdn.example.com/{ref}.mp3", "bucket": {bucket}}}\n'
            for ref, title in titles.items()
        )
    )


def _ops(bucket: int) -> list[Operation]:
    with session_scope() as s:
        return list(s.exec(select(Operation).where(Operation.bucket_id == bucket).order_by(col(Operation.id))))


def test_upload_many_is_run_by_workers_on_each_broker(spawn_worker, fault_producer, emulator, bucket) -> None:
    spawn_worker("bulk", pool="threads", concurrency=4).wait_ready()
    titles = {f"M-{i}": f"Track {i}" for i in range(23)}
    outcomes = list(
        fault_producer.upload_many(read_catalog(_rows(bucket, titles), "jsonl", get_settings()), batch_size=5)
    )
    assert [o.outcome for o in outcomes] == [Outcome.QUEUED] * 23
    wait_for(
        lambda: len(rows := files_in(bucket)) == 23 and all(r.status == FileStatus.READY for r in rows),
        timeout=90,
        what=lambda: f"23 files ready ({sorted((r.ref, r.status) for r in files_in(bucket))})",
    )
    ops = _ops(bucket)
    assert {o.task_id for o in ops} == {o.task_id for o in outcomes}  # run under the ids the producer chose
    assert all(o.status == OpStatus.SUCCEEDED for o in ops)
    assert sorted(f["audio_id"] for f in emulator.files(bucket)) == sorted(titles)  # one file per ref

    titles["M-7"] = "Track 7 (remaster)"
    again = list(fault_producer.upload_many(read_catalog(_rows(bucket, titles), "jsonl", get_settings()), batch_size=5))
    assert [o.outcome for o in again].count(Outcome.UPDATE) == 1
    assert {o.outcome for o in again} == {Outcome.UPDATE, Outcome.UNCHANGED}
    wait_for(
        lambda: {f["audio_id"]: f["title"] for f in emulator.files(bucket)}["M-7"] == "Track 7 (remaster)",
        timeout=60,
        what="the updated title in the bucket",
    )
    assert len(emulator.files(bucket)) == 23
    with session_scope() as s:
        ids = [o.task_id for o in _ops(bucket)]
        unsent = s.exec(
            select(OutboxEntry).where(col(OutboxEntry.message_id).in_(ids), col(OutboxEntry.sent_at).is_(None))
        )
        assert list(unsent) == []
