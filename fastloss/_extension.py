"""Loads the compiled extension ``fastloss._C`` if it is present and current.

Never raises: a missing, stale (built from other sources or another op ABI) or
unloadable ``_C`` leaves :data:`C` as ``None``, and fastloss falls back (Triton on GPU,
the PyTorch reference on CPU), saying so once.
"""
import functools
import os
import warnings

from fastloss._cpu_isa import cpu_flags, isa_error

ABI_VERSION = 16  # must equal FL_ABI_VERSION in csrc/fastloss.cpp


class FastlossWarning(UserWarning):
    pass


_warned = set()


def warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, FastlossWarning, stacklevel=3)


BUILD_HINT = "build it with `make build` or `pip install --no-build-isolation -e .` in the source checkout"


def _load():
    import importlib.util

    import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

    if importlib.util.find_spec("fastloss._C") is None:  # never built (importing would say "circular import")
        return None, "fastloss._C is not built (no compiled extension next to the fastloss package)"
    try:
        from fastloss._build_cpu import CPU_ISA  # written by setup.py next to _C
    except ImportError:
        CPU_ISA = None
    error = isa_error(CPU_ISA, cpu_flags()) if CPU_ISA is not None else None
    if error is not None:
        return None, error
    try:
        from fastloss import _C
    except (ImportError, OSError) as exc:  # built against another torch / Python, or a broken file
        return None, f"fastloss._C could not be loaded ({exc}); rebuild it"
    if getattr(_C, "ABI_VERSION", None) != ABI_VERSION:
        return None, f"fastloss._C has op ABI {getattr(_C, 'ABI_VERSION', '?')}, expected {ABI_VERSION}: rebuild it"
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if os.path.isdir(csrc):  # a source checkout: is _C built from these sources?
        from fastloss._sources import source_hash

        current = source_hash(csrc)
        if current != _C.SOURCE_HASH:
            return None, f"fastloss._C is stale (built from sources {_C.SOURCE_HASH}, checkout has {current}): rebuild it"
    return _C, None


C, load_error = _load()
if C is None:
    warn_once("load", f"{load_error}; using the Triton (GPU) and PyTorch reference (CPU) backends instead: {BUILD_HINT}")


def has_cpu():
    return C is not None


def has_cuda():
    return C is not None and bool(C.WITH_CUDA)


@functools.lru_cache(maxsize=None)
def cuda_kernels_run_on(index):
    """Whether _C's CUDA kernels have code for CUDA device ``index``: machine code for its
    architecture or PTX its driver compiles (csrc/cuda/device.cu; the build's list is
    ``C.CUDA_ARCHS``).  Asked once per device, on that device, with CUDA initialised by torch
    (the probe creates no context of its own).  When the question itself fails (the device
    out of memory, held by another process, ...) the answer is True: the kernels' launch then
    reports the real error, not a rebuild hint."""
    if not has_cuda():
        return False
    import torch

    with torch.cuda.device(index):
        status, error = C.cuda_kernel_code_status()
    if status < 0:
        warn_once(f"cuda-probe-{index}", f"fastloss could not tell whether its CUDA kernels have code for cuda:{index} ({error}); "
                  "using them")
    return status != 0
