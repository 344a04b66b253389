"""The extraction wrapper: is the library here, and a file's database fingerprint with its duration.

The library (``acrcloud.acrcloud_extr_tool``, a C extension) answers ``None`` for input it cannot decode and
has been seen to read a nonsensical (negative) duration back from junk, so a fingerprint counts only when it
is non-empty and its duration is a plausible track length. It releases the GIL while it works: threads of
one process extract in parallel (benchmarks/fingerprint_upload.py).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

# Longer than any track; a larger duration read back from a fingerprint means it was not audio.
MAX_DURATION_MS = 24 * 3600 * 1000
INSTALL_HINT = "install the extraction library: pip install 'acr-ingest[fingerprint]'"


class NotDecodable(ValueError):
    """The library could not make a fingerprint of this file: it is not audio it can decode."""


@dataclass(frozen=True)
class Fingerprint:
    data: bytes
    duration_ms: int


def _wheel_platform() -> bool:
    """Whether pyacrcloud publishes a wheel for this machine (manylinux x86_64 only)."""
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


@lru_cache(maxsize=1)
def _library() -> ModuleType | None:
    try:
        from acrcloud import acrcloud_extr_tool
    except ImportError:
        return None
    return acrcloud_extr_tool


def unavailable_reason() -> str | None:
    """One line saying why fingerprints cannot be made here (what to install, or that this platform has no
    wheel), or None when they can."""
    if _library() is not None:
        return None
    if not _wheel_platform():
        return (
            f"the fingerprint library (pyacrcloud) has no wheel for this platform ({sys.platform} "
            f"{platform.machine()}; it ships for Linux x86_64 only): run the workers there, or send audio "
            "(ACR_INGEST_UPLOAD_AS=audio)"
        )
    return f"the fingerprint library is not installed: {INSTALL_HINT}, or send audio (ACR_INGEST_UPLOAD_AS=audio)"


def duration_ms(data: bytes) -> int | None:
    """The duration a fingerprint holds, or None when the bytes are not a plausible fingerprint."""
    lib = _library()
    assert lib is not None, "check unavailable_reason() first"
    if not data:
        return None
    value = lib.get_duration_ms_by_fpbuffer(data)
    if not isinstance(value, int) or not 0 < value <= MAX_DURATION_MS:
        return None
    return value


def extract(path: str | os.PathLike[str]) -> Fingerprint:
    """The database fingerprint (the kind a bucket stores) of a whole audio file; NotDecodable if it is not
    audio the library reads."""
    lib = _library()
    if lib is None:
        raise RuntimeError(unavailable_reason())
    data = lib.create_fingerprint_by_file(os.fspath(path), 0, 0, True)  # from 0 s, whole file, db fingerprint
    if not isinstance(data, bytes) or not data:
        raise NotDecodable("not decodable audio")
    duration = duration_ms(data)
    if duration is None:
        raise NotDecodable("not decodable audio (no plausible duration in its fingerprint)")
    return Fingerprint(data=data, duration_ms=duration)
