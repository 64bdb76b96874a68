"""Accurate transcendental functions for the Triton kernels.

On NVIDIA GPUs ``tl.exp`` / ``tl.log`` of fp32 lower to the approximate ``ex2.approx`` /
``lg2.approx`` instructions after a multiplication by log2(e) / ln(2): their relative error
grows with |x| (about 1e-6 at exp(-30)), more than the kernels' budget (1e-6 against the
float64 reference, like the C++ kernels).  libdevice's ``expf`` / ``logf`` / ``log1pf`` /
``powf`` are accurate to about 2 ulp over the whole range, so the compiled kernels use them.
Triton's interpreter (the CPU tests) has no libdevice; there ``tl.exp`` / ``tl.log`` are
numpy's, correctly rounded, and log1p is formed from log (:func:`log1p`).  The choice is a
compile-time constant (:data:`INTERPRETED`): no branch at run time.
"""
import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

# Read when this module is imported: the tests set TRITON_INTERPRET before importing fastloss.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "") == "1")


@triton.jit
def exp(x):
    if INTERPRETED:
        return tl.exp(x)
    else:
        return libdevice.exp(x)


@triton.jit
def log(x):
    if INTERPRETED:
        return tl.log(x)
    else:
        return libdevice.log(x)


@triton.jit
def log1p(x):
    """log(1 + x) for x > -1, accurate for tiny x."""
    if INTERPRETED:
        # log(u) * x / (u - 1) with u = 1 + x corrects the rounding of u (x where u == 1)
        u = 1.0 + x
        return tl.where(u == 1.0, x, tl.log(u) * x / tl.where(u == 1.0, 1.0, u - 1.0))
    else:
        return libdevice.log1p(x)


@triton.jit
def pow_pos(x, p):
    """x ** p for x > 0 (callers handle x <= 0)."""
    if INTERPRETED:  # exp(p log x) loses |p log x| ulp in fp32: form it in fp64 (numpy)
        return tl.exp(p * tl.log(x.to(tl.float64))).to(x.dtype)
    else:
        return libdevice.pow(x, p + tl.zeros_like(x))  # the exponent in x's dtype: libdevice has no pow(fp64, fp32)
