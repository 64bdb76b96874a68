"""MONAI's segmentation and box losses (``monai.losses``, MONAI 1.6.1) over fastloss's kernels.

The classes carry MONAI's exact names, signatures, defaults, return shapes and dtypes::

    from fastloss.compat import monai as fl_monai          # instead of monai.losses
    loss_fn = fl_monai.DiceCELoss(to_onehot_y=True, softmax=True)

or ``fastloss.patch("monai")`` swaps them into ``monai.losses`` in place.

How each maps onto fastloss (every class reads the logits in ONE fused pass of fastloss's dice
engine, which returns the per-(image, class) sums I = sum p g, P' = sum p (sum p^2 with
``squared_pred``), G' = sum g (sum g^2) and, for Dice + CE, the cross-entropy sum; MONAI's
score, weights, ``batch`` and reductions are then a few torch ops on that (N, C, 3) tensor,
and the backward is the engine's second pass):

* ``soft_label=True`` (DiceLoss, MaskedDiceLoss, GeneralizedDiceLoss, TverskyLoss; MONAI's
  ``compute_tp_fp_fn`` with ord 1): the kernel's soft-label sums I = sum (|p| + |g| - |p - g|) / 2,
  P' = sum |p|, G' = sum |g| (tp, tp + fp, tp + fn), with the derivatives torch's autograd
  gives MONAI's norms (sgn 0 = 0: 1/2 at a tie p == g).  With ``squared_pred`` (ord 2) MONAI's
  soft form is sum p g, sum p^2, sum g^2: the squared sums, whatever ``soft_label`` says.

* ``DiceLoss``: score (2 I + smooth_nr) / (P' + G' + smooth_dr); ``jaccard=True``:
  (2 I + smooth_nr) / (2 (P' + G' - I) + smooth_dr), i.e. fastloss's Jaccard with smoothing
  s/2.  ``softmax`` / ``sigmoid`` run inside the kernel; an integer label map with
  ``to_onehot_y=True`` is expanded inside the kernel (no one-hot tensor).
* ``TverskyLoss``: (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr).
* ``GeneralizedDiceLoss``: MONAI's class weights (1 / G'^2, 1 / G' or 1, in fp32 as MONAI
  forms them) over the kernel's sums.
* ``DiceCELoss``: with ``softmax=True`` (C > 1), or ``sigmoid=True`` (C = 1), and neither
  ``weight``, ``label_smoothing`` nor ``jaccard``: ONE fused pass gives the Dice sums and the
  cross entropy.  Otherwise the Dice sums plus :func:`fastloss.cross_entropy` (C > 1: class
  weights, label smoothing) or :func:`fastloss.binary_cross_entropy_with_logits` (C = 1,
  ``pos_weight=weight``), as MONAI composes them.  Note MONAI's default ``softmax=False``: the
  Dice term then scores the raw logits (MONAI's behaviour, kept).
* ``FocalLoss``: :func:`fastloss.sigmoid_focal_loss` (``use_softmax=False``) or
  :func:`fastloss.softmax_focal_loss` (``use_softmax=True``) with MONAI's reductions (its
  "sum" averages over space first), class weights, per-class ``alpha`` and ``ignore_index``.
* ``DiceFocalLoss``: the Dice above plus the sigmoid ``FocalLoss``.
* ``MaskedDiceLoss`` and ``other_act``: the activation (and the spatial mask) are applied in
  PyTorch exactly as MONAI applies them; fastloss's no-activation dice pass does the sums.
  One-hot targets (C channels) with ``ignore_index`` likewise (MONAI masks whole pixels).
* ``BoxGIoULoss``: :func:`fastloss.box_iou_loss` (kind "giou", eps = fp32 machine epsilon,
  MONAI's placement, computed in fp32 as MONAI's COMPUTE_DTYPE, returned in input's dtype).

Differences from MONAI (documented, deliberate):

* ``BoxGIoULoss``: with 3-D boxes (N, 6) a target that requires grad raises ValueError (fastloss's
  3-D box loss differentiates the prediction only).  Inverted boxes (x2 < x1) are clamped to zero
  area (fastloss's rule) where MONAI raises "box size must be non-negative"; a NaN box
  propagates NaN instead of MONAI's ValueError.
* ``GeneralizedDiceLoss(soft_label=True)`` with negative target values: MONAI weights the
  classes by 1 / (sum g)^2 (no |.|, its ``ground_o``), fastloss by the kernel's G' = sum |g|.
  For targets >= 0 (one-hot, probabilities) they are the same.
* ``FocalLoss`` / ``DiceFocalLoss``: a scalar ``alpha`` outside MONAI's documented [0, 1]
  raises ValueError (fastloss's kernels read a negative alpha as "no balance").
* ``FocalLoss`` with ``use_softmax=True`` needs ``to_onehot_y=True`` (fastloss's softmax focal
  kernel takes class labels); with a float one-hot target it raises ValueError.
  ``FocalLoss`` / ``DiceFocalLoss`` targets must be hard (0 / 1): MONAI's sigmoid focal term
  for a soft target, sigmoid(-x (2 t - 1))^gamma, is not fastloss's (1 - p_t)^gamma; soft
  targets raise ValueError for CPU tensors (for CUDA tensors in fastloss's checked mode,
  :func:`fastloss.checked_labels`; unchecked, they give fastloss's form).
* ``FocalLoss`` / ``DiceFocalLoss`` on an empty input (a spatial size 0): 0, graph-connected,
  with a gradient of the input's shape (fastloss's rule: a mean over nothing is 0); MONAI's
  mean over nothing gives NaN.
* ``GeneralizedDiceLoss`` on input without spatial dims (B, N) and ``batch=False`` raises
  ValueError (MONAI fails there with an IndexError).  The other losses on (B, N) input keep
  MONAI's semantics: its sums over the (empty) spatial axes run over every axis, so Dice /
  Tversky score all images and classes at once and FocalLoss "sum" averages over everything.
* Targets that require grad raise ValueError (fastloss does not differentiate w.r.t. the
  target; MONAI does): pass ``target.detach()`` (``BoxGIoULoss`` differentiates both box sets,
  as MONAI).
* Under ``torch.compile`` the value checks (soft targets, labels out of range, negative
  weights) are skipped: they read the host, which a compiled graph cannot.
* Shape errors that MONAI raises as AssertionError are ValueError here.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from fastloss.ops import _common
from fastloss.ops import dice as _dice
from fastloss.ops.box_iou import box_iou, box_iou_loss
from fastloss.ops.pointwise import binary_cross_entropy_with_logits, sigmoid_focal_loss
from fastloss.ops.rowwise import cross_entropy, softmax_focal_loss

if TYPE_CHECKING:  # the names in MONAI's annotations (strings here, as in MONAI)
    from monai.utils import LossReduction, Weight

__all__ = ["DiceLoss", "MaskedDiceLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss", "TverskyLoss", "FocalLoss",
           "BoxGIoULoss", "Dice", "dice_ce", "dice_focal", "generalized_dice", "giou"]

_REDUCTIONS = ("none", "mean", "sum")
_FP32_EPS = torch.finfo(torch.float32).eps  # MONAI's box eps: finfo(COMPUTE_DTYPE = float32).eps


def _reduction(value, allowed=_REDUCTIONS):
    """MONAI's reduction strings (its LossReduction enum members are str and compare equal)."""
    value = str(value.value if hasattr(value, "value") else value)
    if value not in allowed:
        raise ValueError(f"Unsupported reduction: {value!r}, available options are {list(allowed)}.")
    return value


def _check_act(sigmoid, softmax, other_act):
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None].")


def _lambda(name, value):
    if value < 0.0:
        raise ValueError(f"{name} should be no less than 0.0.")
    return value


def _eager():
    """False while torch.compile traces: the value checks below read the host (a sync, and a
    graph break that fullgraph=True refuses), so a compiled graph skips them -- as fastloss's
    ops leave their label checks to the kernels at run time."""
    return not torch.compiler.is_compiling()


def _check_hard(name, t):
    """ValueError if the float target ``t`` holds values other than 0 and 1 (CPU tensors; CUDA
    tensors in fastloss's checked mode -- the check syncs; skipped under torch.compile)."""
    if t.numel() and _eager() and _common.labels_checked_on(t.device) and bool(((t != 0) & (t != 1)).any()):
        raise ValueError(f"{name}: fastloss needs a hard (0 / 1) target here; MONAI's formula for soft targets differs "
                         "(see fastloss.compat.monai)")


# ------------------------------------------------------------------ the dice engine's sums


def _sums(module, input, target, to_onehot_y, ignore_index, squared, soft_label, with_ce=False):
    """MONAI's activation / one-hot / ignore_index handling of DiceLoss-like losses, run by the
    fused dice kernel (``soft_label``: MONAI's ord-1 soft-label norms, unless ``squared``).
    Returns (sums (N, C, 3) = [I, P', G'], ce (N, 2) = [CE sum, count] or empty, fused, the
    computed dtype): fused tells whether the kernel applied softmax / sigmoid itself
    (``with_ce`` is only honoured then; its CE is softmax CE for softmax, BCE for sigmoid)."""
    if not isinstance(input, torch.Tensor) or input.dim() < 2:
        raise ValueError(f"input must be a tensor (B, N, *spatial), got {getattr(input, 'shape', type(input))}")
    C = input.shape[1]
    activation = 0  # the kernel's: 0 none, 1 sigmoid, 2 softmax
    if module.sigmoid:
        activation = 1
    elif module.softmax:
        if C == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
        else:
            activation = 2
    labels = False
    if to_onehot_y:
        if C == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
        else:
            labels = True
    if labels:
        if target.dim() != input.dim() or target.shape[1] != 1:
            raise ValueError(f"to_onehot_y=True needs a label map (B, 1, *spatial) for input {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        lab = target[:, 0]
        if lab.is_floating_point() or lab.dtype == torch.bool:
            lab = lab.long()  # MONAI's one_hot takes labels.long()
        t, mode = lab, "multiclass"
    else:
        if tuple(target.shape) != tuple(input.shape):
            raise ValueError(f"ground truth has different shape ({tuple(target.shape)}) from input ({tuple(input.shape)})")
        t, mode = target, "multilabel"
    x = input
    kernel_ignore = ignore_index
    if module.other_act is not None:
        x, activation = module.other_act(x), 0
    if ignore_index is not None and not labels and C > 1:
        # a one-hot target: MONAI masks whole pixels (the ignored class's pixels, or all-zero ones)
        tf = t if t.is_floating_point() else t.to(x.dtype)
        if 0 <= ignore_index < C:
            mask = 1.0 - tf[:, ignore_index:ignore_index + 1]
        else:
            mask = (tf.sum(dim=1, keepdim=True) > 0).to(tf.dtype)
        if activation == 1:
            x = torch.sigmoid(x)
        elif activation == 2:
            x = torch.softmax(x, 1)
        x, t, activation, kernel_ignore = x * mask, tf * mask, 0, None
    xk, tk, _, kernel_ignore = _dice._prepare(x, t, mode, activation == 2, kernel_ignore)  # its labels: C > 1
    fused = activation != 0
    squared = bool(squared)
    sums, ce = _dice._sums(xk, tk, activation, squared, bool(soft_label) and not squared,
                           None if kernel_ignore is None else int(kernel_ignore), bool(with_ce and fused), None)
    # MONAI's result dtype: input's promoted with the target's, and its one-hot of a label map is fp32
    dtype = torch.promote_types(xk.dtype, torch.float32) if labels else xk.dtype
    return sums, ce, fused, dtype


def _class_weight(weight, n_classes, dtype, device):
    """MONAI's per-class weight of the per-class losses (None: no weight; ignored for one class)."""
    if weight is None or n_classes == 1:
        return None
    w = torch.as_tensor(weight).to(device=device, dtype=dtype)
    if w.ndim == 0:
        w = w.expand(n_classes)
    elif w.shape[0] != n_classes:
        raise ValueError("The length of the `weight` sequence should be the same as the number of classes. "
                         "If `include_background=False`, the weight should not include the background category class 0.")
    if _eager() and w.min() < 0:
        raise ValueError("the value/values of the `weight` should be no less than 0.")
    return w


def _reduce(f, reduction, spatial_ndim):
    """MONAI's reduction of per-(image, class) losses f (B, C') or (C',) (batch=True): "none"
    keeps a broadcastable shape f.shape[:2] + (1,) * spatial_ndim."""
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    return f.view(list(f.shape[0:2]) + [1] * spatial_ndim)


def _tversky_from_sums(sums, include_background, batch, a, alpha, beta, smooth_nr, smooth_dr, jaccard=False, collapse=False):
    """Per-(image, class) loss 1 - score, MONAI's Dice (a = 2) / Jaccard / Tversky (a = 1) forms.
    ``collapse``: input without spatial dims and no ``batch`` -- MONAI's sums over the empty
    list of spatial axes, torch.sum(x, dim=[]), sum over EVERY axis, so one score over all
    images and (kept) classes: a scalar (MONAI 1.6.1's behaviour, kept)."""
    if not include_background and sums.shape[1] > 1:
        sums = sums[:, 1:]
    if batch:
        sums = sums.sum(0)
    elif collapse:
        sums = sums.sum((0, 1))
    I, P, G = sums.unbind(-1)
    fp, fn = P - I, G - I  # false positives / negatives
    if a == 2:
        if jaccard:
            den = 2 * (I + fp + fn) + smooth_dr
        else:
            den = 2 * (I + 0.5 * fp + 0.5 * fn) + smooth_dr
        return 1 - (2 * I + smooth_nr) / den
    return 1.0 - (I + smooth_nr) / (I + alpha * fp + beta * fn + smooth_dr)


class DiceLoss(_Loss):
    """MONAI's ``DiceLoss`` (monai.losses.DiceLoss, MONAI 1.6.1) on fastloss's dice kernel.

    input (B, N, *spatial) logits or probabilities (fp16/bf16/fp32, fp64 on CPU); target
    (B, N, *spatial) one-hot / probabilities, or a label map (B, 1, *spatial) with
    ``to_onehot_y=True``.  Returns the loss in the promoted dtype of input and the target (a
    label map counts as fp32: MONAI's one-hot is fp32): a scalar for "mean" / "sum",
    (B, N', 1, ..., 1) for "none" ((N', 1, ..., 1) with ``batch=True``), N' = N - 1 without
    background; input (B, N) without spatial dims scores all images and classes at once, as
    MONAI (module docstring).  State as MONAI's: the ``class_weight`` buffer (a scalar weight
    is expanded to (N',) at the first forward, as MONAI does).  Raises ValueError for shapes that do not
    match, a bad ``weight`` and labels out of range (CPU tensors).  Arguments as MONAI's; see the module docstring for the mapping.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: LossReduction | str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(reduction=_reduction(reduction))
        _check_act(sigmoid, softmax, other_act)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self.ignore_index = ignore_index
        self.register_buffer("class_weight", torch.as_tensor(weight) if weight is not None else None)
        self.soft_label = soft_label

    def _per_class(self, input, target, with_ce=False, to_onehot_y=None):
        """(per-(image, class) loss (B, N') or (N',) with ``batch``, after class weights; ce
        (N, 2) or empty; fused; the computed dtype) -- see :func:`_sums`."""
        to_onehot_y = self.to_onehot_y if to_onehot_y is None else to_onehot_y
        sums, ce, fused, dtype = _sums(self, input, target, to_onehot_y, self.ignore_index, self.squared_pred, self.soft_label,
                                       with_ce)
        C = input.shape[1]
        if not self.include_background and C == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
        f = _tversky_from_sums(sums, self.include_background, self.batch, 2, 0.5, 0.5, self.smooth_nr, self.smooth_dr,
                               self.jaccard, collapse=input.dim() == 2)
        n_kept = C - 1 if (not self.include_background and C > 1) else C
        if self.class_weight is not None and self.class_weight.ndim == 0 and n_kept != 1:
            # MONAI replaces a scalar weight buffer by its per-class expansion at the first forward:
            # the same here, so state_dicts saved after training load both ways
            self.class_weight = self.class_weight.expand(n_kept).clone()
        w = _class_weight(self.class_weight, n_kept, f.dtype, f.device)
        if w is not None:
            f = f * w
        return f.to(dtype), ce, fused, dtype

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f, _, _, _ = self._per_class(input, target)
        return _reduce(f, self.reduction, input.dim() - 2)


class MaskedLoss(_Loss):
    """MONAI's ``MaskedLoss`` wrapper (monai.losses.spatial_mask, MONAI 1.6.1), what
    ``MaskedDiceLoss.spatial_weighted`` holds: ``forward(input, target, mask=None)`` multiplies
    input (B, N, *spatial) and target by ``mask`` (B or 1, 1, *spatial) and calls ``loss``.
    Warns as MONAI for a missing mask or different dims / spatial sizes; raises ValueError for
    a mask batch that is neither 1 nor B and for a mask with more than one channel."""

    def __init__(self, loss: Callable) -> None:
        super().__init__()
        if not callable(loss):
            raise ValueError("The loss function is not callable.")
        self.loss = loss

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            warnings.warn("No mask value specified for the MaskedLoss.", stacklevel=2)
            return self.loss(input, target)
        if input.dim() != mask.dim():
            warnings.warn(f"Dim of input ({input.shape}) is different from mask ({mask.shape}).", stacklevel=2)
        if input.shape[0] != mask.shape[0] and mask.shape[0] != 1:
            raise ValueError(f"Batch size of mask ({mask.shape}) must be one or equal to input ({input.shape}).")
        if target.dim() > 1:
            if mask.shape[1] != 1:
                raise ValueError(f"Mask ({mask.shape}) must have only one channel.")
            if input.shape[2:] != mask.shape[2:]:
                warnings.warn(f"Spatial size of input ({input.shape}) is different from mask ({mask.shape}).", stacklevel=2)
        return self.loss(input * mask, target * mask)


class MaskedDiceLoss(DiceLoss):
    """MONAI's ``MaskedDiceLoss``: the activation, then input and target multiplied by ``mask``
    (B or 1, 1, *spatial) in PyTorch, exactly as MONAI does (through ``spatial_weighted``, a
    :class:`MaskedLoss` around :meth:`DiceLoss.forward`, MONAI's attribute); then fastloss's
    no-activation dice pass.  Arguments, returns and errors as :class:`DiceLoss` (MONAI 1.6.1)."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: LossReduction | str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        soft_label: bool = False,
    ) -> None:
        _check_act(sigmoid, softmax, other_act)
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=False, softmax=False,
                         other_act=None, squared_pred=squared_pred, jaccard=jaccard, reduction=reduction,
                         smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight, soft_label=soft_label)
        self.pre_sigmoid = sigmoid  # applied in forward, before the mask (MONAI's attribute names)
        self.pre_softmax = softmax
        self.pre_other_act = other_act
        self.spatial_weighted = MaskedLoss(loss=super().forward)  # MONAI's attribute: the mask, then DiceLoss

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_sigmoid:
            input = torch.sigmoid(input)
        elif self.pre_softmax:
            if input.shape[1] == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=2)
            else:
                input = torch.softmax(input, 1)
        if self.pre_other_act is not None:
            input = self.pre_other_act(input)
        return self.spatial_weighted(input=input, target=target, mask=mask)


class GeneralizedDiceLoss(_Loss):
    """MONAI's ``GeneralizedDiceLoss`` (Sudre et al. 2017; monai.losses, MONAI 1.6.1): class
    weights w = 1 / G'^2 ("square"), 1 / G' ("simple") or 1 ("uniform") from the target sums
    (formed in fp32, as MONAI does; an empty class takes the largest weight), over the dice
    kernel's sums.  Returns a scalar, or (B, 1, 1, ..., 1) for "none" ((1, 1, ..., 1) with
    ``batch=True``), in at least fp32 (MONAI's fp32 weights promote half input).  Arguments and
    errors as :class:`DiceLoss`; input (B, N) without spatial dims needs ``batch=True``
    (ValueError; MONAI fails with an IndexError)."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        w_type: Weight | str = "square",
        reduction: LossReduction | str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
    ) -> None:
        super().__init__(reduction=_reduction(reduction))
        _check_act(sigmoid, softmax, other_act)
        w_type = str(w_type.value if hasattr(w_type, "value") else w_type)
        if w_type not in ("square", "simple", "uniform"):
            raise ValueError(f"Unsupported option {w_type!r}, available options are ['square', 'simple', 'uniform'].")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.w_type = w_type
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self.soft_label = soft_label

    def w_func(self, grnd):
        if self.w_type == "simple":
            return torch.reciprocal(grnd)
        if self.w_type == "square":
            return torch.reciprocal(grnd * grnd)
        return torch.ones_like(grnd)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == 2 and not self.batch:
            raise ValueError("GeneralizedDiceLoss: input without spatial dims (B, N) needs batch=True (MONAI 1.6.1 "
                             "sums over every axis there and then fails with an IndexError)")
        sums, _, _, dtype = _sums(self, input, target, self.to_onehot_y, None, False, self.soft_label)
        if not self.include_background:
            if input.shape[1] == 1:
                warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=2)
            else:
                sums = sums[:, 1:]
        if self.batch:
            sums = sums.sum(0)
        I, P, G = sums.unbind(-1)
        w = self.w_func(G.float())  # MONAI forms the weights in fp32
        infs = torch.isinf(w)
        w = torch.where(infs, torch.zeros_like(w), w)
        if self.batch:
            w = w + infs * torch.max(w)
        else:
            w = w + infs * torch.max(w, dim=1)[0].unsqueeze(dim=1)
        dim = 0 if self.batch else 1
        numer = 2.0 * (I * w).sum(dim, keepdim=True) + self.smooth_nr
        denom = ((P + G) * w).sum(dim, keepdim=True) + self.smooth_dr
        f = (1.0 - numer / denom).to(torch.promote_types(dtype, torch.float32))  # MONAI's fp32 weights promote
        return _reduce(f, self.reduction, input.dim() - 2)


class TverskyLoss(_Loss):
    """MONAI's ``TverskyLoss`` (Salehi et al. 2017; monai.losses, MONAI 1.6.1):
    1 - (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr) per image (all images with
    ``batch``) and class.  Returns a scalar, or (B, N') for "none" ((N',) with ``batch``) --
    MONAI returns the per-class losses without trailing dims here.  Arguments and errors as
    :class:`DiceLoss`."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        reduction: LossReduction | str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(reduction=_reduction(reduction))
        _check_act(sigmoid, softmax, other_act)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.alpha = alpha
        self.beta = beta
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self.soft_label = soft_label
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sums, _, _, dtype = _sums(self, input, target, self.to_onehot_y, self.ignore_index, False, self.soft_label)
        if not self.include_background and input.shape[1] == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=2)
        f = _tversky_from_sums(sums, self.include_background, self.batch, 1, self.alpha, self.beta, self.smooth_nr,
                               self.smooth_dr, collapse=input.dim() == 2).to(dtype)
        if self.reduction == "sum":
            return f.sum()
        if self.reduction == "mean":
            return f.mean()
        return f


# ------------------------------------------------------------------ focal


def _ignore_mask(original_target, ignore_index):
    """MONAI's create_ignore_mask: (B, 1, *spatial), 1 = counted, 0 = ignored, in MONAI's dtype
    (fp32, or a floating one-hot target's dtype when ignore_index is one of its classes)."""
    if original_target.shape[1] == 1:
        return (original_target != ignore_index).float()
    C = original_target.shape[1]
    if 0 <= ignore_index < C:
        return 1.0 - original_target[:, ignore_index:ignore_index + 1]
    return (original_target.sum(dim=1, keepdim=True) > 0).float()


def _focal(input, target, *, include_background, to_onehot_y, gamma, alpha, class_weight, reduction, use_softmax, ignore_index,
           stacklevel=3):
    """MONAI's FocalLoss.forward (its fp32 computation, masks and reductions) on fastloss's
    sigmoid / softmax focal kernels."""
    C = input.shape[1]
    original_target = target
    if to_onehot_y and C == 1:
        warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=stacklevel)
        to_onehot_y = False
    if not include_background and C == 1:
        warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=stacklevel)
        include_background = True
    if use_softmax and not to_onehot_y:
        raise ValueError("FocalLoss(use_softmax=True) needs to_onehot_y=True and a label map: fastloss's softmax focal kernel "
                         "takes class labels, not a one-hot float target")
    mask = _ignore_mask(original_target, ignore_index) if ignore_index is not None else None
    # MONAI multiplies its fp32 loss by the mask: the result takes the mask's dtype when wider
    out_dtype = torch.float32 if mask is None else torch.promote_types(torch.float32, mask.dtype)
    if mask is not None:
        mask = mask.float()
    x = input.float()  # MONAI computes its focal loss in fp32
    if to_onehot_y:
        if target.dim() != input.dim() or target.shape[1] != 1:
            raise ValueError(f"to_onehot_y=True needs a label map (B, 1, *spatial) for input {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        lab = target[:, 0].long()
        if ignore_index is not None and (ignore_index < 0 or ignore_index >= C):
            lab = torch.where(lab == ignore_index, torch.zeros_like(lab), lab)
        if _eager():
            _common.check_labels("FocalLoss", lab, C)
    if not include_background:
        x = x[:, 1:]
    n_kept = x.shape[1]
    spatial = tuple(range(2, x.dim()))
    S = math.prod(x.shape[2:])
    cw = None
    if class_weight is not None:
        cw = torch.as_tensor(class_weight, device=x.device, dtype=torch.float32)
        if cw.ndim > 0:
            if n_kept == 1:
                raise ValueError("Per-class class_weight is not supported for single-channel outputs.")
            if cw.numel() != n_kept:
                raise ValueError(f"The number of class_weight ({cw.numel()}) must match the number of output channels ({n_kept}).")
        if _eager() and (cw < 0).any():
            raise ValueError("class_weight values must be non-negative.")
    # normaliser per pixel of image b: "mean" -> 1 / count, "sum" -> 1 / (spatial count of b); without
    # spatial dims MONAI's "sum" averages over dim=[], i.e. over everything: the "mean" normaliser.
    # An empty input: the sum is 0 and so is the loss (MONAI: NaN, a mean over nothing)
    if reduction == "mean" or (reduction == "sum" and not spatial):
        norm = 1.0 / (mask.sum().clamp(min=_FP32_EPS) if mask is not None else max(x.numel(), 1))
    elif reduction == "sum":
        norm = 1.0 / (mask.sum(dim=spatial, keepdim=True).clamp(min=_FP32_EPS) if mask is not None else max(S, 1))
    else:
        norm = 1.0

    if use_softmax:
        a = alpha
        if not include_background and a is not None and isinstance(a, (float, int)):
            warnings.warn("`include_background=False`, scalar `alpha` ignored when using softmax.", stacklevel=stacklevel)
            a = None
        if a is None:
            a_arg = 1.0
        elif isinstance(a, (float, int)):
            a_arg = torch.tensor([1 - float(a)] + [float(a)] * (n_kept - 1), device=x.device, dtype=torch.float32)
        else:
            a_arg = torch.as_tensor(a, device=x.device, dtype=torch.float32)
            if a_arg.shape[0] != n_kept:
                raise ValueError(f"The length of alpha ({a_arg.shape[0]}) must match the number of classes ({n_kept}).")
        # masked pixels (MONAI: input and target zeroed, loss 0) and, without background, label 0 (no target) drop out
        row_lab = lab if include_background else lab - 1
        if mask is not None:
            row_lab = torch.where(mask[:, 0] > 0, row_lab, torch.full_like(row_lab, -1))
        per_class = cw is not None and cw.ndim > 0
        rows = softmax_focal_loss(x, row_lab, alpha=a_arg, gamma=gamma, weight=cw if per_class else None, reduction="none",
                                  ignore_index=-1)  # (B, *spatial), one loss per pixel (at its label's channel)
        if cw is not None and not per_class:
            rows = rows * cw
        if reduction == "none":
            onehot = F.one_hot(row_lab.clamp(min=0), n_kept).movedim(-1, 1).to(rows.dtype) * (row_lab >= 0).unsqueeze(1)
            return (onehot * rows.unsqueeze(1)).to(out_dtype)
        if reduction == "mean" or not spatial:
            return (rows.sum() * norm).to(out_dtype)
        return (rows.unsqueeze(1).sum(dim=spatial, keepdim=True) * norm).sum().to(out_dtype)

    t = F.one_hot(lab, C).movedim(-1, 1).float() if to_onehot_y else target.float()
    if not include_background:
        t = t[:, 1:]
    if t.shape != x.shape:
        raise ValueError(f"ground truth has different shape ({tuple(t.shape)}) from input ({tuple(x.shape)})")
    if mask is not None:
        x, t = x * mask, t * mask
    _check_hard("FocalLoss", t)
    w = None
    a_arg = -1.0  # fastloss: a negative alpha disables the alpha balance
    if alpha is not None and isinstance(alpha, (float, int)):
        a_arg = float(alpha)
    elif alpha is not None:
        at = torch.as_tensor(alpha, device=x.device, dtype=torch.float32)
        if at.shape[0] != n_kept:
            raise ValueError(f"The length of alpha ({at.shape[0]}) must match the number of classes ({n_kept}).")
        # MONAI's per-class alpha weights the positives only (negatives keep weight 1)
        w = torch.where(t == 1, at.view([-1] + [1] * len(spatial)), torch.ones_like(t))
    for factor in (mask, cw.view([-1] + [1] * len(spatial)) if cw is not None and cw.ndim else cw):
        if factor is not None:
            w = factor if w is None else w * factor
    if reduction == "none":
        loss = sigmoid_focal_loss(x, t, alpha=a_arg, gamma=gamma, reduction="none", weight=None if w is None else w.expand_as(x))
        return loss.to(out_dtype)
    if not isinstance(norm, float):
        w = norm if w is None else w * norm
        norm = 1.0
    total = sigmoid_focal_loss(x, t, alpha=a_arg, gamma=gamma, reduction="sum", weight=None if w is None else w.expand_as(x))
    return (total * norm).to(out_dtype)


class FocalLoss(_Loss):
    """MONAI's ``FocalLoss`` (monai.losses.FocalLoss, MONAI 1.6.1) on fastloss's focal kernels.

    input (B, N, *spatial) logits; target (B, N, *spatial) hard one-hot, or a label map
    (B, 1, *spatial) with ``to_onehot_y=True``.  Computed in fp32 and returned in fp32, as MONAI
    does (it casts input and target with ``.float()``; with ``ignore_index`` on an fp64 one-hot
    target MONAI's mask, and so the result, is fp64).  "mean": sum over the elements / their
    count (with ``ignore_index``: / the counted pixels); "sum": per image and class the spatial
    mean, summed (MONAI's rule; without spatial dims MONAI's mean over dim=[] averages over
    everything: the "mean" value); "none": (B, N', *spatial); an empty input gives 0
    (MONAI: NaN).  Raises ValueError for
    ``use_softmax=True`` without ``to_onehot_y`` and for soft targets (module docstring), bad
    ``weight`` / ``alpha`` lengths, negative weights, labels out of range (CPU tensors).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        reduction: LossReduction | str = "mean",
        use_softmax: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(reduction=_reduction(reduction))
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.gamma = gamma
        self.weight = weight
        self.use_softmax = use_softmax
        if alpha is None:
            self.alpha = None
        elif isinstance(alpha, (float, int)):
            # fastloss's kernels read a negative alpha as "no balance": refuse what MONAI's [0, 1] excludes
            self.alpha = _common.check_param("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]")
        else:
            self.alpha = torch.as_tensor(alpha)
        self.register_buffer("class_weight", torch.as_tensor(weight) if weight is not None else None)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _focal(input, target, include_background=self.include_background, to_onehot_y=self.to_onehot_y, gamma=self.gamma,
                      alpha=self.alpha, class_weight=self.class_weight, reduction=self.reduction, use_softmax=self.use_softmax,
                      ignore_index=self.ignore_index)


# ------------------------------------------------------------------ Dice + CE / focal


def _check_pair(input, target):
    if input.dim() != target.dim():
        raise ValueError("the number of dimensions for input and target should be the same, "
                         f"got shape {input.shape} (nb dims: {len(input.shape)}) and {target.shape} (nb dims: {len(target.shape)}). "
                         "if target is not one-hot encoded, please provide a tensor with shape B1H[WD].")
    if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
        raise ValueError("number of channels for target is neither 1 (without one-hot encoding) nor the same as input, "
                         f"got shape {input.shape} and {target.shape}.")


class DiceCELoss(_Loss):
    """MONAI's ``DiceCELoss`` (monai.losses.DiceCELoss, MONAI 1.6.1): lambda_dice * Dice +
    lambda_ce * cross entropy (softmax CE over the logits for N > 1 classes, with ``weight`` as
    torch's class weights and ``label_smoothing``; BCE-with-logits with ``pos_weight=weight`` for
    one channel).  ``reduction`` "mean" | "sum" only (as MONAI).  Note MONAI's default
    ``softmax=False``: the Dice term then scores the raw logits.  Dice + CE come from ONE fused
    kernel pass when ``softmax=True`` (N > 1) or ``sigmoid=True`` (N = 1) and no ``weight``,
    ``label_smoothing`` or ``jaccard`` (module docstring).  Returns a scalar in MONAI's dtype
    (the Dice term's, see :class:`DiceLoss`, promoted with torch's CE / BCE dtype); raises
    ValueError as MONAI (dims / channels, "none") and as :class:`DiceLoss`, and TypeError for a
    ``weight`` that is not a tensor (as MONAI: torch's losses take tensor weights only).  State
    and attributes as MONAI's: ``dice``, and torch's ``cross_entropy`` (``weight``,
    ``label_smoothing``, ``reduction``) and ``binary_cross_entropy`` (``pos_weight``) modules,
    which forward reads (a loaded state_dict takes effect)."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        reduction = _reduction(reduction, ("mean", "sum"))
        _common.check_param("label_smoothing", label_smoothing, lambda v: 0 <= v <= 1, "in [0, 1]")
        # MONAI's order, so a float or list weight raises MONAI's TypeError (slicing a float; torch's
        # losses take a tensor weight only)
        dice_weight = weight[1:] if weight is not None and not include_background else weight
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid, softmax=softmax,
                             other_act=other_act, squared_pred=squared_pred, jaccard=jaccard, reduction=reduction,
                             smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=dice_weight)
        # MONAI's submodules, kept as the holders of the CE settings and of the state_dict entries
        # cross_entropy.weight / binary_cross_entropy.pos_weight; forward reads them from here, so a
        # loaded state_dict or .to(device) takes effect (the computation is fastloss's)
        self.cross_entropy = nn.CrossEntropyLoss(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
        self.binary_cross_entropy = nn.BCEWithLogitsLoss(pos_weight=weight, reduction=reduction)
        self.lambda_dice = _lambda("lambda_dice", lambda_dice)
        self.lambda_ce = _lambda("lambda_ce", lambda_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(input, target)
        C = input.shape[1]
        reduction = self.dice.reduction
        weight, label_smoothing = self.cross_entropy.weight, self.cross_entropy.label_smoothing
        fusable = (weight is None and label_smoothing == 0 and not self.dice.jaccard and self.dice.other_act is None
                   and ((C > 1 and self.dice.softmax and (target.shape[1] == 1) == bool(self.dice.to_onehot_y))
                        or (C == 1 and self.dice.sigmoid)))
        f, ce, fused, dtype = self.dice._per_class(input, target, with_ce=fusable)
        dice = f.mean() if reduction == "mean" else f.sum()
        labels = C > 1 and target.shape[1] == 1
        if labels:
            t = target[:, 0].long()
        else:
            t = target if target.is_floating_point() else target.to(input.dtype)
        # the dtype of MONAI's CE term: torch's CE / BCE of input, a float target and the weight
        ce_dtype = input.dtype if labels else torch.promote_types(input.dtype, t.dtype)
        if weight is not None and not labels:
            ce_dtype = torch.promote_types(ce_dtype, weight.dtype)
        if fusable and fused:
            ce = ce.sum(0)
            ce_term = ce[0] / ce[1].clamp_min(1) if reduction == "mean" else ce[0]
        elif C == 1:
            ce_term = binary_cross_entropy_with_logits(input, t, reduction=reduction, pos_weight=self.binary_cross_entropy.pos_weight)
        else:
            ce_term = cross_entropy(input, t, weight=weight, reduction=reduction, label_smoothing=label_smoothing)
        ce_term = ce_term.to(ce_dtype)
        return (self.lambda_dice * dice + self.lambda_ce * ce_term).to(torch.promote_types(dtype, ce_dtype))


class DiceFocalLoss(_Loss):
    """MONAI's ``DiceFocalLoss`` (monai.losses.DiceFocalLoss, MONAI 1.6.1): lambda_dice *
    :class:`DiceLoss` + lambda_focal * :class:`FocalLoss` (sigmoid form; ``gamma``, ``alpha``,
    ``weight`` and ``reduction`` as MONAI passes them).  "none" broadcasts the Dice term
    (B, N', 1, ...) against the focal term (B, N', *spatial), as MONAI does.  Raises as the
    two parts; focal targets must be hard (module docstring)."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        gamma: float = 2.0,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=False, sigmoid=sigmoid, softmax=softmax,
                             other_act=other_act, squared_pred=squared_pred, jaccard=jaccard, reduction=reduction,
                             smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight)
        self.focal = FocalLoss(include_background=include_background, to_onehot_y=False, gamma=gamma, weight=weight, alpha=alpha,
                               reduction=reduction)
        self.lambda_dice = _lambda("lambda_dice", lambda_dice)
        self.lambda_focal = _lambda("lambda_focal", lambda_focal)
        self.to_onehot_y = to_onehot_y

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(input, target)
        labels = self.to_onehot_y and input.shape[1] > 1
        if self.to_onehot_y and not labels:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=2)
        f, _, _, _ = self.dice._per_class(input, target, to_onehot_y=labels)  # labels: expanded inside the kernel
        dice = _reduce(f, self.dice.reduction, input.dim() - 2)
        fo = self.focal
        focal = _focal(input, target, include_background=fo.include_background, to_onehot_y=labels, gamma=fo.gamma, alpha=fo.alpha,
                       class_weight=fo.class_weight, reduction=fo.reduction, use_softmax=False, ignore_index=None)
        return self.lambda_dice * dice + self.lambda_focal * focal


# ------------------------------------------------------------------ boxes


class BoxGIoULoss(_Loss):
    """MONAI's ``BoxGIoULoss`` (monai.losses.BoxGIoULoss, MONAI 1.6.1): 1 - GIoU of paired
    boxes (N, 4) or 3-D (N, 6) in MONAI's StandardMode ((x1, y1, x2, y2) or
    (x1, y1, z1, x2, y2, z2): volumes for areas), computed in fp32 (MONAI's COMPUTE_DTYPE) with
    eps = fp32 machine epsilon placed as MONAI (I / (U + eps), (E - U) / (E + eps)) and returned
    in input's dtype: a scalar, or (N,) for "none".  Differentiable w.r.t. the prediction, and
    w.r.t. a 2-D target too, as MONAI.  Raises ValueError for different shapes, boxes neither
    (N, 4) nor (N, 6), and a 3-D target that requires grad; inverted boxes count as zero area
    (module docstring)."""

    def __init__(self, reduction: LossReduction | str = "mean") -> None:
        super().__init__(reduction=_reduction(reduction))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape != input.shape:
            raise ValueError(f"ground truth has different shape ({target.shape}) from input ({input.shape})")
        if input.dim() != 2 or input.shape[1] not in (4, 6):
            raise ValueError(f"BoxGIoULoss: boxes must be (N, 4) or, 3-D, (N, 6), got {tuple(input.shape)}")
        box_dtype = input.dtype
        a, b = input.to(torch.float32), target.to(torch.float32)
        if not b.requires_grad:
            return box_iou_loss(a, b, kind="giou", reduction=self.reduction, eps=_FP32_EPS).to(box_dtype)
        if input.shape[1] == 6:
            raise ValueError("BoxGIoULoss: a target that requires grad is supported for 2-D boxes (N, 4) only; fastloss's 3-D box "
                             "loss differentiates the prediction (detach the target)")
        # MONAI differentiates both box sets: the aligned GIoU op gives both gradients
        loss = 1.0 - box_iou(a, b, kind="giou", aligned=True, eps=_FP32_EPS)
        if self.reduction == "mean":
            loss = loss.mean()
        elif self.reduction == "sum":
            loss = loss.sum()
        return loss.to(box_dtype)


# MONAI's aliases
Dice = DiceLoss
dice_ce = DiceCELoss
dice_focal = DiceFocalLoss
generalized_dice = GeneralizedDiceLoss
giou = BoxGIoULoss

_REPLACED = {"DiceLoss": DiceLoss, "MaskedDiceLoss": MaskedDiceLoss, "GeneralizedDiceLoss": GeneralizedDiceLoss,
             "DiceCELoss": DiceCELoss, "DiceFocalLoss": DiceFocalLoss, "TverskyLoss": TverskyLoss, "FocalLoss": FocalLoss,
             "BoxGIoULoss": BoxGIoULoss}
_ALIASES = {"Dice": "DiceLoss", "dice_ce": "DiceCELoss", "dice_focal": "DiceFocalLoss", "generalized_dice": "GeneralizedDiceLoss",
            "giou": "BoxGIoULoss"}


def _patch(handle):
    """Replace MONAI's DiceLoss, MaskedDiceLoss, GeneralizedDiceLoss, DiceCELoss, DiceFocalLoss,
    TverskyLoss, FocalLoss and BoxGIoULoss (and the aliases Dice, dice_ce, dice_focal,
    generalized_dice, giou) with this module's classes: in ``monai.losses``, in the defining
    submodules (monai.losses.dice, .tversky, .focal_loss, .giou_loss) and in every other
    already-imported ``monai.*`` module holding a reference to an original class (e.g.
    monai.apps.pathology.losses.hovernet_loss).  A module first imported while the patch is
    active binds fastloss's class by name and keeps it after undo."""
    import sys

    import monai.losses as losses
    import monai.losses.dice  # noqa: F401
    import monai.losses.focal_loss  # noqa: F401
    import monai.losses.giou_loss  # noqa: F401
    import monai.losses.tversky  # noqa: F401

    originals = {}
    for name, ours in _REPLACED.items():
        current = getattr(losses, name)
        if current is not ours:
            originals[current] = ours
    names = list(_REPLACED) + list(_ALIASES)
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "monai" or mod_name.startswith("monai.")):
            continue
        for name in names:
            value = vars(mod).get(name) if hasattr(mod, "__dict__") else None
            if isinstance(value, type) and value in originals:
                handle.setattr(mod, name, originals[value])
