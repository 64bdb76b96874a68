"""Sigmoid focal loss in pure PyTorch: the specification, the test oracle, the eager
baseline of the benchmarks and the fallback backend.

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv 1708.02002)::

    p   = sigmoid(x)
    ce  = BCEWithLogits(x, t)
    q   = 1 - p_t = t (1 - p) + (1 - t) p
    a_t = alpha t + (1 - alpha)(1 - t)     (alpha < 0: a_t = 1)
    L   = a_t q^gamma ce

Two entry points:

* :func:`sigmoid_focal_loss` -- the public semantics (label or float targets, weight,
  reduction, mmdetection's ``avg_factor``) written as plain autograd PyTorch, the way a
  user would in eager mode.  Matches ``torchvision.ops.sigmoid_focal_loss`` for float
  targets and mmdetection's ``FocalLoss`` for labels.
* :func:`forward` / :func:`backward` -- the calling convention of the compiled kernels
  (see csrc/fastloss.cpp), with the closed-form gradient that the kernels also use, so the
  fallback backend is finite where autograd through ``q ** gamma`` is not (gamma < 1 at a
  saturated sigmoid), and with a log1p BCE (:func:`bce_with_logits`) as accurate in fp32 as
  the kernels; the eager function keeps torch's BCE, the baseline a user would run.
"""
import torch
import torch.nn.functional as F

from fastloss.reference._reduce import reduce_loss

REDUCTIONS = ("none", "sum", "mean")


def float_targets(input, target):
    """Targets as floats shaped like ``input``: label form (one int per row) is one-hot
    encoded with label ``C`` (and anything outside [0, C)) meaning background."""
    if target.is_floating_point() or target.dtype == torch.bool:
        return target.to(input.dtype)
    classes = torch.arange(input.shape[-1], device=input.device)
    return (target.unsqueeze(-1) == classes).to(input.dtype)


def _alpha_t(t, alpha):
    return alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else torch.ones_like(t)


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
    return (xp * (1 - t) - xn * t) + torch.where(pos, torch.log1p(torch.exp(-xp)), torch.log1p(torch.exp(xn)))


def torch_bce_with_logits(x, t):
    """torch's BCE-with-logits, as torchvision's focal loss and eager user code call it."""
    return F.binary_cross_entropy_with_logits(x, t, reduction="none")


def loss_elements(x, t, alpha, gamma, bce=bce_with_logits):
    """Per-element loss, numerically stable for any logit (``bce``: the BCE-with-logits)."""
    ce = bce(x, t)
    # 1 - p_t from sigmoid(+-x) directly: 1 - sigmoid(x) would round to 0 for x > ~17 in fp32
    q = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
    return _alpha_t(t, alpha) * q.pow(gamma) * ce


def grad_elements(x, t, alpha, gamma):
    """dL/dx in closed form: a_t q^gamma [(p - t) + gamma ce r], r = (dq/dx) / q,
    with r bounded (|r| <= 1) and r := 0 where q == 0 (its limit: dq/dx vanishes there);
    p - t = (1 - t) p - t sigmoid(-x), without the cancellation of sigmoid(x) - 1 at t = 1."""
    ce = bce_with_logits(x, t)
    s_pos, s_neg = torch.sigmoid(x), torch.sigmoid(-x)
    q = t * s_neg + (1 - t) * s_pos
    dq = (1 - 2 * t) * s_pos * s_neg
    r = torch.where(q > 0, dq / q, torch.zeros_like(q))
    return _alpha_t(t, alpha) * q.pow(gamma) * (((1 - t) * s_pos - t * s_neg) + gamma * ce * r)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weight_view(weight, input):
    # kernel convention: one weight per element, or one per row (of input.shape[-1] logits)
    if weight is None:
        return None
    if weight.numel() == input.numel():
        return weight.reshape(input.shape)
    return weight.reshape(input.shape[:-1] + (1,))


def forward(input, target, weight, alpha, gamma, reduction, with_grad):
    """Kernel calling convention: (loss, cache); loss for reduction 0 none (input dtype) /
    1 sum / 2 mean (fp32 or fp64); cache = dL/dx * weight (fp32/fp64) if with_grad, else empty."""
    acc = _compute_dtype(input.dtype)
    x = input.to(acc)
    t = float_targets(x, target)
    loss = loss_elements(x, t, alpha, gamma)
    cache = grad_elements(x, t, alpha, gamma) if with_grad else x.new_empty((0,))
    w = _weight_view(weight, input)
    if w is not None:
        loss = loss * w
        cache = cache * w if with_grad else cache
    if reduction == 0:
        return loss.to(input.dtype), cache
    total = loss.sum(dtype=acc)
    return (total / max(input.numel(), 1) if reduction == 2 else total), cache  # mean of nothing: 0


def backward(grad, input, target, weight, alpha, gamma, reduction):
    acc = _compute_dtype(input.dtype)
    x = input.to(acc)
    g = grad_elements(x, float_targets(x, target), alpha, gamma)
    w = _weight_view(weight, input)
    if w is not None:
        g = g * w
    if reduction == 0:
        g = g * grad.to(acc)
    else:
        g = g * (grad / max(input.numel(), 1) if reduction == 2 else grad)
    return g.to(input.dtype)


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None):
    """Eager autograd reference of :func:`fastloss.sigmoid_focal_loss` (same arguments)."""
    t = float_targets(input, target)
    loss = loss_elements(input, t, alpha, gamma, bce=torch_bce_with_logits)  # the eager baseline: torch's BCE
    if weight is not None:
        if weight.dim() > 0 and weight.shape == input.shape[:-1] and weight.shape != input.shape:
            weight = weight.unsqueeze(-1)  # one weight per row (anchor), mmdetection's convention
        loss = loss * weight
    return reduce_loss(loss, reduction, avg_factor)
