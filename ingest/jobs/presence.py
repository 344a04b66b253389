"""Which of several ids a bucket holds, whichever way the API reports the missing ones.

The page does not say what a GET of comma-separated ids answers when some are unknown. Our emulator's
lenient profile lists the ones it found; a stricter API answers 404 for the whole list if ANY is
missing (issue 8). Guessing "none" from that 404 marks live files deleted or vanished, so a 404 for
several ids is split in halves until every id is answered: one GET when nothing is missing, about
2·k·log2(n) more for k missing ids among n, and 2n - 1 at worst (all n missing; a half known to hold
the missing one, because the other half was all there, is split without asking). A batch job spends at
most ``batches.CALLS_PER_RUN`` calls a run (plus one chunk's), and goes on in the next delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ingest.api.client import AcrCloudClient
from ingest.api.errors import NotFoundError
from ingest.api.schemas import BucketFile


def files_present(
    client: AcrCloudClient, bucket_id: int, keys: Sequence[Any], *, some_missing: bool = False
) -> list[BucketFile]:
    """The files among ``keys`` (numeric ids or acr_ids) that the bucket holds.

    ``some_missing``: the caller knows a GET of ``keys`` would 404 (its list 404'd and the other half was
    all there), so it is split without asking: a key alone is then missing for sure. Worst case, every key
    missing: 2n - 1 GETs for n keys; one GET when none is."""
    if not keys:
        return []
    if not some_missing:
        try:
            return client.get_files(bucket_id, list(keys))
        except NotFoundError:
            pass
    if len(keys) == 1:
        return []
    mid = len(keys) // 2
    left = files_present(client, bucket_id, keys[:mid])
    # Only a 404 of the whole list brings us here: if the left half is all there, the right half holds the missing.
    complete = len(matching(keys[:mid], left)) == mid
    return left + files_present(client, bucket_id, keys[mid:], some_missing=complete)


def matching(keys: Sequence[Any], files: list[BucketFile]) -> list[Any]:
    """The keys (ids or acr_ids, in their order) that name one of ``files``."""
    known = {str(f.id) for f in files} | {f.acr_id for f in files}
    return [k for k in keys if str(k) in known]
