"""segmentation_models_pytorch's losses (``segmentation_models_pytorch.losses``, smp 0.6.0) over
fastloss's kernels, with smp's exact names, signatures, defaults, return shapes and dtypes::

    from fastloss.compat import smp as fl_smp       # instead of segmentation_models_pytorch.losses
    loss_fn = fl_smp.DiceLoss("multiclass", ignore_index=255)

or ``fastloss.patch("smp")`` swaps them into ``segmentation_models_pytorch.losses`` in place.

Mapping:

* ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss``: ONE pass of fastloss's dice kernel gives the
  per-(image, class) sums I, P', G' (softmax for "multiclass", sigmoid for "binary" /
  "multilabel" when ``from_logits``, inside the kernel; integer label maps expanded inside the
  kernel; ``ignore_index`` pixels -- elements for "binary" / "multilabel" -- left out of every
  sum); smp's score (I + smooth) / (I + alpha FP + beta FN + smooth).clamp_min(eps) over the
  batch, the zeroing of classes absent from the target, ``classes``, ``log_loss``, the
  weighted class mean sum(w l) / sum(w) (= fastloss's class weights C w / sum(w)) and
  Tversky's ``** gamma`` of the mean are torch ops on the (N, C, 3) sums.  smp's intersection
  is (sum p + sum g - ||p - g||_1) / 2 = sum min(p, g), with torch's derivative 1/2 where
  p == g exactly (|.|'(0) = 0).  With ``from_logits=True`` the kernel forms it in its
  soft-label mode (sum min(p, g), sum |p| = sum p, sum |g|, the same derivatives; for hard and
  soft targets alike), so p and the sums never leave the kernel.  With ``from_logits=False``
  (the input is p, so exact ties, p = 0 -- where the soft-label mode's d|p|/dp = 0 but smp's
  d(sum p)/dp = 1 -- and values outside [0, 1] are ordinary) the kernel forms the plain sums
  and a torch term sum min(p, g) - p g over the counted elements, with exactly the missing
  value and gradient, is added to its intersection: values and gradients are smp's for any
  real p and target, soft and negative ones included.
* ``FocalLoss``: :func:`fastloss.sigmoid_focal_loss` per element -- with ``reduced_threshold``
  :func:`fastloss.reduced_focal_loss` (the reduced focal term, arXiv 1903.01347) -- (integer
  labels expanded in the kernel for "multiclass"), smp's per-class means and class weights
  folded into the element weights; ``normalized=True`` divides by the focal terms' sum from
  the engine's focal-term op (per class for "multiclass" / "multilabel", as smp), with its
  gradient; ``from_logits=False`` applies smp's clamp-and-logit (or log) in PyTorch first.
* ``SoftBCEWithLogitsLoss``: :func:`fastloss.binary_cross_entropy_with_logits` (``weight``,
  ``pos_weight``; ``smooth_factor`` f is the kernel's label smoothing 2 f; ignored elements
  weight 0, the mean over all elements as smp).
* ``SoftCrossEntropyLoss``: :func:`fastloss.cross_entropy` with ``label_smoothing`` (smp's
  label-smoothed NLL is torch's smoothing) and the mean over all positions, ignored included
  (smp's rule; ``avg_non_ignore=False``).

Differences from smp (documented, deliberate):

* ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss`` with ``from_logits=True`` (the default):
  negative target values raise ValueError (the kernel's soft-label sums take |g| and
  min(p, g) = 0 for g < 0 <= p, smp sum g and g).  ``FocalLoss`` soft (non 0 / 1) targets raise
  ValueError: smp's focal term for them is exp(-BCE), fastloss's kernel forms (1 - p_t).  Both
  checked for CPU tensors; for CUDA tensors in fastloss's checked mode
  (:func:`fastloss.checked_labels`; unchecked, such targets give fastloss's forms); under
  ``torch.compile`` the value checks (these, labels out of range) are skipped (they read the
  host; a compiled graph cannot).  ``from_logits=False`` takes any real target exactly.
* ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss`` with ``from_logits=True``: smp's derivative
  of min(p, g) is 1/2 where its p (exp(logsigmoid(x)) or exp(log_softmax(x)) in the input dtype)
  equals g exactly; the kernel's where ITS p (fp32, fp64 for fp64 input) does.  For a hard
  target the two can disagree only at a logit where one p rounds to exactly 1 and the other
  does not (sigmoid: x near 17 in fp32, 37 in fp64; x in about [8, 17] for fp16 input, which
  smp rounds in fp16); there the gradients are both of the size of dp/dx (< 2^-24 in fp32,
  2^-53 in fp64, 2^-11 in fp16) times |dL/dI| + |dL/dP| and differ by up to that much (for a
  soft target, likewise at an exact tie p == g that only one rounding hits).  Every other
  element, and every value, is smp's; ``from_logits=False`` is exact (see the mapping).
* Targets that require grad raise ValueError (fastloss does not differentiate w.r.t. the
  target; smp does): pass ``y_true.detach()``.
* ``FocalLoss``: an ``alpha`` outside [0, 1] and a ``reduced_threshold`` that is not positive
  and finite raise ValueError (smp: a negative alpha weighs negatively, a threshold of 0
  divides by 0); "multilabel" with ``ignore_index`` and "none" / "batchwise_mean" with
  ``class_weights`` in the multi-class modes raise ValueError (smp itself fails there with a
  shape error); a mean over zero non-ignored pixels is 0 (smp: NaN).  ``normalized=True`` and
  ``reduced_threshold`` are smp's (values and gradients); for gamma < 1 the focal term's
  derivative at a saturated logit (1 - p_t = 0) is 0, where smp's autograd gives NaN.
* ``SoftBCEWithLogitsLoss``: ``smooth_factor`` must lie in [0, 0.5] (ValueError otherwise).
* ``SoftCrossEntropyLoss()`` with the default ``smooth_factor=None`` works (no smoothing);
  smp raises TypeError there.
* Bad ``mode`` values raise ValueError (smp: AssertionError).
"""
import math
from functools import partial
from typing import List, Optional

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from fastloss.ops import _common
from fastloss.ops import dice as _dice
from fastloss.ops.pointwise import binary_cross_entropy_with_logits, focal_term, reduced_focal_loss, sigmoid_focal_loss
from fastloss.ops.rowwise import cross_entropy

__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "FocalLoss", "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss",
           "focal_loss_with_logits"]

BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
MULTILABEL_MODE = "multilabel"
_MODES = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)


def _check_mode(mode):
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def _float32(values):
    """smp keeps classes' weights as an fp32 tensor (to_tensor(..., torch.float))."""
    return torch.as_tensor(values).to(torch.float32)


def _eager():
    """False while torch.compile traces: the value checks below read the host (a sync, and a
    graph break that fullgraph=True refuses), so a compiled graph skips them -- as fastloss's
    ops leave their label checks to the kernels at run time."""
    return not torch.compiler.is_compiling()


def _check_target(name, t, ignore_index, nonneg=False):
    """ValueError for a float target with values other than 0, 1 (``nonneg``: with negative
    values), ignore_index exempt -- CPU tensors; CUDA tensors in fastloss's checked mode (the
    check syncs); skipped under torch.compile."""
    if not t.is_floating_point() or t.numel() == 0 or not _eager() or not _common.labels_checked_on(t.device):
        return
    bad = t < 0 if nonneg else (t != 0) & (t != 1)
    if ignore_index is not None:
        bad &= t != ignore_index
    if bool(bad.any()):
        if nonneg:
            raise ValueError(f"{name}: fastloss needs targets >= 0 with from_logits=True; smp's sums for negative targets "
                             "differ from the kernel's soft-label sums (see fastloss.compat.smp; from_logits=False takes them)")
        raise ValueError(f"{name}: fastloss needs hard (0 / 1) float targets; smp's formula for soft targets differs "
                         "(see fastloss.compat.smp)")


class _SoftScore(_Loss):
    """smp's Dice / Jaccard / Tversky (alpha, beta) over the dice kernel's sums."""

    _alpha = _beta = 0.5

    def _setup(self, mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights):
        _check_mode(mode)
        if class_weights is not None and mode == BINARY_MODE:
            raise ValueError("class_weights are not supported with mode=binary")
        if classes is not None:
            if mode == BINARY_MODE:
                raise ValueError("Masking classes is not supported with mode=binary")
            classes = torch.as_tensor(classes).to(torch.long)
        self.mode = mode
        self.classes = classes
        self.from_logits = from_logits
        self.smooth = smooth
        self.eps = eps
        self.log_loss = log_loss
        self.ignore_index = ignore_index
        self.class_weights = _float32(class_weights) if class_weights is not None else None

    def _class_losses(self, y_pred, y_true):
        """Per-class loss (C,) after smp's zeroing of empty classes and its ``classes`` filter."""
        if y_true.size(0) != y_pred.size(0):
            raise ValueError(f"y_true and y_pred must have the same batch size, got {y_true.size(0)} and {y_pred.size(0)}")
        bs = y_true.size(0)
        activation = 0
        if self.from_logits:
            activation = 2 if self.mode == MULTICLASS_MODE else 1
        if self.mode == BINARY_MODE:
            x, t, mode = y_pred.reshape(bs, 1, -1), y_true.reshape(bs, 1, -1).to(y_pred.dtype), "multilabel"
        elif self.mode == MULTICLASS_MODE:
            x, t, mode = y_pred.reshape(bs, y_pred.size(1), -1), y_true.reshape(bs, -1), "multiclass"
            if t.is_floating_point():
                raise ValueError(f"multiclass y_true must be an integer label map, got {t.dtype}")
        else:
            x, mode = y_pred.reshape(bs, y_pred.size(1), -1), "multilabel"
            t = y_true.reshape(bs, y_pred.size(1), -1).to(y_pred.dtype)
        if self.from_logits:
            _check_target(type(self).__name__, t, self.ignore_index, nonneg=True)
        xk, tk, _, ii = _dice._prepare(x, t, mode, bool(self.from_logits), self.ignore_index)
        ii = None if ii is None else int(ii)
        # from_logits: smp's sum min(p, g) in the kernel's soft-label mode; else the plain sums + a torch term
        sums, _ = _dice._sums(xk, tk, activation, False, bool(self.from_logits), ii, False, None)
        I, P, G = sums.sum(0).unbind(-1)  # over the batch and space, per class (smp's dims (0, 2))
        if not self.from_logits:
            I = I + self._intersection_correction(x, t, mode, sums.dtype)
        den = (I + self._alpha * (P - I) + self._beta * (G - I) + self.smooth).clamp_min(self.eps)
        score = (I + self.smooth) / den
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        loss = loss * (G > 0).to(loss.dtype)  # smp: a class without target pixels contributes 0
        if self.classes is not None:
            loss = loss[self.classes]
        return loss.to(xk.dtype)

    def _intersection_correction(self, p, t, mode, dtype):
        """smp's intersection minus the kernel's, per class (C,), for probabilities p (N, C, S).

        smp forms the intersection as (sum p + sum g - ||p - g||_1) / 2 = sum min(p, g); the
        kernel forms sum p g.  For a hard g and p in [0, 1] the VALUES agree, but the derivative
        differs where p == g exactly (torch's |.|' (0) = 0 makes smp's d min / dp = 1/2 there;
        the kernel's d(p g)/dp = g) and the values differ for p outside [0, 1].  This term,
        sum over the counted elements of min(p, g) - p g, is 0 or the exact value difference,
        and its gradient (torch.minimum splits a tie 1/2 : 1/2) is exactly smp's minus the
        kernel's, so kernel sums + correction give smp's values and gradients."""
        if mode == "multiclass":
            valid = torch.ones_like(t, dtype=torch.bool) if self.ignore_index is None else t != self.ignore_index
            lab = torch.where(valid, t, torch.zeros_like(t)).unsqueeze(1)
            classes = torch.arange(p.shape[1], device=p.device).view(1, -1, 1)
            g = (lab == classes).to(p.dtype)  # the one-hot target of the counted pixels (smp's y_true)
            valid = valid.unsqueeze(1)
        else:
            valid = torch.ones_like(t, dtype=torch.bool) if self.ignore_index is None else t != self.ignore_index
            g = torch.where(valid, t, torch.zeros_like(t))
        diff = torch.where(valid, torch.minimum(p, g) - p * g, torch.zeros((), dtype=p.dtype, device=p.device))
        return diff.sum((0, 2), dtype=dtype)

    def aggregate_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """smp's class mean (weighted: sum(w loss) / sum(w))."""
        if self.class_weights is not None:
            weights = self.class_weights.to(loss.device)
            if self.classes is not None:
                weights = weights[self.classes]
            return (loss * weights).sum() / weights.sum()
        return loss.mean()

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return self.aggregate_loss(self._class_losses(y_pred, y_true))


_SCORE_DOC = """smp's ``{name}`` (segmentation_models_pytorch.losses, smp 0.6.0) on fastloss's dice kernel:
    per class over the whole batch, score = (I + smooth) / (I + {terms} + smooth).clamp_min(eps),
    loss = 1 - score (``log_loss``: -log(score.clamp_min(eps))), 0 for classes absent from the
    target, then the (weighted) class mean{gamma}.

    y_pred (N, C, *) logits (probabilities with ``from_logits=False``), fp16/bf16/fp32 (fp64 on
    CPU); y_true: "binary" (N, *) or (N, 1, *) 0/1 values, "multiclass" an integer label map
    (N, *), "multilabel" (N, C, *) 0/1 or soft (float) values.  Returns a scalar in y_pred's
    dtype.  Raises ValueError for a bad mode, classes / class_weights with "binary", negative
    targets with ``from_logits=True`` and labels out of range (CPU tensors; module docstring)."""


class DiceLoss(_SoftScore):
    __doc__ = _SCORE_DOC.format(name="DiceLoss", terms="FP / 2 + FN / 2", gamma="")

    def __init__(
        self,
        mode: str,
        classes: Optional[List[int]] = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: Optional[int] = None,
        eps: float = 1e-7,
        class_weights: Optional[List[float]] = None,
    ):
        super().__init__()
        self._setup(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)


class JaccardLoss(_SoftScore):
    __doc__ = _SCORE_DOC.format(name="JaccardLoss", terms="FP + FN", gamma="")
    _alpha = _beta = 1.0

    def __init__(
        self,
        mode: str,
        classes: Optional[List[int]] = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: Optional[int] = None,
        eps: float = 1e-7,
        class_weights: Optional[List[float]] = None,
    ):
        super().__init__()
        self._setup(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)


class TverskyLoss(DiceLoss):
    __doc__ = _SCORE_DOC.format(name="TverskyLoss", terms="alpha FP + beta FN", gamma=", raised to ``gamma``")

    def __init__(
        self,
        mode: str,
        classes: Optional[List[int]] = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: Optional[int] = None,
        eps: float = 1e-7,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        class_weights: Optional[List[float]] = None,
    ):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights)
        self.alpha = self._alpha = alpha
        self.beta = self._beta = beta
        self.gamma = gamma

    def aggregate_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The (weighted) class mean, raised to ``gamma`` (smp's focal Tversky)."""
        return super().aggregate_loss(loss) ** self.gamma


def _focal_sum(x, t, alpha, gamma, threshold, reduction, weight=None):
    """fastloss's focal loss with smp's ``reduced_threshold`` (None: the plain focal loss)."""
    if threshold is None:
        return sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction, weight=weight)
    return reduced_focal_loss(x, t, alpha=alpha, gamma=gamma, threshold=threshold, reduction=reduction, weight=weight)


def focal_loss_with_logits(
    output: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Optional[float] = 0.25,
    reduction: str = "mean",
    normalized: bool = False,
    reduced_threshold: Optional[float] = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """smp's ``focal_loss_with_logits`` (segmentation_models_pytorch.losses._functional, smp
    0.6.0) on :func:`fastloss.sigmoid_focal_loss`: per element f BCE(output, target), times
    alpha t + (1 - alpha)(1 - t) when ``alpha`` is not None, with the focal term
    f = (1 - p_t)^gamma -- or, with ``reduced_threshold`` r, the reduced focal term (1 where
    p_t < r, ((1 - p_t) / r)^gamma elsewhere: :func:`fastloss.reduced_focal_loss`);
    ``normalized``: divided by max(sum of f over the tensor, ``eps``) (the focal-term op
    :func:`fastloss.ops.pointwise.focal_term`, differentiated as smp's autograd does).  "mean"
    over all elements, "sum", "batchwise_mean" (the sum over dim 0, smp's rule), anything else:
    the per-element losses.  output logits of any shape, target of its shape (hard 0 / 1: soft
    targets raise ValueError, see the module docstring); returns output's dtype.  What
    :attr:`FocalLoss.focal_loss_fn` holds, as in smp.  ValueError for a ``reduced_threshold``
    that is not positive and finite, or a target that requires grad."""
    target = target.to(dtype=output.dtype, device=output.device)
    _check_target("focal_loss_with_logits", target, None)
    a = -1.0 if alpha is None else float(alpha)  # fastloss: a negative alpha disables the balance
    if reduction in ("mean", "sum"):
        loss = _focal_sum(output, target, a, gamma, reduced_threshold, reduction)
    else:
        loss = _focal_sum(output, target, a, gamma, reduced_threshold, "none")
        if reduction == "batchwise_mean":
            loss = loss.sum(0)
    if normalized:  # smp divides every element by the same sum: dividing after the reduction is the same
        loss = loss / focal_term(output, target, gamma=gamma, threshold=reduced_threshold, reduction="sum").clamp_min(eps)
    return loss


class FocalLoss(_Loss):
    """smp's ``FocalLoss`` (segmentation_models_pytorch.losses, smp 0.6.0) on fastloss's
    pointwise kernels: per element f BCE (times alpha t + (1 - alpha)(1 - t) when ``alpha`` is
    given) with the focal term f = (1 - p_t)^gamma (:func:`fastloss.sigmoid_focal_loss`) or,
    with ``reduced_threshold`` r, 1 where p_t < r and ((1 - p_t) / r)^gamma elsewhere
    (:func:`fastloss.reduced_focal_loss`); "multiclass" scores each class against its
    one-vs-rest target.  "binary": ``reduction`` over the non-ignored elements ("none": their
    1-D vector, as smp); "multiclass" / "multilabel": ``reduction`` per class, then the
    (``class_weights``-weighted) class mean, as smp.  ``normalized``: each of smp's calls of
    its focal function -- the non-ignored elements for "binary", one class's (non-ignored)
    pixels for the other modes -- divides its losses by max(sum of f over those elements,
    1e-6), differentiated through that sum as smp's autograd does; the sums come from the
    focal-term op (:func:`fastloss.ops.pointwise.focal_term`, one fused sum for "binary"; per
    class, its per-element values summed by torch).

    y_pred (N, C, *) logits (probabilities with ``from_logits=False``: smp's clamp to
    [eps, 1 - eps] and logit -- or log for "multiclass" -- are applied in PyTorch); y_true as
    :class:`DiceLoss`.  Returns a tensor in y_pred's dtype.  Raises ValueError for the
    arguments listed in the module docstring, soft targets and labels out of range.
    ``focal_loss_fn`` is smp's attribute: :func:`focal_loss_with_logits` with this loss's
    ``alpha``, ``gamma``, ``reduction``, ``normalized`` and ``reduced_threshold``.
    """

    _NORM_EPS = 1e-6  # smp's focal_loss_with_logits default eps, the normaliser's floor

    def __init__(
        self,
        mode: str,
        alpha: Optional[float] = None,
        gamma: Optional[float] = 2.0,
        ignore_index: Optional[int] = None,
        from_logits: bool = True,
        eps: float = 1e-7,
        reduction: Optional[str] = "mean",
        normalized: bool = False,
        reduced_threshold: Optional[float] = None,
        class_weights: Optional[List[float]] = None,
    ):
        super().__init__()
        _check_mode(mode)
        if class_weights is not None and mode == BINARY_MODE:
            raise ValueError("class_weights are not supported with mode=binary")
        if reduction not in ("mean", "sum", "none", "batchwise_mean"):
            raise ValueError(f"reduction must be 'mean', 'sum', 'none' or 'batchwise_mean', got {reduction!r}")
        if mode != BINARY_MODE and class_weights is not None and reduction in ("none", "batchwise_mean"):
            raise ValueError(f"FocalLoss: class_weights with reduction={reduction!r} fail in smp (a shape error); not supported")
        if mode == MULTILABEL_MODE and ignore_index is not None:
            raise ValueError("FocalLoss: mode='multilabel' with ignore_index fails in smp (a shape error); not supported")
        self.mode = mode
        # fastloss's kernel reads a negative alpha as "no balance": only smp's documented [0, 1] is accepted
        self.alpha = alpha if alpha is None else _common.check_param("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1] or None")
        self.gamma = _common.nonneg("gamma", gamma)
        self.normalized = bool(normalized)
        self.reduced_threshold = reduced_threshold
        if reduced_threshold is not None:  # the kernel's check, now rather than at the first call
            self.reduced_threshold = _common.check_param("reduced_threshold", reduced_threshold, lambda v: 0 < v < math.inf,
                                                         "positive and finite, or None")
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.eps = eps
        # smp's attribute: the per-element focal function with this loss's settings (forward itself
        # folds smp's per-class means into one weighted kernel call)
        self.focal_loss_fn = partial(focal_loss_with_logits, alpha=alpha, gamma=gamma, reduced_threshold=reduced_threshold,
                                     reduction=reduction, normalized=normalized)
        self.class_weights = _float32(class_weights) if class_weights is not None else None

    def _loss(self, x, t, alpha, reduction, weight=None):
        return _focal_sum(x, t, alpha, self.gamma, self.reduced_threshold, reduction, weight)

    def _norm(self, x, t, reduction, weight):
        """The focal terms' sum over the elements smp's focal function sees (``weight`` 0 leaves
        one out): a scalar ("sum") or per element ("none")."""
        return focal_term(x, t, gamma=self.gamma, threshold=self.reduced_threshold, reduction=reduction, weight=weight)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if not self.from_logits:
            y_pred = torch.clamp(y_pred, self.eps, 1 - self.eps)
            y_pred = torch.log(y_pred) if self.mode == MULTICLASS_MODE else torch.log(y_pred / (1 - y_pred))
        alpha = -1.0 if self.alpha is None else float(self.alpha)  # fastloss: a negative alpha disables the balance
        dtype = y_pred.dtype
        if self.mode == BINARY_MODE:
            x, t = y_pred.reshape(-1), y_true.reshape(-1)
            valid = t != self.ignore_index if self.ignore_index is not None else None
            t = t.to(dtype)
            if valid is not None:
                t = torch.where(valid, t, torch.zeros_like(t))
            _check_target("FocalLoss", t, None)
            w = None if valid is None else valid.to(dtype)
            if self.reduction == "none":
                loss = self._loss(x, t, alpha, "none")
                loss = loss if valid is None else loss[valid]
            else:
                loss = self._loss(x, t, alpha, "sum", w)
                if self.reduction == "mean":
                    loss = loss / (t.numel() if valid is None else valid.sum().clamp_min(1))
                # "sum"; "batchwise_mean" of the 1-D vector is its sum
            if self.normalized:
                loss = loss / self._norm(x, t, "sum", w).clamp_min(self._NORM_EPS)
            return loss

        C = y_pred.size(1)
        x = y_pred.movedim(1, -1)  # (N, *, C): the class axis last, as the pointwise kernel's labels expect
        if self.mode == MULTICLASS_MODE:
            if y_true.is_floating_point():
                raise ValueError(f"multiclass y_true must be an integer label map, got {y_true.dtype}")
            valid = y_true != self.ignore_index if self.ignore_index is not None else torch.ones_like(y_true, dtype=torch.bool)
            if _eager():
                _common.check_labels("FocalLoss", y_true, C, self.ignore_index)
            # an ignored pixel's label points at no class (C = background); its weight is 0
            t = torch.where(valid, y_true.long(), torch.full_like(y_true, C, dtype=torch.long))
        else:
            t = y_true.to(dtype).movedim(1, -1)
            valid = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
            _check_target("FocalLoss", t, None)
        cw = torch.ones(C, dtype=dtype, device=x.device) if self.class_weights is None else self.class_weights.to(x.device).to(dtype)
        class_norm = cw / cw.sum()  # the (weighted) mean over the classes
        per_pixel = valid.to(dtype)
        scale = 1.0  # smp's reduction of one class's losses: a sum times this
        if self.reduction in ("mean", "none"):  # smp's "none" stacks the class vectors and takes their mean
            scale = 1.0 / valid.sum().clamp_min(1).to(dtype)
        elif self.reduction == "batchwise_mean" and self.ignore_index is None:  # per class a sum over the batch, then a mean
            scale = 1.0 / valid[0].numel()
        if not self.normalized:
            w = (per_pixel * scale).unsqueeze(-1) * class_norm
            return self._loss(x, t, alpha, "sum", w.expand(x.shape))
        # normalised: class c's losses divided by its own focal-term sum S_c, so both come per
        # element and are summed per class (the engine's reductions are over the whole tensor)
        loss_c = self._loss(x, t, alpha, "none", per_pixel).reshape(-1, C).sum(0)
        norm_c = self._norm(x, t, "none", per_pixel).reshape(-1, C).sum(0).clamp_min(self._NORM_EPS)
        return (class_norm * (loss_c * scale) / norm_c).sum()


class SoftBCEWithLogitsLoss(nn.Module):
    """smp's ``SoftBCEWithLogitsLoss`` (segmentation_models_pytorch.losses, smp 0.6.0) on
    :func:`fastloss.binary_cross_entropy_with_logits`: BCE-with-logits against the smoothed
    target (1 - y) f + y (1 - f) (f = ``smooth_factor``, the kernel's label smoothing 2 f),
    ``weight`` and ``pos_weight`` as torch's (broadcast to y_pred's shape: a (C,) weight is per
    last-axis index, square inputs included), elements equal to ``ignore_index`` weighted 0.

    y_pred and y_true of one shape (any), fp16/bf16/fp32 (fp64 on CPU).  "mean": over all
    elements (ignored ones included, as smp), "sum"; any other ``reduction``: the per-element
    losses.  Raises ValueError for ``smooth_factor`` outside [0, 0.5] and bad shapes (a weight
    or pos_weight that does not broadcast to y_pred's shape: smp's torch call raises there)."""

    __constants__ = ["weight", "pos_weight", "reduction", "ignore_index", "smooth_factor"]

    def __init__(
        self,
        weight: Optional[torch.Tensor] = None,
        ignore_index: Optional[int] = -100,
        reduction: str = "mean",
        smooth_factor: Optional[float] = None,
        pos_weight: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        if smooth_factor is not None:
            _common.check_param("smooth_factor", smooth_factor, lambda v: 0 <= v <= 0.5,
                                "in [0, 0.5] (fastloss's label smoothing is 2 * smooth_factor)")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.smooth_factor = smooth_factor
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        t = y_true if y_true.is_floating_point() else y_true.to(y_pred.dtype)
        w = self.weight
        # smp hands weight to torch's BCE: broadcast to y_pred's shape or an error (fastloss's
        # per-row extension for a y_pred.shape[:-1] weight is not smp's)
        if w is not None and not _common.broadcasts_to(w.shape, y_pred.shape):
            raise ValueError(f"SoftBCEWithLogitsLoss: weight of shape {tuple(w.shape)} does not broadcast to y_pred's shape "
                             f"{tuple(y_pred.shape)}")
        if self.ignore_index is not None:
            valid = y_true != self.ignore_index
            t = torch.where(valid, t, torch.zeros_like(t))
            mask = valid.to(y_pred.dtype)
            w = mask if w is None else w * mask
        reduction = self.reduction if self.reduction in ("mean", "sum") else "none"
        s = 0.0 if self.smooth_factor is None else 2.0 * self.smooth_factor
        return binary_cross_entropy_with_logits(y_pred, t, weight=w, reduction=reduction, pos_weight=self.pos_weight,
                                                label_smoothing=s)


class SoftCrossEntropyLoss(nn.Module):
    """smp's ``SoftCrossEntropyLoss`` (segmentation_models_pytorch.losses, smp 0.6.0) on
    :func:`fastloss.cross_entropy`: per position (1 - f) NLL + (f / C) sum_c -log p_c (torch's
    label smoothing f = ``smooth_factor``; None = 0), ignored positions 0.

    y_pred logits with the classes on axis ``dim``; y_true integer labels with that axis removed
    (or of size 1).  "mean": over ALL positions (ignored ones included, smp's rule); "sum";
    otherwise the per-position losses, shaped like y_true with a size-1 class axis when
    ``ignore_index`` is set (smp's shapes).  Returns y_pred's dtype; ValueError for labels out of
    range (CPU tensors)."""

    __constants__ = ["reduction", "ignore_index", "smooth_factor"]

    def __init__(
        self,
        reduction: str = "mean",
        smooth_factor: Optional[float] = None,
        ignore_index: Optional[int] = -100,
        dim: int = 1,
    ):
        super().__init__()
        self.smooth_factor = smooth_factor
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.dim = dim

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        dim = self.dim % y_pred.dim()
        if y_true.dim() == y_pred.dim():
            if y_true.shape[dim] != 1:
                raise ValueError(f"y_true must have y_pred's shape without axis {self.dim} (or 1 there), got {tuple(y_true.shape)}")
            y_true = y_true.squeeze(dim)
        x = y_pred.movedim(dim, 1)
        C = x.shape[1]
        if self.ignore_index is None and _eager():
            _common.check_labels("SoftCrossEntropyLoss", y_true, C)
        ii = -100 if self.ignore_index is None else int(self.ignore_index)
        reduction = self.reduction if self.reduction in ("mean", "sum") else "none"
        s = 0.0 if self.smooth_factor is None else self.smooth_factor
        loss = cross_entropy(x, y_true, ignore_index=ii, reduction=reduction, label_smoothing=s,
                             avg_non_ignore=False if reduction == "mean" else None)
        if reduction == "none" and self.ignore_index is not None:
            loss = loss.unsqueeze(dim)
        return loss


_REPLACED = {"DiceLoss": DiceLoss, "JaccardLoss": JaccardLoss, "TverskyLoss": TverskyLoss, "FocalLoss": FocalLoss,
             "SoftBCEWithLogitsLoss": SoftBCEWithLogitsLoss, "SoftCrossEntropyLoss": SoftCrossEntropyLoss}


def _patch(handle):
    """Replace smp's DiceLoss, JaccardLoss, TverskyLoss, FocalLoss, SoftBCEWithLogitsLoss and
    SoftCrossEntropyLoss with this module's classes in ``segmentation_models_pytorch.losses``,
    its defining submodules (.dice, .jaccard, .tversky, .focal, .soft_bce, .soft_ce) and every
    other already-imported ``segmentation_models_pytorch.*`` module holding an original.
    A module first imported while the patch is active binds fastloss's class by name and keeps
    it after undo."""
    import sys

    import segmentation_models_pytorch.losses as losses

    originals = {}
    for name, ours in _REPLACED.items():
        current = getattr(losses, name)
        if current is not ours:
            originals[current] = ours
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "segmentation_models_pytorch" or mod_name.startswith("segmentation_models_pytorch.")):
            continue
        for name in _REPLACED:
            value = vars(mod).get(name) if hasattr(mod, "__dict__") else None
            if isinstance(value, type) and value in originals:
                handle.setattr(mod, name, originals[value])
