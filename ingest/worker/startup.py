"""What a worker or beat checks before it starts: the database schema is this code's head revision."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from ingest.store.schema import SchemaError, require_current

log = logging.getLogger(__name__)


def require_schema() -> None:
    """Exit (status 1, the reason on stderr) when the schema is behind, empty or unknown to this code.

    An unreachable database is only logged: the worker retries it per task, as before, and compose's
    depends_on / the health check say when it is down."""
    try:
        require_current()
    except SchemaError as exc:
        raise SystemExit(f"acr-ingest: not starting: {exc}") from None
    except SQLAlchemyError as exc:
        log.warning("could not check the database schema (%s); starting anyway", type(exc).__name__)
