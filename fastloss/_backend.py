"""THE one place that chooses an implementation for an op on a device.

The PyTorch dispatcher chooses by device (CPU / CUDA); within a device this module
chooses among the backends

* ``reference`` -- pure PyTorch (fastloss/reference/), everywhere;
* ``cpu``       -- the C++ kernels of fastloss._C, CPU tensors;
* ``cuda``      -- the CUDA kernels of fastloss._C, CUDA tensors (if built with CUDA);
* ``triton``    -- fastloss.triton_kernels, CUDA tensors; CPU tensors only under
                   ``TRITON_INTERPRET=1`` (the tests' way to run Triton without a GPU).

Order of precedence: the ``backend=`` argument of a call, then :func:`use_backend`, then
the environment variable ``FASTLOSS_BACKEND``, then the default -- the fastest measured
for that op on that device (``PREFERENCE``; benchmarks/ measures it).  Asking for a
backend that is not available raises ``RuntimeError`` naming the available ones.
"""
import contextlib
import contextvars
import functools
import importlib
import os

from fastloss import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Default order per op and device type, fastest first.
PREFERENCE = {
    "sigmoid_focal_loss": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "box_iou_loss": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "box_iou": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "box_iou_max": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "dice": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
}

# Forward/backward fusion, per device type (see the docstring of fastloss/ops/sigmoid_focal_loss.py):
# True: the forward also writes dL/dx and the backward only scales it (one pass of the math);
# False: the backward recomputes from the inputs (fewest bytes moved).  CPUs are
# compute-bound on these losses, GPUs bandwidth-bound.
STORE_GRAD_IN_FORWARD = {"cpu": True, "cuda": False}

_IMPLEMENTATIONS = {}  # op -> backend -> (forward, backward)
_override = contextvars.ContextVar("fastloss_backend", default=None)


def register(op, backend, forward, backward):
    """Called by fastloss/ops/<family>.py for each backend of an op."""
    _IMPLEMENTATIONS.setdefault(op, {})[backend] = (forward, backward)


@functools.lru_cache(maxsize=None)
def triton_available():
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 -- any import failure means "no Triton"
        return False
    return True


def _triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _device_type(device):
    import torch

    return torch.device(device).type


def _cuda_present():
    import torch

    return torch.cuda.is_available()


def unavailable_backends(device="cpu"):
    """{backend: why it cannot run on ``device`` here} for the backends
    :func:`available_backends` leaves out."""
    kind = _device_type(device)
    why = {}
    if kind == "cuda" and not _cuda_present():
        return {name: "no CUDA device is visible to torch (torch.cuda.is_available() is False)" for name in BACKENDS}
    if kind not in ("cpu", "cuda"):
        return {name: f"fastloss has no kernels for {kind} tensors" for name in BACKENDS}
    if kind == "cpu":
        why["cuda"] = "the cuda backend runs on CUDA tensors only"
        if not _extension.has_cpu():
            why["cpu"] = f"fastloss._C is not loaded: {_extension.load_error}"
        if not triton_available():
            why["triton"] = "Triton is not importable"
        elif not _triton_interpreting():
            why["triton"] = "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (its interpreter, for tests)"
    else:
        why["cpu"] = "the cpu backend runs on CPU tensors only"
        if not _extension.has_cuda():
            why["cuda"] = (f"fastloss._C is not loaded: {_extension.load_error}" if _extension.C is None else
                           "fastloss._C was built without its CUDA kernels (rebuild with nvcc on PATH, or FASTLOSS_FORCE_CUDA=1)")
        if not triton_available():
            why["triton"] = "Triton is not importable"
    return why


def available_backends(device="cpu"):
    """Backends that can run on ``device`` here (a device, a string such as "cuda:0"), in the
    order of preference; empty for CUDA without a visible GPU.  :func:`unavailable_backends`
    says why the others are missing."""
    missing = unavailable_backends(device)
    order = ("cpu", "reference", "triton") if _device_type(device) == "cpu" else ("cuda", "triton", "reference")
    return [name for name in order if name not in missing]


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown fastloss backend {name!r}; expected one of {BACKENDS}")


@contextlib.contextmanager
def use_backend(name):
    """Run the ops inside the ``with`` block on backend ``name`` (None: the default)."""
    if name is not None:
        _check_name(name)
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def resolve(op, device, requested=None):
    """Name of the backend that runs ``op`` on ``device``."""
    kind = _device_type(device)
    available = available_backends(device)
    name = requested or _override.get() or os.environ.get("FASTLOSS_BACKEND") or None
    if name is not None:
        _check_name(name)
        if name not in available:
            raise RuntimeError(f"fastloss backend {name!r} is not available for {op} on {kind} tensors; "
                               f"available here: {available}")
        return name
    for candidate in PREFERENCE[op].get(kind, ("reference",)):
        if candidate in available:
            return candidate
    return "reference"


def store_grad_in_forward(device):
    return STORE_GRAD_IN_FORWARD.get(_device_type(device), False)


def implementation(op, device, requested=None):
    """(forward, backward) callables of the chosen backend (Triton kernels load lazily)."""
    name = resolve(op, device, requested)
    if name == "triton" and name not in _IMPLEMENTATIONS[op]:
        importlib.import_module(f"fastloss.triton_kernels.{op}")
    return _IMPLEMENTATIONS[op][name]
