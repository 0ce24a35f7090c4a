#!/usr/bin/env bash
# The whole benchmark in one command: the throughput table (bench/run.py), then the streaming
# benchmark (bench/stream_bench.py). Results land in bench/results/.
#   bench/run.sh                 full run (~8 min per round; add --repeat 3 for medians)
#   bench/run.sh --quick         smoke run (~2 min)
#   bench/run.sh --no-stream ... only the table; other flags go to bench/run.py (--help)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: create it and pip install -e . first" >&2; exit 2; }

stream=1 quick=()
args=()
for arg in "$@"; do
  case "$arg" in
    --no-stream) stream=0 ;;
    --quick) quick=(--quick); args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done

# 1,000 open streams need ~3,000 descriptors (client, gateway, simulator).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# LiteLLM in its own venv, so its pins never touch ours. 1.82.7 and 1.82.8 are excluded on purpose.
if [ ! -x bench/.venv-litellm/bin/litellm ]; then
  base=$("$PY" -c 'import sys; print(sys._base_executable)')
  "$base" -m venv bench/.venv-litellm
  bench/.venv-litellm/bin/pip install -q 'litellm[proxy]!=1.82.7,!=1.82.8'
fi

status=0
"$PY" bench/run.py ${args[@]+"${args[@]}"} || status=$?
if [ "$stream" -eq 1 ]; then
  "$PY" bench/stream_bench.py ${quick[@]+"${quick[@]}"} || status=$?
fi
exit "$status"
