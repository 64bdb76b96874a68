"""Sigmoid focal loss in Triton: forward (per-element loss or per-program partial sums)
and backward (recomputed, see fastloss/ops/sigmoid_focal_loss.py for why).

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv 1708.02002)::

    p = sigmoid(x),  ce = max(x, 0) - x t + log(1 + exp(-|x|))
    q = 1 - p_t = t (1 - p) + (1 - t) p,   a_t = alpha t + (1 - alpha)(1 - t)
    L = a_t q^gamma ce
    dL/dx = a_t q^gamma [(p - t) + gamma ce r],   r = (1 - 2t) p (1 - p) / q  (0 where q = 0)

p - t is evaluated as (1 - t) p - t sigmoid(-x) (no cancellation for confident positives) and
1 - alpha is formed in double by the launcher.

The same math as csrc/kernels/sigmoid_focal_loss.h.  Targets are float (one per logit)
or int64 class labels (one per row of C logits, compared with the column in registers:
no one-hot).  Reductions are deterministic: each program writes one fp32 partial sum and
the launcher adds them with one torch.sum.  Calling convention: csrc/fastloss.cpp.
"""
import torch
import triton
import triton.language as tl

from fastloss import _backend
from fastloss.ops._common import reduced_dtype
from fastloss.triton_kernels import _math

BLOCK = 1024


@triton.jit
def _focal_terms(x, t, alpha, one_minus_alpha, gamma, GAMMA_MODE: tl.constexpr, USE_ALPHA: tl.constexpr, NEED_GRAD: tl.constexpr):
    e = _math.exp(-tl.abs(x))
    inv = 1.0 / (1.0 + e)
    s_pos = tl.where(x >= 0, inv, e * inv)  # sigmoid(x)
    s_neg = tl.where(x >= 0, e * inv, inv)  # sigmoid(-x), no cancellation
    ce = tl.where(x >= 0, x * (1.0 - t), -x * t) + _math.log1p(e)  # max(x, 0) - x t, exact for t = 1
    q = t * s_neg + (1.0 - t) * s_pos
    if GAMMA_MODE == 0:
        qg = tl.full(q.shape, 1.0, q.dtype)
    elif GAMMA_MODE == 2:
        qg = q * q
    else:
        qg = tl.where(q > 0, _math.pow_pos(tl.where(q > 0, q, 1.0), gamma), 0.0)
    a_t = 1.0
    if USE_ALPHA:
        a_t = alpha * t + one_minus_alpha * (1.0 - t)
    loss = a_t * qg * ce
    grad = loss
    if NEED_GRAD:
        r = tl.where(q > 0, (1.0 - 2.0 * t) * s_pos * s_neg / q, 0.0)
        p_minus_t = (1.0 - t) * s_pos - t * s_neg  # p - t without cancellation
        grad = a_t * qg * (p_minus_t + gamma * ce * r)
    return loss, grad


@triton.jit
def _load_inputs(x_ptr, t_ptr, w_ptr, offs, mask, C, COMPUTE: tl.constexpr, LABELS: tl.constexpr, WEIGHT_MODE: tl.constexpr):
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if LABELS:
        row = offs // C
        col = offs - row * C
        label = tl.load(t_ptr + row, mask=mask, other=-1)
        t = (label == col).to(COMPUTE)
    else:
        row = offs
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if WEIGHT_MODE == 1:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    elif WEIGHT_MODE == 2:
        w = tl.load(w_ptr + offs // C, mask=mask, other=0.0).to(COMPUTE)
    else:
        w = tl.full(x.shape, 1.0, COMPUTE)
    return x, t, w


@triton.jit
def _offsets(numel, BLOCK: tl.constexpr, INT64: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < numel


@triton.jit
def _forward_kernel(x_ptr, t_ptr, w_ptr, out_ptr, partial_ptr, cache_ptr, numel, C, alpha, one_minus_alpha, gamma, GAMMA_MODE: tl.constexpr,
                    USE_ALPHA: tl.constexpr, LABELS: tl.constexpr, WEIGHT_MODE: tl.constexpr, REDUCE: tl.constexpr,
                    WITH_GRAD: tl.constexpr, COMPUTE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _offsets(numel, BLOCK, INT64)
    x, t, w = _load_inputs(x_ptr, t_ptr, w_ptr, offs, mask, C, COMPUTE, LABELS, WEIGHT_MODE)
    loss, grad = _focal_terms(x, t, alpha, one_minus_alpha, gamma, GAMMA_MODE, USE_ALPHA, WITH_GRAD)
    if WITH_GRAD:
        tl.store(cache_ptr + offs, grad * w, mask=mask)
    loss = tl.where(mask, loss * w, 0.0)
    if REDUCE:
        tl.store(partial_ptr + tl.program_id(0), tl.sum(loss, axis=0))
    else:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(x_ptr, t_ptr, w_ptr, g_ptr, out_ptr, numel, C, alpha, one_minus_alpha, gamma, scale, GAMMA_MODE: tl.constexpr,
                     USE_ALPHA: tl.constexpr, LABELS: tl.constexpr, WEIGHT_MODE: tl.constexpr, PER_ELEM_GRAD: tl.constexpr,
                     COMPUTE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _offsets(numel, BLOCK, INT64)
    x, t, w = _load_inputs(x_ptr, t_ptr, w_ptr, offs, mask, C, COMPUTE, LABELS, WEIGHT_MODE)
    _, grad = _focal_terms(x, t, alpha, one_minus_alpha, gamma, GAMMA_MODE, USE_ALPHA, True)
    if PER_ELEM_GRAD:
        up = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    else:
        up = tl.load(g_ptr).to(COMPUTE) * scale  # the reduced loss's upstream gradient, on the device
    tl.store(out_ptr + offs, (grad * w * up).to(out_ptr.dtype.element_ty), mask=mask)


def _common_args(input, target, weight, alpha, gamma):
    numel = input.numel()
    C = input.shape[-1] if input.dim() > 0 else 1
    labels = not target.is_floating_point()
    weight_mode = 0 if weight is None else (1 if weight.numel() == numel else 2)
    gamma_mode = 0 if gamma == 0 else (2 if gamma == 2 else 1)
    meta = dict(GAMMA_MODE=gamma_mode, USE_ALPHA=alpha >= 0, LABELS=labels, WEIGHT_MODE=weight_mode,
                COMPUTE=tl.float64 if input.dtype == torch.float64 else tl.float32, INT64=numel + BLOCK >= 2**31,
                BLOCK=BLOCK)
    w = weight if weight is not None else input  # never read when WEIGHT_MODE == 0
    return numel, max(C, 1), w, meta


def forward(input, target, weight, alpha, gamma, reduction, with_grad):
    """(loss, cache): cache = dL/dx * weight (fp32/fp64) when with_grad, else empty."""
    numel, C, w, meta = _common_args(input, target, weight, alpha, gamma)
    grid = (triton.cdiv(numel, BLOCK),)
    acc = reduced_dtype(input.dtype)
    cache = torch.empty(input.shape if with_grad else (0,), dtype=acc, device=input.device)
    reduce = reduction != 0
    out = torch.empty(grid[0], dtype=acc, device=input.device) if reduce else torch.empty_like(input)
    if numel:
        _forward_kernel[grid](input, target, w, out, out, cache, numel, C, alpha, 1.0 - alpha, gamma, REDUCE=reduce, WITH_GRAD=with_grad,
                              **meta)
    if not reduce:
        return out, cache
    total = out.sum()
    return (total / max(numel, 1) if reduction == 2 else total), cache  # mean of nothing: 0


def backward(grad, input, target, weight, alpha, gamma, reduction):
    numel, C, w, meta = _common_args(input, target, weight, alpha, gamma)
    out = torch.empty_like(input)
    if numel:
        scale = 1.0 / numel if reduction == 2 else 1.0
        _backward_kernel[(triton.cdiv(numel, BLOCK),)](input, target, w, grad, out, numel, C, alpha, 1.0 - alpha, gamma, scale,
                                                       PER_ELEM_GRAD=reduction == 0, **meta)
    return out


_backend.register("sigmoid_focal_loss", "triton", forward, backward)
