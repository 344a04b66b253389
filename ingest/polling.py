"""The periodic state poll: files still processing are fetched ``ids_chunk_size`` at a time (one GET
of comma-separated ids per chunk, so a cycle costs ceil(n/chunk) calls) under a lease, so two beats
or overlapping cycles never poll twice."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlmodel import select

from ingest import auth_hold, leases
from ingest.batches import chunks
from ingest.context import JobContext
from ingest.db import session_scope
from ingest.errors import ApiError, AuthError, NotFoundError
from ingest.files import set_remote_state
from ingest.models import FileStatus, TrackFile, utcnow

log = logging.getLogger("ingest.poll")
LEASE = "poll_states"
VANISHED = "no longer in the bucket (deleted outside acr-ingest?)"


def poll_states(ctx: JobContext, bucket_id: int | None = None) -> dict[str, Any]:
    """One cycle over every processing file (or one bucket's); returns counts, including API calls."""
    settings = ctx.settings
    counts = {"checked": 0, "ready": 0, "error": 0, "vanished": 0, "calls": 0}
    with session_scope() as s:
        if not leases.acquire(s, LEASE, ctx.owner, max(settings.poll_interval, settings.read_timeout) * 2):
            return {"skipped": "another poll is running"}
        try:
            if not auth_hold.may_call(s, settings.current_token(), settings.auth_hold_recheck):
                return {"skipped": "held: the API rejects the access token"}
            query = select(TrackFile.id, TrackFile.bucket_id, TrackFile.remote_id).where(
                TrackFile.status == FileStatus.PROCESSING, TrackFile.remote_id.is_not(None)  # type: ignore[union-attr]
            )
            if bucket_id is not None:
                query = query.where(TrackFile.bucket_id == bucket_id)
            rows = s.exec(query.order_by(TrackFile.id)).all()
            by_bucket: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for file_id, bucket_id, remote_id in rows:
                by_bucket[bucket_id].append((file_id, remote_id))
            for bucket_id, items in by_bucket.items():
                for chunk in chunks(items, settings.ids_chunk_size):
                    counts["calls"] += 1
                    try:
                        found = {f.id: f for f in ctx.client.get_files(bucket_id, [r for _, r in chunk])}
                    except NotFoundError:
                        found = {}
                    for file_id, remote_id in chunk:
                        row = s.get(TrackFile, file_id)
                        if row is None or row.status != FileStatus.PROCESSING:
                            continue  # changed meanwhile (deleted, moved...)
                        counts["checked"] += 1
                        remote = found.get(remote_id)
                        if remote is None:
                            row.status, row.reason, row.updated_at = FileStatus.ERROR, VANISHED, utcnow()
                            counts["vanished"] += 1
                        elif remote.state != row.remote_state or remote.state != 0:
                            set_remote_state(row, remote.state)
                            if row.status == FileStatus.READY:
                                counts["ready"] += 1
                            elif row.status == FileStatus.ERROR:
                                counts["error"] += 1
                        s.add(row)
                    s.commit()
            auth_hold.lift(s)
        except AuthError as exc:
            auth_hold.hold(s, settings.current_token(), str(exc))
            counts["held"] = 1
        except ApiError as exc:  # transient: the next cycle tries again
            log.warning("state poll stopped early: %s", exc)
            counts["error_stop"] = 1
        finally:
            leases.release(s, LEASE, ctx.owner)
    if counts["checked"]:
        log.info("state poll: %s", counts)
    return counts
