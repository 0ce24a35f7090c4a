"""The SQL schema: one ``MetaData`` with the Core tables every store module reads and writes.

Times are float epoch seconds everywhere: the same type on SQLite and PostgreSQL, no timezone
conversions, and directly comparable with ``Clock()``. Lists (scopes, models) are JSON arrays.
The Alembic migrations in ``migrations/versions`` create exactly these tables; a test compares
them with ``compare_metadata`` on both engines, so a change here needs a new revision there.
"""

from __future__ import annotations

import sqlalchemy as sa

# Deterministic constraint names, so that migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# The largest integers the databases take: anything a client sends beyond them must be refused
# before a query is built (the drivers raise OverflowError, not a database error). Row offsets
# are 64-bit on both engines; ``sa.Integer`` columns (the audit log's id) are 32-bit on
# PostgreSQL, so a cursor larger than that names no record there.
MAX_OFFSET = 2**63 - 1
MAX_INTEGER_ID = 2**31 - 1

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("tier", sa.String(64), nullable=False),
    sa.Column("models", sa.JSON, nullable=True),  # NULL: every model
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=True),
    sa.Column("last_used_at", sa.Double, nullable=True),
    sa.Column("revoked_at", sa.Double, nullable=True),
    # The key's own limits over its tier's (rpm, tpm, concurrent...); NULL: the tier's.
    sa.Column("limits", sa.JSON, nullable=True),
)

# Only HMAC-SHA256 hashes of secrets are stored. A key has one current secret (valid_until
# NULL) and, after a rotation, old ones that stay valid until their grace period ends.
api_key_secrets = sa.Table(
    "api_key_secrets",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column(
        "key_id",
        sa.String(40),
        sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("valid_until", sa.Double, nullable=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Double, nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False, index=True),
    sa.Column("actor", sa.String(200), nullable=True, index=True),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("client_ip", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
)

ip_blocks = sa.Table(
    "ip_blocks",
    metadata,
    sa.Column("cidr", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=True),
    sa.Column("created_by", sa.String(200), nullable=False),
    # "operator" (admin API, CLI) or "failures" (automatic, after repeated failed attempts).
    sa.Column("source", sa.String(16), nullable=False, server_default="operator"),
)

# Model downloads (``POST /api/v1/models/download``): written by the replica that runs the pull,
# read by any replica. ``requested_by`` is a key id (NULL for a JWT or an anonymous caller).
model_downloads = sa.Table(
    "model_downloads",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | done | failed
    sa.Column("total_bytes", sa.BigInteger, nullable=True),
    sa.Column("completed_bytes", sa.BigInteger, nullable=True),
    sa.Column("last_status", sa.String(500), nullable=True),  # Ollama's last progress line
    sa.Column("error", sa.String(1000), nullable=True),
    sa.Column("requested_by", sa.String(40), nullable=True),
    sa.Column("created_at", sa.Double, nullable=False, index=True),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# The usage ledger: one row per authenticated inference request (limits/ledger.py writes it,
# write-behind). Delivery to the store is at-least-once, so the primary key makes a record
# stored twice one row: the request id alone would not do (a client may send its own
# X-Request-ID twice), and with the time it ended two requests cannot collide. The key starts
# with the time, so rows arrive in key order (appended, not inserted at random), and on SQLite
# the table is stored in that order (WITHOUT ROWID): a report over a time range reads one
# contiguous stretch of the table, with every column it needs, and a prune deletes one. The
# two indexes serve one key's or one owner's usage and spend since T; a model filter reads the
# range. Each index costs every write (SQLite: ~3 µs of CPU a row, in the gateway's process),
# hence no more of them (bench/ledger_bench.py, bench/cpu.py).
usage_ledger = sa.Table(
    "usage_ledger",
    metadata,
    sa.Column("ts", sa.Double, nullable=False),  # epoch seconds when the request ended
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(40), nullable=True),  # NULL for a JWT or an anonymous caller
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("tier", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),  # NULL: refused before a model resolved
    sa.Column("deployment", sa.String(200), nullable=True),
    sa.Column("route", sa.String(64), nullable=False),
    sa.Column("tokens_in", sa.BigInteger, nullable=False),
    sa.Column("tokens_out", sa.BigInteger, nullable=False),
    sa.Column("cost", sa.Double, nullable=False),
    sa.Column("latency", sa.Double, nullable=False),  # seconds, to the last byte
    sa.Column("ttft", sa.Double, nullable=True),  # seconds to the first byte sent; NULL: none
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("streamed", sa.Boolean, nullable=False),
    sa.Column("cut", sa.Boolean, nullable=False),
    sa.PrimaryKeyConstraint("ts", "request_id", name="pk_usage_ledger"),
    sa.Index("ix_usage_ledger_key_id_ts", "key_id", "ts"),
    sa.Index("ix_usage_ledger_owner_ts", "owner", "ts"),
    sqlite_with_rowid=False,
)

# The fleet's run-time changes (``/api/v1/workers``, ``swarmgate workers``), one row per
# deployment by its name: a deployment added at run time (``spec`` is its config, as in the
# file's ``models.<model>.deployments``), or one of the file's drained or removed (``spec``
# NULL). Every replica rebuilds its fleet from the file plus these rows.
fleet_changes = sa.Table(
    "fleet_changes",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=True),  # NULL: a deployment of the config file
    sa.Column("state", sa.String(16), nullable=False),  # active | draining | removed
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=True),
)

# Stored responses of ``POST /v1/responses`` (``store: true``), readable by their owner only:
# ``owner`` is the key's id (the subject for a token without one). ``conversation`` is the
# input the model was given (the history of ``previous_response_id`` followed by ``input``,
# items as the Responses API writes them), so that a follow-up rebuilds it in one read.
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("input", sa.JSON, nullable=False),  # this request's own input items
    sa.Column("conversation", sa.JSON, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),  # the Response object as answered
    sa.Index("ix_responses_owner", "owner"),
    sa.Index("ix_responses_created_at", "created_at"),  # retention prunes by age
)
