#!/usr/bin/env bash
# GPU work on a lent machine (torch/triton preinstalled, no package registry), sized to its
# budget: 15 minutes of device time in all, 10 minutes per command; a call that finds no warm
# machine starts one (~30 s), and a machine stays warm (build kept) only 30 s after a call.
#
# Measured on the first GPU session (2026-11-30, H200, 16 cores, torch 2.11 / CUDA 13.0 /
# Triton 3.6): build 91 s; the whole `-m gpu` suite did NOT finish in 370 s with 16 workers
# (97 %), so it is split in two stages below; memcheck over the CUDA kernels in fp32: 52 s.
# The plan that fits, two calls, the second issued at once on the warm machine:
#   call 1 (timeout 600):  bash tools/gpu_session.sh    # build 150 + gpu-tests-native 300 + sanitizer 130 s at most
#   call 2 (right after):  bash tools/gpu_session.sh --stages "gpu-tests-triton bench-quick"
# Later sessions, when these pass: --full (the rest of the suite, the full benchmark).
#   bash tools/gpu_session.sh --stages "build bench-full"   # any subset, in this order
#
# Stages (each with its own time limit, so one that hangs cannot eat the whole call):
#   build             pip install -e . (CUDA kernels for the GPU's own architecture only)
#   gpu-tests-native  pytest -m gpu -k "not triton" (the C++/CUDA kernels and the reference on
#                     CUDA), FASTLOSS_REQUIRE_GPU=1, in parallel (pytest-xdist)
#   gpu-tests-triton  pytest -m gpu -k triton (the Triton kernels compiled for the GPU)
#   gpu-tests         both in one run
#   sanitizer         compute-sanitizer over tools/cuda_smoke.py (every CUDA and Triton kernel,
#                     tail and empty sizes; not over pytest): memcheck of the CUDA kernels (fp32,
#                     bf16), racecheck (CUDA, fp32), then memcheck of the Triton kernels
#   bench-quick       python -m benchmarks.run --device cuda --quick
#   cpu-tests         the tests not marked gpu, FASTLOSS_REQUIRE_GPU=1, in parallel
#   bench-full        python -m benchmarks.run --device cuda (full sizes)
# The test stages set FASTLOSS_TEST_REPORT=1 (tests/conftest.py): each failure with its
# traceback, and each test slower than 5 s, is logged as it happens, so a stage stopped at its
# limit still says what failed (pytest's own summary comes only at the end).
# Stage limits: LIMIT_<stage>=seconds overrides one (dashes as underscores: LIMIT_gpu_tests=200).
# Peers: the lent machine has torchvision but not ultralytics / MONAI / smp / mmdet, whose
# tests (the task-aligned and ATSS CUDA kernels among them) skip without them.  Carry them as
# wheels (see /work/.library/device/README.md): put them in .whl/ (ignored through
# .git/info/exclude), name .whl in the call's carry; this script installs them first.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     ultralytics==8.4.190 monai==1.6.1 segmentation_models_pytorch==0.6.0 mmdet==3.3.0 \
#     mmengine==0.10.7 mmcv-lite==2.1.0 addict yapf platformdirs termcolor terminaltables pycocotools shapely
# Every log goes to $OUT as its stage ends (a call stopped at its limit still returns what
# ran); $OUT/session.tsv lists stage, seconds, exit status.  $OUT returns at most 8 files:
# session.tsv, info.txt, build.log, tests-gpu.log, tests-gpu-triton.log, sanitizer.log,
# tests-cpu.log, bench.log, bench.tgz (the results folder, to commit under
# benchmarks/results/<device>/) -- one call must not run all of them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastloss-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
stages="build gpu-tests-native sanitizer"
sanitize() {
  if ! command -v compute-sanitizer > /dev/null; then echo "compute-sanitizer not found"; return 1; fi
  local rc=0 san="compute-sanitizer --error-exitcode 9 --print-limit 20"
  echo "--- memcheck, CUDA kernels (fp32, bf16)"
  $san --tool memcheck $PY tools/cuda_smoke.py --backends cuda --dtypes fp32 bf16 || rc=1
  echo "--- racecheck, CUDA kernels' shared-memory reductions (fp32)"
  $san --tool racecheck $PY tools/cuda_smoke.py --backends cuda --dtypes fp32 || rc=1
  echo "--- memcheck, Triton kernels (fp32, bf16)"
  $san --tool memcheck $PY tools/cuda_smoke.py --backends triton --dtypes fp32 bf16 || rc=1
  return $rc
}

bench() {  # bench [--quick]: into benchmarks/results/<device>/, then one tarball in $OUT
  local slug dir rc
  slug=$($PY -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
  dir="benchmarks/results/$slug"
  $PY -m benchmarks.run --device cuda --out "$dir" "$@"
  rc=$?
  tar czf "$OUT/bench.tgz" "$dir"
  return $rc
}

case "${1:-}" in  # internal: a stage's body, run under `timeout` by stage() below
  --run-sanitizer) sanitize; exit $? ;;
  --run-bench) shift; bench "$@"; exit $? ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --full) stages="build cpu-tests bench-full" ;;
    --stages) stages="$2"; shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
  shift
done
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

JOBS=${JOBS:-$(nproc)}
xdist="-n $JOBS"
$PY -c "import xdist" 2> /dev/null || xdist=""  # pytest-xdist is on the lent machines; run serially without it
tenv="FASTLOSS_REQUIRE_GPU=1 FASTLOSS_TEST_REPORT=1"
topts="-q $xdist --maxfail=200 --durations=30 -p no:cacheprovider"
status=0
printf 'stage\tseconds\texit\n' > "$OUT/session.tsv"

stage() {  # stage NAME LIMIT_S LOG COMMAND...
  local name=$1 limit=$2 log=$3 override
  shift 3
  override="LIMIT_${name//-/_}"
  limit=${!override:-$limit}
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
  rc=$?
  printf '%s\t%d\t%d\n' "$name" $((SECONDS - t0)) "$rc" >> "$OUT/session.tsv"
  tail -n 15 "$OUT/$log"
  [ "$rc" = 0 ] || status=1
  return "$rc"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"; git log -1 --format='commit %H %s' 2>/dev/null; } > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "9.0")
for s in $stages; do
  case "$s" in
    build) stage build 150 build.log env MAX_JOBS="$JOBS" TORCH_CUDA_ARCH_LIST="$arch" $PY -m pip install --no-build-isolation --no-deps -e . \
             && $PY -m fastloss >> "$OUT/info.txt" 2>&1 || { echo "build failed: stopping"; exit 1; } ;;
    gpu-tests) stage gpu-tests 540 tests-gpu.log env $tenv $PY -m pytest tests -m gpu $topts ;;
    gpu-tests-native) stage gpu-tests-native 300 tests-gpu.log env $tenv $PY -m pytest tests -m gpu -k "not triton" $topts ;;
    gpu-tests-triton) stage gpu-tests-triton 360 tests-gpu-triton.log env $tenv $PY -m pytest tests -m gpu -k triton $topts ;;
    sanitizer) stage sanitizer 130 sanitizer.log bash "$0" --run-sanitizer ;;
    bench-quick) stage bench-quick 120 bench.log bash "$0" --run-bench --quick ;;
    cpu-tests) stage cpu-tests 300 tests-cpu.log env $tenv $PY -m pytest tests -m "not gpu" $topts ;;
    bench-full) stage bench-full 420 bench.log bash "$0" --run-bench ;;
    *) echo "unknown stage $s"; status=1 ;;
  esac
done
cat "$OUT/session.tsv"
exit $status
