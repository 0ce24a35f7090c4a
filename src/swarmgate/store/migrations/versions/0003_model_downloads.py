"""Model download jobs (``POST /api/v1/models/download``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_downloads",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("completed_bytes", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.String(500), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.Column("requested_by", sa.String(40), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_downloads"),
    )
    op.create_index("ix_model_downloads_created_at", "model_downloads", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_model_downloads_created_at", table_name="model_downloads")
    op.drop_table("model_downloads")
