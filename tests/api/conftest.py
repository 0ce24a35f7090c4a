"""Module-scoped real processes for the end-to-end tests of the HTTP faces.

Starting a ``swarmgate serve`` costs about a second, so each test module starts one simulator
fleet and one or a few gateways (``procs``) and all its tests share them. The processes are the
same as ``tests.plugins.processes`` starts (same helpers); only their lifetime differs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.e2e import Recorder
from tests.plugins.processes import Processes


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    processes = Processes(tmp_path_factory.mktemp("e2e"))
    yield processes
    processes.stop_all()


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()
