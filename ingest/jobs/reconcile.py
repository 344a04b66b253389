"""Reconcile: list a whole bucket and compare it with our rows.

Classes of difference (``Drift``) and the ``--fix`` policy for each:

- unknown: a file carrying no ref of ours (added by hand, another tool). Left alone; deleted only
  when asked (``delete_unknown``).
- twin: a file carrying the ref of a row whose file is another one (a late or repeated POST).
  Deleted (a delete job by file id).
- leftover: a file carrying the ref of a row we deleted or cancelled. Deleted (a delete job by id).
- adoptable: a file carrying the ref of a row whose upload failed (its POST created the file after
  all). Adopted: the row takes its id, acr_id and state (the oldest such file; later ones are twins).
- vanished: a row with a file id the bucket does not hold. Uploaded again from the row's own source.
- metadata: the file's title/user_defined differ from the row's while no update is pending. The
  row's metadata is sent again (an update job).
- state: the file's processing state differs from the row's. The bucket's state is recorded.

Memory stays flat in the bucket's size: files are compared page by page; only the ids seen (to find
vanished rows) are kept. Rows with an upload in flight (queued, uploading) are left alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from sqlmodel import Session, col, select

from ingest.api.client import AcrCloudClient
from ingest.api.schemas import BucketFile
from ingest.jobs.identity import carried_ref, same_meta
from ingest.jobs.managed_files import adopt, set_remote_state
from ingest.store.models import FileStatus, TrackFile, utcnow

EXAMPLES = 5
VANISHED_REASON = "vanished from the bucket (found by reconcile)"


class Drift(StrEnum):
    UNKNOWN = "unknown"
    TWIN = "twin"
    LEFTOVER = "leftover"
    ADOPTABLE = "adoptable"
    VANISHED = "vanished"
    METADATA = "metadata"
    STATE = "state"


@dataclass(frozen=True)
class Finding:
    drift: Drift
    ref: str | None
    file_id: int | None  # the remote file's id (for vanished: the id the row expected)
    row_id: int | None
    detail: str = ""
    remote: BucketFile | None = field(default=None, compare=False, repr=False)  # what the bucket holds


@dataclass
class Report:
    bucket_id: int
    files: int = 0
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(f.drift.value for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        examples: dict[str, list[dict[str, Any]]] = {}
        for f in self.findings:
            bucket = examples.setdefault(f.drift.value, [])
            if len(bucket) < EXAMPLES:
                bucket.append({k: v for k, v in asdict(f).items() if k not in ("drift", "remote")})
        return {
            "bucket_id": self.bucket_id,
            "files_in_bucket": self.files,
            "rows_checked": self.rows,
            "counts": {d.value: self.counts[d.value] for d in Drift},
            "examples": examples,
        }


def _pages(client: AcrCloudClient, bucket_id: int, per_page: int) -> Iterator[list[BucketFile]]:
    page: list[BucketFile] = []
    for f in client.iter_files(bucket_id, per_page=per_page):
        page.append(f)
        if len(page) >= per_page:
            yield page
            page = []
    if page:
        yield page


def _compare(row: TrackFile, remote: BucketFile) -> Iterator[Finding]:
    if row.remote_state != remote.state and FileStatus(row.status) in (
        FileStatus.PROCESSING,
        FileStatus.READY,
        FileStatus.ERROR,
    ):
        yield Finding(
            Drift.STATE, row.ref, remote.id, row.id, f"ours {row.remote_state}, bucket {remote.state}", remote
        )
    if row.synced_meta_version >= row.meta_version and (not same_meta(remote, row.title, row.user_defined)):
        yield Finding(Drift.METADATA, row.ref, remote.id, row.id, f"bucket title {remote.title!r}, ours {row.title!r}")


def scan(session: Session, client: AcrCloudClient, bucket_id: int, per_page: int) -> Report:
    report = Report(bucket_id)
    seen: set[int] = set()
    adoptable: set[str] = set()
    for page in _pages(client, bucket_id, per_page):
        report.files += len(page)
        refs = {r for f in page if (r := carried_ref(f)) is not None}
        rows = {
            row.ref: row
            for row in session.exec(
                select(TrackFile).where(TrackFile.bucket_id == bucket_id, col(TrackFile.ref).in_(refs))
            )
        }
        for f in page:
            seen.add(f.id)
            ref = carried_ref(f)
            row = rows.get(ref) if ref is not None else None
            if row is None:
                report.findings.append(Finding(Drift.UNKNOWN, ref, f.id, None, f"title {f.title!r}"))
            elif row.remote_id == f.id:
                report.findings.extend(_compare(row, f))
            elif FileStatus(row.status) in FileStatus.gone():
                report.findings.append(Finding(Drift.LEFTOVER, ref, f.id, row.id, f"our row is {row.status}"))
            elif row.status == FileStatus.FAILED and ref not in adoptable:
                adoptable.add(ref)  # type: ignore[arg-type]
                report.findings.append(Finding(Drift.ADOPTABLE, ref, f.id, row.id, "our upload failed", f))
            elif row.remote_id is not None or row.status == FileStatus.FAILED:
                report.findings.append(Finding(Drift.TWIN, ref, f.id, row.id, f"our file is {row.remote_id}"))
            # else: an upload in flight; its own job looks for this file before posting again
    query = select(TrackFile.id, TrackFile.ref, TrackFile.remote_id).where(
        TrackFile.bucket_id == bucket_id,
        col(TrackFile.status).in_((FileStatus.PROCESSING, FileStatus.READY, FileStatus.ERROR)),
        col(TrackFile.remote_id).is_not(None),
    )
    for row_id, ref, remote_id in session.exec(query):
        report.rows += 1
        if remote_id not in seen:
            report.findings.append(Finding(Drift.VANISHED, ref, remote_id, row_id, "not in the bucket"))
    return report


def fix_in_tables(session: Session, report: Report) -> list[Finding]:
    """The fixes that are bookkeeping only: adopt files of failed uploads, record states, and mark
    vanished rows failed (so the upload the caller enqueues is a re-upload). Returns the adopted files
    whose metadata differs from the row's (the caller sends an update)."""
    resend_meta: list[Finding] = []
    by_drift: dict[Drift, list[Finding]] = {}
    for f in report.findings:
        by_drift.setdefault(f.drift, []).append(f)
    for f in by_drift.get(Drift.ADOPTABLE, []):
        row = session.get(TrackFile, f.row_id)
        found = f.remote
        if row is None or found is None or row.status != FileStatus.FAILED:
            continue
        same = same_meta(found, row.title, row.user_defined)
        adopt(row, found, synced_version=row.meta_version if same else 0)
        session.add(row)
        if not same:
            resend_meta.append(f)
    for f in by_drift.get(Drift.STATE, []):
        row = session.get(TrackFile, f.row_id)
        found = f.remote
        if row is not None and found is not None and row.remote_id == found.id:
            set_remote_state(row, found.state)
            session.add(row)
    for f in by_drift.get(Drift.VANISHED, []):
        row = session.get(TrackFile, f.row_id)
        if row is not None and row.remote_id == f.file_id:
            row.status, row.reason, row.updated_at = FileStatus.FAILED, VANISHED_REASON, utcnow()
            # Nothing of the old file is left to find: the new upload posts at once.
            row.post_started_at = None
            session.add(row)
    session.commit()
    return resend_meta
