"""baseline: the tables create_all made before migrations

The schema of the models when migrations were introduced. A database created before then (tables present,
no alembic_version) is stamped with this revision by ``acr-ingest db upgrade`` instead of running it.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 00:01:10.841089
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_holds",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("token_fingerprint", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_probe", sa.DateTime(timezone=True), nullable=False),
        sa.Column("held_tasks", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "track_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("bucket_id", sa.Integer(), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("user_defined", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("remote_id", sa.Integer(), nullable=True),
        sa.Column("acr_id", sa.String(64), nullable=True),
        sa.Column("remote_state", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("meta_version", sa.Integer(), nullable=False),
        sa.Column("synced_meta_version", sa.Integer(), nullable=False),
        sa.Column("title_seq", sa.Integer(), nullable=False),
        sa.Column("user_defined_seq", sa.Integer(), nullable=False),
        sa.Column("post_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("posted_bucket_id", sa.Integer(), nullable=True),
        sa.Column("posted_title", sa.String(), nullable=True),
        sa.Column("verify_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("missing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket_id", "ref", name="uq_track_files_bucket_ref"),
    )
    with op.batch_alter_table("track_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_track_files_acr_id"), ["acr_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_track_files_bucket_id"), ["bucket_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_track_files_ref"), ["ref"], unique=False)
        batch_op.create_index(batch_op.f("ix_track_files_remote_id"), ["remote_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_track_files_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_track_files_updated_at"), ["updated_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_track_files_verify_after"), ["verify_after"], unique=False)

    op.create_table(
        "operations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("file_id", sa.Integer(), nullable=True),
        sa.Column("bucket_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("throttled", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["track_files.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operations_bucket_id"), ["bucket_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_file_id"), ["file_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_task_id"), ["task_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_operations_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operations_updated_at"))
        batch_op.drop_index(batch_op.f("ix_operations_task_id"))
        batch_op.drop_index(batch_op.f("ix_operations_status"))
        batch_op.drop_index(batch_op.f("ix_operations_kind"))
        batch_op.drop_index(batch_op.f("ix_operations_file_id"))
        batch_op.drop_index(batch_op.f("ix_operations_created_at"))
        batch_op.drop_index(batch_op.f("ix_operations_bucket_id"))

    op.drop_table("operations")
    with op.batch_alter_table("track_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_track_files_verify_after"))
        batch_op.drop_index(batch_op.f("ix_track_files_updated_at"))
        batch_op.drop_index(batch_op.f("ix_track_files_status"))
        batch_op.drop_index(batch_op.f("ix_track_files_remote_id"))
        batch_op.drop_index(batch_op.f("ix_track_files_ref"))
        batch_op.drop_index(batch_op.f("ix_track_files_bucket_id"))
        batch_op.drop_index(batch_op.f("ix_track_files_acr_id"))

    op.drop_table("track_files")
    op.drop_table("leases")
    op.drop_table("auth_holds")
