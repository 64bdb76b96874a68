"""The pointwise engine in Triton: one forward kernel (per-element losses, or one fp32 partial
sum per program; optionally the stored gradient) and one backward kernel (recomputing from the
inputs), specialised per loss by the constexpr ``LOSS``.

The losses' math mirrors csrc/kernels/pointwise.h term for term (formulas, papers and
parameter slots there); each is one ``@triton.jit`` function ``(x, t, aux, p0..p7) -> (loss,
grad)`` below, chosen in :func:`_loss`.  Loads (float targets, class labels compared with the
column in registers, the optional per-row target value, weights and the aux operand per
element / row / column), the reductions (deterministic: one partial per program, added by one
torch.sum) and the launchers are the engine's.  Calling convention: csrc/fastloss.cpp.
Transcendentals come from fastloss.triton_kernels._math (libdevice on the GPU).
"""
import torch
import triton
import triton.language as tl

from fastloss.ops._common import reduced_dtype
from fastloss.triton_kernels import _math

BLOCK = 1024

# Loss codes (csrc/kernels/pointwise.h Loss, fastloss/ops/pointwise.py LOSSES).
SIGMOID_FOCAL, L1, MSE, SMOOTH_L1, HUBER, BALANCED_L1, BCE_WITH_LOGITS, BCE, POLY1_BCE, POLY1_FOCAL, QUALITY_FOCAL, VARIFOCAL, \
    GAUSSIAN_FOCAL, HINGE, KL_DIV, BIAS, FOCAL_WITH_PROB, QUALITY_FOCAL_WITH_PROB, REDUCED_FOCAL, FOCAL_TERM = range(20)

# ----------------------------------------------------------------------------- shared pieces


@triton.jit
def _sigmoid2(x):
    e = _math.exp(-tl.abs(x))
    inv = 1.0 / (1.0 + e)
    s_pos = tl.where(x >= 0, inv, e * inv)  # sigmoid(x)
    s_neg = tl.where(x >= 0, e * inv, inv)  # sigmoid(-x) = 1 - sigmoid(x), no cancellation
    return e, s_pos, s_neg


@triton.jit
def _linear_part(x, c_pos, c_neg):
    # max(x, 0) - c x as x c_pos or -x c_neg by the sign of x, 0 where the factor is 0 (also for
    # an infinite x: inf * 0 would be NaN)
    return tl.where(x >= 0, tl.where(c_pos == 0, 0.0, x * c_pos), tl.where(c_neg == 0, 0.0, -x * c_neg))


@triton.jit
def _bce_logits(x, t, e):
    # max(x, 0) - x t + log(1 + e)
    return _linear_part(x, 1.0 - t, t) + _math.log1p(e)


@triton.jit
def _p_minus_t(t, s_pos, s_neg):
    return (1.0 - t) * s_pos - t * s_neg


@triton.jit
def _sign_nan(d):
    return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, d * 0.0))


@triton.jit
def _pow_q(q, g):
    # q^g for q >= 0 with the common exponents exact and cheap (g is uniform: the branch costs
    # nothing), 0^0 = 1, NaN stays NaN otherwise
    if g == 2.0:
        r = q * q
    elif g == 1.0:
        r = q
    elif g == 0.0:
        r = tl.full(q.shape, 1.0, q.dtype)
    else:
        pos = q > 0
        r = tl.where(pos, _math.pow_pos(tl.where(pos, q, 1.0), g), q * 0.0)
    return r


@triton.jit
def _pow_over(mg, d):
    # |d|^g / d, 0 at d = 0
    nz = d != 0
    return tl.where(nz, mg / tl.where(nz, d, 1.0), d * 0.0)


# ----------------------------------------------------------------------------- the losses


@triton.jit
def _focal_terms(x, t, p0, p1, p2, p3):
    e, s_pos, s_neg = _sigmoid2(x)
    ce = _bce_logits(x, t, e)
    q = t * s_neg + (1.0 - t) * s_pos
    qg = _pow_q(q, p2)
    dq = (1.0 - 2.0 * t) * s_pos * s_neg
    r = tl.where(q > 0, dq / tl.where(q > 0, q, 1.0), 0.0)
    a_t = tl.where(p3 != 0, p0 * t + p1 * (1.0 - t), 1.0)
    return a_t * qg * ce, a_t * qg * (_p_minus_t(t, s_pos, s_neg) + p2 * ce * r), q, qg, dq


@triton.jit
def _sigmoid_focal(x, t, p0, p1, p2, p3):
    loss, grad, _q, _qg, _dq = _focal_terms(x, t, p0, p1, p2, p3)
    return loss, grad


@triton.jit
def _reduced_focal_term(x, t, gamma, cutoff, divisor):
    # csrc/kernels/pointwise.h reduced_focal_term: f = 1 where p_t < cutoff, (q / divisor)^gamma
    # elsewhere (q = 1 - p_t), df/dx = 0 or gamma f (dq/dx) / q
    e, s_pos, s_neg = _sigmoid2(x)
    ce = _bce_logits(x, t, e)
    q = t * s_neg + (1.0 - t) * s_pos
    p_t = t * s_pos + (1.0 - t) * s_neg
    dq = (1.0 - 2.0 * t) * s_pos * s_neg
    r = tl.where(q > 0, dq / tl.where(q > 0, q, 1.0), 0.0)
    fp = _pow_q(q / divisor, gamma)
    low = p_t < cutoff
    return s_pos, s_neg, ce, tl.where(low, 1.0, fp), tl.where(low, 0.0, gamma * fp * r)


@triton.jit
def _reduced_focal(x, t, p0, p1, p2, p3, p4, p5):
    # a_t f ce (arXiv 1903.01347)
    s_pos, s_neg, ce, f, df = _reduced_focal_term(x, t, p2, p4, p5)
    a_t = tl.where(p3 != 0, p0 * t + p1 * (1.0 - t), 1.0)
    return a_t * f * ce, a_t * (f * _p_minus_t(t, s_pos, s_neg) + ce * df)


@triton.jit
def _focal_term(x, t, p0, p1, p2):
    # the focal term f alone (the normaliser of the normalised focal loss); NaN x stays NaN
    _s_pos, _s_neg, _ce, f, df = _reduced_focal_term(x, t, p0, p1, p2)
    nan_x = x != x
    return tl.where(nan_x, x, f), tl.where(nan_x, x, df)


@triton.jit
def _poly1_focal(x, t, p0, p1, p2, p3, p4):
    loss, grad, q, qg, dq = _focal_terms(x, t, p0, p1, p2, p3)
    return loss + p4 * qg * q, grad + p4 * (p2 + 1.0) * qg * dq


@triton.jit
def _bce_with_logits(x, t_in, pw, p0, p1):
    t = t_in * p0 + p1
    e, s_pos, s_neg = _sigmoid2(x)
    pt = pw * t
    loss = _linear_part(x, 1.0 - t, pt) + (pt + 1.0 - t) * _math.log1p(e)
    return loss, (1.0 - t) * s_pos - pt * s_neg


@triton.jit
def _poly1_bce(x, t, p0):
    e, s_pos, s_neg = _sigmoid2(x)
    q = t * s_neg + (1.0 - t) * s_pos
    return _bce_logits(x, t, e) + p0 * q, _p_minus_t(t, s_pos, s_neg) + p0 * (1.0 - 2.0 * t) * s_pos * s_neg


@triton.jit
def _quality_focal(x, t, p0):
    e, s_pos, s_neg = _sigmoid2(x)
    ce = _bce_logits(x, t, e)
    d = _p_minus_t(t, s_pos, s_neg)
    mb = _pow_q(tl.abs(d), p0)
    return ce * mb, mb * d + p0 * ce * _pow_over(mb, d) * s_pos * s_neg


@triton.jit
def _varifocal(x, t, aux, p0, p1, p2, p3):
    e, s_pos, s_neg = _sigmoid2(x)
    ce = _bce_logits(x, t, e)
    d = _p_minus_t(t, s_pos, s_neg)
    mg = _pow_q(tl.abs(d), p1)
    w_pos = tl.where(p2 != 0, t, 1.0)
    pos = tl.where(p3 != 0, aux > 0, t > 0)
    loss = ce * tl.where(pos, w_pos, p0 * mg)
    grad = tl.where(pos, w_pos * d, p0 * (mg * d + p1 * ce * _pow_over(mg, d) * s_pos * s_neg))
    return loss, grad


@triton.jit
def _gaussian_focal(x, t, p0, p1, p2):
    u = 1.0 - x
    ua = _pow_q(u, p0)
    xa = _pow_q(x, p0)
    lp = _math.log(x + p2)
    lu = _math.log(u + p2)
    wn = _pow_q(1.0 - t, p1)
    pos = tl.where(t == 1.0, 1.0, t * 0.0)
    ua1 = tl.where(u > 0, ua / tl.where(u > 0, u, 1.0), u * 0.0)
    xa1 = tl.where(x > 0, xa / tl.where(x > 0, x, 1.0), x * 0.0)
    loss = -pos * lp * ua - wn * lu * xa
    grad = pos * (-ua / (x + p2) + p0 * lp * ua1) + wn * (xa / (u + p2) - p0 * lu * xa1)
    return loss, grad


@triton.jit
def _bce(x, t):
    lp = _math.log(x)
    lq = _math.log1p(-x)
    cp = tl.where(lp < -100.0, -100.0, lp)
    cq = tl.where(lq < -100.0, -100.0, lq)
    den = x * (1.0 - x)
    return -(t * cp + (1.0 - t) * cq), (x - t) / tl.where(den < 1e-12, 1e-12, den)


@triton.jit
def _focal_with_prob(x, t, p0, p1, p2, p3, p4):
    # csrc/kernels/pointwise.h FocalWithProb: BCE(p, t) a_t m^gamma over probabilities
    ce, dce = _bce(x, t)
    if p4 != 0:  # quality form: m = |p - t|
        d = x - t
        m = tl.abs(d)
        dm = _sign_nan(d)
    else:  # focal form: m = 1 - p_t
        m = (1.0 - x) * t + x * (1.0 - t)
        dm = 1.0 - 2.0 * t
    mg = _pow_q(m, p2)
    mg_over_m = tl.where(m > 0, mg / tl.where(m > 0, m, 1.0), m * 0.0)
    a_t = tl.where(p3 != 0, p0 * t + p1 * (1.0 - t), 1.0)
    return a_t * ce * mg, a_t * (dce * mg + p2 * ce * mg_over_m * dm)


@triton.jit
def _hinge(x, t, p0, p1):
    y = tl.where(t > 0, 1.0, tl.where(t != t, t, -1.0))
    m = p0 - y * x
    h = tl.where(m < 0, 0.0, m)  # NaN propagates
    sq = p1 != 0
    return tl.where(sq, h * h, h), tl.where(sq, -2.0 * y * h, tl.where(h > 0, -y, h * 0.0))


@triton.jit
def _kl_div(x, t, p0):
    if p0 != 0:  # log_target
        w = _math.exp(t)
        lt = t
    else:
        w = t
        lt = _math.log(tl.where(t == 0, 1.0, t))
    nan_x = x != x
    loss = tl.where(w == 0, tl.where(nan_x, x, 0.0), w * (lt - x))
    return loss, tl.where(nan_x, x, -w)


@triton.jit
def _smooth_l1(x, t, p0, p1, p2, p3):
    d = x - t
    a = tl.abs(d)
    quad = a < p0
    return tl.where(quad, p1 * d * d, a - p2), tl.where(quad, d * p3, _sign_nan(d))


@triton.jit
def _huber(x, t, p0, p1):
    d = x - t
    a = tl.abs(d)
    quad = a < p0
    return tl.where(quad, 0.5 * d * d, p0 * (a - p1)), tl.where(quad, d, p0 * _sign_nan(d))


@triton.jit
def _balanced_l1(x, t, p0, p1, p2, p3, p4, p5, p6):
    d = x - t
    a = tl.abs(d)
    ba = p3 * a
    lg = _math.log1p(p6 * a)
    near = a < p2
    loss = tl.where(near, p4 * (ba + 1.0) * lg - p0 * a, p1 * a + p5)
    grad = _sign_nan(d) * tl.where(near, p0 * lg + p0 * (ba + 1.0) / (ba + p2) - p0, p1)
    return loss, grad


@triton.jit
def _loss(x, t, aux, p0, p1, p2, p3, p4, p5, p6, LOSS: tl.constexpr):
    """(loss, d loss / d x) of the loss with code LOSS (resolved at compile time)."""
    if LOSS == 0:
        return _sigmoid_focal(x, t, p0, p1, p2, p3)
    elif LOSS == 1:
        d = x - t
        return tl.abs(d), _sign_nan(d)
    elif LOSS == 2:
        d = x - t
        return d * d, 2.0 * d
    elif LOSS == 3:
        return _smooth_l1(x, t, p0, p1, p2, p3)
    elif LOSS == 4:
        return _huber(x, t, p0, p1)
    elif LOSS == 5:
        return _balanced_l1(x, t, p0, p1, p2, p3, p4, p5, p6)
    elif LOSS == 6:
        return _bce_with_logits(x, t, aux, p0, p1)
    elif LOSS == 7:
        return _bce(x, t)
    elif LOSS == 8:
        return _poly1_bce(x, t, p0)
    elif LOSS == 9:
        return _poly1_focal(x, t, p0, p1, p2, p3, p4)
    elif LOSS == 10:
        return _quality_focal(x, t, p0)
    elif LOSS == 11:
        return _varifocal(x, t, aux, p0, p1, p2, p3)
    elif LOSS == 12:
        return _gaussian_focal(x, t, p0, p1, p2)
    elif LOSS == 13:
        return _hinge(x, t, p0, p1)
    elif LOSS == 14:
        return _kl_div(x, t, p0)
    elif LOSS == 15:  # the signed error x - t (mean bias error)
        d = x - t
        return d, 1.0 + d * 0.0
    elif LOSS == 18:
        return _reduced_focal(x, t, p0, p1, p2, p3, p4, p5)
    elif LOSS == 19:
        return _focal_term(x, t, p0, p1, p2)
    else:  # 16, 17: the focal losses over probabilities
        return _focal_with_prob(x, t, p0, p1, p2, p3, p4)


# ----------------------------------------------------------------------------- the engine


@triton.jit
def _operand(ptr, offs, row, col, mask, LAYOUT: tl.constexpr, COMPUTE: tl.constexpr):
    # 1: per element, 2: per row, 3: per column; 0: absent (1)
    if LAYOUT == 1:
        v = tl.load(ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    elif LAYOUT == 2:
        v = tl.load(ptr + row, mask=mask, other=0.0).to(COMPUTE)
    elif LAYOUT == 3:
        v = tl.load(ptr + col, mask=mask, other=0.0).to(COMPUTE)
    else:
        v = tl.full(offs.shape, 1.0, COMPUTE)
    return v


@triton.jit
def _load_inputs(x_ptr, t_ptr, tv_ptr, w_ptr, aux_ptr, pid, numel, C, COMPUTE: tl.constexpr, LABELS: tl.constexpr, HAS_TV: tl.constexpr,
                 W_LAYOUT: tl.constexpr, AUX_LAYOUT: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    if INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    row = offs // C
    col = offs - row * C
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if LABELS:
        label = tl.load(t_ptr + row, mask=mask, other=-1)
        if HAS_TV:  # a select, not a product: the row's value (NaN included) reaches its label's class only
            t = tl.where(label == col, tl.load(tv_ptr + row, mask=mask, other=0.0).to(COMPUTE), 0.0)
        else:
            t = (label == col).to(COMPUTE)
    else:
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    w = _operand(w_ptr, offs, row, col, mask, W_LAYOUT, COMPUTE)
    aux = _operand(aux_ptr, offs, row, col, mask, AUX_LAYOUT, COMPUTE)
    return offs, mask, x, t, w, aux


@triton.jit
def _in_compute(p0, p1, p2, p3, p4, p5, p6, COMPUTE: tl.constexpr):
    """The loss's parameters in the compute dtype: they arrive as fp64 (a Python float
    argument would be typed fp32, rounding them for an fp64 input)."""
    return (tl.full((), p0, COMPUTE), tl.full((), p1, COMPUTE), tl.full((), p2, COMPUTE), tl.full((), p3, COMPUTE),
            tl.full((), p4, COMPUTE), tl.full((), p5, COMPUTE), tl.full((), p6, COMPUTE))


@triton.jit
def _forward_kernel(x_ptr, t_ptr, tv_ptr, w_ptr, aux_ptr, out_ptr, partial_ptr, cache_ptr, numel, C, p0: tl.float64, p1: tl.float64, p2: tl.float64,
                    p3: tl.float64, p4: tl.float64, p5: tl.float64, p6: tl.float64, LOSS: tl.constexpr, LABELS: tl.constexpr, HAS_TV: tl.constexpr, W_LAYOUT: tl.constexpr, AUX_LAYOUT: tl.constexpr,
                    REDUCE: tl.constexpr, WITH_GRAD: tl.constexpr, COMPUTE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs, mask, x, t, w, aux = _load_inputs(x_ptr, t_ptr, tv_ptr, w_ptr, aux_ptr, pid, numel, C, COMPUTE, LABELS, HAS_TV, W_LAYOUT,
                                            AUX_LAYOUT, INT64, BLOCK)
    p0, p1, p2, p3, p4, p5, p6 = _in_compute(p0, p1, p2, p3, p4, p5, p6, COMPUTE)
    loss, grad = _loss(x, t, aux, p0, p1, p2, p3, p4, p5, p6, LOSS)
    if WITH_GRAD:
        tl.store(cache_ptr + offs, grad * w, mask=mask)
    loss = tl.where(mask, loss * w, 0.0)
    if REDUCE:
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0))
    else:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(x_ptr, t_ptr, tv_ptr, w_ptr, aux_ptr, g_ptr, out_ptr, numel, C, scale: tl.float64, p0: tl.float64, p1: tl.float64,
                     p2: tl.float64, p3: tl.float64, p4: tl.float64, p5: tl.float64, p6: tl.float64, LOSS: tl.constexpr,
                     LABELS: tl.constexpr, HAS_TV: tl.constexpr, W_LAYOUT: tl.constexpr, AUX_LAYOUT: tl.constexpr,
                     PER_ELEM_GRAD: tl.constexpr, COMPUTE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs, mask, x, t, w, aux = _load_inputs(x_ptr, t_ptr, tv_ptr, w_ptr, aux_ptr, pid, numel, C, COMPUTE, LABELS, HAS_TV, W_LAYOUT,
                                            AUX_LAYOUT, INT64, BLOCK)
    p0, p1, p2, p3, p4, p5, p6 = _in_compute(p0, p1, p2, p3, p4, p5, p6, COMPUTE)
    _, grad = _loss(x, t, aux, p0, p1, p2, p3, p4, p5, p6, LOSS)
    if PER_ELEM_GRAD:
        up = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    else:
        up = tl.load(g_ptr).to(COMPUTE) * tl.full((), scale, COMPUTE)  # the reduced loss's upstream gradient, on the device
    tl.store(out_ptr + offs, (grad * w * up).to(out_ptr.dtype.element_ty), mask=mask)


def _meta(input, target, target_value, weight, weight_layout, aux, aux_layout, loss):
    numel = input.numel()
    C = input.shape[-1] if input.dim() > 0 else 1
    meta = dict(LOSS=loss, LABELS=not target.is_floating_point(), HAS_TV=target_value is not None,
                W_LAYOUT=weight_layout if weight is not None else 0, AUX_LAYOUT=aux_layout if aux is not None else 0,
                COMPUTE=tl.float64 if input.dtype == torch.float64 else tl.float32, INT64=numel + BLOCK >= 2**31, BLOCK=BLOCK)
    # unused pointers are never read (their constexpr flag is off): pass the input
    ptrs = (target_value if target_value is not None else input, weight if weight is not None else input, aux if aux is not None else input)
    return numel, max(C, 1), ptrs, meta


def _params(params):
    return tuple(float(v) for v in params) + (0.0,) * (7 - len(params))  # p0..p6 (csrc/kernels/pointwise.h kNumParams)


def forward(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, with_grad):
    """(loss, cache): cache = dL/dx * weight (fp32/fp64) when with_grad, else empty."""
    numel, C, (tv, w, a), meta = _meta(input, target, target_value, weight, weight_layout, aux, aux_layout, loss)
    grid = (triton.cdiv(numel, BLOCK),)
    acc = reduced_dtype(input.dtype)
    cache = torch.empty(input.shape if with_grad else (0,), dtype=acc, device=input.device)
    reduce = reduction != 0
    out = torch.empty(grid[0], dtype=acc, device=input.device) if reduce else torch.empty_like(input)
    if numel:
        _forward_kernel[grid](input, target, tv, w, a, out, out, cache, numel, C, *_params(params), REDUCE=reduce, WITH_GRAD=with_grad, **meta)
    if not reduce:
        return out, cache
    total = out.sum()
    return (total / max(numel, 1) if reduction == 2 else total), cache  # mean of nothing: 0


def backward(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction):
    numel, C, (tv, w, a), meta = _meta(input, target, target_value, weight, weight_layout, aux, aux_layout, loss)
    out = torch.empty_like(input)
    if numel:
        scale = 1.0 / numel if reduction == 2 else 1.0
        _backward_kernel[(triton.cdiv(numel, BLOCK),)](input, target, tv, w, a, grad, out, numel, C, scale, *_params(params),
                                                       PER_ELEM_GRAD=reduction == 0, **meta)
    return out
