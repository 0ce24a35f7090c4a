"""Alembic environment: run the migrations on the connection ``store.migrate`` hands over.

swarmgate never runs Alembic from an ``alembic.ini`` at runtime: ``store.migrate`` builds the
``Config`` in code (so it works from an installed package) and passes an open connection, already
inside its transaction and, on PostgreSQL, holding the migration lock, through
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from swarmgate.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations with swarmgate.store.migrate.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
