"""The usage ledger (issue 13, item 9).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_ledger",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("deployment", sa.String(200), nullable=True),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("latency", sa.Double(), nullable=False),
        sa.Column("ttft", sa.Double(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("cut", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "ts", name="pk_usage_ledger"),
    )
    # Covering: a report over every key reads this index alone (see store/schema.py).
    reported = ["key_id", "owner", "model", "status", "cut", "tokens_in", "tokens_out", "cost"]
    op.create_index("ix_usage_ledger_ts", "usage_ledger", ["ts", *reported, "latency"])
    op.create_index("ix_usage_ledger_key_id_ts", "usage_ledger", ["key_id", "ts"])
    op.create_index("ix_usage_ledger_owner_ts", "usage_ledger", ["owner", "ts"])
    op.create_index("ix_usage_ledger_model_ts", "usage_ledger", ["model", "ts"])


def downgrade() -> None:
    for name in ("model_ts", "owner_ts", "key_id_ts", "ts"):
        op.drop_index(f"ix_usage_ledger_{name}", table_name="usage_ledger")
    op.drop_table("usage_ledger")
