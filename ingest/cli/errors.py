"""Every failure of an ``acr-ingest`` command as one line on stderr: what is wrong and the fix, never a traceback.

``explain`` turns an exception no command handled into ``(line, exit status)``: 2 for a usage or configuration
mistake (a setting, the database URL, a schema not migrated, an input file), 1 for a dependency that is down
(the database or the broker unreachable) and for anything unforeseen. ``--debug`` or ``ACR_INGEST_DEBUG=1``
lets the exception through with its traceback.
"""

from __future__ import annotations

import os
from typing import Any

from ingest.redact import mask_url_credentials

USAGE = 2  # the user can fix it: a setting, a URL, a file, a command to run first
DOWN = 1  # a dependency is down, or something unforeseen
DEBUG_HINT = "--debug (or ACR_INGEST_DEBUG=1) shows the traceback"
SECRET_FIELDS = ("access_token", "webhook_secret")


def debug_from_env() -> bool:
    return os.environ.get("ACR_INGEST_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def first_line(text: object, limit: int = 300) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    line = mask_url_credentials(line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _database_url() -> str:
    """The configured database URL, password masked (without raising: the settings may be the problem)."""
    try:
        from ingest.settings import get_settings

        return mask_url_credentials(get_settings().database_url)
    except Exception:
        return mask_url_credentials(os.environ.get("ACR_INGEST_DATABASE_URL", "sqlite:///acr-ingest.db"))


def settings_line(exc: Any) -> str:
    """A pydantic ValidationError of ``Settings`` as one line naming each ACR_INGEST_ variable and the fix."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if not loc:  # a check across settings: its message names the variables and the fix
            parts.append(msg)
            continue
        name = f"ACR_INGEST_{loc[0].upper()}"
        given = err.get("input")
        shown = ""
        if loc[0] not in SECRET_FIELDS and isinstance(given, str | int | float) and len(str(given)) <= 80:
            shown = f"={mask_url_credentials(str(given))}"
        parts.append(f"{name}{shown}: {msg}")
    return "; ".join(parts) + " (fix it in the environment or .env; `acr-ingest config` shows the settings)"


def _schema_problem() -> str | None:
    try:
        from ingest.store.schema import inspect_schema

        return inspect_schema().problem()
    except Exception:
        return None


def database_line(exc: Exception) -> tuple[str, int]:
    url = _database_url()
    orig = getattr(exc, "orig", None)
    text = first_line(str(orig if orig is not None else exc))
    low = text.lower()
    unmigrated = any(m in low for m in ("no such table", "no such column"))
    unmigrated |= "does not exist" in low and not any(m in low for m in ("database", "role"))
    if unmigrated:
        why = _schema_problem() or f"the database {url} is not at this version's schema ({text})"
        return why if "acr-ingest" in why else f"{why}: run `acr-ingest db upgrade`", USAGE
    if "database" in low and "does not exist" in low:
        return (
            f"the database of ACR_INGEST_DATABASE_URL ({url}) does not exist ({text}): create it "
            "(e.g. createdb), then run `acr-ingest db upgrade`"
        ), USAGE
    if "unable to open database file" in low or "readonly database" in low:
        return (
            f"cannot open the SQLite file of ACR_INGEST_DATABASE_URL ({url}): {text}; check the path and its "
            "permissions"
        ), USAGE
    if "authentication failed" in low or "role" in low:
        return f"the database {url} refused the login ({text}): fix ACR_INGEST_DATABASE_URL", USAGE
    return f"the database {url} is unreachable ({text}): start it, or fix ACR_INGEST_DATABASE_URL", DOWN


def explain(exc: BaseException) -> tuple[str, int]:
    """One line (without ``error: ``) and the exit status for an exception a command let through."""
    from pydantic import ValidationError
    from sqlalchemy import exc as sa

    from ingest.api.errors import ApiError, AuthError
    from ingest.jobs.errors import EnqueueError, InputError

    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return settings_line(exc), USAGE
    if isinstance(exc, InputError):
        return "; ".join(f"{k}: {v}" for k, v in exc.errors.items()), USAGE
    if isinstance(exc, EnqueueError):
        return first_line(str(exc), 500), DOWN
    if isinstance(exc, ApiError):
        # A token missing or rejected is the user's to fix; anything else the API answered is the API's.
        return f"the API: {first_line(exc)}", USAGE if isinstance(exc, AuthError) else DOWN
    if isinstance(exc, sa.NoSuchModuleError | sa.ArgumentError):
        return (
            f"ACR_INGEST_DATABASE_URL ({_database_url()}) is not a database URL acr-ingest can use "
            f"({first_line(exc)}); "
            "e.g. sqlite:///acr-ingest.db or postgresql+psycopg://user:password@host/acr_ingest",
            USAGE,
        )
    if isinstance(exc, ModuleNotFoundError):
        return (
            f"a module is missing: {exc.name} ({first_line(exc)}); for PostgreSQL install `acr-ingest[postgres]` and "
            "use postgresql+psycopg:// in ACR_INGEST_DATABASE_URL",
            USAGE,
        )
    if isinstance(exc, sa.DBAPIError | sa.OperationalError):
        return database_line(exc)
    if isinstance(exc, sa.SQLAlchemyError):
        return f"the database {_database_url()}: {first_line(exc)}", DOWN
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"the input is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
            "save it as UTF-8 and run again",
            USAGE,
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or first_line(exc)}", USAGE
    broker = _broker_down(exc)
    if broker:
        return broker, DOWN
    return f"{type(exc).__name__}: {first_line(exc)} ({DEBUG_HINT})", DOWN


def _broker_down(exc: BaseException) -> str | None:
    names = {f"{c.__module__}.{c.__name__}" for c in type(exc).__mro__}
    if names & {
        "redis.exceptions.ConnectionError",
        "redis.exceptions.TimeoutError",
        "kombu.exceptions.OperationalError",
    }:
        try:
            from ingest.settings import get_settings

            url = mask_url_credentials(get_settings().broker_url)
        except Exception:
            url = "ACR_INGEST_BROKER_URL"
        return f"the broker {url} is unreachable ({first_line(exc)}): start it, or fix ACR_INGEST_BROKER_URL"
    return None
