"""The Celery side: the app and its thin tasks. ``celery -A ingest.worker worker`` finds ``app`` here."""

from ingest.worker.app import app

__all__ = ["app"]
