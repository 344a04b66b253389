"""The API client tells its observer of every request that went out (the metrics count through it),
and the worker's observer turns each into the counters of docs/METRICS.md."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from ingest.api.client import AcrCloudClient
from ingest.api.errors import NotFoundError, RateLimitedError, TransientError
from ingest.devtools.processes import free_port
from ingest.settings import get_settings
from ingest.worker.metrics import observe_api_call, status_class


def test_the_observer_sees_each_call_with_its_status(emulator, bucket) -> None:
    seen: list[tuple[str, int | None]] = []
    settings = get_settings()
    with AcrCloudClient.from_settings(
        settings, observers=[lambda op, status, _headers: seen.append((op, status))]
    ) as client:
        client.upload_url(bucket, "https://cdn.example.com/o.mp3", title="O")
        emulator.set_faults(burst_429=1)
        with pytest.raises(RateLimitedError):
            client.list_page(bucket)
        with pytest.raises(NotFoundError):
            client.update_file(bucket, 999_999_999, title="nobody")
    refused = AcrCloudClient(
        f"http://127.0.0.1:{free_port()}/api", "t", observers=[lambda o, s, _h: seen.append((o, s))]
    )
    with refused, pytest.raises(TransientError):
        refused.get_files(bucket, [1])
    (upload_op, upload_status), *rest = seen
    assert upload_op == "upload" and upload_status in (200, 201)
    assert rest == [("list", 429), ("update", 404), ("get", None)]


def test_observed_calls_become_counters() -> None:
    def calls(endpoint: str, klass: str) -> float:
        return (
            REGISTRY.get_sample_value("acr_ingest_api_calls_total", {"endpoint": endpoint, "status_class": klass}) or 0
        )

    def limited(endpoint: str) -> float:
        return REGISTRY.get_sample_value("acr_ingest_api_rate_limited_total", {"endpoint": endpoint}) or 0

    before = (calls("move", "2xx"), calls("move", "4xx"), calls("move", "error"), limited("move"))
    for status in (200, 204, 429, 422, None):
        observe_api_call("move", status, {})
    after = (calls("move", "2xx"), calls("move", "4xx"), calls("move", "error"), limited("move"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 1, 1]
    assert [status_class(s) for s in (201, 302, 503, None)] == ["2xx", "3xx", "5xx", "error"]
