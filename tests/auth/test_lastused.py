"""Keys' last use goes to the store through the write-behind queue, and survives an outage."""

from __future__ import annotations

from pathlib import Path

from swarmgate.auth.keys import KeyHasher, KeyService
from swarmgate.auth.lastused import LastUsed, spool_path
from swarmgate.config import Audit
from swarmgate.store.keys import KeyStore
from swarmgate.store.sql import Database
from swarmgate.types import Role


async def test_times_are_stored_and_never_move_backwards(
    database: Database, tmp_path: Path
) -> None:
    store = KeyStore(database)
    service = KeyService(store, KeyHasher(b"k" * 32))
    a, _ = await service.create("a", "alice", Role.USER)
    b, _ = await service.create("b", "bob", Role.USER)
    seen: dict[str, float] = {a.id: 100.0, b.id: 200.0}
    last_used = LastUsed(seen, store, Audit(spool_path=str(tmp_path / "audit.spool")))
    await last_used.flush()
    assert seen == {}  # taken, so the next flush only carries what is new
    seen[a.id] = 50.0  # an older time (a replayed or late record) never wins
    await last_used.stop()
    times = {r.id: r.last_used_at for r in await store.list()}
    assert times == {a.id: 100.0, b.id: 200.0}


async def test_an_outage_spools_the_times_and_they_are_replayed(
    database: Database, tmp_path: Path
) -> None:
    store = KeyStore(database)
    record, _ = await KeyService(store, KeyHasher(b"k" * 32)).create("a", "al", Role.USER)
    audit = Audit(spool_path=str(tmp_path / "spool" / "audit.spool"))
    # The same store, unreachable: its SQLite file's directory does not exist (StoreError).
    unreachable = Database.from_url(f"sqlite:///{tmp_path / 'absent' / 'swarmgate.db'}")
    try:
        down = LastUsed({record.id: 300.0}, KeyStore(unreachable), audit)
        await down.stop()  # a graceful shutdown while the store is down
    finally:
        await unreachable.close()
    assert spool_path(audit).name == "audit.spool.last-used"
    assert spool_path(audit).read_bytes().count(b"\n") == 1

    await LastUsed({}, store, audit).flush()  # the next process replays it
    stored = await store.get(record.id)
    assert stored is not None and stored.last_used_at == 300.0
    assert not spool_path(audit).exists()
