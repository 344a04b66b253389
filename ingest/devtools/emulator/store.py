"""State of the emulator: stored files, request counters and the per-token rate-limit windows.

Each holder has its own lock so that counting a request never waits on a long list/search.
All methods return plain dicts in the API's shape, built under the lock and safe to serialize after.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Account id shown as ``uid`` in every file object (the emulator has a single account).
ACCOUNT_UID = 1

FAULT_KINDS = ("error", "created_then_error", "rate_limited", "latency", "reset")


def iso(ts: float) -> str:
    # Laravel's format. The real API stores whole seconds (".000000Z"); the emulator keeps the
    # microseconds so that an update within the same second still shows a newer updated_at.
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class FileRecord:
    id: int
    bucket_id: int
    acr_id: str
    title: str
    audio_id: str
    duration: float
    user_defined: dict[str, Any]
    #: The state the file reaches once processed: 1 ready or -1 error.
    final_state: int
    created_at: float
    updated_at: float
    #: Wall-clock time at which processing ends (state leaves 0). Computed on read: no timer thread.
    ready_at: float
    #: Bytes of the file part (audio, fingerprint uploads); None for URL and acrid uploads. Not in the API.
    received_bytes: int | None = None
    #: The upload's data_type (audio, fingerprint, audio_url, acrid). Not in the API's answers.
    data_type: str = "audio"

    def state(self, now: float) -> int:
        return self.final_state if now >= self.ready_at else 0

    def to_api(self, now: float) -> dict[str, Any]:
        """The object as lists, get, update, delete and move show it (duration a number)."""
        state = self.state(now)
        # Processing finishing is an update of the row: updated_at moves to that moment.
        updated = max(self.updated_at, self.ready_at) if state != 0 else self.updated_at
        return {
            "id": self.id,
            "uid": ACCOUNT_UID,
            "bucket_id": self.bucket_id,
            "acr_id": self.acr_id,
            "state": state,
            "title": self.title,
            # Replaced (never mutated) on update, so sharing it with a response being encoded is safe.
            "user_defined": self.user_defined,
            # The seed's lists show whole seconds (79 for an upload that said "78.524082").
            "duration": math.ceil(self.duration),
            "audio_id": self.audio_id,
            "created_at": iso(self.created_at),
            "updated_at": iso(updated),
        }

    def to_upload_api(self) -> dict[str, Any]:
        """The object as the upload answers it: key order of the seed, duration a string, state 0."""
        return {
            "uid": ACCOUNT_UID,
            "acr_id": self.acr_id,
            "bucket_id": self.bucket_id,
            "state": 0,
            "title": self.title,
            "audio_id": self.audio_id,
            "duration": f"{self.duration:.6f}",
            "user_defined": self.user_defined,
            "updated_at": iso(self.updated_at),
            "created_at": iso(self.created_at),
            "id": self.id,
        }


class Store:
    """All files of the (single) account, indexed by id, by bucket and by acr_id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[int, FileRecord] = {}
        self._by_bucket: dict[int, dict[int, FileRecord]] = {}
        # An acr_id may repeat (data_type=acrid adds an existing acr_id), hence a set of ids.
        self._by_acr: dict[str, dict[int, None]] = {}
        self._next_id = 1

    def clear(self) -> None:
        # Ids keep increasing across a reset, like an auto-increment column: a stale id held by a
        # client must never name a new, unrelated file.
        with self._lock:
            self._files.clear()
            self._by_bucket.clear()
            self._by_acr.clear()

    def create(
        self,
        *,
        bucket_id: int,
        title: str,
        audio_id: str,
        user_defined: dict[str, Any],
        duration: float,
        final_state: int,
        processing_delay: float,
        acr_id: str | None = None,
        received_bytes: int | None = None,
        data_type: str = "audio",
    ) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            rec = FileRecord(
                id=self._next_id,
                bucket_id=bucket_id,
                acr_id=(acr_id or uuid.uuid4().hex).lower(),
                title=title,
                audio_id=audio_id,
                duration=duration,
                user_defined=user_defined,
                final_state=final_state,
                created_at=now,
                updated_at=now,
                ready_at=now + max(0.0, processing_delay),
                received_bytes=received_bytes,
                data_type=data_type,
            )
            self._next_id += 1
            self._files[rec.id] = rec
            self._by_bucket.setdefault(bucket_id, {})[rec.id] = rec
            self._by_acr.setdefault(rec.acr_id, {})[rec.id] = None
            return rec.to_upload_api()

    # --- lookups (caller holds the lock) -------------------------------------------------------

    def _resolve(self, keys: Iterable[str], bucket_id: int | None) -> list[FileRecord]:
        """Files named by numeric ids or acr_ids, in the order asked, each once; unknown keys skipped.

        ``bucket_id`` None searches every bucket of the account (move does).
        """
        found: dict[int, FileRecord] = {}
        for key in keys:
            candidates: list[FileRecord] = []
            if key.isdigit() and (rec := self._files.get(int(key))) is not None:
                candidates.append(rec)
            else:
                candidates.extend(self._files[i] for i in self._by_acr.get(key.lower(), ()))
            for rec in candidates:
                if bucket_id is None or rec.bucket_id == bucket_id:
                    found.setdefault(rec.id, rec)
        return list(found.values())

    def _resolve_all(self, keys: list[str], bucket_id: int | None) -> list[FileRecord] | None:
        """Like ``_resolve``, but None when any key names no file (a strict API's 404 for the batch)."""
        if any(not self._resolve([key], bucket_id) for key in keys):
            return None
        return self._resolve(keys, bucket_id)

    def _pick(self, keys: list[str], bucket_id: int | None, all_or_nothing: bool) -> list[FileRecord]:
        return (self._resolve_all(keys, bucket_id) or []) if all_or_nothing else self._resolve(keys, bucket_id)

    def _remove(self, rec: FileRecord) -> None:
        del self._files[rec.id]
        bucket = self._by_bucket[rec.bucket_id]
        del bucket[rec.id]
        if not bucket:
            del self._by_bucket[rec.bucket_id]
        ids = self._by_acr[rec.acr_id]
        del ids[rec.id]
        if not ids:
            del self._by_acr[rec.acr_id]

    # --- API operations --------------------------------------------------------------------------

    def get_many(self, bucket_id: int, keys: list[str], *, all_or_nothing: bool = False) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            return [rec.to_api(now) for rec in self._pick(keys, bucket_id, all_or_nothing)]

    def update(
        self, bucket_id: int, key: str, *, title: str | None, user_defined: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        now = time.time()
        with self._lock:
            found = self._resolve([key], bucket_id)
            if not found:
                return None
            rec = found[0]
            if title is not None:
                rec.title = title
            if user_defined is not None:
                rec.user_defined = user_defined
            rec.updated_at = now
            return rec.to_api(now)

    def delete_many(self, bucket_id: int, keys: list[str], *, all_or_nothing: bool = False) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            found = self._pick(keys, bucket_id, all_or_nothing)
            for rec in found:
                self._remove(rec)
            return [rec.to_api(now) for rec in found]

    def move_many(
        self, target_bucket_id: int, keys: list[str], *, all_or_nothing: bool = False
    ) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            found = self._pick(keys, None, all_or_nothing)
            for rec in found:
                if rec.bucket_id != target_bucket_id:
                    del self._by_bucket[rec.bucket_id][rec.id]
                    if not self._by_bucket[rec.bucket_id]:
                        del self._by_bucket[rec.bucket_id]
                    rec.bucket_id = target_bucket_id
                    self._by_bucket.setdefault(target_bucket_id, {})[rec.id] = rec
                rec.updated_at = now
            return [rec.to_api(now) for rec in found]

    def list_page(
        self,
        bucket_id: int,
        *,
        search: str = "",
        state: int | None = None,
        sort: str = "id",
        descending: bool = False,
        page: int = 1,
        per_page: int = 20,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a bucket's files and the total that match. Linear in the bucket's size."""
        now = time.time()
        needle = search.casefold()
        with self._lock:
            recs = [
                r
                for r in self._by_bucket.get(bucket_id, {}).values()
                if (not needle or needle in r.title.casefold()) and (state is None or r.state(now) == state)
            ]
            if sort == "state":
                recs.sort(key=lambda r: (r.state(now), r.id), reverse=descending)
            elif descending:
                recs.reverse()  # dict order is id order: ids only grow
            start = (page - 1) * per_page
            return [r.to_api(now) for r in recs[start : start + per_page]], len(recs)

    def snapshot(self, bucket_id: int | None = None) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            recs = self._files.values() if bucket_id is None else self._by_bucket.get(bucket_id, {}).values()
            out = [rec.to_api(now) for rec in recs]
        out.sort(key=lambda f: f["id"])
        # Callers (tests) may mutate what they get; the store's own dicts must not change with it.
        return copy.deepcopy(out)

    def received_bytes(self, bucket_id: int | None = None) -> dict[int, int]:
        """Bytes of the file part each file was uploaded with, by id (URL and acrid uploads left out)."""
        with self._lock:
            recs = self._files.values() if bucket_id is None else self._by_bucket.get(bucket_id, {}).values()
            return {r.id: r.received_bytes for r in recs if r.received_bytes is not None}

    def data_types(self, bucket_id: int | None = None) -> dict[int, str]:
        """The data_type each file was uploaded as, by id."""
        with self._lock:
            recs = self._files.values() if bucket_id is None else self._by_bucket.get(bucket_id, {}).values()
            return {r.id: r.data_type for r in recs}

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)


class Stats:
    """Request counters by route template and status, fault counters by kind, uploads created."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_route: Counter[str] = Counter()
            self._by_status: Counter[str] = Counter()
            self._faults: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
            self._uploads_created = 0
            self._searches: Counter[str] = Counter()

    def searched(self, bucket_id: int, term: str) -> None:
        """A list call with ``search``: tests tell a retry that looked for its file from one that did not."""
        with self._lock:
            self._searches[f"{bucket_id}:{term}"] += 1

    def record(self, route: str, status: int | None) -> None:
        """One API request; ``status`` None for a connection dropped without a response."""
        with self._lock:
            self._requests += 1
            self._by_route[route] += 1
            if status is not None:
                self._by_status[str(status)] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def upload_created(self) -> None:
        with self._lock:
            self._uploads_created += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_route": dict(self._by_route),
                "by_status": dict(self._by_status),
                "faults": dict(self._faults),
                "uploads_created": self._uploads_created,
                "searches": dict(self._searches),
            }


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int


class RateLimiter:
    """A sliding window per token. ``limit`` None = unlimited (settable at runtime), in requests per second on
    average over ``window`` seconds: the API allows ``limit * window`` requests in any ``window`` seconds and
    announces that number as ``X-RateLimit-Limit`` (the vendor page does not say how long its window is;
    Laravel's default is a minute: ``limit=1, window=60``).

    With the default one-second window, a limit below 1 widens the window instead (0.5 = one request per two
    seconds).
    """

    def __init__(self, limit: float | None, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def clear(self) -> None:
        with self._lock:
            self._hits.clear()

    def hit(self, key: str) -> RateDecision | None:
        """Count one request of ``key``; None when no limit is set. Refused requests are not counted."""
        limit = self.limit
        if limit is None or limit <= 0:
            return None
        if self.window != 1.0:
            cap, window = max(1, int(limit * self.window)), self.window
        else:
            cap, window = max(1, int(limit)), (1.0 if limit >= 1 else 1.0 / limit)
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= cap:
                wait = hits[0] + window - now
                return RateDecision(False, cap, 0, max(1, math.ceil(wait)))
            hits.append(now)
            return RateDecision(True, cap, cap - len(hits), 0)
