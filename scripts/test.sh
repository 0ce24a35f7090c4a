#!/usr/bin/env bash
# The whole test suite: lint, types, tests (real Redis and PostgreSQL, installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
