#!/usr/bin/env bash
# Installs everything aiarch's tests, benchmarks and lint need on a fresh
# Debian machine, then installs aiarch itself (building the native core).
# Idempotent: re-running only rebuilds the package.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: wrk drives the HTTP benchmarks; Redis and PostgreSQL are the
# shared backends of the feature store and the registry, which the tests start
# on 127.0.0.1 in throw-away directories.
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PIP=(python -m pip install --quiet --disable-pip-version-check)
# torch is pinned to the CPU wheel this project is tested with: an open range
# would let pip download a multi-GB CUDA build.
echo "==> pip install build tools and torch==2.13.0"
"${PIP[@]}" scikit-build-core pybind11 ninja "torch==2.13.0"
echo "==> pip install aiarch[all,test,bench,dev,embed] (builds the native core)"
"${PIP[@]}" --no-build-isolation ".[all,test,bench,dev,embed]" "torch==2.13.0"
