#!/usr/bin/env bash
# The main job: the gateway in front of a simulated fleet, on the embedded default (SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/swarmgate demo "$@"
