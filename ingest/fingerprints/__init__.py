"""ACRCloud fingerprints made locally from audio, with the vendor's extraction library (the optional
``fingerprint`` extra, ``pyacrcloud``): what an upload sends instead of the master when asked to."""

from ingest.fingerprints.extraction import (
    MAX_DURATION_MS,
    Fingerprint,
    NotDecodable,
    extract,
    unavailable_reason,
)
from ingest.fingerprints.pool import extract_in_pool

__all__ = ["MAX_DURATION_MS", "Fingerprint", "NotDecodable", "extract", "extract_in_pool", "unavailable_reason"]
