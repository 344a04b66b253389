"""``acr-ingest health``: can this process do its work? The broker, the database (and its schema at head), the
API's reachability and the token, each checked once with a short timeout. For a container healthcheck or a
Kubernetes probe: what failed is printed, and any failure makes the exit status non-zero."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from ingest.api.client import AcrCloudClient
from ingest.api.errors import ApiError, AuthError, NotFoundError, RateLimitedError
from ingest.jobs.errors import RetryLater
from ingest.jobs.rate_limit import SharedRateLimit
from ingest.redact import mask_url_credentials
from ingest.settings import Settings
from ingest.store.schema import SchemaError, require_current, safe_url
from ingest.worker.app import create_app

# Any bucket id serves to prove the token when none is configured: the API authenticates before it looks the
# bucket up, so an unknown bucket answers 404 to a good token and 401 to a bad one.
PROBE_BUCKET = 1
TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<8}  {self.detail}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_url_credentials(f"{type(exc).__name__}: {text[0] if text else ''}")


def check_broker(settings: Settings) -> Check:
    where = mask_url_credentials(settings.broker_url)
    app = create_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT)
            if conn.transport.driver_type == "redis":
                conn.default_channel.client.ping()  # a Redis connection is lazy: make it answer
        return Check("broker", True, where)
    except Exception as exc:  # kombu/redis/amqp raise many types; all mean "not usable now"
        return Check("broker", False, f"{where}: unreachable ({_first_line(exc)})")
    finally:
        app.close()


def check_database(settings: Settings) -> Check:
    where = safe_url(settings.database_url)
    try:
        state = require_current(settings.database_url)
    except SchemaError as exc:
        return Check("database", False, str(exc))
    except SQLAlchemyError as exc:
        return Check("database", False, f"{where}: unreachable ({_first_line(exc)})")
    return Check("database", True, f"{where} at schema {state.current}")


def check_api(settings: Settings) -> list[Check]:
    """Two results: is the API reachable, and does it accept the token (one cheap authenticated GET)."""
    token = settings.current_token()
    if not token:
        missing = "no token configured: set ACR_INGEST_ACCESS_TOKEN or ACR_INGEST_ACCESS_TOKEN_FILE"
        return [Check("api", True, f"{settings.base_url} (not called)"), Check("token", False, missing)]
    bucket = settings.default_bucket or PROBE_BUCKET
    # Through the workers' shared budget, as any of their calls: a probe the budget did not count (one a minute
    # per pod) would be the call over the limit that gets a 429, and a 429 holds every worker for Retry-After.
    try:
        limiter = SharedRateLimit.from_settings(settings)
    except ValueError:  # a rate-limit setting the worker's start refuses, naming it; the probe still asks the API
        limiter = None
    client = AcrCloudClient(
        settings.base_url,
        settings.current_token,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        pool_maxsize=1,
        gate=limiter,
        observers=[limiter.observe] if limiter is not None else [],
    )
    try:
        client.list_page(bucket, per_page=1)
        accepted = f"accepted (listed bucket {bucket})"
    except NotFoundError:
        accepted = f"accepted (bucket {bucket} unknown to the API, which authenticates first)"
    except (RateLimitedError, RetryLater):
        # Answering, and busy: not a reason to call the process unhealthy (that would restart busy workers).
        accepted = "not checked (the limit is in use: the shared budget or the API's 429 holds calls)"
    except AuthError as exc:
        return [Check("api", True, settings.base_url), Check("token", False, f"rejected: {exc}")]
    except ApiError as exc:  # timeouts, resets, 5xx: the API is not answering usefully (the token is untested)
        return [Check("api", False, f"{settings.base_url}: {exc}")]
    finally:
        client.close()
    return [Check("api", True, settings.base_url), Check("token", True, accepted)]


def run_checks(settings: Settings) -> list[Check]:
    steps: list[Callable[[Settings], Check | list[Check]]] = [check_broker, check_database, check_api]
    checks: list[Check] = []
    for step in steps:
        result = step(settings)
        checks.extend(result if isinstance(result, list) else [result])
    return checks
