"""Declarative sync: what it takes to make one bucket hold exactly a manifest's refs.

The plan, from the manifest (rows as for the import) and our tables, never from the bucket (reconcile
compares with the bucket):
- upload: a ref we hold nowhere (or whose file failed, was cancelled or deleted);
- update: a ref held in this bucket with the same source and another title/user_defined;
- move: a ref held (active, same source) in another bucket and not in this one: moved here;
- delete (only with ``prune``): a ref held in this bucket that the manifest does not name.
A row naming another bucket, a ref given twice or the same ref for another source is refused. The
plan depends only on the manifest and the tables, in manifest order (deletes by ref): planning twice
gives the same plan, and once the applied plan has settled, planning again gives an empty one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from ingest.jobs.bulk_uploads import Item, Refused, batches, error_text, existing_rows
from ingest.jobs.errors import InputError
from ingest.jobs.managed_files import UploadJob, UploadPlan, data_type_of, plan_upload, send_as_of, source_of
from ingest.store.models import FileStatus, TrackFile


@dataclass
class SyncPlan:
    bucket_id: int
    uploads: list[UploadJob] = field(default_factory=list)
    updates: list[UploadJob] = field(default_factory=list)
    moves: list[tuple[int, str]] = field(default_factory=list)  # (from bucket, ref)
    deletes: list[str] = field(default_factory=list)
    refused: list[tuple[int, str | None, str]] = field(default_factory=list)  # (row, ref, error)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.uploads or self.updates or self.moves or self.deletes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket_id": self.bucket_id,
            "uploads": [
                {"ref": j.ref, "title": j.title, "source": source_of(j), "send_as": send_as_of(j)} for j in self.uploads
            ],
            "updates": [{"ref": j.ref, "title": j.title, "user_defined": j.user_defined} for j in self.updates],
            "moves": [{"ref": ref, "from_bucket": src} for src, ref in self.moves],
            "deletes": [{"ref": ref} for ref in self.deletes],
            "refused": [{"row": n, "ref": ref, "error": e} for n, ref, e in self.refused],
            "unchanged": self.unchanged,
        }


def _held_elsewhere(session: Session, bucket_id: int, jobs: list[UploadJob]) -> dict[str, TrackFile]:
    """Active rows of these refs in other buckets with the same source: candidates to move here."""
    if not jobs:
        return {}
    query = select(TrackFile).where(
        col(TrackFile.ref).in_([j.ref for j in jobs]),
        TrackFile.bucket_id != bucket_id,
        col(TrackFile.status).in_(FileStatus.active()),
    )
    wanted = {j.ref: j for j in jobs}
    found: dict[str, TrackFile] = {}
    for row in session.exec(query.order_by(col(TrackFile.id))):
        job = wanted[row.ref]
        if row.source == source_of(job) and row.data_type == data_type_of(job):
            found.setdefault(row.ref, row)
    return found


def plan_sync(session: Session, items: Iterable[Item], bucket_id: int, *, prune: bool) -> SyncPlan:
    plan = SyncPlan(bucket_id)
    first_row: dict[str, int] = {}
    for batch in batches(items, 1000):
        jobs: list[tuple[int, UploadJob]] = []
        for n, item in batch:
            if isinstance(item, Refused):
                plan.refused.append((n, item.ref, error_text(item.error)))
            elif item.bucket_id != bucket_id:
                plan.refused.append(
                    (n, item.ref, f"bucket: this sync is of bucket {bucket_id}; the row names {item.bucket_id}")
                )
            elif item.ref in first_row:
                plan.refused.append(
                    (n, item.ref, f"ref: already given in row {first_row[item.ref]}; keep one row per ref")
                )
            else:
                first_row[item.ref] = n
                jobs.append((n, item))
        existing = existing_rows(session, [j for _, j in jobs])
        decided: list[tuple[int, UploadJob, UploadPlan]] = []
        for n, job in jobs:
            try:
                decided.append((n, job, plan_upload(existing.get((bucket_id, job.ref)), job)))
            except InputError as exc:
                plan.refused.append((n, job.ref, error_text(exc)))
        fresh = [job for _, job, p in decided if p in (UploadPlan.NEW, UploadPlan.REUPLOAD)]
        elsewhere = _held_elsewhere(session, bucket_id, fresh)
        for _, job, p in decided:
            if p is UploadPlan.NOOP:
                plan.unchanged += 1
            elif p is UploadPlan.UPDATE:
                plan.updates.append(job)
            elif job.ref in elsewhere:
                plan.moves.append((elsewhere[job.ref].bucket_id, job.ref))
            else:
                plan.uploads.append(job)
    plan.refused.sort()
    if prune:
        query = select(TrackFile.ref).where(
            TrackFile.bucket_id == bucket_id, col(TrackFile.status).in_(FileStatus.active())
        )
        plan.deletes = sorted(ref for ref in session.exec(query) if ref not in first_row)
    return plan
