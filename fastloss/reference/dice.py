"""Dice / Tversky / Jaccard (soft IoU) losses in pure PyTorch: the specification, the test
oracle, the eager baseline of the benchmarks and the fallback backend.

Notation, per image n (or for the whole batch) and class c, with p the probabilities
(softmax over C in "multiclass", sigmoid in "binary"/"multilabel", the input itself when
``from_logits=False``), g the target (one-hot of an integer label map, or a float target
shaped like the input) and m the mask (0 where the target equals ``ignore_index``)::

    I  = sum_i m p g                      intersection (true positives)
    P' = sum_i m p    (sum_i m p^2  if squared)
    G' = sum_i m g    (sum_i m g^2  if squared)
    FP = P' - I,  FN = G' - I

or, with ``soft_label=True`` (the soft-label form of Wang & Blaschko 2023, "Dice Semimetric
Losses: Optimizing the Dice Score with Soft Labels"; MONAI's ``soft_label=True``, smp >= 0.4's
intersection)::

    I  = sum_i m h(p, g),  h(p, g) = (|p| + |g| - |p - g|) / 2   (= min(p, g) for p, g >= 0)
    P' = sum_i m |p|,      G' = sum_i m |g|

with the derivatives torch's autograd gives that formula: dh/dp = (sgn p - sgn(p - g)) / 2,
d|p|/dp = sgn p, sgn 0 = 0 (a tie p == g > 0 gets 1/2).  For a hard target (g in {0, 1}) and
p in [0, 1] the values are the plain sums' (h(p, 1) = p, h(p, 0) = 0); the derivatives differ
only at p in {0, 1} (the kinks).  With ``squared`` the soft form is the squared sums
(||p||^2 + ||g||^2 - ||p - g||^2) / 2 = sum p g, so ``soft_label`` changes nothing there.

    score = (a I + smooth_nr) / (a I + a alpha FP + a beta FN + smooth_dr)
    loss_c = 1 - score          (-log(score) with log=True),  then loss_c ** gamma

with a = 1 for :func:`tversky_loss` / :func:`jaccard_loss` and a = 2 for :func:`dice_loss`
(so Dice reads (2 I + smooth_nr) / (P' + G' + smooth_dr), exactly MONAI's and smp's form;
``tversky_loss(alpha=beta=0.5, smooth s)`` is ``dice_loss(smooth 2 s)``).  Jaccard is
alpha = beta = 1: (I + s_nr) / (P' + G' - I + s_dr).  A denominator of exactly 0 (only
possible with smooth_dr = 0 and nothing predicted nor labelled) gives score 1 (loss 0, zero
gradient): the finite limit, not NaN.

Classes absent from both prediction and target: I = P' = G' = 0, so score =
smooth_nr / smooth_dr -- "the smooth terms decide", as in MONAI and smp.  With the
defaults (smooth_nr = 0, smooth_dr = 1e-5) such a class has loss 1; with
smooth_nr = smooth_dr (MONAI's defaults, 1e-5 / 1e-5) it has loss 0.

Reduction: per (image, class) losses when ``per_image`` (MONAI's default ``batch=False``),
else per class over batch and space (smp's convention, MONAI ``batch=True``); classes are
dropped by ``include_background=False`` (class 0; ignored with C = 1, as MONAI does) and
weighted by ``class_weights``; "mean" averages the weighted losses, "sum" adds them, "none"
returns them, shaped (N, C') per image or (C',).

Mapping to the peers (the tests check the formulas; the packages when installed):

* MONAI ``DiceLoss(include_background, to_onehot_y=True, softmax=True, squared_pred,
  jaccard=False, smooth_nr, smooth_dr, batch)`` == ``dice_loss(mode="multiclass",
  squared=squared_pred, smooth_nr, smooth_dr, per_image=not batch)`` with MONAI's defaults
  smooth_nr = smooth_dr = 1e-5; ``sigmoid=True`` == ``mode="multilabel"`` (or "binary").
  MONAI ``TverskyLoss(alpha, beta, ...)`` == ``tversky_loss(alpha, beta, ...)``.
  MONAI ``DiceCELoss`` == :func:`dice_ce_loss` (cross entropy mean over the pixels).
* smp (>= 0.4, whose Dice is the Tversky score with alpha = beta = 1/2, so its smooth s
  enters as (2 I + 2 s) / (P' + G' + 2 s)) ``DiceLoss(mode, smooth=s, eps, ignore_index)`` ==
  ``dice_loss(mode, smooth_nr=2 s, smooth_dr=2 s, per_image=False, ignore_index)`` for
  classes present in the target (smp < 0.4: ``smooth_nr = smooth_dr = s``); smp
  additionally zeroes the loss of classes absent from the target of the batch (and clamps
  the denominator to eps): ``zero_empty=True`` does the same.  smp ``JaccardLoss(smooth=s)``
  == ``jaccard_loss(smooth_nr=s, smooth_dr=s, zero_empty=True)``, smp ``TverskyLoss(alpha,
  beta, gamma=1, smooth=s)`` == ``tversky_loss(alpha, beta, smooth_nr=s, smooth_dr=s,
  zero_empty=True)``; smp raises the class mean to gamma (``loss.mean() ** gamma``), here
  gamma applies to each class's loss (focal Tversky, Abraham & Khan 2019).  With soft (float)
  targets smp >= 0.4 takes the intersection as sum min(p, g) ((|p|_1 + |g|_1 - |p - g|_1) / 2):
  ``soft_label=True`` (for targets >= 0, where |g| = g).
"""
import math

import torch

from fastloss.reference.pointwise import bce_with_logits, torch_bce_with_logits

def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def probs_targets_mask(x, target, activation, ignore_index):
    """p, g, m of shape (N, C, S) from logits x (N, C, S) and the target in kernel form:
    an integer label map (N, S) or a float tensor (N, C, S)."""
    N, C, S = x.shape
    if activation == 2:
        p = torch.softmax(x, dim=1)
    elif activation == 1:
        p = torch.sigmoid(x)
    else:
        p = x
    if target.is_floating_point():
        g = target.to(x.dtype)
        m = (g != ignore_index).to(x.dtype) if ignore_index is not None else torch.ones_like(g)
        g = g * m
    else:
        lab = target.long().unsqueeze(1)  # (N, 1, S)
        if C == 1 and activation != 2:
            g = (lab == 1).to(x.dtype)  # binary label map: 1 = foreground
        else:
            g = (lab == torch.arange(C, device=x.device).view(1, C, 1)).to(x.dtype)
        m = (lab != ignore_index).to(x.dtype).expand(N, C, S) if ignore_index is not None else torch.ones_like(g)
    return p, g, m


def ce_terms(x, target, activation, ignore_index, exact=True):
    """Per-image cross-entropy sum and count of what it averages over, (N, 2): softmax: CE
    per non-ignored pixel (soft targets: -sum_c g_c log p_c); sigmoid: BCE-with-logits per
    non-ignored element.  ``exact``: the kernels' forms, as accurate as they are --
    softmax CE = sum_c g_c (mx - x_c) + (sum_c g_c) log1p(rest) with rest the other classes'
    share of the softmax sum (no cancellation for a confident pixel; a class without target
    mass adds 0 even at x = -inf) and the log1p BCE; else torch's log_softmax and BCE, what a
    user writes (the benchmarks' eager baseline)."""
    p, g, m = probs_targets_mask(x, target, activation, ignore_index)
    if activation == 2:
        if exact:
            mx, amax = x.max(1, keepdim=True)
            is_amax = torch.arange(x.shape[1], device=x.device).view(1, -1, 1) == amax
            rest = torch.where(is_amax, torch.zeros_like(x), torch.exp(x - mx)).sum(1)
            gd = torch.where(g != 0, g * (mx - x), torch.zeros_like(x)).sum(1)
            ce = gd + g.sum(1) * torch.log1p(rest)  # (N, S)
        else:
            ce = -(g * torch.log_softmax(x, dim=1)).sum(1)
        mm = m[:, 0]
        return torch.stack([(ce * mm).sum(1), mm.sum(1)], dim=1)
    ce = bce_with_logits(x, g) if exact else torch_bce_with_logits(x, g)
    return torch.stack([(ce * m).sum((1, 2)), m.sum((1, 2))], dim=1)


def soft_inter(p, g):
    """h(p, g) = (|p| + |g| - |p - g|) / 2, formed without cancellation: min(|p|, |g|) where p
    and g have the same strict sign, else 0 (as written, |p| + |g| rounds a small p away: fp32
    p = 1e-8, g = 1 gives 0).  NaN in p or g (or p = -g = +-inf) gives NaN, as the formula."""
    same = ((p > 0) & (g > 0)) | ((p < 0) & (g < 0))
    h = torch.where(same, torch.minimum(p.abs(), g.abs()), torch.zeros_like(p))
    s = p + g
    return torch.where(torch.isnan(s), s, h)


def soft_inter_grad(p, g):
    """dh/dp = (sgn p - sgn(p - g)) / 2 with sgn 0 = 0 (torch's autograd of the formula)."""
    return (torch.sign(p) - torch.sign(p - g)) * 0.5


class _SoftInter(torch.autograd.Function):
    """h(p, g) with torch's derivative of (|p| + |g| - |p - g|) / 2 w.r.t. p (g is a constant)."""

    @staticmethod
    def forward(ctx, p, g):
        ctx.save_for_backward(p, g)
        return soft_inter(p, g)

    @staticmethod
    def backward(ctx, grad):
        p, g = ctx.saved_tensors
        return grad * soft_inter_grad(p, g), None


def sums(x, target, activation, squared, soft, ignore_index):
    """(N, C, 3): I, P', G' per image and class (autograd-differentiable in x); ``soft``: the
    soft-label sums h(p, g), |p|, |g| (module docstring; not together with ``squared``)."""
    p, g, m = probs_targets_mask(x, target, activation, ignore_index)
    if squared:
        pg, pp, gg = p * g, p * p, g * g
    elif soft:
        pg, pp, gg = _SoftInter.apply(p, g), p.abs(), g.abs()
    else:
        pg, pp, gg = p * g, p, g
    return torch.stack([(m * pg).sum(2), (m * pp).sum(2), (m * gg).sum(2)], dim=2)


# ------------------------------------------------------------------ kernel calling convention


def forward(input, target, activation, squared, soft, ignore_index, with_ce):
    """(sums (N, C, 3), ce (N, 2) or empty) in fp32 (fp64 for fp64 input)."""
    acc = _compute_dtype(input.dtype)
    x = input.to(acc)
    s = sums(x, target, activation, squared, soft, ignore_index)
    ce = ce_terms(x, target, activation, ignore_index) if with_ce else x.new_empty((0,))
    return s, ce


def backward(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index):
    """dL/dinput from dL/dsums (N, C, 3) and dL/dce (N, 2) (or empty), in input's dtype, in
    closed form (the kernels' formulas, csrc/kernels/dice.h)::

        d_c = m (dL/dI g + dL/dP' (2 p if squared else 1))           (= dL/dp_c)
        soft: d_c = m (dL/dI (sgn p - sgn(p - g)) / 2 + dL/dP' sgn p)
        softmax: dL/dx_k = p_k (d_k - sum_c p_c d_c) + e m ((sum_c g_c) p_k - g_k)
        sigmoid: dL/dx   = p (1 - p) d + e m (p - g);   identity: dL/dx = d

    with the CE terms free of the cancellation of p - 1 at a confident pixel of its class:
    p - g = (1 - g) p - g sigmoid(-x), and (sum g) p_k - g_k = (sum g - g_k) p_k - g_k (1 - p_k)
    with 1 - p_k = the sum of the other classes' p for the (first) argmax class.
    """
    acc = _compute_dtype(input.dtype)
    x = input.detach().to(acc)
    p, g, m = probs_targets_mask(x, target, activation, ignore_index)
    gs = grad_sums.to(acc)
    a, b = gs[:, :, 0:1], gs[:, :, 1:2]
    if soft:
        d = m * (a * soft_inter_grad(p, g) + b * torch.sign(p))
    else:
        d = m * (a * g + b * (2 * p if squared else torch.ones_like(p)))
    with_ce = grad_ce is not None and grad_ce.numel() > 0
    e = grad_ce.to(acc)[:, 0].view(-1, 1, 1) if with_ce else None
    if activation == 2:
        gx = p * (d - (p * d).sum(1, keepdim=True))
        if with_ce:
            is_amax = torch.arange(x.shape[1], device=x.device).view(1, -1, 1) == x.argmax(1, keepdim=True)
            q = torch.where(is_amax, torch.where(is_amax, 0, p).sum(1, keepdim=True), 1 - p)  # 1 - p
            gx = gx + e * m * ((g.sum(1, keepdim=True) - g) * p - g * q)
    elif activation == 1:
        s_neg = torch.sigmoid(-x)
        gx = p * s_neg * d
        if with_ce:
            gx = gx + e * m * ((1 - g) * p - g * s_neg)
    else:
        gx = d
    return gx.to(input.dtype)


# ------------------------------------------------------------------ the loss from the sums


def finish(s, alpha, beta, gamma, a, smooth_nr, smooth_dr, include_background, per_image, class_weights, log, reduction,
           zero_empty=False, empty=False):
    """Loss from the per-(image, class) sums s (N, C, 3) (plain differentiable torch: the small
    tail shared by every backend).  zero_empty: a class with G' = 0 (no target pixels in the
    image, or in the batch when not per_image) gets loss 0 (smp's rule; it still counts in
    the mean).  empty: the input has no elements (an empty batch or no pixels): the loss is 0
    (the mean of nothing, as every fastloss op), connected to the graph, in the shape the
    reduction gives."""
    C = s.shape[1]
    if empty:
        kept = C - 1 if not include_background and C > 1 else C
        zero = s.sum() * 0
        if reduction != "none":
            return zero
        return zero.expand((s.shape[0], kept) if per_image else (kept,)).clone()  # a real tensor, writable
    if not per_image:
        s = s.sum(0, keepdim=True)
    I, P, G = s.unbind(-1)
    num = a * I + smooth_nr
    den = a * I + a * alpha * (P - I) + a * beta * (G - I) + smooth_dr
    ok = den != 0
    score = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(den))
    if zero_empty:  # score 1 -> loss 0, and no NaN gradient through a log of a zero score (NaN G stays NaN)
        score = torch.where(G != 0, score, torch.ones_like(score))
    if log:
        loss = -torch.log(score)
    else:
        loss = 1.0 - score
    if gamma != 1.0:  # loss^gamma with derivative 0 at 0 (finite for gamma < 1); NaN stays NaN
        flat = loss <= 0
        loss = torch.where(flat, torch.zeros_like(loss), torch.where(flat, torch.ones_like(loss), loss) ** gamma)
    if class_weights is not None:
        loss = loss * class_weights.to(loss.dtype).view(1, C)
    if not include_background and C > 1:
        loss = loss[:, 1:]
    if not per_image:
        loss = loss[0]
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def canonicalize(input, target, mode, activation, ignore_index):
    """Kernel views (no copies when contiguous): x (N, C, S), the target as an integer label map
    (N, S) or a float tensor (N, C, S), and the ignore_index the kernels take.  Shapes are
    validated by fastloss/ops/dice.py.  binary: input (N, 1, *) or (N, *) (a channel dim of 1 is
    added); multilabel targets of an integer dtype are cast to input's dtype (they are given per
    channel, not as labels).
    The kernels read the label map of a one-class input without a softmax as binary mode's 0 / 1
    mask (g = [label == 1], probs_targets_mask).  A multiclass label map there names class 0 by
    label 0, so it is handed over as that mask (a copy): 1 for label 0, 0 for any other (an
    unchecked out-of-range label: counted in P' only, as for every C), ignored pixels as 2 with
    ignore_index 2."""
    if mode == "binary" and not (input.dim() >= 2 and input.shape[1] == 1):
        input = input.unsqueeze(1)
    N, C = input.shape[:2]
    S = math.prod(input.shape[2:])  # explicit: reshape cannot infer -1 for an empty batch
    x = input.reshape(N, C, S)
    if mode == "multilabel" and not target.is_floating_point():
        target = target.to(input.dtype)
    if target.is_floating_point():
        return x, target.reshape(N, C, S), ignore_index
    t = target.reshape(N, S)
    if mode == "multiclass" and C == 1 and activation != 2:
        g = (t == 0).to(torch.uint8)
        if ignore_index is None:
            return x, g, None
        return x, torch.where(t.long() == ignore_index, 2, g).to(torch.uint8), 2  # int64 compare: no wrap of a uint8 map
    return x, t, ignore_index


def tversky_loss(input, target, alpha=0.5, beta=0.5, gamma=1.0, mode="multiclass", from_logits=True, smooth_nr=0.0,
                 smooth_dr=1e-5, squared=False, ignore_index=None, include_background=True, per_image=False,
                 class_weights=None, log=False, reduction="mean", zero_empty=False, soft_label=False, _a=1.0):
    """Eager autograd reference of :func:`fastloss.tversky_loss` (same arguments, already
    validated shapes: see fastloss/ops/dice.py for the accepted forms)."""
    activation = 0 if not from_logits else (2 if mode == "multiclass" else 1)
    x, t, ignore_index = canonicalize(input, target, mode, activation, ignore_index)
    s = sums(x, t, activation, squared, soft_label and not squared, ignore_index)
    return finish(s, alpha, beta, gamma, _a, smooth_nr, smooth_dr, include_background, per_image, class_weights, log, reduction,
                  zero_empty, empty=x.numel() == 0)


def dice_loss(input, target, mode="multiclass", **kwargs):
    kwargs.setdefault("alpha", 0.5)
    kwargs.setdefault("beta", 0.5)
    return tversky_loss(input, target, mode=mode, _a=2.0, **kwargs)


def jaccard_loss(input, target, mode="multiclass", **kwargs):
    return tversky_loss(input, target, alpha=1.0, beta=1.0, mode=mode, **kwargs)


def dice_ce_loss(input, target, mode="multiclass", lambda_dice=1.0, lambda_ce=1.0, ignore_index=None, **kwargs):
    """MONAI DiceCE: lambda_dice * dice_loss + lambda_ce * cross entropy (mean over the
    non-ignored pixels -- 0 if all are ignored -- or their sum for reduction="sum";
    BCE-with-logits over non-ignored elements for sigmoid modes)."""
    d = dice_loss(input, target, mode=mode, ignore_index=ignore_index, **kwargs)
    activation = 2 if mode == "multiclass" else 1
    x, t, ignore_index = canonicalize(input, target, mode, activation, ignore_index)
    ce = ce_terms(x, t, activation, ignore_index, exact=False).sum(0)
    ce_term = ce[0] if kwargs.get("reduction", "mean") == "sum" else ce[0] / ce[1].clamp_min(1)
    return lambda_dice * d + lambda_ce * ce_term
