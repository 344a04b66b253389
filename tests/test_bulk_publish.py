"""The bulk publish (``upload_many``, the catalog import) puts on the broker exactly the message
``app.send_task`` does (docs/MESSAGES.md), on Redis and on RabbitMQ: the same headers, properties, body,
exchange and queue; only the task id, the delivery tag and the short ``kwargsrepr`` differ."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection, Queue

from ingest.jobs.bulk_uploads import Message
from ingest.settings import get_settings
from ingest.worker.app import QUEUE, create_app
from ingest.worker.bulk_publish import publish_tasks
from tests.conftest import IDLE_BROKER

KWARGS: dict[str, dict[str, Any]] = {
    "ingest.upload_url": {
        "url": "https://cdn.example.com/é.mp3",
        "bucket_id": 7,
        "title": "Tïtle",
        "user_defined": {"artist": "A", "n": [1, 2]},
        "ref": "R-1",
    },
    "ingest.update_meta": {"bucket_id": 7, "ref": "R-1", "title": "New", "user_defined": {"a": None}},
}
# What differs between two messages of the same task on purpose: their ids, and the short argument repr.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "kwargsrepr"}


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return IDLE_BROKER
    url: str = request.getfixturevalue("rabbitmq_url")
    return url


def _drain(url: str) -> list[dict[str, Any]]:
    """Every message in the queue ``ingest``, as what a consumer sees of it (taken off the queue)."""
    out = []
    with Connection(url) as conn:
        queue = Queue(QUEUE, routing_key=QUEUE, durable=True)(conn.default_channel)
        queue.declare()
        while (message := queue.get(no_ack=True)) is not None:
            # (py-amqp also lists the headers among the properties, as application_headers)
            props = {k: v for k, v in message.properties.items() if k not in PER_MESSAGE | {"application_headers"}}
            headers = {k: v for k, v in message.headers.items() if k not in PER_MESSAGE}
            out.append(
                {
                    "id": (message.headers["id"], message.headers["root_id"], message.properties["correlation_id"]),
                    "kwargsrepr": message.headers["kwargsrepr"],
                    "same": {
                        "headers": headers,
                        "properties": props,
                        "content_type": message.content_type,
                        "content_encoding": message.content_encoding,
                        "routing": (message.delivery_info.get("exchange"), message.delivery_info.get("routing_key")),
                        "body": message.decode(),
                    },
                }
            )
    return out


def test_the_bulk_envelope_is_send_tasks(broker_url: str) -> None:
    settings = get_settings().model_copy(update={"broker_url": broker_url})
    app = create_app(settings)
    _drain(broker_url)  # what an earlier run left
    for name, kwargs in KWARGS.items():
        app.send_task(name, kwargs=kwargs, task_id=f"one-{name}")
    publish_tasks(app, [Message(name, kwargs, f"bulk-{name}") for name, kwargs in KWARGS.items()])

    got = _drain(broker_url)
    assert len(got) == 4
    one, bulk = got[:2], got[2:]
    for name, a, b in zip(KWARGS, one, bulk, strict=True):
        assert a["id"] == (f"one-{name}",) * 3 and b["id"] == (f"bulk-{name}",) * 3
        assert b["same"] == a["same"]
        assert b["same"]["headers"]["task"] == name
        assert b["same"]["body"] == [
            [],
            KWARGS[name],
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        ]
        assert b["same"]["content_type"] == "application/json"
        assert b["same"]["routing"] == ("", QUEUE)
        assert b["kwargsrepr"] == "{'ref': 'R-1', 'bucket_id': 7}"
