"""The Celery side of acr-ingest: the app, its thin tasks and the beat schedule."""
