#!/usr/bin/env bash
# One command for every static check: ruff (lint + format), mypy, clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> ruff check"
python -m ruff check python tests benchmarks examples
echo "==> ruff format --check"
python -m ruff format --check python tests benchmarks examples
echo "==> mypy"
python -m mypy
echo "==> clang-format"
clang-format --dry-run --Werror csrc/include/aiarch/*.h csrc/src/*.cc csrc/src/*.h \
  csrc/python/*.cpp csrc/tests/*.cc csrc/tests/*.h csrc/bench/*.cc csrc/bench/*.h
