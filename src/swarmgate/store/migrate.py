"""Schema migrations: bring a database to the newest Alembic revision, safely and idempotently.

The Alembic ``Config`` is built in code with ``script_location`` pointing at the ``migrations``
directory inside this package, so migrating needs no ``alembic.ini`` and works from an installed
wheel. The whole upgrade runs in one transaction (both engines have transactional DDL here, see
``store.sql``), so a failed migration leaves the schema as it was.

Several replicas may start at once against one database. On PostgreSQL the upgrade holds a
transaction-scoped advisory lock: the others wait, then find the schema at head and do nothing.
On SQLite the write transaction starts with ``BEGIN IMMEDIATE``, which serialises them the same
way. The lock is taken before Alembic runs, and that matters within one process too: Alembic
keeps its migration context in module globals, so two upgrades interleaving on one event loop
(``run_sync`` switches greenlets at every query) would corrupt each other. Do not migrate two
different databases concurrently in one process: their locks do not exclude each other.

New revisions are written by hand in ``migrations/versions`` (copy the shape of
``0001_initial.py``); ``tests/store/test_migrate.py`` checks that head matches ``schema.py``.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from swarmgate.errors import StoreError
from swarmgate.store.sql import Database

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")

# Arbitrary but fixed: every swarmgate process must contend for the same advisory lock.
_PG_MIGRATION_LOCK = 0x5357_4152_4D47  # "SWARMG"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for our migrations; ``connection`` is what ``env.py`` migrates."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    try:
        command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:
        # Typically a database migrated by a newer swarmgate than this one.
        raise StoreError(f"cannot migrate the database: {exc}") from exc


async def migrate(db: Database) -> None:
    """Upgrade ``db`` to head. Idempotent; concurrent callers wait for each other."""
    async with db.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        await conn.run_sync(_upgrade)


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(db: Database) -> str | None:
    """The revision ``db`` is at, or None for a database never migrated."""
    async with db.connect() as conn:
        return await conn.run_sync(_revision)
