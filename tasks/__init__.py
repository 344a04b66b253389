"""An alias for the Celery app, so ``celery -A tasks worker`` works from a checkout. No logic lives here:
the app and its tasks are in ``ingest.worker``."""

from ingest.worker import app

__all__ = ["app"]
