"""IP blocks say where they came from: an operator, or the automatic block after failures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every block stored before this revision was an operator's.
    op.add_column(
        "ip_blocks",
        sa.Column("source", sa.String(16), nullable=False, server_default="operator"),
    )


def downgrade() -> None:
    with op.batch_alter_table("ip_blocks") as batch:
        batch.drop_column("source")
