#!/usr/bin/env bash
# Tests the C++ CPU kernels built for an instruction set below this machine's own.
#
# `make test` tests the build for this machine (AVX-512 on CI's VMs); a user on an older CPU
# gets the AVX2 or the portable build, whose vector code differs (8 fp32 lanes instead of 16,
# 8 x 8 transposes, plain stores instead of streamed ones, no intrinsics at all).  For each
# ISA (below) this builds _C without CUDA in its own build/temp.*-<isa> folder (setup.py; ninja
# keeps the objects for the next run), checks that _C reports that ISA, and runs the test
# files of the CPU kernels with only the C++ CPU backend parametrized
# (FASTLOSS_TEST_BACKENDS=cpu, tests/helpers.py).  This machine's own build is put back at
# the end, also after a failure; meanwhile the checkout's _C is the other ISA's (do not run
# benchmarks from it then).  Were the script killed before that, `make build` notices the
# ISA in fastloss/_build_cpu.py is not this machine's and rebuilds.
#
#   tools/test_cpu_isa.sh [pytest args]      (make test-isa; make test runs it after pytest)
#   FASTLOSS_TEST_ISAS="avx2 default" tools/test_cpu_isa.sh    (both)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TESTS=(tests/test_rowwise.py tests/test_dice.py tests/test_pointwise.py tests/test_sigmoid_focal_loss.py
       tests/test_box_iou.py tests/test_assign.py tests/test_match_cost.py tests/test_backend.py)

# The ISAs: FASTLOSS_TEST_ISAS (e.g. "avx2 default"), else the one just below this machine's --
# AVX2 on an AVX-512 machine (each ISA costs a full CPU build, ~3.5 min on CI's 2 cores, and
# ~2.5 min of tests; the portable build is checked on request)
own=$("$PY" -c 'from fastloss._build_cpu import CPU_ISA; print(CPU_ISA)')
if [ -n "${FASTLOSS_TEST_ISAS:-}" ]; then
  read -r -a isas <<< "$FASTLOSS_TEST_ISAS"
else
  case "$own" in
    avx512) isas=(avx2) ;;
    avx2) isas=(default) ;;
    *) echo "this machine's build is already the portable one: nothing below it to test"; exit 0 ;;
  esac
fi

saved=$(mktemp -d)
cp fastloss/_C*.so fastloss/_build_cpu.py "$saved"/
trap 'rc=$?; cp "$saved"/* fastloss/ || { echo "could not put this machine'"'"'s build back: it is in $saved" >&2; exit 1; }; rm -rf "$saved"; exit $rc' EXIT
# only the C++ backend's cases, and none on a GPU: these builds have no CUDA part
export FASTLOSS_TEST_BACKENDS=cpu
unset FASTLOSS_REQUIRE_GPU

for isa in "${isas[@]}"; do
  case "$isa" in
    avx2) flag=FASTLOSS_CPU_AVX512=0 ;;
    default) flag=FASTLOSS_CPU_AVX2=0 ;;
    *) echo "FASTLOSS_TEST_ISAS: $isa is not one of avx2, default"; exit 1 ;;
  esac
  echo "== fastloss._C's CPU kernels built for $isa ($flag)"
  log="build/test_cpu_isa-$isa.log"
  mkdir -p build
  if ! env "$flag" FASTLOSS_SKIP_CUDA=1 "$PY" setup.py build_ext --inplace > "$log" 2>&1; then
    tail -n 40 "$log"
    echo "the $isa build failed (whole log: $log)"
    exit 1
  fi
  got=$("$PY" -c 'import fastloss._C as C; print(C.CPU_CAPABILITY)')
  if [ "$got" != "$isa" ]; then
    echo "_C reports CPU_CAPABILITY=$got, built for $isa"
    exit 1
  fi
  "$PY" -m pytest "${TESTS[@]}" "$@"
done
