#!/usr/bin/env bash
# The test command: installs what is needed, builds and runs the C++ stress
# tests, then the Python suite against the installed package, then every
# benchmark in --smoke mode so the scripts never rot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "==> C++ tests"
cmake -S . -B build/native-tests -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DAIARCH_BUILD_PYTHON=OFF -DAIARCH_BUILD_TESTS=ON >/dev/null
cmake --build build/native-tests -j2
ctest --test-dir build/native-tests --output-on-failure

echo "==> Python tests"
python -m pytest "$@"

echo "==> benchmarks (--smoke)"
out="$(mktemp -d)"
for b in benchmarks/bench_*.py; do
  echo "--- $b"
  python "$b" --smoke --json "$out/$(basename "$b" .py).json"
done
for b in bench_cache bench_histogram; do
  echo "--- $b (native)"
  "build/native-tests/$b" --smoke
done
