#!/usr/bin/env bash
# Installs the servers the local stack runs, when they are missing:
#   redis-server  (Debian package; needs root — otherwise prints the one command to run)
#   kinesis-mock  (npm package kinesis-local, into .shardhouse/npm; needs node/npm)
# PostgreSQL's server ships with the machine image (/usr/lib/postgresql/*/bin); Debian: postgresql.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  # Keep Debian's maintainer scripts from starting the packaged service on the ports we use.
  local guard=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$guard" ]; then printf '#!/bin/sh\nexit 101\n' > "$guard"; chmod +x "$guard"; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
  if [ "$created" = 1 ]; then rm -f "$guard"; fi
}

need_pg=0
command -v postgres >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pg=1

if ! command -v redis-server >/dev/null 2>&1 || [ "$need_pg" = 1 ]; then
  pkgs=()
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  [ "$need_pg" = 1 ] && pkgs+=(postgresql)
  if as_root; then
    echo "install-deps: installing ${pkgs[*]} (apt)"
    apt_install "${pkgs[@]}"
  else
    echo "install-deps: missing ${pkgs[*]}; install with: sudo apt-get install -y ${pkgs[*]}" >&2
    exit 1
  fi
fi

if [ ! -f .shardhouse/npm/node_modules/kinesis-local/main.js ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "install-deps: installing kinesis-mock (npm kinesis-local)"
    mkdir -p .shardhouse/npm
    npm install --silent --no-audit --no-fund --prefix .shardhouse/npm kinesis-local@0.6.2 >/dev/null 2>&1 \
      || echo "install-deps: warning: npm install kinesis-local failed; resharding tests will be skipped" >&2
  else
    echo "install-deps: warning: npm not found; kinesis-mock (resharding tests) unavailable" >&2
  fi
fi
