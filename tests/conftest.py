"""Shared fixtures: real gateway and simulator processes, real PostgreSQL and Redis servers."""

pytest_plugins = [
    "tests.plugins.servers",
    "tests.plugins.processes",
    "tests.plugins.dnsmasq",
    "tests.plugins.pgbouncer",
]
