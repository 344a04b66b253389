"""Audio for the fingerprint tests and benchmark, made here with the stdlib: a gliding tone under noise (a
fingerprint needs a signal that changes; silence or one pure tone gives little to hash)."""

from __future__ import annotations

import array
import math
import random
import wave
from pathlib import Path


def write_wav(path: Path, seconds: float, *, rate: int = 44_100, channels: int = 2, seed: int = 0) -> Path:
    """A 16-bit PCM WAV of ``seconds``: a tone gliding from a seed-dependent pitch, plus noise."""
    rnd = random.Random(seed)
    base = 220.0 + 40.0 * (seed % 17)
    n = int(seconds * rate)
    samples = array.array("h", bytes(2 * n * channels))
    phase = 0.0
    for i in range(n):
        phase += 2 * math.pi * base * (1 + 0.5 * math.sin(i / rate / 3)) / rate
        value = int(9000 * math.sin(phase) + rnd.randint(-1500, 1500))
        for c in range(channels):
            samples[i * channels + c] = value
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path
