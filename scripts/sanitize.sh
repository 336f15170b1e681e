#!/usr/bin/env bash
# Runs the native stress tests and the runtime's Python tests against an
# ASan/UBSan build of the extension (with the native ONNX executor and the
# servers' native front end, whose child processes inherit the build), and
# the stress tests under TSan.
set -euo pipefail
cd "$(dirname "$0")/.."
pybind11_dir="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')"

echo "==> ASan/UBSan build"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DAIARCH_SANITIZE="address;undefined" -DAIARCH_BUILD_TESTS=ON \
  -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build build/asan -j2
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ctest --test-dir build/asan --output-on-failure

echo "==> Python tests against the ASan/UBSan extension"
pkg="$(mktemp -d)"
cp -r python/aiarch "$pkg/"
rm -f "$pkg"/aiarch/_core*.so
cp build/asan/_core*.so "$pkg/aiarch/"
# The interpreter is not instrumented: preload the runtimes, and leave leak
# checking off (CPython keeps interned objects alive at exit by design).
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  PYTHONPATH="$pkg" python -m pytest tests/core tests/features/test_native.py \
  tests/backends/test_onnx_native.py tests/serving/test_native.py tests/serving/test_slow_clients.py \
  -q -p no:cacheprovider

echo "==> TSan build of the native stress tests"
cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAIARCH_SANITIZE=thread \
  -DAIARCH_BUILD_PYTHON=OFF -DAIARCH_BUILD_TESTS=ON >/dev/null
cmake --build build/tsan -j2
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/tsan --output-on-failure
