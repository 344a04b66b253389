"""Which of our refs a file in the bucket carries: the one place that decides it.

Today the ref travels as the upload's ``audio_id``. Another carrier (a reserved key inside
``user_defined``) is planned: extend ``carried_ref`` and every caller (the upload's search for its own
file, reconcile) follows.
"""

from __future__ import annotations

from ingest.api.schemas import BucketFile


def carried_ref(remote: BucketFile) -> str | None:
    """The ref this remote file carries, or None for a file that carries none (added by hand, by
    another tool, or by an upload that sent no ``audio_id``)."""
    ref = (remote.audio_id or "").strip()
    return ref or None
