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

import torch

from fastloss import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Default order per op (or family of ops) and device type, fastest first.
PREFERENCE = {
    "pointwise": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},  # every loss of fastloss/ops/pointwise.py
    "rowwise": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},  # every loss of fastloss/ops/rowwise.py
    "box_iou_loss": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "box_iou": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "box_iou_max": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "dice": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
    "max_iou_assign": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "reference")},
    "atss_assign": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "reference")},
    "task_aligned_assign": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "reference")},
    "match_cost": {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")},
}

# Forward/backward fusion, per device type (see the docstring of fastloss/ops/pointwise.py):
# True: the forward also writes dL/dx and the backward only scales it (one pass of the math);
# False: the backward recomputes from the inputs (fewest bytes moved).  CPUs are
# compute-bound on these losses, GPUs bandwidth-bound.
STORE_GRAD_IN_FORWARD = {"cpu": True, "cuda": False}

_IMPLEMENTATIONS = {}  # op -> backend -> (forward, backward)
_FAMILY = {}  # op -> the PREFERENCE entry it follows, for ops registered with a family
_override = contextvars.ContextVar("fastloss_backend", default=None)


def preference(op):
    """{device type: backends, fastest first} for ``op`` (its family's entry, if it has one)."""
    return PREFERENCE[_FAMILY.get(op, op)]


def ops():
    """The names of the registered ops, in registration order."""
    return list(_IMPLEMENTATIONS)


def register(op, backend, forward, backward, family=None):
    """Called by fastloss/ops/<family>.py for each backend of an op; ``family``: the
    PREFERENCE entry of an engine whose ops share one order (the pointwise losses)."""
    _IMPLEMENTATIONS.setdefault(op, {})[backend] = (forward, backward)
    if family is not None:
        _FAMILY[op] = family


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


def _where(device):
    """(device type, CUDA device index or None): the CUDA kernels may have code for one GPU of
    a machine and not for another."""
    d = device if isinstance(device, torch.device) else torch.device(device)
    if d.type != "cuda" or d.index is not None:
        return d.type, d.index
    return "cuda", torch.cuda.current_device() if torch.cuda.is_available() else None


def unavailable_backends(device="cpu"):
    """{backend: why it cannot run on ``device`` here} for the backends
    :func:`available_backends` leaves out."""
    return dict(_unavailable(*_where(device), _triton_interpreting()))


@functools.lru_cache(maxsize=None)
def _unavailable(kind, index, interpreting):
    # cached per (device type, CUDA device, TRITON_INTERPRET): resolve() asks on every call
    why = {}
    if kind == "cuda" and not torch.cuda.is_available():
        return tuple((name, "no CUDA device is visible to torch (torch.cuda.is_available() is False)") for name in BACKENDS)
    if kind == "cuda" and index >= torch.cuda.device_count():
        return tuple((name, f"no CUDA device {index}: torch sees {torch.cuda.device_count()}") for name in BACKENDS)
    if kind != "cuda":
        why["cuda"] = "the cuda backend runs on CUDA tensors only"
    if kind != "cpu":
        why["cpu"] = "the cpu backend runs on CPU tensors only"
    if kind == "cpu" and not _extension.has_cpu():
        why["cpu"] = _extension.load_error
    if kind == "cuda" and not _extension.has_cuda():
        why["cuda"] = (_extension.load_error if _extension.C is None else
                       "fastloss._C was built without its CUDA kernels (rebuild with nvcc on PATH, or FASTLOSS_FORCE_CUDA=1)")
    elif kind == "cuda" and not _extension.cuda_kernels_run_on(index):
        cc = "%d.%d" % torch.cuda.get_device_capability(index)
        why["cuda"] = (f"fastloss._C's CUDA kernels were not built for this GPU (compute capability {cc}; built for "
                       f"{getattr(_extension.C, 'CUDA_ARCHS', '?')!r}): rebuild with TORCH_CUDA_ARCH_LIST=\"{cc}\" (setup.py)")
    if not triton_available():
        why["triton"] = "Triton is not importable"
    elif kind == "cpu" and not interpreting:
        why["triton"] = "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (its interpreter, for tests)"
    elif kind not in ("cpu", "cuda"):
        why["triton"] = f"Triton runs on CUDA tensors (and CPU ones under its interpreter), not {kind}"
    return tuple(why.items())


def available_backends(device="cpu"):
    """Backends that can run on ``device`` here (a device, a string such as "cuda:0"), in the
    order of preference: the reference runs on any device type torch has (meta included);
    nothing runs on CUDA without a visible GPU.  :func:`unavailable_backends` says why the
    others are missing."""
    return _available(*_where(device))


def _available(kind, index):
    missing = dict(_unavailable(kind, index, _triton_interpreting()))
    order = ("cpu", "reference", "triton") if kind == "cpu" else ("cuda", "triton", "reference")
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
    kind, index = _where(device)  # once per call: a torch.device from a string costs more than the rest
    available = _available(kind, index)
    name = requested or _override.get() or os.environ.get("FASTLOSS_BACKEND") or None
    if name is not None:
        _check_name(name)
        if name not in available:
            why = dict(_unavailable(kind, index, _triton_interpreting())).get(name, "")
            raise RuntimeError(f"fastloss backend {name!r} is not available for {op} on {kind} tensors ({why}); "
                               f"available here: {available}")
        return name
    for candidate in preference(op).get(kind, ("reference",)):
        if candidate in available:
            return candidate
    return "reference"


def backward_backend(op, device, requested=None):
    """The backend a call's backward runs on, fixed when its forward runs.  Eager: the one
    resolved now (a ``use_backend`` block may have ended by the time backward runs).  While
    torch.compile traces: the request itself (None for the default), resolved when the compiled
    backward runs, as the compiled forward's is -- a graph never bakes in the backend one
    process chose (a cached graph may run in another)."""
    if torch.compiler.is_compiling():
        return requested
    return resolve(op, device, requested)


def store_grad_in_forward(device):
    return STORE_GRAD_IN_FORWARD.get(_where(device)[0], False)


def implementation(op, device, requested=None):
    """(forward, backward) callables of the chosen backend (Triton kernels load lazily)."""
    name = resolve(op, device, requested)
    if name == "triton" and name not in _IMPLEMENTATIONS[op]:
        importlib.import_module(f"fastloss.triton_kernels.{op}")
    return _IMPLEMENTATIONS[op][name]
