#!/usr/bin/env bash
# Installs what `shardhouse kcl-daemon` needs: a Java runtime and amazon-kclpy with its KCL jars.
#   java          Debian default-jre-headless when missing (needs root; otherwise prints the command)
#   amazon-kclpy  the `kcl` extra (pinned 3.1.3 = KCL 3.1.3); its build downloads ~80 jars (33 MB)
#                 from Maven Central into site-packages/amazon_kclpy/jars
# Then checks that the MultiLangDaemon jar is really there (a build that could not reach Maven
# Central installs the Python package without jars, and says so only in a warning).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "install-kcl: installing default-jre-headless (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless >/dev/null; }
  else
    echo "install-kcl: java missing; install with: sudo apt-get install -y default-jre-headless" >&2
    exit 1
  fi
fi

if ! "$PY" -c 'import amazon_kclpy' >/dev/null 2>&1; then
  echo "install-kcl: installing amazon-kclpy (the kcl extra; downloads the KCL jars)"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[kcl]'
fi

"$PY" - <<'PYEOF'
from pipeline.app import kcl_daemon
jars = kcl_daemon.find_jars()
print(f"install-kcl: KCL {kcl_daemon.kcl_version(jars)} MultiLangDaemon, {len(jars)} jars in {kcl_daemon.kclpy_jars_dir()}")
PYEOF
