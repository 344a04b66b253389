"""SQLModel tables: the files we manage, the operations we were asked to do, and coordination rows.

No column ever holds the access token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class FileStatus(StrEnum):
    """Local status of a managed file."""

    QUEUED = "queued"  # row written, upload enqueued, nothing sent yet
    UPLOADING = "uploading"  # a worker holds it; the POST may be in flight
    PROCESSING = "processing"  # the API has it (id/acr_id known), remote state 0
    READY = "ready"  # remote state 1
    ERROR = "error"  # remote state -1 (the API could not process the audio), or vanished
    FAILED = "failed"  # our upload failed permanently; kept for a human to retry
    CANCELLED = "cancelled"  # deleted before it was ever uploaded
    DELETED = "deleted"  # deleted from the bucket

    @classmethod
    def active(cls) -> tuple[FileStatus, ...]:
        """A row that holds its ref: enqueueing the ref again is a no-op or an update, not a new upload."""
        return (cls.QUEUED, cls.UPLOADING, cls.PROCESSING, cls.READY, cls.ERROR)

    @classmethod
    def gone(cls) -> tuple[FileStatus, ...]:
        """No file in the bucket, on purpose."""
        return (cls.DELETED, cls.CANCELLED)

    @classmethod
    def verifiable(cls) -> tuple[FileStatus, ...]:
        """States in which the poll may check a file for late requests (a twin, an older title)."""
        return (cls.PROCESSING, cls.READY, cls.ERROR, cls.DELETED)

    @classmethod
    def of_remote_state(cls, state: int | str) -> FileStatus:
        """The API's processing state (0 processing, 1 ready, -1 error) as our status. Any other value
        (2, "Inactive", ...) is undocumented: an error a human looks at, never processing forever."""
        known: dict[int | str, FileStatus] = {0: cls.PROCESSING, 1: cls.READY, -1: cls.ERROR}
        return known.get(state, cls.ERROR)

    @property
    def is_active(self) -> bool:
        return self in FileStatus.active()


class OpStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # retry scheduled (transient error, or waiting for an upload)
    HELD = "held"  # the API rejects our token; resumes by itself when a valid token is configured
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # a batch where some ids were unknown (see ``result``)
    FAILED = "failed"

    @classmethod
    def final(cls) -> tuple[OpStatus, ...]:
        return (cls.SUCCEEDED, cls.PARTIAL, cls.FAILED)

    @classmethod
    def unfinished(cls) -> tuple[OpStatus, ...]:
        return (cls.QUEUED, cls.RUNNING, cls.WAITING, cls.HELD)

    @property
    def is_final(self) -> bool:
        return self in OpStatus.final()


class OpKind(StrEnum):
    UPLOAD_URL = "upload_url"
    UPLOAD_FILE = "upload_file"
    UPDATE_META = "update_meta"
    DELETE_BATCH = "delete_batch"
    MOVE_BATCH = "move_batch"

    @classmethod
    def uploads(cls) -> tuple[OpKind, ...]:
        return (cls.UPLOAD_URL, cls.UPLOAD_FILE)

    @property
    def task_name(self) -> str:
        """The stable Celery task name producers send it by."""
        return f"ingest.{self.value}"


class TrackFile(SQLModel, table=True):
    __tablename__ = "track_files"
    __table_args__ = (UniqueConstraint("bucket_id", "ref", name="uq_track_files_bucket_ref"),)

    id: int | None = Field(default=None, primary_key=True)
    ref: str = Field(index=True, max_length=255)
    # The API's ids are BIGINT: bucket ids past 2^31 exist, and file ids may grow as large.
    bucket_id: int = Field(index=True, sa_type=BigInteger)
    data_type: str = Field(max_length=32)
    # What the last upload posted (audio, fingerprint or audio_url): audio may go as its fingerprint, made
    # on the worker; then its size and the duration it holds are kept beside it.
    send_as: str = Field(default="audio", max_length=32)
    fingerprint_bytes: int | None = None
    duration_ms: int | None = None
    title: str
    user_defined: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str  # the URL, or the path relative to the media root
    remote_id: int | None = Field(default=None, index=True, sa_type=BigInteger)
    acr_id: str | None = Field(default=None, index=True, max_length=64)
    remote_state: int | None = None
    status: str = Field(default=FileStatus.QUEUED, index=True, max_length=16)
    reason: str | None = None
    attempts: int = 0
    # Desired metadata version vs the version the bucket is known to hold: updates send the desired
    # state, so replays and reordering cannot apply an older title over a newer one.
    meta_version: int = 0
    synced_meta_version: int = 0
    # The operation id that last set each field: updates apply in enqueue order per field, whatever
    # order the workers run them in (a later update of the title never loses to an earlier one).
    title_seq: int = 0
    user_defined_seq: int = 0
    # Set (and committed) before an upload POST: a later attempt must look in the bucket first.
    post_started_at: datetime | None = None
    # Where and under which title the last POST went (a late, duplicate file is searched for there).
    posted_bucket_id: int | None = Field(default=None, sa_type=BigInteger)
    posted_title: str | None = None
    # Set when a request may have landed after we gave up on it (read timeout, 5xx): the poll then
    # checks the bucket once it is due: duplicates from a late POST removed, a late PUT undone.
    verify_after: datetime | None = Field(default=None, index=True)
    # Which file the ref names: 0 for its first upload, +1 for each re-upload (after a delete, a cancel
    # or a failure). An update asked for an older generation does not apply to this one.
    generation: int = 0
    # First time the state poll did not find the file where the row says it is.
    missing_since: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)


class Operation(SQLModel, table=True):
    __tablename__ = "operations"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True, max_length=32)
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    task_id: str | None = Field(default=None, index=True, unique=True, max_length=64)
    file_id: int | None = Field(default=None, foreign_key="track_files.id", index=True)
    bucket_id: int | None = Field(default=None, index=True, sa_type=BigInteger)
    status: str = Field(default=OpStatus.QUEUED, index=True, max_length=16)
    error: str | None = None
    attempts: int = 0
    throttled: int = 0  # 429s seen (they do not use up attempts)
    # Applied once: an update's metadata merged into the file's desired state.
    applied: bool = False
    # An update's target: the file generation (``TrackFile.generation``) its ref named when it was asked.
    file_generation: int | None = None
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None


class AuthHold(SQLModel, table=True):
    """Present while the API rejects our token (401/403). One row per API (name="api")."""

    __tablename__ = "auth_holds"

    name: str = Field(primary_key=True, max_length=32)
    # sha256 prefix of the rejected token: tells a new token from the rejected one without storing it.
    token_fingerprint: str = Field(max_length=16)
    reason: str
    since: datetime = Field(default_factory=utcnow)
    last_probe: datetime = Field(default_factory=utcnow)
    held_tasks: int = 0


class Lease(SQLModel, table=True):
    """A named lock with an expiry (e.g. one state poll at a time across workers and beats)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=255)
    until: datetime


class ParkedFollowup(SQLModel, table=True):
    """An update/delete/move naming a ref no worker has seen yet, kept until the upload lands (or the
    horizon passes): the operation is woken by the poll then, instead of retrying through the broker."""

    __tablename__ = "parked_followups"
    __table_args__ = (UniqueConstraint("operation_id", "bucket_id", "ref", name="uq_parked_followups_op_ref"),)

    id: int | None = Field(default=None, primary_key=True)
    operation_id: int = Field(foreign_key="operations.id", index=True)
    bucket_id: int = Field(index=True, sa_type=BigInteger)
    ref: str = Field(index=True, max_length=255)
    # Past this the ref is not coming: the operation is woken to report it (unknown_ref).
    until: datetime = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)


class CircuitBreaker(SQLModel, table=True):
    """Shared by every worker: opens when the API fails for everyone (5xx, unreachable), so jobs wait
    (held, no attempt used) instead of spending their attempts; one probe per interval closes it."""

    __tablename__ = "circuit_breakers"

    name: str = Field(primary_key=True, max_length=32)
    # Transient failures of different operations in a row (a success resets it) within the window.
    failures: int = 0
    window_started: datetime = Field(default_factory=utcnow)
    last_failed_op: int | None = None
    opened_at: datetime | None = None  # None: closed
    last_probe: datetime = Field(default_factory=utcnow)
    reason: str | None = None
    held_tasks: int = 0


class OutboxEntry(SQLModel, table=True):
    """A message to publish, written in the same transaction as the rows it is about (the transactional
    outbox): a broker that is away when they commit delays the message, it never loses it. Published
    right after the commit by whoever wrote it; what is still unsent once due is published by the poll's
    sweeper. Generic: ``kind`` says how to publish (``task``: a Celery task by name), ``destination``
    where (the task name), ``payload`` what (JSON)."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    destination: str = Field(max_length=255)
    # The message's own id (a task id): sending the entry again is the same message, not a new job.
    message_id: str = Field(unique=True, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Not before: the writer publishes it itself first; the sweeper (or a re-run) takes it after this.
    due_at: datetime = Field(default_factory=utcnow, index=True)
    sent_at: datetime | None = Field(default=None, index=True)
    attempts: int = 0  # publishes that failed
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class RejectedMessage(SQLModel, table=True):
    """A broker message no task could run (wrong body shape, unknown task, not JSON...): taken off the
    queue so it cannot stop a worker, and kept here with the reason for a human."""

    __tablename__ = "rejected_messages"

    id: int | None = Field(default=None, primary_key=True)
    queue: str | None = Field(default=None, max_length=255)
    task: str | None = Field(default=None, max_length=255)
    reason: str
    content_type: str | None = Field(default=None, max_length=255)
    # The raw body, cut to a bounded size (kept as text: undecodable bytes are escaped).
    body: str
    body_bytes: int = 0  # the full size, when the body was cut
    headers: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    received_at: datetime = Field(default_factory=utcnow, index=True)
