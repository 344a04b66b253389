"""How far a set of refs has got: our status of each (bucket, ref), counted, read in batches."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from sqlmodel import Session, col, select

from ingest.store.models import TrackFile

NOT_IMPORTED = "not imported"


def status_counts(session: Session, keys: Iterable[tuple[int, str]], batch_size: int = 1000) -> Counter[str]:
    """Count the rows of these (bucket, ref) pairs by status; pairs without a row count as NOT_IMPORTED."""
    counts: Counter[str] = Counter()
    batch: list[tuple[int, str]] = []

    def flush() -> None:
        by_bucket: dict[int, list[str]] = defaultdict(list)
        for bucket_id, ref in batch:
            by_bucket[bucket_id].append(ref)
        found = 0
        for bucket_id, refs in by_bucket.items():
            query = select(TrackFile.status).where(TrackFile.bucket_id == bucket_id, col(TrackFile.ref).in_(refs))
            for status in session.exec(query):
                counts[status] += 1
                found += 1
        counts[NOT_IMPORTED] += len(set(batch)) - found
        batch.clear()

    for key in keys:
        batch.append(key)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return +counts
