"""Shared test helpers: the tolerance table, the (device, backend, dtype) parametrization,
GPU/backend requirements and NaN poisoning of ``torch.empty``."""
import dataclasses
import functools
import glob
import os

import pytest
import torch

import fastloss

# --------------------------------------------------------------------------------------
# Tolerances: ONE table keyed by dtype.
#
# Comparisons are against a float64 oracle that is first rounded to the output dtype, so
# ``rtol`` allows ~2 ulp of that dtype plus the fp32 compute error; ``atol`` is *relative
# to the largest magnitude* of the expected tensor (cancellation near zero); on top of it
# an absolute floor of a few subnormal steps of the dtype (fp16 gradients of a "mean" over
# a million elements are subnormal: nothing better is representable).  ``rtol_reduced``
# covers fp32 accumulation of long sums (block partials, then one final sum).
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float  # times max |expected|
    rtol_reduced: float

    def floor(self, dtype):
        info = torch.finfo(dtype)
        return 4 * info.tiny * info.eps


TOLERANCES = {
    torch.float64: Tol(rtol=1e-10, atol=1e-12, rtol_reduced=1e-10),
    torch.float32: Tol(rtol=1e-5, atol=1e-6, rtol_reduced=5e-5),
    torch.float16: Tol(rtol=2e-3, atol=1e-4, rtol_reduced=2e-3),
    torch.bfloat16: Tol(rtol=1.6e-2, atol=1e-3, rtol_reduced=1.6e-2),
}


def tol(dtype):
    return TOLERANCES[dtype]


def assert_close(actual, expected, dtype=None, *, reduced=False, msg=""):
    """``actual`` (a fastloss result in ``dtype``) against a float64 ``expected``."""
    dtype = dtype or actual.dtype
    assert actual.dtype == dtype, f"{msg}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    t = TOLERANCES[dtype]
    exp = expected.detach().to(device=actual.device).to(dtype).to(torch.float64)
    act = actual.detach().to(torch.float64)
    finite = exp[torch.isfinite(exp)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    rtol = t.rtol_reduced if reduced else t.rtol
    atol = t.atol * scale + t.floor(dtype)
    torch.testing.assert_close(act, exp, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{msg} [{dtype}, rtol={rtol:g}, atol={atol:g}]\n{m}")


# --------------------------------------------------------------------------------------
# Devices, backends, dtypes.
# --------------------------------------------------------------------------------------

# FASTLOSS_TEST_BACKENDS=cpu (tools/test_cpu_isa.sh): only those backends' cases -- the others
# are not parametrized, and require_backend skips them where a test names its backend
ONLY_BACKENDS = tuple(b for b in os.environ.get("FASTLOSS_TEST_BACKENDS", "").split(",") if b)
CPU_BACKENDS = ("cpu", "reference", "triton")
if ONLY_BACKENDS:
    CPU_BACKENDS = tuple(b for b in CPU_BACKENDS if b in ONLY_BACKENDS)
CUDA_BACKENDS = ("cuda", "triton", "reference")
CPU_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

gpu = pytest.mark.gpu


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def require_gpu():
    """Skip (with a reason) without a CUDA device; fail instead under FASTLOSS_REQUIRE_GPU=1."""
    if not torch.cuda.is_available():
        reason = "needs a CUDA device (none present; set FASTLOSS_REQUIRE_GPU=1 to make this a failure)"
        if env_flag("FASTLOSS_REQUIRE_GPU"):
            pytest.fail("FASTLOSS_REQUIRE_GPU=1 but no CUDA device is available")
        pytest.skip(reason)


def extension_so_files():
    pkg = os.path.dirname(os.path.abspath(fastloss.__file__))
    return sorted(glob.glob(os.path.join(pkg, "_C*.so")) + glob.glob(os.path.join(pkg, "_C*.pyd")))


def require_backend(device, backend):
    """Skip (with a reason) when ``backend`` cannot run on ``device`` here -- or fail, where
    it must run: cuda/triton on a GPU machine under FASTLOSS_REQUIRE_GPU=1, the C++ CPU
    backend in CI (CI=true)."""
    if ONLY_BACKENDS and backend not in ONLY_BACKENDS:
        pytest.skip(f"FASTLOSS_TEST_BACKENDS={','.join(ONLY_BACKENDS)}: backend {backend!r} not tested in this run")
    if device == "cuda":
        require_gpu()
    available = fastloss.available_backends(device)
    if backend in available:
        return
    if backend == "cpu":
        reason = f"backend 'cpu' unavailable: {fastloss._extension.load_error}"
        if env_flag("CI"):
            pytest.fail(f"CI=true requires the C++ extension; {reason}")
    elif backend == "triton" and device == "cpu":
        reason = "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (conftest sets it when there is no CUDA device)"
    else:
        reason = f"backend {backend!r} unavailable on {device} (available: {available}; _C: {fastloss._extension.load_error})"
        if device == "cuda" and env_flag("FASTLOSS_REQUIRE_GPU"):
            pytest.fail(f"FASTLOSS_REQUIRE_GPU=1: {reason}")
    pytest.skip(reason)


def device_backend_params(devices=("cpu", "cuda")):
    """pytest.params of (device, backend); cuda ones carry the gpu mark."""
    params = []
    if "cpu" in devices:
        params += [pytest.param("cpu", b, id=f"cpu-{b}") for b in CPU_BACKENDS]
    if "cuda" in devices:
        params += [pytest.param("cuda", b, id=f"cuda-{b}", marks=gpu) for b in CUDA_BACKENDS]
    return params


def device_backend_dtype_params(devices=("cpu", "cuda"), dtypes=None):
    params = []
    for p in device_backend_params(devices):
        device, backend = p.values
        for dt in (CPU_DTYPES if device == "cpu" else CUDA_DTYPES):
            if dtypes is not None and dt not in dtypes:
                continue
            params.append(pytest.param(device, backend, dt, id=f"{p.id}-{DTYPE_IDS[dt]}", marks=p.marks))
    return params


def is_interpreted(device, backend):
    """Triton on CPU tensors runs in the (slow) interpreter: tests use smaller sizes there."""
    return backend == "triton" and device == "cpu"


def splits_work(device, backend):
    """Whether ``backend`` on ``device`` is fastloss's own code split over blocks or threads (a
    GPU, the C++ CPU kernels), where a large size reaches code a small one does not.  The others
    take a test's small size: the interpreter runs one program at a time, and the reference on
    the CPU is torch's own ops (their threading is torch's, deterministic on the CPU)."""
    return device != "cpu" or backend == "cpu"


def gradcheck(fn, inputs, backend, **tolerances):
    """``torch.autograd.gradcheck`` of ``fn`` run by ``backend`` (float64 inputs on the CPU).
    Under Triton's interpreter it runs in fast mode: one random projection u' J v of the
    Jacobian (the analytical vector-Jacobian product against a finite difference along one
    random direction) instead of every column, so a few calls of the slow interpreter instead
    of two per input element.  Compiled backends get the full Jacobian."""
    return torch.autograd.gradcheck(fn, inputs, fast_mode=is_interpreted("cpu", backend), **tolerances)


# --------------------------------------------------------------------------------------
# Gradient path: "store" (the forward writes dL/dx, the backward scales it) or "recompute"
# (the backward kernels recompute from the inputs); fastloss/_backend.py picks one per
# device type (STORE_GRAD_IN_FORWARD).  Tests run both on every device.
# --------------------------------------------------------------------------------------

GRAD_MODES = ("store", "recompute")


def set_grad_mode(monkeypatch, mode):
    from fastloss import _backend

    assert mode in GRAD_MODES
    for kind in ("cpu", "cuda"):
        monkeypatch.setitem(_backend.STORE_GRAD_IN_FORWARD, kind, mode == "store")


# --------------------------------------------------------------------------------------
# NaN poisoning of torch.empty & co (Python-side launchers).
# --------------------------------------------------------------------------------------

POISONED = ("empty", "empty_like", "empty_strided")


def _poisoning(fn):
    @functools.wraps(fn)
    def poisoned(*args, **kwargs):
        out = fn(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() and out.device.type != "meta":
            with torch.no_grad():
                out.fill_(float("nan"))
        return out

    poisoned.__fastloss_poisoned__ = True
    return poisoned


def prepoison_heap(numel, *dtypes, device="cpu"):
    """Best effort for buffers that C++ kernels allocate with at::empty (unreachable from
    Python): allocate and free NaN-filled blocks of the sizes about to be requested, so the
    allocator tends to hand them out again and an unwritten element reads as NaN (works for
    all but tiny sizes with glibc malloc; the caching allocator on CUDA)."""
    blocks = [torch.full((max(numel, 1),), float("nan"), dtype=dt, device=device) for dt in dtypes]
    del blocks


def install_nan_poisoning(monkeypatch):
    for name in POISONED:
        fn = getattr(torch, name)
        if not getattr(fn, "__fastloss_poisoned__", False):
            monkeypatch.setattr(torch, name, _poisoning(fn))


# --------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """A logits shape and memory layout: contiguous, transposed (2-D), sliced (every other
    column) or permuted (3-D, first two dims swapped)."""
    shape: tuple
    layout: str = "contiguous"

    @property
    def id(self):
        return "x".join(map(str, self.shape)) + ("" if self.layout == "contiguous" else f"-{self.layout}")


def _layout(shape, layout, make):
    """A tensor of ``shape`` with ``layout``, its values drawn by make(storage_shape)."""
    if layout == "contiguous":
        return make(shape)
    if layout == "transposed":
        assert len(shape) == 2
        return make(shape[::-1]).t()
    if layout == "sliced":
        return make(tuple(shape[:-1]) + (2 * shape[-1],))[..., ::2]
    if layout == "permuted":
        assert len(shape) >= 2
        return make((shape[1], shape[0]) + tuple(shape[2:])).transpose(0, 1)
    raise AssertionError(layout)


def make_logits(case, dtype, device, scale=3.0, requires_grad=True):
    x = _layout(case.shape, case.layout, lambda s: (torch.randn(s, dtype=torch.float64) * scale).to(dtype).to(device))
    assert tuple(x.shape) == tuple(case.shape)
    assert (case.layout == "contiguous") == x.is_contiguous() or x.numel() <= 1
    return x.requires_grad_(requires_grad)


def make_target(case, form, dtype, device):
    """``form`` "float": hard 0/1 targets of the logits' shape (same layout) in ``dtype``;
    "labels": int64 class labels of shape[:-1] in [0, C] (C = background; non-contiguous
    when the case is)."""
    shape = tuple(case.shape)
    if form == "float":
        return _layout(shape, case.layout, lambda s: (torch.rand(s) < 0.3).to(dtype).to(device))
    C = shape[-1]
    rows = shape[:-1]
    if case.layout == "contiguous":
        return torch.randint(0, C + 1, rows, device=device)
    return torch.randint(0, C + 1, rows + (2,), device=device)[..., 0]


def make_weight(case, kind, dtype, device):
    """Weights: None, "elem" (logits' shape), "row" (shape[:-1], mmdetection's per-anchor),
    "broadcast" (per class: shape (1, ..., 1, C))."""
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    shape = tuple(case.shape)
    if kind is None:
        return None
    if kind == "elem":
        return torch.rand(shape, dtype=wdtype, device=device)
    if kind == "row":
        return torch.rand(shape[:-1], dtype=wdtype, device=device)
    if kind == "broadcast":
        return torch.rand((1,) * (len(shape) - 1) + shape[-1:], dtype=wdtype, device=device)
    raise AssertionError(kind)


def reference_target(target, dtype):
    """The target as the kernels see it (float targets are cast to the input dtype), in fp64."""
    if target.is_floating_point():
        return target.to(dtype).to(torch.float64)
    return target


def to64(t):
    if t is None or not isinstance(t, torch.Tensor):
        return t
    return t.detach().to(torch.float64) if t.is_floating_point() else t


def random_upstream(out):
    """A random upstream gradient for ``out`` (not ones), in out's dtype."""
    return torch.randn(out.shape, dtype=torch.float64).to(out.dtype).to(out.device)


def assert_compiled_matches_eager(fn, args, wrt):
    """torch.compile(fullgraph=True) of ``fn`` gives eager's value and gradient w.r.t. ``wrt``."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a = compiled(*args)
    b = fn(*args)
    torch.testing.assert_close(a, b)
    ga, = torch.autograd.grad(a, wrt)
    gb, = torch.autograd.grad(b, wrt)
    torch.testing.assert_close(ga, gb)


# --------------------------------------------------------------------------------------
# Peers that need help to import.
# --------------------------------------------------------------------------------------


def import_mmdet_losses():
    """(mmdet.models.losses, mmdet.structures.bbox.bbox_overlaps), or a pytest skip.

    mmcv-lite has no compiled ops and ``mmdet.models`` imports ``mmcv.ops``, which loads them
    at import time: without a full mmcv build, mmcv gets an empty ``mmcv._ext`` whose ops raise
    when called, so that mmdetection's pure-PyTorch losses import."""
    import sys
    import types
    import warnings

    pytest.importorskip("mmdet")
    pytest.importorskip("mmengine")
    pytest.importorskip("mmcv")
    try:
        import mmcv._ext  # noqa: F401  (a full mmcv build)
    except ImportError:
        ext = types.ModuleType("mmcv._ext")

        def missing(name):
            if name.startswith("__"):
                raise AttributeError(name)

            def op(*args, **kwargs):
                raise RuntimeError(f"mmcv compiled op {name} is not available (mmcv-lite)")

            return op

        ext.__getattr__ = missing
        sys.modules["mmcv._ext"] = ext
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import mmdet.models.losses as losses
            from mmdet.structures.bbox import bbox_overlaps
        except ImportError as e:  # pragma: no cover - depends on the installed mmcv
            pytest.skip(f"mmdet.models.losses does not import here: {e}", allow_module_level=True)
    return losses, bbox_overlaps


def load_example(name):
    """examples/<name>.py imported as a module (the examples are scripts, not a package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
