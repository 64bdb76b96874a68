"""mmdetection 3.x losses (and the mmcv op they call) with their exact names and signatures,
over fastloss's kernels.

Peer: mmdetection 3.3.0 (``mmdet/models/losses/*.py``, ``mmdet/structures/bbox/bbox_overlaps.py``)
and mmcv 2.1 (``mmcv/ops/focal_loss.py``).  Every module follows mmdetection's convention:
``loss_weight`` scales the result; ``forward(pred, target, weight=None, avg_factor=None,
reduction_override=None)`` (each class keeps its own order and extra arguments); "mean" with
``avg_factor`` is ``sum / (avg_factor + eps)`` (eps = fp32's machine epsilon); ``avg_factor``
with "sum" raises ValueError.  Shapes and dtypes are mmdetection's, by torch's promotion: the
returned loss has the dtype of ``pred`` promoted with a floating ``weight`` (mmdetection's
``loss * weight``; a 0-dim weight does not promote a dimensioned loss), fp32 at least where
mmdetection forms an fp32 factor (``VarifocalLoss``, ``DistributionFocalLoss``, ``CIoULoss``,
``EIoULoss``, ``CrossEntropyLoss(use_sigmoid=True)``'s ``label.float()``); the kernel runs on
``pred`` (and a float target) cast up to that dtype, so the weighted reduction runs in it as
mmdetection's does (fp16 ``pred`` with fp32 ``bbox_weights`` is summed in fp32, not rounded in
fp16 or overflowed past 65504).  With a tensor ``avg_factor``, "mean" is mmdetection's
``loss.sum() / (avg_factor + eps)``: a 0-dim avg_factor promotes with the sum, a (1,) one
decides the dtype alone (torch's rule for 0-dim and dimensioned operands).

Importing this module does not import mmdetection; :func:`_patch` does.  The patch replaces
losses only: ``bbox_overlaps`` (the assigners' IoU) stays mmdetection's, see :func:`_patch`.

=========================  ==================================================================
name                       fastloss op underneath
=========================  ==================================================================
``FocalLoss``              :func:`fastloss.sigmoid_focal_loss` (labels expanded in the kernel)
``L1Loss``                 :func:`fastloss.l1_loss`
``SmoothL1Loss``           :func:`fastloss.smooth_l1_loss`
``BalancedL1Loss``         :func:`fastloss.balanced_l1_loss`
``MSELoss``                :func:`fastloss.mse_loss`
``CrossEntropyLoss``       :func:`fastloss.cross_entropy` / :func:`fastloss.binary_cross_entropy_with_logits`
``QualityFocalLoss``       :func:`fastloss.quality_focal_loss`
``VarifocalLoss``          :func:`fastloss.varifocal_loss`
``DistributionFocalLoss``  :func:`fastloss.distribution_focal_loss`
``GaussianFocalLoss``      :func:`fastloss.gaussian_focal_loss`
``DiceLoss``               :func:`fastloss.dice_loss` (binary, per image)
``IoULoss``                :func:`fastloss.box_iou_loss` ("iou", power 1 / 2, "log_iou")
``GIoULoss``, ``DIoULoss`` :func:`fastloss.box_iou_loss` ("giou", "diou")
``CIoULoss``               :func:`fastloss.box_iou_loss` ("ciou")
``EIoULoss``               :func:`fastloss.box_iou_loss` ("extended_iou": Extended-IoU)
``SIoULoss``               :func:`fastloss.box_iou_loss` ("siou", ``neg_gamma``)
``BoundedIoULoss``         :func:`fastloss.box_iou_loss` ("bounded_iou": its per-box sum; "mean" / "sum")
``bbox_overlaps``          :func:`fastloss.box_iou` ("iou", "iof", "giou")
``smooth_l1_loss``         :func:`fastloss.smooth_l1_loss` (mmdetection's functional form)
``SigmoidFocalLoss``       mmcv.ops' raw op, from :mod:`fastloss.compat.mmcv` (its "mean" divides by the rows)
``MaxIoUAssigner``         :func:`fastloss.max_iou_assign` (bit-equal; explicit use, not patched)
``ATSSAssigner``           :func:`fastloss.atss_assign` (equal but at ulp-close thresholds; explicit use)
``HungarianAssigner``      :func:`fastloss.match_cost` + scipy (bit-equal costs; explicit use, not patched)
=========================  ==================================================================

The box losses and ``bbox_overlaps`` run fastloss's box kernels in convention "mmdet"
(:mod:`fastloss.reference.box_iou`, "Conventions"): mmdetection's eps placement, one kernel
call each -- ``bbox_overlaps`` (and so ``IoULoss``, ``GIoULoss``) divide by max(union, eps) and
max(enclosing area, eps) (iof: max(area, eps)); ``DIoULoss`` by union + eps and c^2 + eps;
``CIoULoss`` is mmdetection's ``ciou_loss``: IoU = I / (U + eps), v from atan(w / (h + eps)),
alpha = [IoU > 0.5] v / (1 - IoU + v) held constant in the backward, and the loss
1 - clamp(CIoU, -1, 1) (zero gradient outside the clamp); ``SIoULoss`` is ``siou_loss`` with its
own eps placement (enclosing extents clamped at eps, heights + eps, centre offsets + eps) and
``neg_gamma``; ``EIoULoss`` is ``eiou_loss``, Extended-IoU with ``smooth_point``.

``BoundedIoULoss`` runs the kernel's per-coordinate mode (``per_coordinate=True``: the 4 terms
of each box, with a per-term backward): mmdetection's (N, 4) loss for reduction "none", and any
weight that broadcasts to it.

mmcv's own ops (its ``bbox_overlaps`` with ``offset``, the sigmoid and softmax focal ops) are in
:mod:`fastloss.compat.mmcv`.

Arguments the compat layer cannot honour raise ValueError: a float target or quality score
that requires grad (every class but the label forms of ``FocalLoss`` / ``CrossEntropyLoss``;
mmdetection differentiates it, fastloss's kernels do not), any
``use_sigmoid=False`` (mmdetection raises too, later), ``**kwargs`` given to a ``forward``,
``CrossEntropyLoss(use_mask=True)`` with ``class_weight``, ``GaussianFocalLoss`` with
``gamma=0`` and ``pos_weight != neg_weight`` or ``pos_inds``, a focal ``alpha`` outside [0, 1]
(fastloss reads a negative alpha as "no alpha weighting", mmdetection as a number).

Differences from mmdetection, kept on purpose (fastloss's numerical policy):

* ``IoULoss`` keeps mmdetection's two eps: the union's is ``bbox_overlaps``' default 1e-6
  whatever the module's ``eps``, which only clamps the IoU (from below, in every mode) --
  except in "log" mode with ``eps`` < 1e-6, where the kernel's one eps serves both: the union
  is max(union, ``eps``) instead of max(union, 1e-6), a difference only for unions below
  1e-6 px^2.
* Inverted boxes (x2 < x1) have zero area here; mmdetection multiplies the signed extents
  (an inverted box gets a negative, or for two inverted extents a positive, area, and in
  ``CIoULoss`` a negative width in its aspect term).
* ``SIoULoss`` where the eps-shifted centre offset is (0, 0): the angle cost is 0 (mmdetection:
  0 / 0 = NaN); two zero-width boxes: the width's shape cost is 0 (mmdetection: NaN).
  ``SIoULoss`` and ``EIoULoss`` of inverted boxes: zero widths / heights here (mmdetection
  multiplies the signed extents), as above.
* ``CIoULoss`` where 1 - IoU + v = 0 (identical boxes whose IoU rounds to 1): alpha is 0
  (mmdetection: 0 / 0 = NaN).
* ``bbox_overlaps`` with no boxes returns zeros (mmdetection: an uninitialised tensor); its box
  math runs in fp32 for fp16 boxes on the CPU too.  Its fp32 IoU / IoF values are bit-equal to
  mmdetection's on the CPU (tested); GIoU and the CUDA kernel are not verified to be, which is
  why :func:`_patch` leaves mmdetection's in place.
* The mean of an empty input is 0, connected to the graph (mmdetection: NaN for ``MSELoss``,
  ``IoULoss``, ``GIoULoss``, ``DIoULoss``, ``QualityFocalLoss``, ``DiceLoss`` -- also of an
  empty batch (0, ...) --, mmcv's ``SigmoidFocalLoss``, and ``BalancedL1Loss`` with an empty
  weight).
* The zero-weight shortcut of ``L1Loss``, ``SmoothL1Loss`` and the box losses (an
  all-non-positive ``weight`` returns ``(pred * weight).sum()``) reads the weight on the host
  in eager mode, as mmdetection's (whose ``if`` breaks a ``torch.compile`` graph there).  Under
  ``torch.compile`` it is branch-free instead (``torch.where`` over the two results): the same
  values and gradients, but with reduction "none" the result keeps the per-element shape (the
  0-dim shortcut value broadcast over it) where eager returns a 0-dim tensor.
* Class labels outside [0, C] raise ValueError for CPU tensors (``FocalLoss``; mmdetection's
  one-hot raises too, mmcv's CUDA op scores them as background).  ``QualityFocalLoss``,
  ``CrossEntropyLoss(use_sigmoid=True)`` and ``SigmoidFocalLoss`` map them to background as
  their peers do.
* mmcv's focal op clamps log(p) at log(FLT_MIN) (logits beyond about +-87 saturate); fastloss
  computes the exact log-sigmoid.
* Scalars outside their domain raise (negative ``avg_factor`` numbers, ``alpha`` outside
  [0, 1] in ``VarifocalLoss``, ...) where mmdetection computes on.
"""
import math
import warnings
from typing import Optional, Union

import torch
from torch import Tensor, nn

from fastloss.compat import mmcv as _mmcv
from fastloss.compat.mmcv import SigmoidFocalLoss, _background_labels, _check_alpha
from fastloss.ops import _common
from fastloss.ops import assign as _assign
from fastloss.ops import box_iou as _box_iou
from fastloss.ops import dice as _dice
from fastloss.ops import pointwise as _pointwise
from fastloss.ops import rowwise as _rowwise

_AVG_EPS = torch.finfo(torch.float32).eps  # mmdetection's weight_reduce_loss: sum / (avg_factor + eps)
_OVERLAPS_EPS = 1e-6  # mmdetection's bbox_overlaps default eps, the union eps of its iou_loss

__all__ = ["FocalLoss", "L1Loss", "SmoothL1Loss", "BalancedL1Loss", "MSELoss", "CrossEntropyLoss", "QualityFocalLoss", "VarifocalLoss",
           "DistributionFocalLoss", "GaussianFocalLoss", "DiceLoss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss",
           "BoundedIoULoss", "bbox_overlaps",
           "smooth_l1_loss", "SigmoidFocalLoss", "MaxIoUAssigner", "ATSSAssigner", "HungarianAssigner"]


# ====================================================================== shared rules


def _reduction(name, reduction_override, default):
    """mmdetection's ``reduction_override if reduction_override else self.reduction``."""
    if reduction_override not in (None, "none", "mean", "sum"):
        raise ValueError(f"{name}: reduction_override must be None, 'none', 'mean' or 'sum', got {reduction_override!r}")
    return reduction_override if reduction_override else default


def _no_kwargs(name, kwargs):
    if kwargs:
        raise ValueError(f"{name}.forward: extra keyword arguments {sorted(kwargs)} are not supported by fastloss's compat layer")


def _weighted_dtype(dtype, ndim, weight):
    """The dtype of mmdetection's ``loss * weight`` (``weight_reduce_loss``, which then reduces
    in it) for a loss of ``dtype`` with ``ndim`` dims: torch's promotion, in which a floating
    weight promotes, but a 0-dim one does not promote a dimensioned loss, nor does an integer
    or bool weight."""
    if weight is None or not weight.is_floating_point() or (weight.dim() == 0 and ndim > 0):
        return dtype
    return torch.promote_types(dtype, weight.dtype)


def _widen(dtype, *tensors):
    """``tensors`` (pred, a float target) cast up to ``dtype`` where it is wider than theirs
    (integer and None pass): mmdetection reduces ``loss * weight`` in the promoted dtype, so the
    kernel runs in it -- an fp16 loss summed in fp16 and promoted afterwards rounds in fp16
    and overflows to inf past 65504."""
    return tuple(t.to(torch.promote_types(t.dtype, dtype)) if t is not None and t.is_floating_point() else t for t in tensors)


def _broadcast_weight(name, weight, shape):
    """A weight that multiplies a loss of ``shape`` by torch's broadcasting (mmdetection's
    ``loss * weight``), made explicit: fastloss reads a (N,) weight of an (N, C) loss per row,
    torch per column."""
    if weight is None or weight.shape == shape:
        return weight
    if not _common.broadcasts_to(weight.shape, shape):
        raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} does not broadcast to the loss's shape {tuple(shape)}")
    return weight.expand(shape)


def _zero_weight_shortcut(pred, weight):
    """mmdetection's box losses return ``(pred * weight).sum()`` (a graph-connected 0, whatever
    the reduction) when no weight is positive; None otherwise.  Reads the weight on the host."""
    if weight is not None and not torch.any(weight > 0):
        if pred.dim() == weight.dim() + 1:
            weight = weight.unsqueeze(1)
        return (pred * weight).sum()
    return None


def _or_zero_weight_shortcut(pred, weight, compute):
    """``compute()`` unless mmdetection's zero-weight shortcut applies (:func:`_zero_weight_shortcut`).

    Eager: the weight is read on the host (mmdetection's ``if``).  Under torch.compile,
    branch-free: ``torch.where(any(weight > 0), compute(), (pred * weight).sum())`` -- the
    same value and gradient (where routes the gradient to the chosen result only), but a
    reduction "none" result keeps compute()'s shape (the shortcut's scalar broadcast over it)."""
    if weight is None:
        return compute()
    if not torch.compiler.is_compiling():
        zero = _zero_weight_shortcut(pred, weight)
        return compute() if zero is None else zero
    w = weight.unsqueeze(1) if pred.dim() == weight.dim() + 1 else weight
    return torch.where((weight > 0).any(), compute(), (pred * w).sum())


def _avg_dtype(loss, reduction, avg_factor):
    """mmdetection's "mean" with a tensor ``avg_factor``: ``loss.sum() / (avg_factor + eps)``,
    torch's promotion of a 0-dim sum and ``avg_factor + eps`` (avg_factor's dtype, fp32 for an
    integer one): a 0-dim avg_factor promotes with the sum (an fp64 one gives fp64), a
    dimensioned one ((1,)) decides alone (fp64 pred, (1,) fp32 avg_factor: fp32)."""
    if reduction == "mean" and isinstance(avg_factor, torch.Tensor):
        den = avg_factor.dtype if avg_factor.is_floating_point() else torch.get_default_dtype()  # avg_factor + eps
        return loss.to(den if avg_factor.dim() > 0 else torch.promote_types(loss.dtype, den))
    return loss


def _at_least_fp32(t):
    """mmdetection's ``.float()`` factors make fp16 / bf16 losses fp32 (fp64 stays fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32)) if t.is_floating_point() else t


def _weight_reduce(name, loss, weight, reduction, avg_factor):
    """mmdetection's ``weight_reduce_loss`` over a small per-sample loss (N values)."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.sum() / max(loss.numel(), 1)  # the mean of nothing is 0
        return loss.sum() if reduction == "sum" else loss
    if reduction == "sum":
        raise ValueError(f'{name}: avg_factor can not be used with reduction="sum"')
    return loss.sum() / (avg_factor + _AVG_EPS) if reduction == "mean" else loss


# ====================================================================== classification


class FocalLoss(nn.Module):
    """mmdetection's ``FocalLoss`` (sigmoid focal loss, Lin et al. 2017) over
    :func:`fastloss.sigmoid_focal_loss`.

    Args:
        use_sigmoid: must be True (mmdetection has only the sigmoid form).
        gamma: focusing exponent (>= 0); alpha: weight of the positives (in [0, 1]).
        reduction: "none" | "mean" | "sum"; loss_weight: scales the loss.
        activated: True: ``pred`` holds probabilities (mmdetection's ``py_focal_loss_with_prob``,
            over :func:`fastloss.focal_loss_with_prob`); False: logits.

    forward(pred, target, weight=None, avg_factor=None, reduction_override=None):
        pred: logits (N, C), or probabilities in [0, 1] with ``activated``; target: class labels (N,) int64 in [0, C] (C = background,
            expanded in the kernel -- mmdetection one-hot encodes them, or calls mmcv's CUDA
            op) or float targets (N, C) (cast to pred's dtype).
        weight: per element (N, C), per anchor (N,) (or any N-first tensor of N values), or N * C
            values (mmdetection's rules).
    Returns the loss in pred's dtype: (N, C) for "none", else a scalar.  Raises ValueError for
    the arguments above, bad shapes, out-of-range labels (CPU tensors).
    """

    def __init__(self, use_sigmoid=True, gamma=2.0, alpha=0.25, reduction='mean', loss_weight=1.0, activated=False):
        super().__init__()
        if use_sigmoid is not True:
            raise ValueError("FocalLoss: only use_sigmoid=True exists (mmdetection's softmax focal loss is not implemented either)")
        _check_alpha("FocalLoss", alpha)
        self.use_sigmoid = use_sigmoid
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = _reduction("FocalLoss", reduction_override, self.reduction)
        w = _focal_weight(weight, pred)
        (pred,) = _widen(_weighted_dtype(pred.dtype, pred.dim(), w), pred)
        if pred.dim() == target.dim():
            target = target.to(pred.dtype)  # mmdetection: target.type_as(pred)
        fn = _pointwise.focal_loss_with_prob if self.activated else _pointwise.sigmoid_focal_loss
        loss = fn(pred, target, self.alpha, self.gamma, reduction, weight=w, avg_factor=avg_factor)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)


def _focal_weight(weight, pred):
    """mmdetection's focal weight rules: the loss's shape, or N values (one per anchor), or
    N * C values read as (N, C)."""
    if weight is None or weight.shape == pred.shape:
        return weight
    if pred.dim() == 2 and weight.dim() > 0:
        if weight.size(0) == pred.size(0) and weight.numel() == pred.size(0):
            return weight.reshape(pred.shape[:1])  # one weight per anchor (row)
        if weight.size(0) != pred.size(0) and weight.numel() == pred.numel():
            return weight.reshape(pred.shape)
    raise ValueError(f"FocalLoss: weight of shape {tuple(weight.shape)} fits neither pred {tuple(pred.shape)}, nor one value per "
                     f"row, nor pred.numel() values")


class CrossEntropyLoss(nn.Module):
    """mmdetection's ``CrossEntropyLoss``: softmax cross entropy (:func:`fastloss.cross_entropy`),
    with ``use_sigmoid`` per-class BCE with logits, with ``use_mask`` the mask BCE of Mask R-CNN
    (:func:`fastloss.binary_cross_entropy_with_logits`).

    Args:
        use_sigmoid, use_mask: the form (not both).
        reduction: "none" | "mean" | "sum"; loss_weight: scales the loss.
        class_weight: per-class weights (list of C floats): softmax -- torch's ``weight``;
            sigmoid -- BCE's ``pos_weight``; with use_mask -- not supported (ValueError).
        ignore_index: label to ignore (None: -100); rows with it add 0 to the loss.
        avg_non_ignore: "mean" divides by the non-ignored rows (sigmoid: their elements)
            instead of all rows; ``avg_factor`` wins over it (mmdetection's rules).

    forward(cls_score, label, weight=None, avg_factor=None, reduction_override=None,
    ignore_index=None): softmax -- cls_score (N, C, *), label (N, *) int; sigmoid -- cls_score
    (N, C) with labels (N,) in [0, C] (others count as background; ignored rows get weight 0) or
    targets of cls_score's shape; use_mask -- cls_score (R, C, H, W) mask logits, label (R, H, W)
    mask targets, weight (R,) the class of each RoI, "mean" only.  ``weight``: one value per row
    (softmax), per row or per element (sigmoid).  Returns pred's dtype promoted with fp32 where a
    weight is given (mmdetection's ``weight.float()``); fp32 with use_sigmoid whatever pred's
    dtype (mmdetection's ``label.float()`` target decides torch's result dtype there); (1,) with
    use_mask.
    """

    def __init__(self, use_sigmoid=False, use_mask=False, reduction='mean', class_weight=None, ignore_index=None, loss_weight=1.0,
                 avg_non_ignore=False):
        super().__init__()
        if use_sigmoid and use_mask:
            raise ValueError("CrossEntropyLoss: use_sigmoid and use_mask can not both be True")
        if use_mask and class_weight is not None:
            raise ValueError("CrossEntropyLoss: class_weight with use_mask=True is not supported by fastloss's compat layer "
                             "(mmdetection broadcasts it against the mask's last axis)")
        self.use_sigmoid = use_sigmoid
        self.use_mask = use_mask
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.class_weight = class_weight
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        if ignore_index is not None and not avg_non_ignore and reduction == 'mean':
            warnings.warn("CrossEntropyLoss: with ignore_index set and avg_non_ignore=False (the default), the mean counts the "
                          "ignored labels too; set avg_non_ignore=True for PyTorch's mean over the non-ignored labels.")

    def extra_repr(self):
        return f'avg_non_ignore={self.avg_non_ignore}'

    def forward(self, cls_score, label, weight=None, avg_factor=None, reduction_override=None, ignore_index=None, **kwargs):
        _no_kwargs("CrossEntropyLoss", kwargs)
        reduction = _reduction("CrossEntropyLoss", reduction_override, self.reduction)
        if ignore_index is None:
            ignore_index = self.ignore_index
        class_weight = None if self.class_weight is None else cls_score.new_tensor(self.class_weight, device=cls_score.device)
        if self.use_mask:
            loss = self._mask(cls_score, label, weight, reduction, avg_factor, ignore_index)
        elif self.use_sigmoid:
            loss = self._sigmoid(cls_score, label, weight, reduction, avg_factor, class_weight, ignore_index)
        else:
            loss = self._softmax(cls_score, label, weight, reduction, avg_factor, class_weight, ignore_index)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)

    def _softmax(self, pred, label, weight, reduction, avg_factor, class_weight, ignore_index):
        ignore_index = -100 if ignore_index is None else ignore_index
        if avg_factor is None and self.avg_non_ignore and reduction == 'mean':
            # a float64 tensor (no host sync); mmdetection's Python int + eps is formed in double too
            avg_factor = (label.numel() - (label == ignore_index).sum()).to(torch.float64)
        w = None if weight is None else weight.float()
        (pred,) = _widen(_weighted_dtype(pred.dtype, label.dim(), w), pred)  # the loss has label's shape
        w = _broadcast_weight("CrossEntropyLoss", w, label.shape)  # a 0-dim / (1,) weight: one per row
        return _rowwise.cross_entropy(pred, label, weight=class_weight, ignore_index=ignore_index, reduction=reduction,
                                      avg_factor=avg_factor, sample_weight=w, avg_non_ignore=False)

    def _sigmoid(self, pred, label, weight, reduction, avg_factor, class_weight, ignore_index):
        ignore_index = -100 if ignore_index is None else ignore_index
        # mmdetection's label.float() makes torch's BCE fp32 (its target's dtype) and its fp32
        # weight keeps it there: fp16 / bf16 logits are summed in fp32 (fp64 ones computed in fp64)
        (pred,) = _widen(torch.float32, pred)
        if pred.dim() != label.dim():
            # labels (N,): one-hot in the kernel; ignored rows weigh 0, labels past C-1 are
            # background; the weight (N, 1), one per row for every N (a (C,) one would be per column)
            C = pred.size(-1)
            valid = (label >= 0) & (label != ignore_index)
            target = _background_labels(torch.where(valid, label, torch.full_like(label, C)), C)
            w = (valid.float() if weight is None else weight.reshape(-1).float() * valid).unsqueeze(-1)
            n_valid = valid.sum().to(torch.float64) * C
        else:
            valid = (label >= 0) & (label != ignore_index)
            target = torch.where(valid, label, torch.zeros_like(label)).to(pred.dtype)
            w = (valid.float() if weight is None else weight * valid).float()
            w = _broadcast_weight("CrossEntropyLoss", w, pred.shape)
            n_valid = valid.sum().to(torch.float64)
        if avg_factor is None and self.avg_non_ignore and reduction == 'mean':
            avg_factor = n_valid
        loss = _pointwise.binary_cross_entropy_with_logits(pred, target, weight=w, reduction=reduction, pos_weight=class_weight,
                                                           avg_factor=avg_factor)
        return loss.to(torch.float32)  # torch's BCE-with-logits returns its target's dtype: label.float()'s fp32

    def _mask(self, pred, target, roi_label, reduction, avg_factor, ignore_index):
        if ignore_index is not None:
            raise ValueError("CrossEntropyLoss(use_mask=True): ignore_index is not supported (mmdetection asserts it is None)")
        if reduction != 'mean' or avg_factor is not None:
            raise ValueError("CrossEntropyLoss(use_mask=True): only reduction 'mean' without avg_factor (mmdetection's assertion)")
        rois = torch.arange(pred.size(0), dtype=torch.long, device=pred.device)
        logits = pred[rois, roi_label].squeeze(1)  # each RoI's mask of its class
        return _pointwise.binary_cross_entropy_with_logits(logits, target, reduction='mean')[None]


class QualityFocalLoss(nn.Module):
    """mmdetection's ``QualityFocalLoss`` (GFL, Li et al. 2020) over
    :func:`fastloss.quality_focal_loss`: per element BCE(x, q) |sigmoid(x) - q|^beta, summed
    over the classes per anchor, then weighted and reduced over the anchors (``activated``:
    BCE(p, q) |p - q|^beta over probabilities, :func:`fastloss.quality_focal_loss_with_prob`).

    Args:
        use_sigmoid: must be True; beta: >= 0; reduction, loss_weight as mmdetection.
        activated: True: ``pred`` holds probabilities in [0, 1]; False: logits.

    forward(pred, target, weight=None, avg_factor=None, reduction_override=None):
        pred: logits (N, C) (probabilities with ``activated``); target: ``(labels (N,), scores (N,))`` -- a label outside [0, C)
            is background -- or dense quality targets of pred's shape, (N, C) or (N, C, ...)
            (mmdetection's ``quality_focal_loss_tensor_target``: classes on dim 1).
        weight: broadcasting to the per-position loss (N,) or (N, ...) as torch does ((N,) per
            anchor, (N, ...) per position); ValueError otherwise.
    Returns the per-position loss (N,) or (N, ...) for "none", else a scalar; "mean" divides by
    the number of positions (mmdetection's mean of the summed loss).  The dtype is pred's,
    promoted with a floating weight (not a 0-dim one) as mmdetection's ``loss * weight``; the
    kernel then runs in that dtype (fp16 pred with an fp32 weight is summed in fp32).
    """

    def __init__(self, use_sigmoid=True, beta=2.0, reduction='mean', loss_weight=1.0, activated=False):
        super().__init__()
        if use_sigmoid is not True:
            raise ValueError("QualityFocalLoss: only use_sigmoid=True exists")
        self.use_sigmoid = use_sigmoid
        self.beta = beta
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = _reduction("QualityFocalLoss", reduction_override, self.reduction)
        # mmdetection's per-position loss: the per-element loss summed over the classes (dim 1)
        positions = pred.shape[:1] + pred.shape[2:]
        w = _broadcast_weight("QualityFocalLoss", weight, positions)
        (pred,) = _widen(_weighted_dtype(pred.dtype, len(positions), weight), pred)
        if isinstance(target, torch.Tensor):
            target = target.to(pred.dtype)
        else:
            if len(target) != 2:
                raise ValueError("QualityFocalLoss: target must be a tensor or (labels, scores)")
            label, score = target
            target = (_background_labels(label, pred.size(1)), score)
        w = None if w is None else w.unsqueeze(1)  # (N, 1, ...): each position's weight over its classes
        qfl = _pointwise.quality_focal_loss_with_prob if self.activated else _pointwise.quality_focal_loss
        if reduction == "none":
            loss = qfl(pred, target, self.beta, reduction="none").sum(dim=1)
            loss = loss if weight is None else loss * weight
        elif reduction == "sum" or avg_factor is not None:
            loss = qfl(pred, target, self.beta, weight=w, reduction=reduction, avg_factor=avg_factor)
        else:  # mmdetection's mean is over the positions (N, ...), after the sum over the classes
            loss = qfl(pred, target, self.beta, weight=w, reduction="sum") / max(math.prod(positions), 1)
        return self.loss_weight * _avg_dtype(loss.to(pred.dtype), reduction, avg_factor)


class VarifocalLoss(nn.Module):
    """mmdetection's ``VarifocalLoss`` (VarifocalNet, Zhang et al. 2021) over
    :func:`fastloss.varifocal_loss`.

    Args: use_sigmoid must be True; alpha in [0, 1]; gamma >= 0; iou_weighted; reduction;
    loss_weight.  forward(pred (N, C) logits, target (N, C) IoU-aware scores, weight
    broadcasting to (N, C) as torch does, avg_factor, reduction_override).  Returns (N, C) for
    "none", else a scalar, in pred's dtype."""

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                 reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        if use_sigmoid is not True:
            raise ValueError("VarifocalLoss: only use_sigmoid=True exists")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"VarifocalLoss: alpha must be in [0, 1], got {alpha}")
        self.use_sigmoid = use_sigmoid
        self.alpha = alpha
        self.gamma = gamma
        self.iou_weighted = iou_weighted
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _reduction("VarifocalLoss", reduction_override, self.reduction)
        w = _broadcast_weight("VarifocalLoss", weight, pred.shape)
        # mmdetection's focal weight is formed with (target > 0).float(): fp32 at least, then its weight promotes
        (pred,) = _widen(_weighted_dtype(_at_least_fp32(pred).dtype, pred.dim(), weight), pred)
        loss = _pointwise.varifocal_loss(pred, target.to(pred.dtype), self.alpha, self.gamma, self.iou_weighted, weight=w,
                                         reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)


class DistributionFocalLoss(nn.Module):
    """mmdetection's ``DistributionFocalLoss`` (GFL) over :func:`fastloss.distribution_focal_loss`.

    forward(pred (N, n + 1) logits over the bins, target (N,) distances in [0, n), weight (N,),
    avg_factor, reduction_override).  Returns (N,) for "none", else a scalar, in the promoted
    dtype of pred and target (as mmdetection).  A target outside [0, n] raises ValueError (CPU
    tensors); mmdetection truncates it with ``long()`` and fails only past n."""

    def __init__(self, reduction='mean', loss_weight=1.0):
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = _reduction("DistributionFocalLoss", reduction_override, self.reduction)
        # mmdetection's bin weights are dis_right.float() - label: fp32 at least, then its weight
        # promotes (the kernel promotes with a floating target itself)
        (pred,) = _widen(_weighted_dtype(_at_least_fp32(pred).dtype, pred.dim() - 1, weight), pred)
        weight = _broadcast_weight("DistributionFocalLoss", weight, pred.shape[:-1])  # a 0-dim / (1,) weight: one per row
        loss = _rowwise.distribution_focal_loss(pred, target, weight, reduction, avg_factor)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)


class GaussianFocalLoss(nn.Module):
    """mmdetection's ``GaussianFocalLoss`` (CenterNet heatmaps) over
    :func:`fastloss.gaussian_focal_loss`: per element ``pos_weight * pos + neg_weight * neg``,
    pos = -[t == 1] log(p + 1e-12) (1 - p)^alpha, neg = -(1 - t)^gamma log(1 - p + 1e-12) p^alpha.
    For gamma > 0 the two terms never share an element, so unequal pos / neg weights become a
    per-element weight (exact); gamma = 0 with unequal weights, or with ``pos_inds``, raises
    ValueError.

    forward(pred, target, pos_inds=None, pos_labels=None, weight=None, avg_factor=None,
    reduction_override=None): pred probabilities in [0, 1], target heatmap of pred's shape;
    with ``pos_inds`` / ``pos_labels`` the positive term is taken at
    ``pred[pos_inds].gather(1, pos_labels[:, None])`` and each term is reduced on its own
    (mmdetection's ``gaussian_focal_loss_with_pos_inds``; ``weight`` is not used there, as in
    mmdetection).  Returns pred's shape for "none" (with pos_inds: their broadcast sum), else a
    scalar."""

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0, reduction: str = 'mean', loss_weight: float = 1.0, pos_weight: float = 1.0,
                 neg_weight: float = 1.0) -> None:
        super().__init__()
        if gamma == 0 and pos_weight != neg_weight:
            raise ValueError("GaussianFocalLoss: gamma=0 with pos_weight != neg_weight is not supported by fastloss's compat layer")
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight

    def forward(self, pred: Tensor, target: Tensor, pos_inds: Optional[Tensor] = None, pos_labels: Optional[Tensor] = None,
                weight: Optional[Tensor] = None, avg_factor: Optional[Union[int, float]] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _reduction("GaussianFocalLoss", reduction_override, self.reduction)
        if pos_inds is not None:
            return self.loss_weight * _avg_dtype(self._with_pos_inds(pred, target, pos_inds, pos_labels, reduction, avg_factor),
                                                 reduction, avg_factor)
        w = _broadcast_weight("GaussianFocalLoss", weight, pred.shape)
        pred, target = _widen(_weighted_dtype(torch.promote_types(pred.dtype, target.dtype), pred.dim(), weight), pred, target)
        if self.pos_weight == self.neg_weight:
            loss = _pointwise.gaussian_focal_loss(pred, target, self.alpha, self.gamma, weight=w, reduction=reduction,
                                                  avg_factor=avg_factor)
            loss = self.pos_weight * loss
        else:
            split = torch.where(target == 1, torch.full_like(target, self.pos_weight), torch.full_like(target, self.neg_weight))
            w2 = split if w is None else w * split
            loss = _pointwise.gaussian_focal_loss(pred, target, self.alpha, self.gamma, weight=w2, reduction=reduction,
                                                  avg_factor=avg_factor)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)

    def _with_pos_inds(self, pred, target, pos_inds, pos_labels, reduction, avg_factor):
        if pos_labels is None:
            raise ValueError("GaussianFocalLoss: pos_inds needs pos_labels")
        if self.gamma == 0:
            raise ValueError("GaussianFocalLoss: pos_inds with gamma=0 is not supported by fastloss's compat layer")
        pos_pred = pred[pos_inds].gather(1, pos_labels.unsqueeze(1))
        # the positive term alone: at t = 1 the negative term carries (1 - t)^gamma = 0
        pos = _pointwise.gaussian_focal_loss(pos_pred, torch.ones_like(pos_pred), self.alpha, self.gamma, reduction=reduction,
                                             avg_factor=avg_factor)
        # the negative term alone: weight 0 where t = 1 (its value there is 0 for gamma > 0)
        neg = _pointwise.gaussian_focal_loss(pred, target, self.alpha, self.gamma, weight=(target != 1), reduction=reduction,
                                             avg_factor=avg_factor)
        return self.pos_weight * pos + self.neg_weight * neg


# ====================================================================== segmentation


class DiceLoss(nn.Module):
    """mmdetection's ``DiceLoss`` (V-Net form; Mask2Former, K-Net) over :func:`fastloss.dice_loss`:
    one Dice per sample over all its elements.

    Args:
        use_sigmoid: with ``activate``, pred is sigmoid-activated (use_sigmoid=False with
            activate=True: ValueError, mmdetection raises NotImplementedError).
        activate: apply the activation (False: pred are probabilities).
        naive_dice: 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps); else (V-Net)
            1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + 2 eps).
        eps: > 0; reduction, loss_weight as mmdetection.

    forward(pred (N, *), target (N, *) of pred's element count per sample, weight (N,) per
    sample, reduction_override, avg_factor): returns (N,) for "none", else a scalar, in the
    promoted dtype of pred and fp32 (mmdetection's ``target.float()``)."""

    def __init__(self, use_sigmoid=True, activate=True, reduction='mean', naive_dice=False, loss_weight=1.0, eps=1e-3):
        super().__init__()
        if activate and not use_sigmoid:
            raise ValueError("DiceLoss: activate=True needs use_sigmoid=True (mmdetection has no other activation)")
        self.use_sigmoid = use_sigmoid
        self.reduction = reduction
        self.naive_dice = naive_dice
        self.loss_weight = loss_weight
        self.eps = eps
        self.activate = activate

    def forward(self, pred, target, weight=None, reduction_override=None, avg_factor=None):
        reduction = _reduction("DiceLoss", reduction_override, self.reduction)
        n = pred.size(0)
        if weight is not None and (weight.dim() != 1 or weight.numel() != n):
            raise ValueError(f"DiceLoss: weight must be one value per sample ({n},), got {tuple(weight.shape)}")
        if self.naive_dice:
            smooth_nr, smooth_dr, squared = self.eps, self.eps, False
        else:  # mmdetection adds eps to each of the two squared sums
            smooth_nr, smooth_dr, squared = 0.0, 2 * self.eps, True
        if n == 0:  # no samples: an empty (0,) per-sample loss, connected to pred (the kernel needs a shape to reshape to)
            per_sample = pred.flatten(1).sum(1) * 0 + target.new_zeros(0, dtype=torch.float32)
        else:
            x = pred.reshape(n, 1, -1)
            t = target.reshape(n, 1, -1).float()
            per_sample = _dice.dice_loss(x, t, mode="binary", from_logits=self.activate, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                                         squared=squared, per_image=True, reduction="none").reshape(n)
        return self.loss_weight * _avg_dtype(_weight_reduce("DiceLoss", per_sample, weight, reduction, avg_factor), reduction, avg_factor)


# ====================================================================== regression


def _regression(name, op, pred, target, weight, reduction, avg_factor, *params, empty_scalar=True):
    if empty_scalar and target.numel() == 0:  # mmdetection's L1 / smooth L1 / balanced L1: a 0-d zero, then its weighting
        return _weight_reduce(name, pred.sum() * 0, weight, reduction, avg_factor)
    w = _broadcast_weight(name, weight, pred.shape)
    pred, target = _widen(_weighted_dtype(torch.promote_types(pred.dtype, target.dtype), pred.dim(), weight), pred, target)
    return op(pred, target, *params, reduction=reduction, weight=w, avg_factor=avg_factor)


class L1Loss(nn.Module):
    """mmdetection's ``L1Loss`` over :func:`fastloss.l1_loss`.  forward(pred, target (same
    shape), weight broadcasting to pred, avg_factor, reduction_override); an all-non-positive
    weight returns ``(pred * weight).sum()`` (mmdetection's shortcut).  Returns pred's shape for
    "none", else a scalar."""

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _reduction("L1Loss", reduction_override, self.reduction)
        return _or_zero_weight_shortcut(pred, weight, lambda: self.loss_weight * _avg_dtype(
            _regression("L1Loss", _pointwise.l1_loss, pred, target, weight, reduction, avg_factor), reduction, avg_factor))


class SmoothL1Loss(nn.Module):
    """mmdetection's ``SmoothL1Loss`` over :func:`fastloss.smooth_l1_loss` (beta > 0); arguments
    and the zero-weight shortcut as :class:`L1Loss`."""

    def __init__(self, beta: float = 1.0, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"SmoothL1Loss: beta must be > 0, got {beta}")
        self.beta = beta
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None, **kwargs) -> Tensor:
        _no_kwargs("SmoothL1Loss", kwargs)
        reduction = _reduction("SmoothL1Loss", reduction_override, self.reduction)
        return _or_zero_weight_shortcut(pred, weight, lambda: self.loss_weight * _avg_dtype(
            _regression("SmoothL1Loss", _pointwise.smooth_l1_loss, pred, target, weight, reduction, avg_factor, self.beta),
            reduction, avg_factor))


def smooth_l1_loss(pred: Tensor, target: Tensor, weight=None, reduction='mean', avg_factor=None, **kwargs) -> Tensor:
    """mmdetection's functional ``smooth_l1_loss`` (``mmdet.models.losses``; the SSD head calls it
    by name) over :func:`fastloss.smooth_l1_loss`: the signature of mmdetection's
    ``weighted_loss`` wrapper, whose only extra keyword is ``beta`` (> 0, default 1.0; any other
    raises ValueError).  pred, target: one shape; weight: broadcasts to it; reduction "none" |
    "mean" | "sum"; avg_factor: mmdetection's normaliser.  No zero-weight shortcut (that is the
    module's).  Returns pred's shape for "none", else a scalar."""
    beta = kwargs.pop('beta', 1.0)
    _no_kwargs("smooth_l1_loss", kwargs)
    if not beta > 0:
        raise ValueError(f"smooth_l1_loss: beta must be > 0, got {beta}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"smooth_l1_loss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _avg_dtype(_regression("smooth_l1_loss", _pointwise.smooth_l1_loss, pred, target, weight, reduction, avg_factor, beta),
                      reduction, avg_factor)


class BalancedL1Loss(nn.Module):
    """mmdetection's ``BalancedL1Loss`` (Libra R-CNN) over :func:`fastloss.balanced_l1_loss`
    (alpha, gamma, beta > 0, gamma / alpha <= 80).  forward as :class:`L1Loss`, without the
    zero-weight shortcut (as mmdetection)."""

    def __init__(self, alpha=0.5, gamma=1.5, beta=1.0, reduction='mean', loss_weight=1.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.beta = beta
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None, **kwargs):
        _no_kwargs("BalancedL1Loss", kwargs)
        reduction = _reduction("BalancedL1Loss", reduction_override, self.reduction)
        return self.loss_weight * _avg_dtype(_regression("BalancedL1Loss", _pointwise.balanced_l1_loss, pred, target, weight, reduction,
                                                         avg_factor, self.alpha, self.gamma, self.beta), reduction, avg_factor)


class MSELoss(nn.Module):
    """mmdetection's ``MSELoss`` over :func:`fastloss.mse_loss`; arguments as :class:`L1Loss`
    (no zero-weight shortcut, as mmdetection); ``pred`` and ``target`` broadcast against each
    other (torch's ``mse_loss``, which mmdetection calls, does -- with a warning), and the
    loss has the broadcast shape.  ValueError if they do not broadcast."""

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _reduction("MSELoss", reduction_override, self.reduction)
        if target.shape != pred.shape:
            try:
                pred, target = torch.broadcast_tensors(pred, target)  # pred's gradient sums back over the expansion
            except RuntimeError as e:
                raise ValueError(f"MSELoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} do not broadcast") from e
        return self.loss_weight * _avg_dtype(_regression("MSELoss", _pointwise.mse_loss, pred, target, weight, reduction, avg_factor,
                                                         empty_scalar=False), reduction, avg_factor)


# ====================================================================== boxes


def _box_weight(name, pred, weight):
    """mmdetection's box-loss weights: per box (N,), or per coordinate (N, 4) averaged."""
    if weight is not None and weight.dim() > 1:
        if weight.shape != pred.shape:
            raise ValueError(f"{name}: a weight of more than one dim must have pred's shape {tuple(pred.shape)}, got {tuple(weight.shape)}")
        weight = weight.mean(-1)
    return weight


class IoULoss(nn.Module):
    """mmdetection's ``IoULoss`` (UnitBox) over :func:`fastloss.box_iou_loss`: with
    c = max(IoU, eps), mode "linear" 1 - c, "square" 1 - c^2, "log" -ln c; ``linear=True`` is the
    deprecated spelling of mode "linear" (with mmdetection's warning).  The kernel gives the
    per-box loss (convention "mmdet": IoU = I / max(U, 1e-6), as mmdetection's
    ``bbox_overlaps``; see the module docstring); the clamp at eps is the cap 1 - eps,
    1 - eps^2 or -ln eps on it (zero gradient there, as mmdetection's clamp), then
    mmdetection's weighting and reduction.

    forward(pred (N, 4) xyxy, target (N, 4), weight (N,) or (N, 4) (averaged), avg_factor,
    reduction_override): returns (N,) for "none", else a scalar, in pred's dtype; an
    all-non-positive weight returns ``(pred * weight).sum()`` unless reduction is "none"."""

    _KINDS = {"linear": ("iou", 1.0), "square": ("iou", 2.0), "log": ("log_iou", 1.0)}

    def __init__(self, linear: bool = False, eps: float = 1e-6, reduction: str = 'mean', loss_weight: float = 1.0,
                 mode: str = 'log') -> None:
        super().__init__()
        if mode not in self._KINDS:
            raise ValueError(f"IoULoss: mode must be 'linear', 'square' or 'log', got {mode!r}")
        if linear:
            mode = 'linear'
            warnings.warn('IoULoss: linear=True is deprecated; use mode="linear"', DeprecationWarning)
        self.mode = mode
        self.linear = linear
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None, **kwargs) -> Tensor:
        _no_kwargs("IoULoss", kwargs)
        reduction = _reduction("IoULoss", reduction_override, self.reduction)
        if reduction != 'none':
            return _or_zero_weight_shortcut(pred, weight, lambda: self._loss(pred, target, weight, reduction, avg_factor))
        return self._loss(pred, target, weight, reduction, avg_factor)

    def _loss(self, pred, target, weight, reduction, avg_factor):
        weight = _box_weight("IoULoss", pred, weight)
        kind, power = self._KINDS[self.mode]
        if kind == "log_iou":  # the kernel clamps at its eps: the smaller of the two, then the cap
            union_eps, cap = min(self.eps, _OVERLAPS_EPS), -math.log(self.eps)
        else:
            union_eps, cap = _OVERLAPS_EPS, 1.0 - self.eps ** power
        per_box = _box_iou.box_iou_loss(pred, target, kind, "none", eps=union_eps, power=power, convention="mmdet")
        per_box = torch.clamp(per_box, max=cap)
        loss = _weight_reduce("IoULoss", per_box, weight, reduction, avg_factor)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)


class _PairedIoULoss(nn.Module):
    _KIND = None

    def _kind_args(self):
        """The kind's own keyword arguments of :func:`fastloss.box_iou_loss`."""
        return {}

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None, **kwargs) -> Tensor:
        name = type(self).__name__
        _no_kwargs(name, kwargs)
        reduction = _reduction(name, reduction_override, self.reduction)
        return _or_zero_weight_shortcut(pred, weight, lambda: self._loss(name, pred, target, weight, reduction, avg_factor))

    def _loss(self, name, pred, target, weight, reduction, avg_factor):
        weight = _box_weight(name, pred, weight)
        if self._KIND in ("ciou", "extended_iou"):  # mmdetection's (ious > 0.5).float() / (ious < smooth_point).float(): fp32 at least
            pred, target = _at_least_fp32(pred), _at_least_fp32(target)
        # the per-box loss (N,) times the weight, reduced in the promoted dtype (mmdetection's weight_reduce_loss)
        pred, target = _widen(_weighted_dtype(torch.promote_types(pred.dtype, target.dtype), pred.dim() - 1, weight), pred, target)
        loss = _box_iou.box_iou_loss(pred, target, self._KIND, reduction, weight, avg_factor, eps=self.eps, convention="mmdet",
                                     **self._kind_args())
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)


class GIoULoss(_PairedIoULoss):
    """mmdetection's ``GIoULoss`` over :func:`fastloss.box_iou_loss` (kind "giou", convention
    "mmdet"): 1 - GIoU, IoU = I / max(U, eps), penalty (max(C, eps) - max(U, eps)) / max(C, eps).
    Arguments, shapes and the zero-weight shortcut as :class:`IoULoss` (the shortcut for every
    reduction)."""

    _KIND = "giou"


class DIoULoss(_PairedIoULoss):
    """mmdetection's ``DIoULoss`` over :func:`fastloss.box_iou_loss` (kind "diou"):
    1 - IoU + rho^2 / (c^2 + eps), IoU = I / (U + eps) -- mmdetection's eps placement.  Arguments
    as :class:`GIoULoss`."""

    _KIND = "diou"


class CIoULoss(_PairedIoULoss):
    """mmdetection's ``CIoULoss`` (``ciou_loss``, arXiv 2005.03572) over
    :func:`fastloss.box_iou_loss` (kind "ciou", convention "mmdet"): 1 - clamp(CIoU, -1, 1),
    CIoU = IoU - rho^2 / (c^2 + eps) - alpha v, IoU = I / (U + eps),
    v = 4/pi^2 (atan(w_t / (h_t + eps)) - atan(w_p / (h_p + eps)))^2,
    alpha = [IoU > 0.5] v / (1 - IoU + v) (a constant in the backward); zero gradient where the
    clamp binds.  Arguments, shapes and the zero-weight shortcut as :class:`GIoULoss`."""

    _KIND = "ciou"


class EIoULoss(_PairedIoULoss):
    """mmdetection's ``EIoULoss`` (``eiou_loss``: Extended-IoU, IEEE 9429909 -- not fastloss's
    Efficient-IoU "eiou") over :func:`fastloss.box_iou_loss` (kind "extended_iou"): with the
    extended intersection I_e (the overlap's area, negative for disjoint boxes; formula in
    :mod:`fastloss.reference.box_iou`) and x = 1 - I_e / (w h + w' h' - I_e + eps), the loss is
    0.5 x^2 / smooth_point for x < smooth_point, else x - 0.5 smooth_point (the branch is not
    differentiated).  Arguments, shapes and the zero-weight shortcut as :class:`GIoULoss`;
    ``smooth_point`` > 0 (ValueError otherwise)."""

    _KIND = "extended_iou"

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean', loss_weight: float = 1.0, smooth_point: float = 0.1) -> None:
        super().__init__(eps, reduction, loss_weight)
        self.smooth_point = smooth_point

    def _kind_args(self):
        return {"smooth_point": self.smooth_point}


class SIoULoss(_PairedIoULoss):
    """mmdetection's ``SIoULoss`` (``siou_loss``, arXiv 2205.12740 in mmdetection's form) over
    :func:`fastloss.box_iou_loss` (kind "siou", convention "mmdet"): 1 - clamp(SIoU, -1, 1),
    SIoU = IoU - (distance + shape) / 2, IoU = I / (U + eps); with sx, sy = target centre -
    prediction centre + eps, angle = cos(2 asin(sin_alpha) - pi/2) = 2 |sx| |sy| / (sx^2 + sy^2),
    gamma = 2 - angle (``neg_gamma=True``: angle - 2, the paper's sign),
    distance = 2 - exp(gamma (sx / max(cw, eps))^2) - exp(gamma (sy / max(ch, eps))^2),
    shape = sum over w, h of (1 - exp(-|w_p - w_t| / max(w_p, w_t)))^4 with heights h + eps.
    Zero gradient where the clamp binds.  Arguments, shapes and the zero-weight shortcut as
    :class:`GIoULoss`."""

    _KIND = "siou"

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean', loss_weight: float = 1.0, neg_gamma: bool = False) -> None:
        super().__init__(eps, reduction, loss_weight)
        self.neg_gamma = neg_gamma

    def _kind_args(self):
        return {"neg_gamma": bool(self.neg_gamma)}


class BoundedIoULoss(nn.Module):
    """mmdetection's ``BoundedIoULoss`` (``bounded_iou_loss``, arXiv 1711.00164) over
    :func:`fastloss.box_iou_loss` (kind "bounded_iou", ``smooth_point=beta``): per coordinate
    l_x = 1 - max((w_t - 2 |dx|) / (w_t + 2 |dx| + eps), 0) (dx: target - prediction centre),
    l_w = 1 - min(w_t / (w_p + eps), w_p / (w_t + eps)) (y, h alike), each smoothed as smooth-L1
    with ``beta``; the target is not differentiated.

    The box kernel gives the 4 terms of each box apart (``per_coordinate=True``), so every
    reduction is mmdetection's: "none" the (N, 4) loss [l_x, l_y, l_w, l_h], "mean" the sum over
    boxes and coordinates / (4 N) (or / (avg_factor + eps)), "sum"; ``weight`` multiplies the
    (N, 4) loss with torch's broadcasting, as mmdetection does ((N, 4), (N, 1), or a 1-D weight
    along the coordinates).  forward(pred (N, 4) xyxy, target (N, 4), weight, avg_factor,
    reduction_override) returns (N, 4) or a scalar in pred's dtype (promoted with a floating
    weight); an all-non-positive weight returns ``(pred * weight).sum()``.  ValueError for
    beta <= 0 or a weight that does not broadcast to (N, 4)."""

    def __init__(self, beta: float = 0.2, eps: float = 1e-3, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, avg_factor: Optional[int] = None,
                reduction_override: Optional[str] = None, **kwargs) -> Tensor:
        _no_kwargs("BoundedIoULoss", kwargs)
        reduction = _reduction("BoundedIoULoss", reduction_override, self.reduction)
        return _or_zero_weight_shortcut(pred, weight, lambda: self._loss(pred, target, weight, reduction, avg_factor))

    def _loss(self, pred, target, weight, reduction, avg_factor):
        name = "BoundedIoULoss"
        if not 0 < self.beta < math.inf:  # mmdetection divides by beta
            raise ValueError(f"{name}: beta must be > 0 and finite, got {self.beta!r}")
        # mmdetection computes the target's terms under no_grad; its (N, 4) loss, then weight_reduce_loss
        terms = _box_iou.box_iou_loss(pred, target.detach(), "bounded_iou", "none", eps=self.eps, smooth_point=self.beta,
                                      convention="mmdet", per_coordinate=True)
        _broadcast_weight(name, weight, terms.shape)  # only the check: torch's terms * weight promotes as mmdetection's
        loss = _weight_reduce(name, terms, weight, reduction, avg_factor)
        return self.loss_weight * _avg_dtype(loss, reduction, avg_factor)


def bbox_overlaps(bboxes1, bboxes2, mode='iou', is_aligned=False, eps=1e-6):
    """mmdetection's ``bbox_overlaps`` (``mmdet.structures.bbox``) over :func:`fastloss.box_iou`.

    Args:
        bboxes1: (..., m, 4) xyxy boxes (pixels); bboxes2: (..., n, 4), the same leading dims.
        mode: "iou" | "iof" (intersection over bboxes1's area) | "giou".
        is_aligned: False -> (..., m, n); True -> m == n and (..., m).
        eps: > 0, the stabiliser, placed as mmdetection's: I / max(U, eps) (iof: over
            max(area, eps)), GIoU's (max(C, eps) - max(U, eps)) / max(C, eps).
    Returns the overlaps in the promoted dtype of the boxes, differentiable w.r.t. both; zeros
    when there are no boxes.  Raises ValueError for an unknown mode, bad shapes, eps <= 0."""
    if mode not in ('iou', 'iof', 'giou'):
        raise ValueError(f"bbox_overlaps: mode must be 'iou', 'iof' or 'giou', got {mode!r}")
    for name, b in (("bboxes1", bboxes1), ("bboxes2", bboxes2)):
        if b.dim() < 2 or not (b.size(-1) == 4 or b.size(0) == 0):
            raise ValueError(f"bbox_overlaps: {name} must be (..., n, 4), got {tuple(b.shape)}")
    if bboxes1.shape[:-2] != bboxes2.shape[:-2]:
        raise ValueError(f"bbox_overlaps: leading dims differ, {tuple(bboxes1.shape[:-2])} and {tuple(bboxes2.shape[:-2])}")
    rows, cols = bboxes1.size(-2), bboxes2.size(-2)
    if is_aligned and rows != cols:
        raise ValueError(f"bbox_overlaps: is_aligned needs as many boxes in each set, got {rows} and {cols}")
    if rows * cols == 0:
        shape = bboxes1.shape[:-2] + ((rows,) if is_aligned else (rows, cols))
        return bboxes1.new_zeros(shape)
    return _box_iou.box_iou(bboxes1, bboxes2, mode, aligned=is_aligned, eps=eps, convention="mmdet")


# ====================================================================== assigners


class MaxIoUAssigner:
    """mmdetection's ``MaxIoUAssigner`` (``mmdet.models.task_modules.assigners``, 3.3.0) over
    :func:`fastloss.max_iou_assign`: the same arguments and ``assign(pred_instances,
    gt_instances, gt_instances_ignore=None)`` returning mmdetection's ``AssignResult``, with
    gt_inds, labels and max_overlaps bit-equal to mmdetection's (its IoU arithmetic, tested on
    the CPU; the CUDA kernel rounds each product the same way, not yet run on a GPU) -- one
    fused call instead of the (M, A) IoU matrix plus a host sync per gt.

    Not supported (ValueError at construction): an ``iou_calculator`` other than mmdetection's
    default ``dict(type='BboxOverlaps2D')``, and ``perm_repeat_gt_cfg``.  ``gpu_assign_thr``
    is honoured as mmdetection does (the assignment moves to the CPU above that many gts).
    Not swapped in by :func:`fastloss.patch` (it decides assignments: explicit use only, until
    a GPU session confirms the CUDA path bit for bit)."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: Union[float, tuple], min_pos_iou: float = .0, gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True, match_low_quality: bool = True, gpu_assign_thr: float = -1,
                 iou_calculator: dict = dict(type='BboxOverlaps2D'), perm_repeat_gt_cfg=None):
        if dict(iou_calculator) != dict(type='BboxOverlaps2D'):
            raise ValueError(f"MaxIoUAssigner: only iou_calculator=dict(type='BboxOverlaps2D') (mmdetection's default) is supported by "
                             f"fastloss's compat layer, got {iou_calculator!r}")
        if perm_repeat_gt_cfg is not None:
            raise ValueError("MaxIoUAssigner: perm_repeat_gt_cfg is not supported by fastloss's compat layer")
        self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou = pos_iou_thr, neg_iou_thr, min_pos_iou
        self.gt_max_assign_all, self.ignore_iof_thr, self.ignore_wrt_candidates = gt_max_assign_all, ignore_iof_thr, ignore_wrt_candidates
        self.gpu_assign_thr, self.match_low_quality = gpu_assign_thr, match_low_quality
        self.iou_calculator, self.perm_repeat_gt_cfg = iou_calculator, perm_repeat_gt_cfg

    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, **kwargs):
        """pred_instances.priors (n, 4) (or (n, 5) with scores), gt_instances.bboxes (k, 4),
        .labels (k,); gt_instances_ignore.bboxes (optional) -> ``AssignResult`` (gt_inds -1 /
        0 / g + 1, max_overlaps, labels)."""
        from mmdet.models.task_modules.assigners.assign_result import AssignResult

        def box_tensor(b):
            b = getattr(b, "tensor", b)  # mmdetection's BaseBoxes
            return b[..., :4] if b.size(-1) == 5 else b

        priors, gt_bboxes, gt_labels = box_tensor(pred_instances.priors), box_tensor(gt_instances.bboxes), gt_instances.labels
        ignore = None if gt_instances_ignore is None else box_tensor(gt_instances_ignore.bboxes)
        device = priors.device
        if self.gpu_assign_thr > 0 and gt_bboxes.shape[0] > self.gpu_assign_thr:
            priors, gt_bboxes, gt_labels = priors.cpu(), gt_bboxes.cpu(), gt_labels.cpu()
            ignore = None if ignore is None else ignore.cpu()
        num_gts = gt_bboxes.shape[0]
        gt_inds, max_overlaps, labels = _assign.max_iou_assign(
            priors, gt_bboxes[None], gt_labels[None].long(), None, pos_iou_thr=self.pos_iou_thr, neg_iou_thr=self.neg_iou_thr,
            min_pos_iou=self.min_pos_iou, gt_max_assign_all=self.gt_max_assign_all, match_low_quality=self.match_low_quality,
            ignore_bboxes=None if ignore is None else ignore[None], ignore_iof_thr=self.ignore_iof_thr,
            ignore_wrt_candidates=self.ignore_wrt_candidates)
        return AssignResult(num_gts=num_gts, gt_inds=gt_inds[0].to(device), max_overlaps=max_overlaps[0].to(device),
                            labels=labels[0].to(device))


class ATSSAssigner:
    """mmdetection's ``ATSSAssigner`` (``mmdet.models.task_modules.assigners``, 3.3.0) over
    :func:`fastloss.atss_assign`: the same arguments and ``assign(pred_instances,
    num_level_priors, gt_instances, gt_instances_ignore=None)`` returning mmdetection's
    ``AssignResult`` -- one fused call instead of the (A, M) IoU and distance matrices and
    their host syncs.  gt_inds, labels and max_overlaps (-1e8 for non-positives, as
    mmdetection) equal mmdetection's except at priors whose IoU lies within a few ulp of a
    gt's threshold (the mean's summation order; tested on the CPU).

    Not supported (ValueError at construction): ``alpha`` (DDOD's cost-based variant) and an
    ``iou_calculator`` other than mmdetection's default ``dict(type='BboxOverlaps2D')``.  Not
    swapped in by :func:`fastloss.patch` (it decides assignments: explicit use only)."""

    def __init__(self, topk: int, alpha: Optional[float] = None, iou_calculator: dict = dict(type='BboxOverlaps2D'),
                 ignore_iof_thr: float = -1):
        if alpha is not None:
            raise ValueError("ATSSAssigner: alpha (DDOD's cost-based assigner) is not supported by fastloss's compat layer")
        if dict(iou_calculator) != dict(type='BboxOverlaps2D'):
            raise ValueError(f"ATSSAssigner: only iou_calculator=dict(type='BboxOverlaps2D') (mmdetection's default) is supported by "
                             f"fastloss's compat layer, got {iou_calculator!r}")
        self.topk, self.alpha, self.iou_calculator, self.ignore_iof_thr = topk, alpha, iou_calculator, ignore_iof_thr

    def assign(self, pred_instances, num_level_priors, gt_instances, gt_instances_ignore=None):
        """pred_instances.priors (n, 4) (or wider: the first 4 columns), num_level_priors (list
        of ints), gt_instances.bboxes (k, 4), .labels (k,); gt_instances_ignore.bboxes
        (optional) -> ``AssignResult`` (gt_inds -1 / 0 / g + 1, max_overlaps, labels)."""
        from mmdet.models.task_modules.assigners.assign_result import AssignResult

        def box_tensor(b):
            return getattr(b, "tensor", b)[..., :4]  # mmdetection's BaseBoxes; priors[:, :4] as mmdetection

        priors, gt_bboxes, gt_labels = box_tensor(pred_instances.priors), box_tensor(gt_instances.bboxes), gt_instances.labels
        ignore = None if gt_instances_ignore is None else box_tensor(gt_instances_ignore.bboxes)
        gt_inds, max_overlaps, labels = _assign.atss_assign(
            priors, list(num_level_priors), gt_bboxes[None], gt_labels[None].long(), None, topk=self.topk,
            ignore_bboxes=None if ignore is None else ignore[None], ignore_iof_thr=self.ignore_iof_thr)
        return AssignResult(num_gts=gt_bboxes.shape[0], gt_inds=gt_inds[0], max_overlaps=max_overlaps[0], labels=labels[0])


# ====================================================================== Hungarian assigner (DETR heads)

_MATCH_TERMS = {"ClassificationCost": "class", "FocalLossCost": "class", "BBoxL1Cost": "bbox", "IoUCost": "giou"}


class HungarianAssigner:
    """mmdetection's ``HungarianAssigner(match_costs)`` (``mmdet.models.task_modules.assigners``,
    3.3.0; DETR, Deformable DETR, DINO heads) over :func:`fastloss.match_cost`: the image's
    (Q, T) cost in one fused pass, bit-equal to mmdetection's ``torch.stack(costs).sum(0)`` on
    the CPU (the terms added in the config's order), then scipy's ``linear_sum_assignment``;
    ``assign`` returns mmdetection's ``AssignResult`` (gt_inds 0 / g + 1, labels, no overlaps).

    ``match_costs``: one config dict or a list, exactly one class cost (``ClassificationCost``
    or ``FocalLossCost`` with ``binary_input=False``), one ``BBoxL1Cost`` and one ``IoUCost``
    with ``iou_mode='giou'`` (the DETR-family configs).  Anything else raises ValueError at
    construction (mask costs, other IoU modes, a missing or repeated term).  Needs scipy.
    Not swapped in by :func:`fastloss.patch` (it decides assignments: explicit use only)."""

    def __init__(self, match_costs):
        costs = [match_costs] if isinstance(match_costs, dict) else list(match_costs)
        self.match_costs = costs
        self._order, self._weights, self._options = [], {}, {}
        for cfg in costs:
            cfg = dict(cfg)
            kind = cfg.pop("type", None)
            term = _MATCH_TERMS.get(kind if isinstance(kind, str) else getattr(kind, "__name__", None))
            if term is None or term in self._order:
                raise ValueError(f"HungarianAssigner: fastloss's compat layer takes one each of ClassificationCost / FocalLossCost, "
                                 f"BBoxL1Cost and IoUCost, got {kind!r} in {match_costs!r}")
            self._order.append(term)
            self._weights[term] = cfg.pop("weight", 1.0)
            if kind == "FocalLossCost":
                if cfg.pop("binary_input", False):
                    raise ValueError("HungarianAssigner: FocalLossCost(binary_input=True) (mask costs) is not supported")
                self._options.update(class_cost="focal", focal_alpha=cfg.pop("alpha", 0.25), focal_gamma=cfg.pop("gamma", 2),
                                     focal_eps=cfg.pop("eps", 1e-12))
            elif kind == "BBoxL1Cost":
                self._options["l1_format"] = cfg.pop("box_format", "xyxy")
            elif kind == "IoUCost" and cfg.pop("iou_mode", "giou") != "giou":
                raise ValueError("HungarianAssigner: only IoUCost(iou_mode='giou') is supported by fastloss's compat layer")
            if cfg:
                raise ValueError(f"HungarianAssigner: unsupported arguments of {kind}: {sorted(cfg)}")
        if len(self._order) != 3:
            raise ValueError(f"HungarianAssigner: fastloss's compat layer needs a class cost, BBoxL1Cost and IoUCost, got {match_costs!r}")

    def assign(self, pred_instances, gt_instances, img_meta=None, **kwargs):
        """pred_instances.scores (Q, C) logits and .bboxes (Q, 4) xyxy pixels; gt_instances.labels
        (T,) and .bboxes (T, 4); img_meta["img_shape"] (h, w) -> ``AssignResult``."""
        from mmdet.models.task_modules.assigners.assign_result import AssignResult

        from fastloss.ops import match_cost as _match

        labels = gt_instances.labels
        pred_boxes, gt_boxes = getattr(pred_instances.bboxes, "tensor", pred_instances.bboxes), getattr(gt_instances.bboxes, "tensor",
                                                                                                        gt_instances.bboxes)
        num_gts, num_preds, device = gt_boxes.shape[0], pred_boxes.shape[0], labels.device
        gt_inds = torch.full((num_preds,), -1, dtype=torch.long, device=device)
        assigned = torch.full((num_preds,), -1, dtype=torch.long, device=device)
        if num_gts == 0 or num_preds == 0:  # mmdetection's early return
            if num_gts == 0:
                gt_inds[:] = 0
            return AssignResult(num_gts=num_gts, gt_inds=gt_inds, max_overlaps=None, labels=assigned)
        w = self._weights
        costs = _match.match_cost(pred_instances.scores[None], pred_boxes[None], labels, gt_boxes, [num_gts], convention="mmdet",
                                  img_shapes=[tuple(img_meta["img_shape"])[:2]], weights=(w["class"], w["bbox"], w["giou"]), order=self._order,
                                  **self._options)
        rows, cols = _match.hungarian_match(costs, [num_gts], num_preds)[0]
        rows, cols = rows.to(device), cols.to(device)
        gt_inds[:] = 0
        gt_inds[rows] = cols + 1
        assigned[rows] = labels[cols]
        return AssignResult(num_gts=num_gts, gt_inds=gt_inds, max_overlaps=None, labels=assigned)

# ====================================================================== patching

_CLASSES = ("FocalLoss", "L1Loss", "SmoothL1Loss", "BalancedL1Loss", "MSELoss", "CrossEntropyLoss", "QualityFocalLoss", "VarifocalLoss",
            "DistributionFocalLoss", "GaussianFocalLoss", "DiceLoss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss",
            "BoundedIoULoss")


def _replace_everywhere(handle, prefix, original, replacement):
    """Point every loaded module under ``prefix`` that holds ``original`` by some name at
    ``replacement`` instead (code that did ``from ... import name``)."""
    import sys

    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == prefix or mod_name.startswith(prefix + ".")):
            continue
        for attr, value in list(vars(mod).items()):
            if value is original:
                handle.setattr(mod, attr, replacement)


def _patch(handle):
    """Swap mmdetection's losses for these, in place, through ``handle`` (:func:`fastloss.patch`):

    * ``mmdet.registry.MODELS``: each class of ``_CLASSES`` is registered under its own name
      (configs such as ``dict(type='GIoULoss')`` build fastloss's); the old entries come back
      on undo;
    * every loaded ``mmdet.*`` module's reference to those classes (``mmdet.models.losses.GIoULoss``,
      ``from ..losses import QualityFocalLoss`` in the DETR heads, ...) and to
      ``mmdet.models.losses.smooth_l1_loss`` (the SSD head calls it by name);
    * mmcv's focal ops ``SigmoidFocalLoss``, ``sigmoid_focal_loss``, ``SoftmaxFocalLoss``,
      ``softmax_focal_loss`` wherever a loaded ``mmcv.*`` / ``mmdet.*`` module holds them
      (``mmcv.ops``, ``mmcv.ops.focal_loss``, mmdetection's ``focal_loss`` module) by
      :mod:`fastloss.compat.mmcv`'s.

    Not replaced, on purpose: ``mmdet.structures.bbox.bbox_overlaps`` (this module's
    :func:`bbox_overlaps` stays available for explicit use).  It is what the assigners decide
    with (``BboxOverlaps2D`` in MaxIoU / ATSS / SimOTA / dynamic-soft-label / task-aligned
    assigners, the Hungarian matcher's ``IoUCost``), and also the GFL / VFNet heads' IoU
    targets, NMS and the evaluation; fastloss's fp32 overlaps are bit-equal to mmdetection's
    only where tested (IoU / IoF on the CPU), and one ulp flips a threshold such as
    MaxIoUAssigner's 0.5 for a near-tie -- a patch must change how losses are computed, never
    which anchor is assigned to which box.  No replaced class feeds an assigner (the match costs compute their own terms).

    Objects keep what they captured: a loss module built while patched (``MODELS.build`` of a
    head's config) is fastloss's and stays fastloss's after undo, and one built before the
    patch stays mmdetection's; undo restores the registry and module attributes only.

    Imports ``mmdet.models`` first (it registers mmdetection's own classes; with mmcv-lite,
    whose compiled ops are missing, that import fails with mmcv's ImportError).  Patching twice
    is harmless: entries that already hold fastloss's classes are left alone."""
    try:
        import mmcv.ops
        import mmdet.models  # noqa: F401  (registers mmdetection's losses before we replace them)
    except ImportError as e:
        raise ImportError(f"fastloss.patch('mmdet'): mmdetection's models do not import ({e}); they need mmcv's compiled ops "
                          f"(a full mmcv, not mmcv-lite)") from e
    import mmdet.models.losses
    from mmdet.registry import MODELS

    here = globals()
    for name in _CLASSES:
        ours = here[name]
        old = MODELS.module_dict.get(name)
        if old is ours:
            continue
        MODELS.register_module(name=name, module=ours, force=True)
        handle.on_undo(_restore_entry(MODELS, name, old))
        if old is not None:
            _replace_everywhere(handle, "mmdet", old, ours)
    if mmdet.models.losses.smooth_l1_loss is not smooth_l1_loss:
        _replace_everywhere(handle, "mmdet", mmdet.models.losses.smooth_l1_loss, smooth_l1_loss)
    for name in ("SigmoidFocalLoss", "sigmoid_focal_loss", "SoftmaxFocalLoss", "softmax_focal_loss"):
        old, new = getattr(mmcv.ops, name), getattr(_mmcv, name)
        if old is not new:
            for prefix in ("mmcv", "mmdet"):
                _replace_everywhere(handle, prefix, old, new)


def _restore_entry(registry, name, old):
    def restore():
        if old is None:
            registry.module_dict.pop(name, None)
        else:
            registry.module_dict[name] = old

    return restore
