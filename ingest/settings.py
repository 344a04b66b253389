"""All configuration in one place: environment variables prefixed ``ACR_INGEST_`` (or a ``.env`` file).

See ``.env.example`` for every variable with its default.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REGION_BASE_URLS = {
    "global": "https://api-v2.acrcloud.com/api",
    "cn": "https://cn-api-v2.acrcloud.cn/api",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ACR_INGEST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- ACRCloud API -------------------------------------------------------------------------
    region: Literal["global", "cn"] = "global"
    api_base_url: str | None = Field(default=None, description="Overrides the region's base URL (e.g. the emulator's).")
    access_token: SecretStr | None = None
    access_token_file: Path | None = Field(
        default=None,
        description="File holding the token; re-read on change, so a new token needs no restart.",
    )
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    default_bucket: int | None = None
    ids_chunk_size: int = Field(default=100, ge=1, le=1000)
    # Where `acr-ingest probe` saves what it found out about the real API (docs/API.md).
    probe_report: Path = Path("acr-ingest-probe.json")
    # Files per page when reconcile lists a whole bucket: as many as the API gives (the vendor page
    # states no maximum; Laravel apps cap it, the emulator at 1000; a lower cap only means more pages).
    list_page_size: int = Field(default=1000, ge=1, le=10_000)

    # --- Celery ---------------------------------------------------------------------------------
    # redis://, amqp:// (RabbitMQ) or filesystem://; README "Choosing a broker" says what each guarantees.
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None
    # redis:// (our reliable fetch): a worker not heard from for this long counts as dead, and every
    # message it held (running, reserved, waiting for a countdown) goes back to its queue.
    redis_heartbeat_timeout: float = Field(default=10.0, ge=2)
    # Messages an earlier version left in kombu's `unacked` hash are redelivered after this (our transport,
    # redis:// and rediss:// alike, takes messages back by liveness); other brokers' countdowns stay under half.
    visibility_timeout: int = 3600
    # How often workers sweep for messages whose visibility timeout ran out (a worker was killed).
    redelivery_check_interval: int = 10
    # An unfinished operation untouched this long has lost its message (it can happen in the instant
    # a broker dies); the poll sends it again under the same task id. Default: 2 x visibility_timeout.
    resend_after: float | None = None
    # A job's message is published right after its rows commit; one still unsent this long after (the
    # broker was away, the producer died) is published by the poll's outbox sweeper.
    outbox_grace: float = Field(default=60.0, ge=0)
    # How Producer publishes a job it wrote: sync (published when the call returns; a broker that does not
    # take it is an EnqueueError, the job kept) or background (the call returns once the job is committed; a
    # thread of the process publishes in batches, Producer.flush/close report what the broker did not take).
    producer_publish: Literal["sync", "background"] = "sync"
    # How long one Producer call keeps trying a broker that is away before it returns (EnqueueError, the job
    # kept in the outbox for the sweeper). Short: the job is durable already, and an upstream system calling
    # once per track must not hang for the worker's ~50 s of publish retries (which ride out a restart).
    producer_publish_wait: float = Field(default=5.0, ge=0)
    # RabbitMQ only: the broker's consumer_timeout in seconds (rabbitmq.conf, default 30 min). A delivery
    # unacknowledged longer (a long task, or a retry waiting for its countdown) is taken back; countdowns
    # are kept under half of it.
    rabbitmq_consumer_timeout: int = 1800
    worker_concurrency: int = 4
    # On a cold shutdown (SIGQUIT, second SIGTERM) running tasks get this long before they are requeued.
    soft_shutdown_timeout: float = 10.0

    # --- Shared rate limit (all workers, one budget in Redis) -------------------------------------
    # auto (the default when RATE_LIMIT is unset): learned from the API's 429s and X-RateLimit-* headers;
    # fixed (the default when RATE_LIMIT is set): exactly RATE_LIMIT requests/s; off: only obey 429s.
    rate_limit_mode: Literal["auto", "fixed", "off"] | None = None
    rate_limit: float | None = Field(default=None, gt=0, description="API requests per second, all workers.")
    rate_limit_burst: int | None = Field(default=None, ge=1)
    rate_limit_initial: float = Field(default=5.0, gt=0)  # auto, no limit announced: where AIMD starts
    rate_limit_max: float = Field(default=1000.0, gt=0)  # auto: never above this (a ceiling, not a target)
    # A thread waits this long for a token at most; a longer wait defers the job (one broker round trip).
    rate_limit_max_inline_wait: float = Field(default=3.0, ge=0)
    # The budget lives in Redis: required when the broker is not Redis (RabbitMQ cannot hold it).
    rate_limit_redis_url: str | None = None  # default: the broker, when it is Redis

    # --- Retries --------------------------------------------------------------------------------
    max_attempts: int = Field(default=8, ge=1)
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    # How long a task stays claimed by one worker before another may take it over (killed worker).
    lease_seconds: float = 180.0
    # While the token is rejected (401/403), held tasks re-check this often.
    auth_hold_recheck: float = 30.0
    # An update/delete/move naming an upload still in flight waits this long between checks.
    dependency_wait: float = 5.0
    # A follow-up naming a ref no worker has seen is kept (parked) this long for its upload to land: an
    # upload held by a killed worker comes back after the visibility timeout, plus a countdown and its
    # run. Default: 2 x visibility_timeout. After it the follow-up reports the ref as unknown.
    unknown_ref_horizon: float | None = Field(default=None, gt=0)
    # The API down for everyone: after this many transient failures (5xx, unreachable) of different
    # jobs in a row within breaker_window seconds, jobs are held (no attempt used) and one probe per
    # breaker_probe_interval seconds checks whether it is back.
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_window: float = Field(default=60.0, gt=0)
    breaker_probe_interval: float = Field(default=30.0, gt=0)
    # Both gates (hold, breaker) read clear are trusted this long per process (0: read them for every job).
    gate_cache_seconds: float = Field(default=1.0, ge=0)

    # --- Storage and polling ----------------------------------------------------------------------
    database_url: str = "sqlite:///acr-ingest.db"
    media_root: Path = Path(".")
    # What an upload of a local audio file sends when its job does not say (send_as): the master, or its
    # ACRCloud fingerprint made on the worker (~400x smaller; needs the `fingerprint` extra). docs/INPUT.md.
    upload_as: Literal["audio", "fingerprint"] = "audio"
    # Extraction runs in threads of its own (one per CPU per worker process) this many nice levels below the
    # worker, so updates and polls keep the CPU while a catalog is extracted (docs/ARCHITECTURE.md); 0: not lowered.
    fingerprint_nice: int = Field(default=10, ge=0, le=19)
    # Seconds between state polls the beat sends; at least half a second (0 polled thousands of times a second).
    poll_interval: float = Field(default=30.0, ge=0.5, le=3600, allow_inf_nan=False)

    # --- Input limits ------------------------------------------------------------------------------
    max_title_length: int = 255
    max_user_defined_bytes: int = 16_384
    max_ids_per_job: int = 10_000

    # --- Operations: logs and metrics ----------------------------------------------------------------
    # json: one JSON object per line (worker and beat), for log shippers; text: Celery's lines plus the job's fields.
    log_format: Literal["text", "json"] = "text"
    # A worker serves its own counters (all its pool processes) on this port when set; docs/METRICS.md.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # Where pool processes keep their counters (prometheus_client multiprocess mode); one directory per
    # worker instance, emptied when it starts. Unset: a private temporary directory.
    metrics_dir: Path | None = None

    # --- Events for the catalog system (docs/MESSAGES.md, "Events") -----------------------------------
    # Unset: no events on the broker (a durable queue nobody reads would grow without bound in the broker).
    events_queue: str | None = None
    events_exchange: str = "acr_ingest.events"  # a topic exchange; routing keys file.ready, operation.failed...
    # Each event also POSTed here, signed with webhook_secret (required with it); retried with backoff.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=10.0, gt=0)

    @field_validator("metrics_port", "metrics_dir", "events_queue", "webhook_url", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v  # `ACR_INGEST_METRICS_PORT=` in a .env turns it off

    @model_validator(mode="after")
    def _effective_rate_limit_mode(self) -> Settings:
        if self.rate_limit_mode is None:
            self.rate_limit_mode = "fixed" if self.rate_limit else "auto"
        elif self.rate_limit_mode == "fixed" and not self.rate_limit:
            raise ValueError("ACR_INGEST_RATE_LIMIT_MODE=fixed needs ACR_INGEST_RATE_LIMIT (requests per second)")
        return self

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_url and not (self.webhook_secret and self.webhook_secret.get_secret_value()):
            raise ValueError(
                "ACR_INGEST_WEBHOOK_URL needs ACR_INGEST_WEBHOOK_SECRET (the receiver checks the signature with it)"
            )
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("ACR_INGEST_WEBHOOK_URL must be an http:// or https:// URL")
        return self

    @property
    def events_enabled(self) -> bool:
        """Whether state changes write events (to the broker, the webhook or both)."""
        return bool(self.events_queue or self.webhook_url)

    @field_validator("api_base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _countdowns_fit_the_consumer_timeout(self) -> Settings:
        # RabbitMQ closes the channel of a consumer holding a message past its consumer_timeout. Our Redis
        # transport (redis://, rediss://) takes messages back by liveness only, so it sets no bound.
        longest = max(self.backoff_max, self.auth_hold_recheck, self.dependency_wait, self.breaker_probe_interval)
        if self.broker_kind == "amqp" and self.rabbitmq_consumer_timeout < 2 * longest:
            raise ValueError(
                f"ACR_INGEST_RABBITMQ_CONSUMER_TIMEOUT ({self.rabbitmq_consumer_timeout}) must be at least twice "
                f"the longest retry countdown ({longest} s); raise RabbitMQ's consumer_timeout and this with it"
            )
        return self

    @model_validator(mode="after")
    def _rate_limit_has_a_redis(self) -> Settings:
        if self.rate_limit and not self.rate_limit_redis_url and self.broker_kind != "redis":
            raise ValueError(
                "ACR_INGEST_RATE_LIMIT needs a Redis for the budget all workers share: set "
                f"ACR_INGEST_RATE_LIMIT_REDIS_URL=redis://... (the broker {self.broker_kind}:// cannot hold it)"
            )
        return self

    @property
    def broker_kind(self) -> str:
        """``redis``, ``amqp`` (RabbitMQ), ``filesystem`` or the URL's scheme."""
        scheme = self.broker_url.split("://", 1)[0].lower()
        return {"rediss": "redis", "pyamqp": "amqp", "amqps": "amqp"}.get(scheme, scheme)

    @property
    def max_countdown(self) -> float:
        """The longest a retry may wait in a worker before the broker would hand its message to another."""
        if self.broker_kind == "amqp":
            return self.rabbitmq_consumer_timeout / 2
        if self.broker_kind != "redis":
            return self.visibility_timeout / 2
        return float("inf")  # our Redis transport: a live worker's held countdown has no bound

    @property
    def late_request_seconds(self) -> float:
        """How long after we gave up on a request it may still land: the poll checks files then."""
        return 2 * self.read_timeout + self.connect_timeout

    @property
    def resend_after_seconds(self) -> float:
        return self.resend_after if self.resend_after is not None else 2.0 * self.visibility_timeout

    @property
    def unknown_ref_horizon_seconds(self) -> float:
        return self.unknown_ref_horizon if self.unknown_ref_horizon is not None else 2.0 * self.visibility_timeout

    @property
    def base_url(self) -> str:
        return self.api_base_url or REGION_BASE_URLS[self.region]

    def current_token(self) -> str | None:
        """The token in force now: the file (if configured) wins, so it can be rotated live."""
        if self.access_token_file is not None:
            try:
                text = self.access_token_file.read_text(encoding="utf-8").strip()
            except OSError:
                text = ""
            if text:
                return text
        return self.access_token.get_secret_value() if self.access_token else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the demo change the environment)."""
    get_settings.cache_clear()


PREFIX = "ACR_INGEST_"
# ACR_INGEST_ variables that are not settings: the CLI's --debug, and the tests' and benchmarks' own.
NOT_SETTINGS = {"ACR_INGEST_DEBUG", "ACR_INGEST_NESTED_RUN"}
NOT_SETTINGS_PREFIXES = ("ACR_INGEST_TEST_", "ACR_INGEST_BENCH_", "ACR_INGEST_DEPLOY_TEST_")


def unknown_variables(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> list[str]:
    """One warning per ``ACR_INGEST_`` variable (in the environment or the .env file) that is no setting,
    naming the closest one: a misspelt variable is otherwise ignored and its setting keeps its default."""
    names = {PREFIX + name.upper() for name in Settings.model_fields}
    given = dict.fromkeys(k.upper() for k in (os.environ if environ is None else environ))
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        with contextlib.suppress(OSError, UnicodeDecodeError):  # the settings say what is wrong with the file
            given.update(dict.fromkeys(k.upper() for k in dotenv_values(env_file)))
    lines = []
    for key in given:
        if not key.startswith(PREFIX) or key in names or key in NOT_SETTINGS or key.startswith(NOT_SETTINGS_PREFIXES):
            continue
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else " (`acr-ingest config` lists the settings)"
        lines.append(f"warning: {key} is not an acr-ingest setting and is ignored{hint}")
    return lines
