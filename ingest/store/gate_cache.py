"""A per-process memory that the API's gates (the auth hold and the circuit breaker) were both clear a moment ago.

Reading both rows before every call, and lifting/resetting them after every success, was a third of an upload
job's statements. While both were clear within the last ``seconds`` (``ACR_INGEST_GATE_CACHE_SECONDS``), a job
skips both; a hold or a breaker opened by another worker is seen at most that late (one more call each), and
anything this process records about them (a hold, a failure counted) forgets the memory at once.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_clear_until = 0.0


def clear() -> bool:
    """Both gates were read clear (no hold, breaker closed with no failure counted) within the cache time."""
    return time.monotonic() < _clear_until


def remember_clear(seconds: float) -> None:
    global _clear_until
    with _lock:
        _clear_until = time.monotonic() + seconds


def forget() -> None:
    """Something was recorded about the gates: read them again before the next call."""
    global _clear_until
    with _lock:
        _clear_until = 0.0
