"""The ``acr-ingest`` command: enqueue, inspect, run processes, and the demo."""

from ingest.cli.commands import main

__all__ = ["main"]
