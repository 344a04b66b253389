"""Alembic migrations of the acr-ingest tables (run them with ``acr-ingest db upgrade``; see ingest/store/schema.py)."""
