"""Each broker gets the options that mean something to it, and the settings refuse what cannot work."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from ingest.settings import Settings
from ingest.worker.app import celery_config
from ingest.worker.broker import REDIS_TRANSPORT


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_rabbitmq_gets_publisher_confirms_durable_queues_and_no_redis_options() -> None:
    conf = celery_config(_settings(broker_url="amqp://guest:guest@127.0.0.1:5672/acr"))
    assert conf["broker_url"] == "amqp://guest:guest@127.0.0.1:5672/acr"
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert "broker_transport" not in conf  # kombu's py-amqp transport, from the scheme
    assert all(q.durable for q in conf["task_queues"])


def test_redis_gets_our_transport_with_its_heartbeat_and_the_visibility_timeout() -> None:
    conf = celery_config(
        _settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout=900, redis_heartbeat_timeout=15)
    )
    assert conf["broker_transport"] == REDIS_TRANSPORT
    options = conf["broker_transport_options"]
    assert (options["heartbeat_timeout"], options["heartbeat_interval"]) == (15, 3)
    assert options["visibility_timeout"] == 900  # for what an earlier version left in kombu's unacked hash
    assert "confirm_publish" not in conf["broker_transport_options"]
    assert conf["broker_use_ssl"] is None
    # rediss:// (TLS) gets ours too, told to verify certificates (kombu's class would not have, by default).
    tls = celery_config(_settings(broker_url="rediss://h:6380/0"))
    assert (tls["broker_transport"], tls["broker_use_ssl"]) == (REDIS_TRANSPORT, {"ssl_cert_reqs": ssl.CERT_REQUIRED})


def test_a_shared_rate_limit_on_rabbitmq_needs_a_redis_url() -> None:
    with pytest.raises(ValidationError, match="ACR_INGEST_RATE_LIMIT_REDIS_URL"):
        _settings(broker_url="amqp://127.0.0.1//", rate_limit=5)
    ok = _settings(broker_url="amqp://127.0.0.1//", rate_limit=5, rate_limit_redis_url="redis://127.0.0.1/1")
    assert ok.rate_limit == 5
    assert _settings(broker_url="redis://127.0.0.1/0", rate_limit=5).rate_limit == 5  # the broker holds it


def test_countdowns_stay_under_rabbitmqs_consumer_timeout() -> None:
    rabbit = _settings(broker_url="amqp://127.0.0.1//", visibility_timeout=3600, rabbitmq_consumer_timeout=1200)
    assert rabbit.max_countdown == 600
    # Our Redis transport takes a message back by liveness only: a countdown held by a live worker has no bound.
    assert _settings(broker_url="redis://127.0.0.1/0", visibility_timeout=3600).max_countdown == float("inf")
    assert _settings(broker_url="rediss://127.0.0.1/0", visibility_timeout=100).max_countdown == float("inf")
    with pytest.raises(ValidationError, match="ACR_INGEST_RABBITMQ_CONSUMER_TIMEOUT"):
        _settings(
            broker_url="amqp://127.0.0.1//", visibility_timeout=3600, rabbitmq_consumer_timeout=100, backoff_max=300
        )
