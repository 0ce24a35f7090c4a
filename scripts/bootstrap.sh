#!/usr/bin/env bash
# Creates .venv with swarmgate installed (with the test extras when asked: `bootstrap.sh test`).
# Works on a fresh Debian machine with Python 3.11 as root; installs what is missing via apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if [ ! -f /tmp/.swarmgate-apt-updated ]; then
      apt-get update -qq && touch /tmp/.swarmgate-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "please install: $*" >&2
    exit 1
  fi
}

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
  .venv/bin/pip install -q --upgrade pip
fi

if [ "${1:-}" = "test" ]; then
  need=()
  command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || need+=(redis-server)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  # deploy/: promtool checks the alert rules, systemd-analyze the unit (tests/deploy).
  command -v promtool >/dev/null || need+=(prometheus)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v npm >/dev/null || need+=(npm)
  # DNS discovery's tests run a real DNS server (the binary only: no system service on port 53).
  command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
  # The store's tests run behind a real pgbouncer in transaction mode (tests/plugins/pgbouncer.py).
  command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
  extras=".[test]"
else
  extras="."
fi

# The install is editable: code changes need no reinstall, only a changed pyproject.toml (its
# dependencies) or other extras do. The stamp records what the last install was made from.
stamp=".venv/.swarmgate-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
have="$(cat "$stamp" 2>/dev/null || true)"
# The test extras include the plain install: after one, the plain one is current too.
if [ "$have" != "$want" ] && ! { [ "$extras" = "." ] && [ "$have" = "${want% *} .[test]" ]; } \
    || [ ! -x .venv/bin/swarmgate ]; then
  .venv/bin/pip install -q -e "$extras"
  echo "$want" > "$stamp"
fi

# deploy/k8s's cert-manager Certificate is checked by the validator generated from
# cert-manager's CRD (tests/deploy/test_k8s.py), an npm package kept beside the venv.
if [ "$extras" = ".[test]" ] && [ ! -d .venv/npm/node_modules/@kubernetes-models/cert-manager ]; then
  npm install --prefix .venv/npm --no-save --no-audit --no-fund --silent \
    @kubernetes-models/cert-manager@4.4.4
fi
