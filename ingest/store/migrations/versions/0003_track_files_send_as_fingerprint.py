"""track_files.send_as, fingerprint_bytes, duration_ms

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 11:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("track_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_as", sa.String(32), nullable=False, server_default="audio"))
        batch_op.add_column(sa.Column("fingerprint_bytes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("duration_ms", sa.Integer(), nullable=True))
    # Every earlier upload posted its file as it was: what was sent is its data_type.
    op.execute("UPDATE track_files SET send_as = data_type")


def downgrade() -> None:
    with op.batch_alter_table("track_files", schema=None) as batch_op:
        batch_op.drop_column("duration_ms")
        batch_op.drop_column("fingerprint_bytes")
        batch_op.drop_column("send_as")
