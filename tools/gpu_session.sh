#!/usr/bin/env bash
# One call's worth of GPU work on a lent machine (torch/triton preinstalled, no registry):
#   build in place -> full test suite with FASTLOSS_REQUIRE_GPU=1 -> compute-sanitizer over the
#   CUDA tests -> benchmarks on cuda into benchmarks/results/<device>/ -> logs under $OUT.
# Usage (device tool): bash tools/gpu_session.sh [--skip-tests] [--skip-sanitizer] [--bench-args "..."]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastloss-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
run_tests=1; run_sanitizer=1; bench_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-tests) run_tests=0 ;;
    --skip-sanitizer) run_sanitizer=0 ;;
    --bench-args) bench_args="$2"; shift ;;
  esac
  shift
done
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
$PY -m fastloss | tee "$OUT/info.txt"
if [ "$run_tests" = 1 ]; then
  FASTLOSS_REQUIRE_GPU=1 $PY -m pytest tests -q --maxfail=30 -p no:cacheprovider > "$OUT/tests-gpu.log" 2>&1 || status=1
  tail -5 "$OUT/tests-gpu.log"
fi
if [ "$run_sanitizer" = 1 ] && command -v compute-sanitizer > /dev/null; then
  FASTLOSS_REQUIRE_GPU=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
    $PY -m pytest tests -q -x -p no:cacheprovider -m gpu -k "cuda and not compile" > "$OUT/sanitizer.log" 2>&1 || status=1
  tail -5 "$OUT/sanitizer.log"
fi
slug=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
$PY -m benchmarks.run --device cuda --out "benchmarks/results/$slug" $bench_args 2>&1 | tee "$OUT/bench.log" || status=1
tar czf "$OUT/results.tgz" "benchmarks/results/$slug"  # $OUT returns at most 8 files
exit $status
