"""Every public method of ``Producer`` raises only the documented errors (``InputError`` for what it was given,
``EnqueueError`` for a broker that did not take it), whatever it is handed: no pydantic ValidationError,
AttributeError, TypeError or SQL error from a value of the wrong type."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.jobs.bulk_uploads import Outcome
from ingest.jobs.errors import EnqueueError, InputError
from ingest.producer import Producer
from ingest.settings import get_settings, reset_settings
from ingest.store import schema
from tests.conftest import IDLE_BROKER, MEDIA

ODD: list[Any] = [
    None, True, 0, -1, 1.5, "x", b"x", b"song.wav", [], {}, {1: "a"}, {"a": {2: "b"}}, ["a", 1], [None],
    object(), float("nan"), 2**70, "\x00", ("a",), {"a"}, "song.wav", datetime.now(UTC),
]  # fmt: skip
BASE: dict[str, dict[str, Any]] = {
    "upload_url": {"url": "https://cdn.example.com/p.mp3", "title": "t", "bucket_id": 1},
    "upload_file": {"path": "producer-errors.wav", "title": "t", "bucket_id": 1},
    "update_meta": {"bucket_id": 1, "file_id": 3, "title": "t"},
    "delete": {"bucket_id": 1, "ids": [1]},
    "move": {"bucket_id": 1, "target_bucket_id": 2, "ids": [1]},
    "retry_failed": {},
}


@pytest.fixture
def producer_on_own_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Producer]:
    """A database of the test's own (the valid calls write rows) and a broker no worker consumes."""
    url = f"sqlite:///{tmp_path}/producer.db"
    monkeypatch.setenv("ACR_INGEST_DATABASE_URL", url)
    monkeypatch.setenv("ACR_INGEST_BROKER_URL", IDLE_BROKER)
    reset_settings()
    schema.upgrade(url)
    (MEDIA / "producer-errors.wav").write_bytes(b"RIFF" + b"\0" * 100)
    from ingest.worker.app import create_app

    settings = get_settings()
    yield Producer(create_app(settings), settings)
    monkeypatch.undo()
    reset_settings()


def test_public_methods_raise_only_documented_errors(producer_on_own_db: Producer) -> None:
    p = producer_on_own_db
    undocumented = []
    for method, base in BASE.items():
        for name in inspect.signature(getattr(p, method)).parameters:
            for value in ODD:
                try:
                    getattr(p, method)(**{**base, name: value})
                except (InputError, EnqueueError):
                    pass
                except Exception as exc:
                    undocumented.append(f"{method}({name}={value!r}): {type(exc).__name__}: {exc}"[:200])
    assert undocumented == []


def test_user_defined_keys_must_be_text(producer_on_own_db: Producer) -> None:
    for ud in ({1: "a"}, {"a": [{None: 1}]}):
        with pytest.raises(InputError) as bad:
            producer_on_own_db.upload_url("https://cdn.example.com/k.mp3", title="t", bucket_id=1, user_defined=ud)
        assert "keys must be text" in bad.value.errors["user_defined"]


def test_upload_many_reads_dicts_as_rows_and_refuses_the_rest(producer_on_own_db: Producer) -> None:
    p = producer_on_own_db
    out = list(
        p.upload_many([{"ref": "x"}, "x", None, {"ref": "y", "title": "Y", "url": "https://h/y.mp3", "bucket": 1}])
    )
    assert [o.outcome for o in out] == [Outcome.REFUSED, Outcome.REFUSED, Outcome.REFUSED, Outcome.QUEUED]
    assert "url: required" in str(out[0].error) and "must be an upload job" in str(out[1].error)
    for items, field in ((None, "items"), (5, "items"), ("abc", "items")):
        with pytest.raises(InputError) as bad:
            list(p.upload_many(items))  # type: ignore[arg-type]
        assert field in bad.value.errors
    with pytest.raises(InputError, match="batch_size"):
        list(p.upload_many([], batch_size=0))


def test_too_many_ids_names_the_ids_field() -> None:
    from ingest.jobs.inputs import validate_delete_batch

    with pytest.raises(InputError) as bad:
        validate_delete_batch({"bucket_id": 1, "ids": list(range(1, 10_002))}, get_settings())
    assert list(bad.value.errors) == ["ids"] and "split it into jobs of at most" in bad.value.errors["ids"]


def test_upload_file_of_a_bytes_path_says_it_is_not_text(producer_on_own_db: Producer) -> None:
    with pytest.raises(InputError) as err:
        producer_on_own_db.upload_file(b"producer-errors.wav", title="t", bucket_id=1)
    assert err.value.errors == {"path": "must be a string (a file path under the media root), got bytes"}
