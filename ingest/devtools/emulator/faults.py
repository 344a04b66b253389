"""Fault knobs of the emulator and the seeded dice that decide when a knob fires.

Tests mutate :class:`Faults` directly (``emu.faults.error_rate = 0.3``); the app reads the fields on
every request, so a change applies to the next request without any restart.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from dataclasses import dataclass, fields
from typing import Any

_RATES = ("error_rate", "created_then_error_rate", "latency_rate", "reset_rate")


@dataclass
class Faults:
    """What to break. Every knob defaults to off."""

    #: Fraction of API requests answered 500/502/503 before anything else happens.
    error_rate: float = 0.0
    #: Fraction of uploads that store the file and then answer 500 (the ambiguous failure).
    created_then_error_rate: float = 0.0
    #: Seconds of delay added to a request, before it is handled.
    latency: float = 0.0
    #: Fraction of requests delayed by ``latency``; 0 with ``latency`` > 0 means every request.
    latency_rate: float = 0.0
    #: Extra seconds in every upload, after the body is read and before the file is stored.
    upload_delay: float = 0.0
    #: The next N API requests answer 429 (decremented as they are served).
    burst_429: int = 0
    #: The next N uploads (POST of a file) answer 429; other requests are untouched, so a test that means one
    #: upload's 429 is not raced by a state poll that takes it first.
    upload_burst_429: int = 0
    #: Retry-After of the injected 429s (sent rounded up to whole seconds, as HTTP wants).
    retry_after: float = 1.0
    #: Fraction of API requests whose connection is closed without any response.
    reset_rate: float = 0.0
    #: Bytes per second at which uploaded file parts are read, shared by all uploads at once (an uplink of
    #: that speed: 100 Mbit/s is 12_500_000); 0 reads as fast as they come.
    upload_bytes_per_second: float = 0.0

    def reset(self) -> None:
        """Back to all-off, in place (the app holds a reference to this very object)."""
        for f in fields(self):
            setattr(self, f.name, f.default)

    def update(self, **kw: Any) -> None:
        """Set several knobs at once; all values are checked before any is applied."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise TypeError(f"unknown fault knob(s): {', '.join(unknown)}")
        clean: dict[str, Any] = {}
        for name, value in kw.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
            if name in _RATES and value > 1:
                raise ValueError(f"{name} is a fraction between 0 and 1, not {value!r}")
            if name in ("burst_429", "upload_burst_429"):
                if value != int(value):
                    raise ValueError(f"{name} must be a whole number, not {value!r}")
                clean[name] = int(value)
            else:
                clean[name] = float(value)
        for name, value in clean.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FaultInjector:
    """Decides, per request, which knob fires. One ``random.Random(seed)`` behind a lock.

    Dice are only rolled for rates strictly between 0 and 1, so a seeded run draws the same sequence
    whatever other knobs are at 0 or 1.
    """

    ERROR_STATUSES = (500, 502, 503)

    def __init__(self, faults: Faults, seed: int | None = None) -> None:
        self.faults = faults
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def reseed(self) -> None:
        with self._lock:
            self._rng.seed(self._seed)

    def _hit(self, rate: float) -> bool:
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._lock:
            return self._rng.random() < rate

    def latency(self) -> float:
        """Seconds to sleep before handling this request (0 = none)."""
        f = self.faults
        if f.latency <= 0:
            return 0.0
        if f.latency_rate <= 0 or self._hit(f.latency_rate):
            return f.latency
        return 0.0

    def reset(self) -> bool:
        return self._hit(self.faults.reset_rate)

    def take_burst(self, upload: bool = False) -> bool:
        # Check-and-decrement under the lock: N concurrent requests must consume exactly N.
        with self._lock:
            if self.faults.burst_429 > 0:
                self.faults.burst_429 -= 1
                return True
            if upload and self.faults.upload_burst_429 > 0:
                self.faults.upload_burst_429 -= 1
                return True
            return False

    def error_status(self) -> int | None:
        if not self._hit(self.faults.error_rate):
            return None
        with self._lock:
            return self._rng.choice(self.ERROR_STATUSES)

    def created_then_error(self) -> bool:
        return self._hit(self.faults.created_then_error_rate)

    def retry_after_header(self) -> str:
        return str(max(0, math.ceil(self.faults.retry_after)))
