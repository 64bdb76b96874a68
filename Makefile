# The README's commands.  `make test` and `make bench` each set up everything on a fresh
# machine: a virtualenv in .venv with requirements-dev.txt, then an in-place build of
# fastloss._C (C++ CPU kernels always; CUDA kernels whenever nvcc is found, even without a GPU).
# On a machine with torch/triton preinstalled and no package registry (the lent GPU
# machines) use `make gpu-test` / `make gpu-bench`, which build with the system python.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MAX_JOBS ?= 2
BENCH_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers: one per CPU this process may use (nproc: the affinity mask, not the
# host's count), at most 8 -- each worker imports torch and Triton.  The Triton interpreter runs
# one Python thread per test: 2 workers on CI's 2 cores took tests/test_sigmoid_focal_loss.py
# from 268 s to 164 s.  PYTEST_WORKERS=0 or 1 runs serially (and needs no pytest-xdist).
PYTEST_WORKERS ?= $(shell n=$$(nproc 2> /dev/null || echo 1); echo $$(( n < 8 ? n : 8 )))
PYTEST_N := $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS))
export MAX_JOBS

.PHONY: venv build test test-isa bench gpu-build gpu-test gpu-bench clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# The compiled extension is rebuilt only when a C++/CUDA source or the build files changed
# (the stamp below); setup.py keeps ninja's objects in build/, so even then only the changed
# files recompile.  `make clean` forces a full rebuild.
BUILT := $(VENV)/.built
BUILD_INPUTS := $(shell find csrc -type f) setup.py pyproject.toml fastloss/_sources.py

$(BUILT): $(VENV)/.installed $(BUILD_INPUTS)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

# Rebuilt also when _C is missing or built for another ISA than this machine's (e.g. left so by
# an interrupted tools/test_cpu_isa.sh, or a checkout shared with another machine).
build: $(BUILT)
	@$(PY) -c "import runpy; isa = runpy.run_path('fastloss/_build_cpu.py')['CPU_ISA']; \
	  raise SystemExit(isa != runpy.run_path('fastloss/_cpu_isa.py')['build_isa']())" > /dev/null 2>&1 \
	  && ls fastloss/_C*.so > /dev/null 2>&1 || { rm -f $(BUILT); $(MAKE) --no-print-directory $(BUILT); }
	$(PY) -m fastloss

# Triton kernels run on CPU tensors through the interpreter when there is no GPU
# (tests/conftest.py sets TRITON_INTERPRET=1 then).  Then the C++ CPU kernels built for the
# instruction set below this machine's (AVX2 on an AVX-512 machine: what older CPUs get) are
# tested too, and this machine's build is put back (tools/test_cpu_isa.sh;
# FASTLOSS_TEST_ISAS="avx2 default" for the portable build as well).
test: build
	$(PY) -m pytest tests $(PYTEST_N) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-isa

test-isa: build
	PY=$(PY) bash tools/test_cpu_isa.sh $(PYTEST_N) $(PYTEST_ARGS)

bench: build
	$(PY) -m benchmarks.run $(BENCH_ARGS)

gpu-build:
	$(PYTHON) -m pip install --no-build-isolation --no-deps -e .
	$(PYTHON) -m fastloss

gpu-test: gpu-build
	FASTLOSS_REQUIRE_GPU=1 $(PYTHON) -m pytest tests

gpu-bench: gpu-build
	$(PYTHON) -m benchmarks.run --device cuda $(BENCH_ARGS)

clean:
	rm -rf build fastloss/_C*.so *.egg-info $(BUILT)
