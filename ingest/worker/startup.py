"""What a worker or beat checks before it starts, each refusal one line on stderr (``SystemExit``):

- the database schema is this code's head revision, and the database exists and takes our login (an
  unreachable one is only logged: it may be on its way up, and each task retries it);
- a worker has an API token (an empty ``ACR_INGEST_ACCESS_TOKEN`` and no token file would start "ready" and
  fail every job), and can make fingerprints when ``ACR_INGEST_UPLOAD_AS=fingerprint`` or when it serves only
  the fingerprint uploads' queue (the deployments' fingerprint-worker: every job it takes needs the library);
- a TLS broker (``rediss://``) presents a certificate we trust (an untrusted one never will: refused; a broker
  that is down is only logged, as Celery retries it);
- exactly one beat schedules for a broker: the beat holds a lease in the database while it runs
  (``BeatLease``), and a second one is refused.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import signal
import ssl
import threading
from collections.abc import Collection
from datetime import UTC

from sqlalchemy.exc import SQLAlchemyError

from ingest.fingerprints import unavailable_reason
from ingest.redact import mask_url_credentials
from ingest.settings import Settings, get_settings
from ingest.store import leases
from ingest.store.db import session_scope
from ingest.store.models import Lease
from ingest.store.schema import SchemaError, require_current
from ingest.worker.routing import FINGERPRINT_QUEUE

log = logging.getLogger(__name__)

# The beat renews its lease every third of its term: a beat killed on another host blocks the next one
# for at most BEAT_LEASE_SECONDS (on the same host, not at all: a dead owner's lease is free at once).
BEAT_LEASE_SECONDS = 30.0


def _not_starting(reason: str) -> SystemExit:
    return SystemExit(f"acr-ingest: not starting: {reason}")


def permanent_database_fault(exc: SQLAlchemyError, url: str) -> str | None:
    """Why the database can never work as configured (missing, login refused, SQLite file unopenable), or
    None when it may just be down for now."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    low = (text[0] if text else "").lower()
    shown = mask_url_credentials(url)
    if "database" in low and "does not exist" in low:
        return (
            f"the database of ACR_INGEST_DATABASE_URL ({shown}) does not exist: create it (e.g. createdb), "
            "then run `acr-ingest db upgrade`"
        )
    if "authentication failed" in low or ("role" in low and "does not exist" in low):
        return f"the database {shown} refused the login: fix ACR_INGEST_DATABASE_URL"
    if "unable to open database file" in low:
        return f"cannot open the SQLite file of ACR_INGEST_DATABASE_URL ({shown}): check the path and its permissions"
    return None


def require_schema() -> None:
    """Exit (status 1, the reason on stderr) when the schema is behind, empty or unknown to this code, or the
    database cannot work as configured (it does not exist, the login is refused).

    An unreachable database is only logged: the worker retries it per task, as before, and compose's
    depends_on / the health check say when it is down."""
    try:
        require_current()
    except SchemaError as exc:
        raise _not_starting(str(exc)) from None
    except SQLAlchemyError as exc:
        reason = permanent_database_fault(exc, get_settings().database_url)
        if reason:
            raise _not_starting(reason) from None
        log.warning("could not check the database schema (%s); starting anyway", type(exc).__name__)


def require_token(settings: Settings | None = None) -> None:
    """A worker without a token would start "ready" and fail every job on the API's 401: refuse it."""
    settings = settings or get_settings()
    if (settings.current_token() or "").strip():
        return
    if settings.access_token_file is not None:
        raise _not_starting(
            f"the token file ACR_INGEST_ACCESS_TOKEN_FILE ({settings.access_token_file}) is missing, unreadable or "
            "empty: write the API token there (or set ACR_INGEST_ACCESS_TOKEN)"
        )
    raise _not_starting(
        "no API token: set ACR_INGEST_ACCESS_TOKEN (or ACR_INGEST_ACCESS_TOKEN_FILE) to the Console API token"
    )


def require_fingerprints(settings: Settings | None = None, queues: Collection[str] | None = None) -> None:
    """A worker told to send fingerprints by default (ACR_INGEST_UPLOAD_AS=fingerprint), or one that consumes
    only the fingerprint uploads' queue (``queues``, what -Q selected; None: every queue), but unable to make them
    would fail every upload it takes as bad input: refuse it, saying what to install. A worker of every queue
    still starts: the producer refuses fingerprint uploads there, so none should reach it."""
    settings = settings or get_settings()
    why = unavailable_reason()
    if why is None:
        return
    if settings.upload_as == "fingerprint":
        raise _not_starting(f"ACR_INGEST_UPLOAD_AS=fingerprint, but {why}")
    if queues and set(queues) <= {FINGERPRINT_QUEUE}:
        raise _not_starting(
            f"this worker consumes only {FINGERPRINT_QUEUE} (-Q), uploads sent as fingerprints, but {why}"
        )


def require_trusted_broker(settings: Settings | None = None) -> None:
    """Celery retries a broker it cannot reach for ever, which is right for one that is down and wrong for
    a certificate that will never verify: refuse that one in a line naming the fix."""
    settings = settings or get_settings()
    if not settings.broker_url.lower().startswith("rediss://"):
        return
    import redis  # reads the URL's ssl_* options as kombu does (worker/broker.py): the same verdict

    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            log.warning(
                "could not reach the broker %s (%s); starting anyway", mask_url_credentials(settings.broker_url), exc
            )
            return
        raise _not_starting(
            f"the TLS broker of ACR_INGEST_BROKER_URL ({mask_url_credentials(settings.broker_url)}) presents a "
            f"certificate we do not trust ({cause.verify_message or cause}): add ?ssl_ca_certs=/path/to/ca.pem to "
            "the URL (or fix the host name it names)"
        ) from None
    except redis.RedisError:  # it answered: trusted; the rest (auth, ...) is Celery's to report
        return
    finally:
        client.close()


def beat_lease_name(settings: Settings) -> str:
    """One lease per broker: two deployments sharing a database each run their own beat."""
    return "beat:" + hashlib.sha256(settings.broker_url.encode()).hexdigest()[:16]


class BeatLease:
    """The lease a beat holds while it runs; ``take`` refuses a second beat of the same broker."""

    def __init__(self, settings: Settings, seconds: float = BEAT_LEASE_SECONDS) -> None:
        self.name = beat_lease_name(settings)
        self.owner = leases.owner_id("beat")
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        """Hold the lease and keep it renewed, or raise SystemExit naming the beat that holds it."""
        with session_scope() as s:
            if not leases.acquire(s, self.name, self.owner, self.seconds):
                held = s.get(Lease, self.name)
                holder = held.owner.rsplit(":", 1)[0] if held else "another process"
                until = held.until.replace(tzinfo=held.until.tzinfo or UTC).strftime("%H:%M:%S UTC") if held else "?"
                raise _not_starting(
                    f"another beat ({holder}) already schedules for this broker (it holds the lease {self.name} "
                    f"until {until}, renewed while it runs); run exactly one beat: stop that one first (a beat "
                    f"killed on another host frees it within {self.seconds:.0f} s)"
                )
        self._thread = threading.Thread(target=self._keep, name="beat-lease", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _keep(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                with session_scope() as s:
                    kept = leases.acquire(s, self.name, self.owner, self.seconds)
            except SQLAlchemyError as exc:  # the database away for a moment: renew at the next round
                log.warning("could not renew the beat lease (%s); trying again", type(exc).__name__)
                continue
            if not kept:  # its term ran out while the database was away, and another beat took over
                log.error("another beat took over the beat lease %s; this beat stops", self.name)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def release(self) -> None:
        self._stop.set()
        try:
            with session_scope() as s:
                leases.release(s, self.name, self.owner)
        except SQLAlchemyError:  # it expires by itself
            pass
