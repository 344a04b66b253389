"""Our identity of a file in the bucket: the ref, carried in two places.

``audio_id`` is what we relied on, but the vendor page lists it only in responses: the API may drop it
(issue 8). ``user_defined`` is documented and kept, so every upload and every metadata update also
carries the ref under the reserved key ``_acr_ingest_ref``. A file is ours when EITHER place holds the
ref, so files uploaded before the key existed (audio_id only) are still found. The key is ours, not the
user's: it is refused in job input, never stored in our rows and stripped before metadata is compared.
"""

from __future__ import annotations

from typing import Any

from ingest.api.schemas import BucketFile

REF_KEY = "_acr_ingest_ref"


def tagged(user_defined: dict[str, Any], ref: str) -> dict[str, Any]:
    """The user_defined to send: the user's keys plus the ref."""
    return {**user_defined, REF_KEY: ref}


def visible(user_defined: dict[str, Any]) -> dict[str, Any]:
    """What the user sees and what our rows hold: user_defined without the reserved key."""
    return {k: v for k, v in user_defined.items() if k != REF_KEY}


def carried_ref(remote: BucketFile) -> str | None:
    """The ref this remote file carries (the reserved key first, then ``audio_id``), or None for a file that
    carries none (added by hand, by another tool, or by an upload that sent neither)."""
    key = remote.user_defined.get(REF_KEY)
    if isinstance(key, str) and key.strip():
        return key.strip()
    return (remote.audio_id or "").strip() or None


def carries_ref(remote: BucketFile, ref: str) -> bool:
    return remote.audio_id == ref or remote.user_defined.get(REF_KEY) == ref


def same_meta(remote: BucketFile, title: str, user_defined: dict[str, Any]) -> bool:
    """Whether the bucket holds this title and user_defined (the reserved key aside)."""
    return (remote.title, visible(remote.user_defined)) == (title, visible(user_defined))
