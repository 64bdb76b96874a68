"""The pointwise losses in pure PyTorch: the specification, the test oracle, the eager
baseline of the benchmarks and the fallback backend.

Each loss is one function ``(x, t, aux, p) -> (loss, dloss/dx)`` per element (:data:`ELEMENTS`),
in closed form, with the same formulas, parameter slots ``p`` (formed in double by
fastloss/ops/pointwise.py) and numerical care as csrc/kernels/pointwise.h, where each formula
and its paper are written out.  :func:`forward` / :func:`backward` are the engine's calling
convention (csrc/fastloss.cpp) over them.

The eager functions at the end (:func:`sigmoid_focal_loss`, :func:`smooth_l1_loss`, ...) are
the public semantics written as plain autograd PyTorch, the way a user (or torchvision /
mmdetection) writes them: the benchmarks' eager baseline.  They use torch's own functions
where torch has the loss.
"""
import math

import torch
import torch.nn.functional as F

from fastloss.reference._reduce import reduce_loss

# Loss codes: csrc/kernels/pointwise.h Loss.
SIGMOID_FOCAL, L1, MSE, SMOOTH_L1, HUBER, BALANCED_L1, BCE_WITH_LOGITS, BCE, POLY1_BCE, POLY1_FOCAL, QUALITY_FOCAL, VARIFOCAL, \
    GAUSSIAN_FOCAL, HINGE, KL_DIV, BIAS, FOCAL_WITH_PROB, QUALITY_FOCAL_WITH_PROB, REDUCED_FOCAL, FOCAL_TERM = range(20)

# ------------------------------------------------------------------ shared pieces


def _sigmoid2(x):
    return torch.sigmoid(x), torch.sigmoid(-x)  # sigmoid(-x) = 1 - sigmoid(x), without cancellation


def _linear_part(x, c_pos, c_neg):
    """max(x, 0) - c x as x c_pos or -x c_neg by the sign of x, 0 where the factor is 0 (also for
    an infinite x: a masked -inf logit with t = 0)."""
    zero = torch.zeros_like(x)
    pos = x >= 0
    xp, xn = torch.where(pos, x, zero), torch.where(pos, zero, x)
    return torch.where(pos, torch.where(c_pos == 0, zero, xp * c_pos), torch.where(c_neg == 0, zero, -xn * c_neg))


def bce_with_logits(x, t):
    """Per-element BCE-with-logits, (max(x, 0) - x t) + log(1 + e^-|x|), with log1p: torch's
    fp32 F.binary_cross_entropy_with_logits computes log(e^-m + e^(-x-m)) and loses ~1e-4
    relative accuracy at x = -7, t = 0.  max(x, 0) - x t is formed first, as x (1 - t) for
    x >= 0 and -x t below: exactly 0 for a confident positive (t = 1) and without the
    cancellation of x - x t for soft targets; then the small log term is added
    ((x + log1p(e^-x)) - x t would round it away: x = 20, t = 1 gives 0, not 2.06e-9).  Each
    branch sees only its own sign of x (no overflow, no NaN through torch.where), so autograd's
    gradient is sigmoid(x) - t everywhere, 0 included."""
    pos = x >= 0
    zero = torch.zeros_like(x)
    xp, xn = torch.where(pos, x, zero), torch.where(pos, zero, x)
    return _linear_part(x, 1 - t, t) + torch.where(pos, torch.log1p(torch.exp(-xp)), torch.log1p(torch.exp(xn)))


def torch_bce_with_logits(x, t):
    """torch's BCE-with-logits, as torchvision's focal loss and eager user code call it."""
    return F.binary_cross_entropy_with_logits(x, t, reduction="none")


def _p_minus_t(t, s_pos, s_neg):
    return (1 - t) * s_pos - t * s_neg  # exact for hard targets


def _sign_nan(d):
    return torch.where(d > 0, torch.ones_like(d), torch.where(d < 0, -torch.ones_like(d), d * 0))


def _pow_q(q, g):
    """q^g for q >= 0: 0^0 = 1; NaN propagates."""
    if g == 0:
        return torch.ones_like(q)
    pos = q > 0
    return torch.where(pos, torch.where(pos, q, torch.ones_like(q)) ** g, q * 0)


def _pow_over(mg, d):
    """|d|^g / d, 0 at d = 0 (the derivative factor g |d|^(g-1) sign(d) without the overflow)."""
    nz = d != 0
    return torch.where(nz, mg / torch.where(nz, d, torch.ones_like(d)), d * 0)


# ------------------------------------------------------------------ the losses (csrc/kernels/pointwise.h)


def _focal_terms(x, t, p):
    s_pos, s_neg = _sigmoid2(x)
    ce = bce_with_logits(x, t)
    q = t * s_neg + (1 - t) * s_pos
    qg = _pow_q(q, p[2])
    dq = (1 - 2 * t) * s_pos * s_neg
    r = torch.where(q > 0, dq / torch.where(q > 0, q, torch.ones_like(q)), torch.zeros_like(q))
    a_t = p[0] * t + p[1] * (1 - t) if p[3] else torch.ones_like(t)
    return a_t * qg * ce, a_t * qg * (_p_minus_t(t, s_pos, s_neg) + p[2] * ce * r), q, qg, dq


def sigmoid_focal_elements(x, t, aux, p):
    loss, grad, _, _, _ = _focal_terms(x, t, p)
    return loss, grad


def _reduced_focal_term(x, t, gamma, cutoff, divisor):
    """(s_pos, s_neg, ce, f, df/dx) of the reduced focal term (csrc/kernels/pointwise.h
    reduced_focal_term): f = 1 where p_t < cutoff, (q / divisor)^gamma elsewhere, q = 1 - p_t."""
    s_pos, s_neg = _sigmoid2(x)
    ce = bce_with_logits(x, t)
    q = t * s_neg + (1 - t) * s_pos
    p_t = t * s_pos + (1 - t) * s_neg
    dq = (1 - 2 * t) * s_pos * s_neg
    r = torch.where(q > 0, dq / torch.where(q > 0, q, torch.ones_like(q)), torch.zeros_like(q))
    fp = _pow_q(q / divisor, gamma)
    low = p_t < cutoff
    return s_pos, s_neg, ce, torch.where(low, torch.ones_like(fp), fp), torch.where(low, torch.zeros_like(fp), gamma * fp * r)


def reduced_focal_elements(x, t, aux, p):
    s_pos, s_neg, ce, f, df = _reduced_focal_term(x, t, p[2], p[4], p[5])
    a_t = p[0] * t + p[1] * (1 - t) if p[3] else torch.ones_like(t)
    return a_t * f * ce, a_t * (f * _p_minus_t(t, s_pos, s_neg) + ce * df)


def focal_term_elements(x, t, aux, p):
    _, _, _, f, df = _reduced_focal_term(x, t, p[0], p[1], p[2])
    nan_x = x != x
    return torch.where(nan_x, x, f), torch.where(nan_x, x, df)


def poly1_focal_elements(x, t, aux, p):
    loss, grad, q, qg, dq = _focal_terms(x, t, p)
    return loss + p[4] * qg * q, grad + p[4] * (p[2] + 1) * qg * dq


def bce_with_logits_elements(x, t, pw, p):
    t = t * p[0] + p[1]
    s_pos, s_neg = _sigmoid2(x)
    pt = pw * t
    return _linear_part(x, 1 - t, pt) + (pt + 1 - t) * torch.log1p(torch.exp(-x.abs())), (1 - t) * s_pos - pt * s_neg


def poly1_bce_elements(x, t, aux, p):
    s_pos, s_neg = _sigmoid2(x)
    q = t * s_neg + (1 - t) * s_pos
    return bce_with_logits(x, t) + p[0] * q, _p_minus_t(t, s_pos, s_neg) + p[0] * (1 - 2 * t) * s_pos * s_neg


def quality_focal_elements(x, t, aux, p):
    s_pos, s_neg = _sigmoid2(x)
    ce = bce_with_logits(x, t)
    d = _p_minus_t(t, s_pos, s_neg)
    mb = _pow_q(d.abs(), p[0])
    return ce * mb, mb * d + p[0] * ce * _pow_over(mb, d) * s_pos * s_neg


def varifocal_elements(x, t, aux, p):
    s_pos, s_neg = _sigmoid2(x)
    ce = bce_with_logits(x, t)
    d = _p_minus_t(t, s_pos, s_neg)
    mg = _pow_q(d.abs(), p[1])
    w_pos = t if p[2] else torch.ones_like(t)
    pos = aux > 0 if p[3] else t > 0
    loss = ce * torch.where(pos, w_pos, p[0] * mg)
    grad = torch.where(pos, w_pos * d, p[0] * (mg * d + p[1] * ce * _pow_over(mg, d) * s_pos * s_neg))
    return loss, grad


def gaussian_focal_elements(x, t, aux, p):
    alpha, gamma, eps = p[0], p[1], p[2]
    u = 1 - x
    ua, xa = _pow_q(u, alpha), _pow_q(x, alpha)
    lp, lu = torch.log(x + eps), torch.log(u + eps)
    wn = _pow_q(1 - t, gamma)
    pos = torch.where(t == 1, torch.ones_like(t), t * 0)
    ua1 = torch.where(u > 0, ua / torch.where(u > 0, u, torch.ones_like(u)), u * 0)
    xa1 = torch.where(x > 0, xa / torch.where(x > 0, x, torch.ones_like(x)), x * 0)
    loss = -pos * lp * ua - wn * lu * xa
    grad = pos * (-ua / (x + eps) + alpha * lp * ua1) + wn * (xa / (u + eps) - alpha * lu * xa1)
    return loss, grad


def bce_elements(x, t, aux, p):
    cp = torch.clamp(torch.log(x), min=-100)
    cq = torch.clamp(torch.log1p(-x), min=-100)
    return -(t * cp + (1 - t) * cq), (x - t) / torch.clamp(x * (1 - x), min=1e-12)


def focal_with_prob_elements(x, t, aux, p):
    """BCE(p, t) a_t m^gamma over probabilities (csrc/kernels/pointwise.h FocalWithProb)."""
    ce, dce = bce_elements(x, t, aux, p)
    if p[4]:  # quality form: m = |p - t|
        d = x - t
        m, dm = d.abs(), _sign_nan(d)
    else:  # focal form: m = 1 - p_t
        m, dm = (1 - x) * t + x * (1 - t), 1 - 2 * t
    mg = _pow_q(m, p[2])
    mg_over_m = torch.where(m > 0, mg / torch.where(m > 0, m, torch.ones_like(m)), m * 0)
    a_t = p[0] * t + p[1] * (1 - t) if p[3] else torch.ones_like(t)
    return a_t * ce * mg, a_t * (dce * mg + p[2] * ce * mg_over_m * dm)


def hinge_elements(x, t, aux, p):
    y = torch.where(t > 0, torch.ones_like(t), torch.where(t != t, t, -torch.ones_like(t)))
    h = torch.relu(p[0] - y * x)
    if p[1]:
        return h * h, -2 * y * h
    return h, torch.where(h > 0, -y, h * 0)


def kl_div_elements(x, t, aux, p):
    w = torch.exp(t) if p[0] else t  # the target probability
    lt = t if p[0] else torch.log(torch.where(t == 0, torch.ones_like(t), t))
    nan_x = x != x
    loss = torch.where(w == 0, torch.where(nan_x, x, torch.zeros_like(x)), w * (lt - x))
    return loss, torch.where(nan_x, x, -w)


def l1_elements(x, t, aux, p):
    d = x - t
    return d.abs(), _sign_nan(d)


def mse_elements(x, t, aux, p):
    d = x - t
    return d * d, 2 * d


def bias_elements(x, t, aux, p):
    d = x - t
    return d, 1 + d * 0


def smooth_l1_elements(x, t, aux, p):
    d = x - t
    a = d.abs()
    quad = a < p[0]
    return torch.where(quad, p[1] * d * d, a - p[2]), torch.where(quad, d * p[3], _sign_nan(d))


def huber_elements(x, t, aux, p):
    d = x - t
    a = d.abs()
    quad = a < p[0]
    return torch.where(quad, 0.5 * d * d, p[0] * (a - p[1])), torch.where(quad, d, p[0] * _sign_nan(d))


def balanced_l1_elements(x, t, aux, p):
    alpha, gamma, beta, b = p[0], p[1], p[2], p[3]
    d = x - t
    a = d.abs()
    lg = torch.log1p(p[6] * a)
    near = a < beta
    loss = torch.where(near, p[4] * (b * a + 1) * lg - alpha * a, gamma * a + p[5])
    grad = _sign_nan(d) * torch.where(near, alpha * lg + alpha * (b * a + 1) / (b * a + beta) - alpha, torch.full_like(a, gamma))
    return loss, grad


ELEMENTS = {
    SIGMOID_FOCAL: sigmoid_focal_elements, L1: l1_elements, MSE: mse_elements, SMOOTH_L1: smooth_l1_elements, HUBER: huber_elements,
    BALANCED_L1: balanced_l1_elements, BCE_WITH_LOGITS: bce_with_logits_elements, BCE: bce_elements, POLY1_BCE: poly1_bce_elements,
    POLY1_FOCAL: poly1_focal_elements, QUALITY_FOCAL: quality_focal_elements, VARIFOCAL: varifocal_elements,
    GAUSSIAN_FOCAL: gaussian_focal_elements, HINGE: hinge_elements, KL_DIV: kl_div_elements, BIAS: bias_elements,
    FOCAL_WITH_PROB: focal_with_prob_elements, QUALITY_FOCAL_WITH_PROB: focal_with_prob_elements,
    REDUCED_FOCAL: reduced_focal_elements, FOCAL_TERM: focal_term_elements,
}

# ------------------------------------------------------------------ the engine's calling convention


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _operand(v, layout, shape):
    """A weight / aux operand as a tensor broadcastable to ``shape`` (layouts: 1 per element,
    2 per row, 3 per column), or None."""
    if v is None:
        return None
    if layout == 1:
        return v.reshape(shape)
    if layout == 2:
        return v.reshape(tuple(shape[:-1]) + (1,))
    return v  # per column: (C,) broadcasts over the last dim


def float_targets(x, target, target_value=None):
    """Targets as floats shaped like ``x``: class labels (one int per row) are expanded with
    label C (and anything outside [0, C)) matching no class; ``target_value`` (per row) is the
    value at the label's class (1 without it)."""
    if target.is_floating_point() or target.dtype == torch.bool:
        return target.to(x.dtype)
    classes = torch.arange(x.shape[-1] if x.dim() else 1, device=x.device)
    hit = target.unsqueeze(-1) == classes
    if target_value is None:
        return hit.to(x.dtype).reshape(x.shape)
    # a select, not a product: the row's value (NaN included) reaches its label's class only
    return torch.where(hit, target_value.to(x.dtype).unsqueeze(-1), torch.zeros((), dtype=x.dtype, device=x.device)).reshape(x.shape)


def _elements(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params):
    acc = _compute_dtype(input.dtype)
    x = input.to(acc)
    t = float_targets(x, target, target_value)
    a = _operand(aux, aux_layout, x.shape)
    a = a.to(acc) if a is not None else torch.ones((), dtype=acc, device=x.device)
    values, grads = ELEMENTS[loss](x, t, a, list(params) + [0.0] * (8 - len(params)))
    w = _operand(weight, weight_layout, x.shape)
    if w is not None:
        values, grads = values * w.to(acc), grads * w.to(acc)
    return values, grads


def forward(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, with_grad):
    """(loss, cache): loss per element (input dtype) for reduction 0, else the sum (1) or mean
    (2) in fp32 (fp64); cache = dL/dx * weight (fp32 / fp64) when with_grad, else empty."""
    acc = _compute_dtype(input.dtype)
    values, grads = _elements(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params)
    cache = grads if with_grad else values.new_empty((0,))
    if reduction == 0:
        return values.to(input.dtype), cache
    total = values.sum(dtype=acc)
    return (total / max(input.numel(), 1) if reduction == 2 else total), cache  # mean of nothing: 0


def backward(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction):
    acc = _compute_dtype(input.dtype)
    _, g = _elements(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params)
    if reduction == 0:
        g = g * grad.to(acc)
    else:
        g = g * (grad / max(input.numel(), 1) if reduction == 2 else grad)
    return g.to(input.dtype)


# ------------------------------------------------------------------ eager public semantics (the benchmarks' baseline)


def _weighted(loss, weight, input, torch_first=False):
    """loss * weight, a weight of shape input.shape[:-1] read per row (anchor), mmdetection's
    convention -- with ``torch_first`` (torch's BCE ``weight=``) only where torch's broadcasting
    rejects that shape (fastloss.ops.pointwise._prepare_operand's rules "mmdet" / "torch_rows")."""
    if weight is None:
        return loss
    row = weight.dim() > 0 and weight.shape == input.shape[:-1] and weight.shape != input.shape
    if row and torch_first:
        try:
            row = torch.broadcast_shapes(weight.shape, input.shape) != input.shape
        except RuntimeError:
            row = True
    if row:
        weight = weight.unsqueeze(-1)
    return loss * weight


def loss_elements(x, t, alpha, gamma, bce=bce_with_logits):
    """Sigmoid focal loss per element, numerically stable for any logit (``bce``: the BCE-with-logits)."""
    ce = bce(x, t)
    q = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)  # 1 - p_t from sigmoid(+-x) directly
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else torch.ones_like(t)
    return a_t * q.pow(gamma) * ce


def grad_elements(x, t, alpha, gamma):
    """d(sigmoid focal loss)/dx per element in closed form (:func:`sigmoid_focal_elements`)."""
    return sigmoid_focal_elements(x, t, None, [alpha, 1 - alpha, gamma, 1.0 if alpha >= 0 else 0.0])[1]


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None):
    """Eager autograd reference of :func:`fastloss.sigmoid_focal_loss` (torchvision's formula,
    mmdetection's labels / weight / avg_factor)."""
    t = float_targets(input, target)
    loss = loss_elements(input, t, alpha, gamma, bce=torch_bce_with_logits)  # the eager baseline: torch's BCE
    return reduce_loss(_weighted(loss, weight, input), reduction, avg_factor)


def smooth_l1_loss(input, target, beta=1.0, reduction="mean", weight=None, avg_factor=None):
    """mmdetection's weighted smooth L1 (torch's definition per element), the eager baseline."""
    return reduce_loss(_weighted(F.smooth_l1_loss(input, target, reduction="none", beta=beta), weight, input), reduction, avg_factor)


def l1_loss(input, target, reduction="mean", weight=None, avg_factor=None):
    return reduce_loss(_weighted(F.l1_loss(input, target, reduction="none"), weight, input), reduction, avg_factor)


def mse_loss(input, target, reduction="mean", weight=None, avg_factor=None):
    return reduce_loss(_weighted(F.mse_loss(input, target, reduction="none"), weight, input), reduction, avg_factor)


def balanced_l1_loss(input, target, alpha=0.5, gamma=1.5, beta=1.0, reduction="mean", weight=None, avg_factor=None):
    """mmdetection's balanced_l1_loss (Libra R-CNN)."""
    diff = torch.abs(input - target)
    b = math.e ** (gamma / alpha) - 1
    loss = torch.where(diff < beta, alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
                       gamma * diff + gamma / b - alpha * beta)
    return reduce_loss(_weighted(loss, weight, input), reduction, avg_factor)


def varifocal_loss(input, target, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean", weight=None, avg_factor=None):
    """mmdetection's varifocal_loss."""
    p = input.sigmoid()
    target = target.type_as(input)
    pos = (target > 0.0).to(input.dtype)
    focal_weight = (target if iou_weighted else 1.0) * pos + alpha * (p - target).abs().pow(gamma) * (1 - pos)
    loss = F.binary_cross_entropy_with_logits(input, target, reduction="none") * focal_weight
    return reduce_loss(_weighted(loss, weight, input), reduction, avg_factor)


def quality_focal_loss(input, target, beta=2.0, reduction="mean", weight=None, avg_factor=None):
    """mmdetection's quality_focal_loss_tensor_target (dense soft targets)."""
    p = input.sigmoid()
    loss = F.binary_cross_entropy_with_logits(input, target, reduction="none") * (p - target).abs().pow(beta)
    return reduce_loss(_weighted(loss, weight, input), reduction, avg_factor)


def focal_loss_with_prob(input, target, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None):
    """mmdetection's py_focal_loss_with_prob (focal loss over probabilities)."""
    t = float_targets(input, target)
    pt = (1 - input) * t + input * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1
    loss = F.binary_cross_entropy(input, t, reduction="none") * a_t * pt.pow(gamma)
    return reduce_loss(_weighted(loss, weight, input), reduction, avg_factor)


def quality_focal_loss_with_prob(input, target, beta=2.0, reduction="mean", weight=None, avg_factor=None):
    """mmdetection's quality_focal_loss_with_prob over dense soft targets."""
    loss = F.binary_cross_entropy(input, target, reduction="none") * (input - target).abs().pow(beta)
    return reduce_loss(_weighted(loss, weight, input), reduction, avg_factor)


def gaussian_focal_loss(input, target, alpha=2.0, gamma=4.0, reduction="mean", weight=None, avg_factor=None, eps=1e-12):
    """mmdetection's gaussian_focal_loss (CenterNet) over probabilities."""
    pos_loss = -(input + eps).log() * (1 - input).pow(alpha) * target.eq(1)
    neg_loss = -(1 - input + eps).log() * input.pow(alpha) * (1 - target).pow(gamma)
    return reduce_loss(_weighted(pos_loss + neg_loss, weight, input), reduction, avg_factor)


def binary_cross_entropy_with_logits(input, target, reduction="mean", weight=None, avg_factor=None, pos_weight=None):
    loss = F.binary_cross_entropy_with_logits(input, target, reduction="none", pos_weight=pos_weight)
    return reduce_loss(_weighted(loss, weight, input, torch_first=True), reduction, avg_factor)
