"""DeploymentStore: the fleet's run-time changes in and out, on both engines."""

from __future__ import annotations

import pytest

from swarmgate.store.deployments import ACTIVE, DRAINING, REMOVED, DeploymentStore, FleetChange
from swarmgate.store.sql import Database


@pytest.fixture
def deployments(database: Database) -> DeploymentStore:
    return DeploymentStore(database)


async def test_put_replaces_and_all_lists_in_creation_order(deployments: DeploymentStore) -> None:
    added = FleetChange("extra", "m", {"url": "http://h:1", "weight": 2.0}, ACTIVE, 2.0, 2.0, "k1")
    drained = FleetChange("m@h:0", "m", None, DRAINING, 1.0, 1.0, None)
    await deployments.put(added)
    await deployments.put(drained)
    assert await deployments.all() == [drained, added]

    removed = FleetChange("m@h:0", "m", None, REMOVED, 1.0, 3.0, "k2")
    await deployments.put(removed)
    assert await deployments.all() == [removed, added]


async def test_delete_says_whether_there_was_a_row(deployments: DeploymentStore) -> None:
    await deployments.put(FleetChange("x", "m", None, DRAINING, 1.0, 1.0))
    assert await deployments.delete("x") is True
    assert await deployments.delete("x") is False
    assert await deployments.all() == []
