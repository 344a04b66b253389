"""Operator commands: ``health`` (is everything this process needs there?) and ``config`` (the effective
settings, secrets masked)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from pydantic import SecretStr

from ingest.redact import mask_url_credentials
from ingest.settings import Settings, get_settings


@click.command("health")
def health() -> None:
    """Check the broker, the database (schema at head), the API and the token; exit 1 if any fails."""
    from ingest.worker.health import run_checks

    checks = run_checks(get_settings())
    for check in checks:
        click.echo(check.line())
    failed = [c.name for c in checks if not c.ok]
    if failed:
        click.echo(f"unhealthy: {', '.join(failed)}", err=True)
        sys.exit(1)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting as its ACR_INGEST_* variable, the token masked and any URL's password masked."""
    out: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = "***" if value.get_secret_value() else None
        elif isinstance(value, str):
            value = mask_url_credentials(value)
        elif value is not None and not isinstance(value, int | float | bool):
            value = str(value)
        out[f"ACR_INGEST_{name.upper()}"] = value
    out["(effective api url)"] = settings.base_url
    out["(token in force)"] = "set" if settings.current_token() else "NOT SET"
    return out


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config(as_json: bool) -> None:
    """Print the effective settings (environment, .env and defaults), the token and URL passwords masked."""
    settings = get_settings()
    values = effective_settings(settings)
    probe = probe_section(settings)
    if as_json:
        click.echo(json.dumps({**values, "(api assumptions)": probe}, indent=2))
        return
    for key, value in values.items():
        click.echo(f"{key}={'' if value is None else value}")
    click.echo("")
    for line in probe_lines(probe):
        click.echo(line)


def probe_section(settings: Settings) -> dict[str, Any]:
    """What the saved probe report (``acr-ingest probe``) found out about the real API's unknowns."""
    from ingest.cli.probe import confirmations, load

    path = settings.probe_report
    try:
        report = load(path)
    except ValueError as exc:
        return {"report": str(path), "error": str(exc)}
    if report is None:
        return {"report": str(path), "error": f"no probe report: run `acr-ingest probe --bucket ID` (saved to {path})"}
    return {
        "report": str(path),
        "probed_at": report.get("probed_at"),
        "base_url": mask_url_credentials(str(report.get("base_url", ""))),
        "matches": report.get("matches"),
        "assumptions": confirmations(report),
    }


def probe_lines(probe: dict[str, Any]) -> list[str]:
    if "error" in probe:
        return [f"api assumptions: {probe['error']}"]
    marks = {True: "confirmed", False: "REFUTED", None: "not observed"}
    lines = [
        f"api assumptions (probe of {probe['base_url']} at {probe['probed_at']}, {probe['report']}):",
        f"  matches emulator profile(s): {', '.join(probe['matches'] or [])}",
    ]
    lines += [f"  {marks.get(v, str(v)):<12} {name}" for name, v in probe["assumptions"].items()]
    return lines


@click.command("flower", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    envvar="FLOWER_ADDRESS",
    help="Interface to listen on (0.0.0.0 only inside a container whose port is published on loopback).",
)
@click.option("--port", default=5555, show_default=True, envvar="FLOWER_PORT")
@click.pass_context
def flower(ctx: click.Context, address: str, port: int) -> None:
    """Run Flower with safe defaults: loopback only, and never without FLOWER_BASIC_AUTH (extra args go to it).

    Flower's /healthcheck and /metrics are never behind its auth: keep its port off public networks."""
    import os

    from ingest.worker.app import app

    get_settings()  # a settings mistake is told here in one line, not from inside Celery's command line
    if not os.environ.get("FLOWER_BASIC_AUTH", "").strip():
        raise click.UsageError(
            "FLOWER_BASIC_AUTH is not set: set it to user:password (comma-separate several); "
            "without it anyone who reaches the port sees every task's arguments"
        )
    app.start(["flower", f"--address={address}", f"--port={port}", *ctx.args])
