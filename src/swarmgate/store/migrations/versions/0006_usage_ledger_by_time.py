"""The usage ledger keyed by time first: rows appended in key order, and on SQLite stored in
that order (WITHOUT ROWID), so that a report over a time range reads one stretch of the table;
the covering time index and the model index go (see store/schema.py for why).

The table is rebuilt (SQLite cannot change a primary key in place): rows are copied over.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "ts, request_id, key_id, owner, tier, model, deployment, route, tokens_in, tokens_out, "
    "cost, latency, ttft, status, streamed, cut"
)
REPORTED = ["key_id", "owner", "model", "status", "cut", "tokens_in", "tokens_out", "cost"]


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
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
    ]


def _set_aside(name: str) -> None:
    """Rename the table; on PostgreSQL its primary key too (constraint names are per schema
    there, and the new table's takes the same name)."""
    op.rename_table("usage_ledger", name)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {name} RENAME CONSTRAINT pk_usage_ledger TO pk_{name}")


def upgrade() -> None:
    for name in ("model_ts", "owner_ts", "key_id_ts", "ts"):
        op.drop_index(f"ix_usage_ledger_{name}", table_name="usage_ledger")
    _set_aside("usage_ledger_old")
    op.create_table(
        "usage_ledger",
        *_columns(),
        sa.PrimaryKeyConstraint("ts", "request_id", name="pk_usage_ledger"),
        sqlite_with_rowid=False,
    )
    op.execute(
        f"INSERT INTO usage_ledger ({COLUMNS}) SELECT {COLUMNS} FROM usage_ledger_old ORDER BY ts"
    )
    op.drop_table("usage_ledger_old")
    op.create_index("ix_usage_ledger_key_id_ts", "usage_ledger", ["key_id", "ts"])
    op.create_index("ix_usage_ledger_owner_ts", "usage_ledger", ["owner", "ts"])


def downgrade() -> None:
    op.drop_index("ix_usage_ledger_owner_ts", table_name="usage_ledger")
    op.drop_index("ix_usage_ledger_key_id_ts", table_name="usage_ledger")
    _set_aside("usage_ledger_new")
    op.create_table(
        "usage_ledger",
        *_columns(),
        sa.PrimaryKeyConstraint("request_id", "ts", name="pk_usage_ledger"),
    )
    op.execute(f"INSERT INTO usage_ledger ({COLUMNS}) SELECT {COLUMNS} FROM usage_ledger_new")
    op.drop_table("usage_ledger_new")
    op.create_index("ix_usage_ledger_ts", "usage_ledger", ["ts", *REPORTED, "latency"])
    op.create_index("ix_usage_ledger_key_id_ts", "usage_ledger", ["key_id", "ts"])
    op.create_index("ix_usage_ledger_owner_ts", "usage_ledger", ["owner", "ts"])
    op.create_index("ix_usage_ledger_model_ts", "usage_ledger", ["model", "ts"])
