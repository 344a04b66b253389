"""``store.bulk.insert_rows`` (COPY on PostgreSQL, executemany elsewhere) writes exactly what a Core INSERT
writes, on SQLite and on PostgreSQL (a database of the test's own): awkward text, JSON, NULLs, booleans,
times, the columns' defaults; and a duplicate ref is SQLAlchemy's IntegrityError, which the producer re-plans on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ingest.store import schema
from ingest.store.bulk import insert_rows, table_of
from ingest.store.db import get_engine
from ingest.store.models import Operation, OutboxEntry, TrackFile
from tests.conftest import WORKDIR
from tests.databases import own_postgres

AWKWARD = 'tab\there, new\nline, back\\slash, quote\' "dq", NUL-free ünïcödé ✓, \\N, \\.'


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{WORKDIR / f'bulk-{uuid.uuid4().hex[:8]}.db'}"
        schema.upgrade(url)
        yield url
        return
    with own_postgres("acr_ingest_bulk") as db:
        yield db.url


def _file(ref: str, when: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "ref": ref,
        "bucket_id": 2**40 + 3,
        "data_type": "audio_url",
        "title": AWKWARD,
        "user_defined": {"artist": AWKWARD, "n": [1, 2.5, None, True], "nested": {"k": "v"}},
        "source": f"https://cdn.example.com/{ref}.mp3",
        "status": "queued",
        "created_at": when,
        "updated_at": when,
        **extra,
    }


def _read(session: Session, model: Any, column: Any, keys: list[Any]) -> list[dict[str, Any]]:
    rows = session.exec(select(model).where(col(column).in_(keys)).order_by(col(column))).all()
    return [{k: v for k, v in r.model_dump().items() if k != "id"} for r in rows]


def test_insert_rows_writes_what_a_core_insert_writes(url: str) -> None:
    engine = get_engine(url)
    when = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    with Session(engine) as s:
        insert_rows(
            s, TrackFile, [_file("bulk-a", when, remote_id=None), _file("bulk-b", when, title="plain", remote_id=2**62)]
        )
        s.connection().execute(
            insert(table_of(TrackFile)),
            [_file("core-a", when, remote_id=None), _file("core-b", when, title="plain", remote_id=2**62)],
        )
        ops = [
            {"kind": "upload_url", "args": {"ref": AWKWARD, "none": None}, "task_id": "x-1", "applied": True},
            {"kind": "update_meta", "args": {}, "task_id": "x-2", "applied": False},
        ]
        insert_rows(s, Operation, [{**o, "task_id": "bulk-" + o["task_id"]} for o in ops])
        s.connection().execute(insert(table_of(Operation)), [{**o, "task_id": "core-" + o["task_id"]} for o in ops])
        due = when + timedelta(seconds=5)
        entry = {"kind": "task", "destination": "ingest.upload_url", "payload": {"t": AWKWARD}, "due_at": due}
        insert_rows(s, OutboxEntry, [{**entry, "message_id": "bulk-m"}])
        s.connection().execute(insert(table_of(OutboxEntry)), [{**entry, "message_id": "core-m"}])
        s.commit()

        bulk_files = _read(s, TrackFile, TrackFile.ref, ["bulk-a", "bulk-b"])
        core_files = _read(s, TrackFile, TrackFile.ref, ["core-a", "core-b"])
        for b, c in zip(bulk_files, core_files, strict=True):
            assert b["ref"].replace("bulk", "core") == c["ref"]
            assert {**b, "ref": c["ref"], "source": c["source"]} == c
        assert bulk_files[0]["title"] == AWKWARD and bulk_files[0]["user_defined"]["artist"] == AWKWARD
        assert bulk_files[1]["remote_id"] == 2**62 and bulk_files[0]["remote_id"] is None
        assert bulk_files[0]["generation"] == 0 and bulk_files[0]["attempts"] == 0  # the columns' defaults
        assert bulk_files[0]["created_at"].replace(tzinfo=UTC) == when

        bulk_ops = _read(s, Operation, Operation.task_id, ["bulk-x-1", "bulk-x-2"])
        core_ops = _read(s, Operation, Operation.task_id, ["core-x-1", "core-x-2"])
        for b, c in zip(bulk_ops, core_ops, strict=True):
            assert abs(b.pop("created_at") - c.pop("created_at")) < timedelta(seconds=30)  # defaults: now
            assert abs(b.pop("updated_at") - c.pop("updated_at")) < timedelta(seconds=30)
            assert {**b, "task_id": c["task_id"]} == c
        assert bulk_ops[0]["args"] == {"ref": AWKWARD, "none": None} and bulk_ops[0]["applied"] is True
        assert bulk_ops[0]["status"] == "queued"  # an enum default, written as its value

        (b_entry,) = _read(s, OutboxEntry, OutboxEntry.message_id, ["bulk-m"])
        (c_entry,) = _read(s, OutboxEntry, OutboxEntry.message_id, ["core-m"])
        assert b_entry.pop("created_at") and c_entry.pop("created_at")
        assert {**b_entry, "message_id": "core-m"} == c_entry
        assert b_entry["due_at"].replace(tzinfo=UTC) == due and b_entry["sent_at"] is None


def test_a_duplicate_ref_is_an_integrity_error(url: str) -> None:
    engine = get_engine(url)
    when = datetime.now(UTC)
    with Session(engine) as s:
        insert_rows(s, TrackFile, [_file("dup", when)])
        s.commit()
    with Session(engine) as s, pytest.raises(IntegrityError):
        insert_rows(s, TrackFile, [_file("other", when), _file("dup", when)])
    with Session(engine) as s:  # the failed batch left nothing, and the session is usable again
        assert [r["ref"] for r in _read(s, TrackFile, TrackFile.ref, ["dup", "other"])] == ["dup"]


def test_plan_each_query_lasts_for_the_transaction(url: str) -> None:
    """On PostgreSQL the batch's lookups are planned for their own values (a generic plan of
    ``ref IN (1,000 parameters)`` is quadratic over an import), for that transaction only."""
    from ingest.store.bulk import plan_each_query

    engine = get_engine(url)
    with Session(engine) as s:
        plan_each_query(s)
        if engine.dialect.name == "postgresql":
            assert s.connection().exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
        s.commit()
        if engine.dialect.name == "postgresql":  # the same pooled connection, the next transaction: as before
            assert s.connection().exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"


def test_lookups_by_ref_find_exactly_the_bucket_s_rows(url: str) -> None:
    """files_by_ref / file_ids_by_ref (LATERAL index probes on PostgreSQL, IN elsewhere): the rows of the
    refs asked for, in that bucket only, once each however often a ref is asked for."""
    from ingest.store.bulk import file_ids_by_ref, files_by_ref

    engine = get_engine(url)
    when = datetime.now(UTC)
    other_bucket = {**_file("shared", when), "bucket_id": 5}
    with Session(engine) as s:
        insert_rows(s, TrackFile, [_file("a", when), _file("b", when), _file("shared", when), other_bucket])
        s.commit()
        bucket = _file("a", when)["bucket_id"]
        asked = ["a", "missing", "shared", "a", AWKWARD]
        found = files_by_ref(s, bucket, asked)
        assert sorted((f.ref, f.bucket_id, f.title) for f in found) == [
            ("a", bucket, AWKWARD),
            ("shared", bucket, AWKWARD),
        ]
        assert all(isinstance(f, TrackFile) and f.id for f in found)
        ids = file_ids_by_ref(s, bucket, asked)
        assert ids == {f.ref: f.id for f in found}
        assert file_ids_by_ref(s, 5, ["shared", "a"]) == {"shared": ids["shared"] + 1}
        assert files_by_ref(s, bucket, []) == [] and file_ids_by_ref(s, 999, ["a"]) == {}


def test_mark_sent_many_marks_the_unsent_and_keeps_an_earlier_mark(url: str) -> None:
    from ingest.store import outbox

    engine = get_engine(url)
    entries = [
        {"kind": outbox.TASK, "destination": "ingest.upload_url", "message_id": f"m-{i}", "payload": {"i": i}}
        for i in range(3)
    ]
    with Session(engine) as s:
        outbox.add_many(s, entries, grace=60)
        s.commit()
        (first,) = s.exec(select(OutboxEntry).where(OutboxEntry.message_id == "m-0")).all()
        assert first.id is not None
        outbox.mark_sent(s, first.id)
        s.refresh(first)
        earlier = first.sent_at
        assert earlier is not None
        outbox.mark_sent_many(s, ["m-0", "m-1"])
        got = {
            e.message_id: e.sent_at for e in s.exec(select(OutboxEntry).where(col(OutboxEntry.message_id).like("m-%")))
        }
        s.refresh(first)
    assert first.sent_at == earlier  # the earlier mark kept
    assert got["m-1"] is not None and got["m-2"] is None
