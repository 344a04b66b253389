"""acr-ingest: keep ACRCloud buckets in step with a music catalog."""

__version__ = "0.1.0"
