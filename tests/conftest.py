"""Test configuration of fastloss.

* Without a CUDA device, Triton kernels run on CPU tensors through Triton's interpreter:
  ``TRITON_INTERPRET=1`` must be set before Triton (and fastloss) is imported, so it is
  set here, at conftest import time, unless the caller chose a value.
* Tests marked ``gpu`` skip with a reason when no CUDA device is present; with
  ``FASTLOSS_REQUIRE_GPU=1`` (GPU machines) that skip is a failure instead.
* Under the interpreter, tests/interpreter_speedup.py spares Triton's re-patching of
  triton.language at every nested jit call (half of the interpreter's time in our kernels).
* Backend parametrization and tolerances live in tests/helpers.py.
* ``FASTLOSS_TEST_REPORT=1`` (tools/gpu_session.sh): each failure, with its traceback, and each
  test slower than 5 s is written to stderr as it happens -- a run stopped at its time limit
  (a lent GPU's budget) still says what failed and why, which pytest's end summary does not.
* Hypothesis: random examples by default (they found real numerics bugs);
  ``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) replays the same examples every run, so CI
  is not red by chance.
"""
import os
import sys

# Must run before anything imports triton / fastloss (pytest imports conftest first).
# torch.cuda.is_available() does not initialise CUDA in a way that matters here.
import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import helpers` from any cwd

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import helpers  # noqa: E402
import interpreter_speedup  # noqa: E402

INTERPRETER_SPEEDUP = helpers.env_flag("TRITON_INTERPRET") and interpreter_speedup.install()

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config):
    # pyproject.toml declares the markers too; keep this so the suite also runs from elsewhere.
    config.addinivalue_line("markers", "gpu: needs a CUDA device (FASTLOSS_REQUIRE_GPU=1 turns the skip into a failure)")
    config.addinivalue_line("markers", "slow: long-running test")
    # numpy warnings of Triton's interpreter evaluating both sides of tl.where (e.g. log(0)
    # in a branch that is then discarded): not fastloss's behaviour, just noise.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        # yapf (imported by mmengine, so by the mmdet / mmcv compat tests) writes its grammar cache
        # (~/.cache/YAPF) on its first import after an install: two xdist workers importing it at
        # once, one reading the pickle the other is writing, fail collection with EOFError (seen in
        # a fresh clone).  The controller writes it here, before the workers start.
        try:
            import yapf  # noqa: F401
        except ImportError:
            pass


def pytest_runtest_logreport(report):
    # Under pytest-xdist the workers' reports reach this hook in the controller too: write once.
    if not helpers.env_flag("FASTLOSS_TEST_REPORT") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if report.failed:
        text = str(report.longrepr)
        if len(text) > 4000:  # the assertion and the innermost frames are at the end
            text = "...\n" + text[-4000:]
        sys.__stderr__.write(f"\n=== FAILED ({report.when}, {report.duration:.1f} s) {report.nodeid}\n{text}\n")
    elif report.when == "call" and report.duration > 5.0:
        sys.__stderr__.write(f"\n=== SLOW {report.duration:.1f} s {report.nodeid}\n")
    sys.__stderr__.flush()


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        helpers.require_gpu()


def pytest_report_header(config):
    import fastloss

    return [f"fastloss: _C {'loaded' if fastloss._extension.C is not None else 'NOT loaded: ' + str(fastloss._extension.load_error)}; "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} (interpreter speed-up {'on' if INTERPRETER_SPEEDUP else 'off'}); cuda={torch.cuda.is_available()}; "
            f"FASTLOSS_REQUIRE_GPU={os.environ.get('FASTLOSS_REQUIRE_GPU')!r}",
            f"fastloss: available backends cpu={fastloss.available_backends('cpu')}"
            + (f" cuda={fastloss.available_backends('cuda')}" if torch.cuda.is_available() else "")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=helpers.GRAD_MODES)
def grad_mode(request, monkeypatch):
    """Runs a test with the gradient stored by the forward and with it recomputed by the backward."""
    helpers.set_grad_mode(monkeypatch, request.param)
    return request.param


@pytest.fixture
def nan_poison(monkeypatch):
    """Make torch.empty / empty_like / empty_strided return NaN-filled floating tensors for the
    test's duration, so an output element a Python-side launcher (fastloss.triton_kernels)
    allocates and a kernel forgets to write shows up as NaN.  (at::empty inside the C++
    kernels cannot be patched from Python; their tests check finiteness instead.)"""
    helpers.install_nan_poisoning(monkeypatch)
    yield


@pytest.fixture
def dynamo_reset():
    """A fresh torch.compile state before and after a compile test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
