#!/usr/bin/env bash
# The GPU check, in one run from the working tree, with nothing fetched from the network:
#   1. preflight: what the machine has (GPU, torch + CUDA, build tools, Python packages);
#   2. build the native core from this tree into a scratch folder (the tree is not modified);
#   3. every test marked `gpu` (pytest -m gpu);
#   4. benchmarks/bench_gpu.py (Runtime vs bare torch), given the time left of the budget;
#   5. one JSON ($OUT/gpu_check.json: preflight, build, tests, benchmark) and the printed tables.
# Sized for <= 8 minutes on one H100 (build ~1-2 min with all cores, tests ~1-2 min, benchmark
# gets the rest of --budget-s). Exit status: non-zero when the build or a test failed.
#
#   scripts/gpu_check.sh                 # on the GPU machine
#   scripts/gpu_check.sh --dry-run       # the same steps on a CPU machine, tiny benchmark sizes
#   options: --no-build (use the python/aiarch/_core*.so in the tree, else the installed one)
#            --budget-s S (default 450)  --out DIR (default $OUT, else bench-results/gpu_check)
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
BUILD=1
BUDGET=450
DEST=${OUT:-$ROOT/bench-results/gpu_check}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --no-build) BUILD=0 ;;
    --budget-s) BUDGET=$2; shift ;;
    --out) DEST=$2; shift ;;
    *) echo "unknown option $1 (expected --dry-run, --no-build, --budget-s S, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$DEST"
START=$(date +%s)
PY=${PYTHON:-python3}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/aiarch_gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
elapsed() { echo $(( $(date +%s) - START )); }

echo "==> preflight"
"$PY" - "$DEST/preflight.json" "$DRY" <<'EOF'
import importlib.util, json, shutil, subprocess, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
info = {"python": sys.version.split()[0], "dry_run": dry}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
except ImportError as e:
    info["torch"] = f"missing: {e}"
info["tools"] = {t: shutil.which(t) for t in ("cmake", "ninja", "c++", "nvidia-smi")}
mods = ("numpy", "pybind11", "pytest", "msgspec", "uvloop", "httptools", "onnx", "onnxruntime",
        "onnxscript", "tensorrt", "torchvision", "triton")
info["modules"] = {m: importlib.util.find_spec(m) is not None for m in mods}
if shutil.which("nvidia-smi"):
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
json.dump(info, open(out, "w"), indent=1)
print(json.dumps(info, indent=1))
if not dry and not info.get("cuda_available"):
    sys.exit("no CUDA device visible to torch: run with --dry-run on a CPU machine")
EOF
[ $? -eq 0 ] || exit 3

echo "==> build ($(elapsed) s)"
PKG=$SCRATCH/pkg
mkdir -p "$PKG"
cp -r "$ROOT/python/aiarch" "$PKG/aiarch"
rm -f "$PKG"/aiarch/_core*.so
BUILD_STATUS=prebuilt
if [ "$BUILD" = 1 ]; then
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  if cmake -S "$ROOT" -B "$SCRATCH/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DAIARCH_BUILD_TESTS=OFF -DPython_EXECUTABLE="$(command -v "$PY")" \
      -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >"$DEST/build.log" 2>&1 \
    && cmake --build "$SCRATCH/build" -j"$(nproc)" >>"$DEST/build.log" 2>&1; then
    cp "$SCRATCH"/build/_core*.so "$PKG/aiarch/"
    BUILD_STATUS=built
  else
    BUILD_STATUS=failed
    tail -20 "$DEST/build.log"
  fi
fi
if [ "$BUILD_STATUS" != built ]; then
  # --no-build, or no working toolchain: a core built elsewhere and carried in the tree, else
  # the one of an installed aiarch (pip install . of this tree, as scripts/setup.sh does).
  INSTALLED=$(cd / && "$PY" -c "import aiarch._core as c; print(c.__file__)" 2>/dev/null || true)
  if ls "$ROOT"/python/aiarch/_core*.so >/dev/null 2>&1; then
    cp "$ROOT"/python/aiarch/_core*.so "$PKG/aiarch/"
    [ "$BUILD_STATUS" = failed ] && BUILD_STATUS=failed-using-prebuilt
  elif [ -n "$INSTALLED" ] && [ -f "$INSTALLED" ]; then
    echo "using the installed native core $INSTALLED"
    cp "$INSTALLED" "$PKG/aiarch/"
    [ "$BUILD_STATUS" = failed ] && BUILD_STATUS=failed-using-prebuilt
  else
    echo "no native core: the build failed (see $DEST/build.log), none is in the tree and" \
      "none is installed" >&2
    BUILD_STATUS=failed
  fi
fi
echo "build: $BUILD_STATUS"
export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH}

echo "==> tests marked gpu ($(elapsed) s)"
"$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$DEST/gpu_tests.xml" tests \
  2>&1 | tee "$DEST/gpu_tests.log" | tail -40
TESTS_RC=${PIPESTATUS[0]}
[ "$TESTS_RC" = 5 ] && TESTS_RC=0  # no test selected is not a failure of the check

LEFT=$(( BUDGET - $(elapsed) - 20 ))
[ "$LEFT" -lt 30 ] && LEFT=30
echo "==> benchmark, budget ${LEFT} s ($(elapsed) s)"
BENCH_ARGS=(--json "$DEST/bench_gpu.json" --budget-s "$LEFT")
[ "$DRY" = 1 ] && BENCH_ARGS+=(--dry-run)
"$PY" "$ROOT/benchmarks/bench_gpu.py" "${BENCH_ARGS[@]}"
BENCH_RC=$?

"$PY" - "$DEST" "$BUILD_STATUS" "$TESTS_RC" "$BENCH_RC" "$(elapsed)" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
dest, build, tests_rc, bench_rc, seconds = sys.argv[1:6]
def read(name):
    p = os.path.join(dest, name)
    return json.load(open(p)) if os.path.exists(p) else None
tests = {"exit_code": int(tests_rc)}
xml = os.path.join(dest, "gpu_tests.xml")
if os.path.exists(xml):
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    tests.update(counts)
    tests["skip_reasons"] = sorted({s.get("message", "") for s in suite.iter("skipped")})
out = {"preflight": read("preflight.json"), "build": build, "tests": tests,
       "benchmark": read("bench_gpu.json"), "bench_exit_code": int(bench_rc),
       "seconds": int(seconds)}
json.dump(out, open(os.path.join(dest, "gpu_check.json"), "w"), indent=1)
t = tests
print(f"\ngpu check: build {build}; gpu tests {t.get('passed', '?')} passed, "
      f"{t.get('failures', '?')} failed, {t.get('errors', '?')} errors, {t.get('skipped', '?')} "
      f"skipped; benchmark exit {bench_rc}; {seconds} s; {os.path.join(dest, 'gpu_check.json')}")
EOF
case "$BUILD_STATUS" in failed*) exit 1 ;; esac
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ] || exit 1
