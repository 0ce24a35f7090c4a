"""Shared fixtures: real gateway and simulator processes, real PostgreSQL and Redis servers."""

from hypothesis import settings

pytest_plugins = [
    "tests.plugins.servers",
    "tests.plugins.processes",
    "tests.plugins.dnsmasq",
    "tests.plugins.pgbouncer",
]

# No per-example deadline: on a shared machine an example's time says nothing about the code
# (performance is measured in bench/, not asserted in tests), and a slow example failed runs.
settings.register_profile("swarmgate", deadline=None)
settings.load_profile("swarmgate")
