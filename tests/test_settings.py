"""Settings: prefix, regions, the rotatable token file, and the countdown/visibility-timeout rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ingest.settings import REGION_BASE_URLS, Settings


def test_region_selects_the_base_url_and_an_explicit_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACR_INGEST_API_BASE_URL", raising=False)
    assert Settings(_env_file=None).base_url == REGION_BASE_URLS["global"] == "https://api-v2.acrcloud.com/api"
    monkeypatch.setenv("ACR_INGEST_REGION", "cn")
    assert Settings(_env_file=None).base_url == "https://cn-api-v2.acrcloud.cn/api"
    monkeypatch.setenv("ACR_INGEST_API_BASE_URL", "http://127.0.0.1:8080/api/")
    assert Settings(_env_file=None).base_url == "http://127.0.0.1:8080/api"


def test_the_token_file_is_reread_so_a_token_rotates_without_restart(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    settings = Settings(_env_file=None, access_token="from-env", access_token_file=token_file)
    assert settings.current_token() == "first"
    token_file.write_text("second")
    assert settings.current_token() == "second"
    token_file.unlink()
    assert settings.current_token() == "from-env"
    assert "from-env" not in repr(settings) and "from-env" not in str(settings.model_dump())


def test_the_visibility_timeout_bounds_no_countdown_on_redis_with_or_without_tls() -> None:
    # Our transport (redis:// and rediss://) takes messages back by liveness only.
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0"):
        settings = Settings(_env_file=None, broker_url=url, visibility_timeout=100, backoff_max=300)
        assert settings.max_countdown == float("inf")


def test_fingerprint_nice_is_0_to_19_and_10_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACR_INGEST_FINGERPRINT_NICE", raising=False)
    assert Settings(_env_file=None).fingerprint_nice == 10
    monkeypatch.setenv("ACR_INGEST_FINGERPRINT_NICE", "0")  # off: extraction at the worker's priority
    assert Settings(_env_file=None).fingerprint_nice == 0
    # Below 0 would ask to raise the priority (a privilege); above 19 is no nice value.
    for bad in ("-1", "20", "low"):
        monkeypatch.setenv("ACR_INGEST_FINGERPRINT_NICE", bad)
        with pytest.raises(ValidationError, match="fingerprint_nice"):
            Settings(_env_file=None)
