"""The upstream simulator: OpenAI-compatible model servers with realistic timing and failures.

A product feature, not a test double: it powers the demo, the tests, the benchmarks and
capacity planning. ``load_fleet_profile`` reads a YAML profile, ``start_fleet`` /
``run_fleet`` serve it, ``main_sim`` is the ``swarmgate sim`` command.
"""

from swarmgate.sim.fleet import Fleet, main_sim, run_fleet, start_fleet
from swarmgate.sim.profile import (
    FailureProfile,
    FleetProfile,
    ModelProfile,
    PrefixCacheProfile,
    ServerProfile,
    load_fleet_profile,
    parse_fleet_profile,
)

__all__ = [
    "FailureProfile",
    "Fleet",
    "FleetProfile",
    "ModelProfile",
    "PrefixCacheProfile",
    "ServerProfile",
    "load_fleet_profile",
    "main_sim",
    "parse_fleet_profile",
    "run_fleet",
    "start_fleet",
]
