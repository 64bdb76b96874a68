"""mmcv's compiled loss and overlap ops (``mmcv.ops``, mmcv 2.1) with their exact names and
signatures, over fastloss's kernels -- the ops mmdetection calls on CUDA, usable on every device::

    from fastloss.compat import mmcv as fl_mmcv        # instead of mmcv.ops
    ious = fl_mmcv.bbox_overlaps(rois, gt_boxes, offset=1)

``fastloss.patch("mmdet")`` swaps the focal losses into ``mmcv.ops`` in place (not
``bbox_overlaps``: overlaps decide assignments, and this one is not bit-equal to mmcv's
(``offset=1`` adds the 1 in another order); see :func:`fastloss.compat.mmdet._patch`).

============================  ================================================================
name                          fastloss op underneath
============================  ================================================================
``sigmoid_focal_loss``,       :func:`fastloss.sigmoid_focal_loss` (labels expanded in the
``SigmoidFocalLoss``          kernel); "mean" divides by the rows N, not the elements
``softmax_focal_loss``,       :func:`fastloss.softmax_focal_loss` (one fused pass with the
``SoftmaxFocalLoss``          softmax); "none" gives one loss per row, "mean" divides by N
``bbox_overlaps``             :func:`fastloss.box_iou` ("iou" / "iof", convention "mmdet")
============================  ================================================================

mmcv's ``bbox_overlaps`` kernel (``mmcv/ops/csrc/common/cuda/bbox_overlaps_cuda_kernel.cuh``,
v2.1.0) forms, with ``offset`` 0 or 1 (1: the legacy pixel convention in which a box's width is
x2 - x1 + 1)::

    w = max(min(x2, x2') - max(x1, x1') + offset, 0)      (h alike),  I = w h
    area = (x2 - x1 + offset) (y2 - y1 + offset)
    iou = I / max(area + area' - I, offset),  iof = I / max(area, offset)

fastloss's kernel divides by max(U, eps) (mmdetection's placement); ``offset=1`` runs it on
boxes with x2 + 1, y2 + 1 and eps = 1, ``offset=0`` with eps = the dtype's smallest normal
number.

Differences from mmcv (documented, deliberate):

* ``bbox_overlaps`` with ``offset=0`` and a zero union (two degenerate boxes) gives 0 (mmcv:
  0 / 0 = NaN); inverted boxes (x2 < x1) have zero area (mmcv multiplies the signed extents).
  ``offset=1`` adds the 1 to the coordinate, then subtracts ((x2 + 1) - x1 where mmcv forms
  (x2 - x1) + 1): the same number for coordinates that are integers or halves below 2^22
  (fp32), otherwise within an ulp of the extent.  Its box math runs in fp32 for fp16 boxes.
  Like mmcv's, the result is not differentiable (computed without autograd).
* The focal ops: labels >= C raise ValueError (mmcv reads past its arrays), and so does a
  per-class ``weight`` with a negative (background) label in ``SigmoidFocalLoss`` (mmcv reads
  ``weight[-1]`` for it); mmcv's log(max(p, FLT_MIN)) clamp (logits beyond about +-87 saturate)
  is not reproduced (fastloss computes the exact log-probabilities); an empty batch's "mean"
  is 0 (mmcv: NaN).
* A focal ``alpha`` outside [0, 1] (sigmoid) or below 0 (softmax) raises ValueError (fastloss
  reads a negative alpha as "no alpha weighting"; mmcv puts it in its formula as is).
"""
from typing import Optional, Union

import torch
from torch import nn

from fastloss.ops import box_iou as _box_iou
from fastloss.ops import pointwise as _pointwise
from fastloss.ops import rowwise as _rowwise

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss", "softmax_focal_loss", "SoftmaxFocalLoss", "bbox_overlaps"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_alpha(name, alpha):
    """alpha in [0, 1]: fastloss reads a negative alpha as "no alpha weighting" (torchvision's -1),
    mmdetection / mmcv put it in their formula as is -- so a negative one is refused."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha must be in [0, 1], got {alpha}")


def _background_labels(label, num_classes):
    """Labels outside [0, C) become the background C (mmdetection's QFL / one-hot BCE, mmcv)."""
    label = label.long()
    return torch.where((label >= 0) & (label < num_classes), label, torch.full_like(label, num_classes))


def _check_focal_args(name, input, target, weight, reduction):
    """mmcv's assertions (input (N, C), int64 labels (N,), weight (C,), the three reductions) as ValueError."""
    if target.dtype != torch.long or input.dim() != 2 or target.dim() != 1 or input.size(0) != target.size(0):
        raise ValueError(f"{name}: input must be (N, C) and target int64 labels (N,), got {tuple(input.shape)} and "
                         f"{target.dtype} {tuple(target.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if weight is not None and (weight.dim() != 1 or weight.numel() != input.size(1)):
        raise ValueError(f"{name}: weight must be (C,) = ({input.size(1)},), got {tuple(weight.shape)}")


def _row_mean(loss, input, reduction):
    """mmcv's "mean": the sum over the N rows (0 for N = 0; mmcv: NaN)."""
    if reduction == "mean":
        loss = loss / max(input.size(0), 1)
    return loss.to(input.dtype)


def sigmoid_focal_loss(input, target, gamma=2.0, alpha=0.25, weight=None, reduction='mean'):
    """mmcv's ``sigmoid_focal_loss`` (``mmcv.ops``; Lin et al., arXiv 1708.02002) over
    :func:`fastloss.sigmoid_focal_loss`.

    Args:
        input: logits (N, C), floating.
        target: int64 labels (N,); a label outside [0, C) marks a background row (every class
            negative).
        gamma: focusing exponent (>= 0); alpha: weight of the positives, in [0, 1].
        weight: optional per-class weights (C,): each row's loss is scaled by the weight of its
            label's class (mmcv's ``weight[target]``; a background row has none: ValueError).
        reduction: "none" (N, C) | "sum" | "mean" (the sum over the N rows, not the elements).

    Returns the loss in input's dtype.  Raises ValueError for the shapes, dtypes and values
    mmcv asserts on, labels >= C with a weight, alpha outside [0, 1]."""
    _check_alpha("sigmoid_focal_loss", alpha)
    _check_focal_args("sigmoid_focal_loss", input, target, weight, reduction)
    C = input.size(1)
    labels = _background_labels(target, C)
    row_weight = None
    if weight is not None:
        if bool((labels == C).any()):
            raise ValueError("sigmoid_focal_loss: a per-class weight needs every label in [0, C) (mmcv reads past the weight "
                             "for background rows)")
        row_weight = weight[labels]
    loss = _pointwise.sigmoid_focal_loss(input, labels, alpha, gamma, "none" if reduction == "none" else "sum", weight=row_weight)
    return _row_mean(loss, input, reduction)


def softmax_focal_loss(input, target, gamma=2.0, alpha=0.25, weight=None, reduction='mean'):
    """mmcv's ``softmax_focal_loss`` (``mmcv.ops``): per row -alpha (1 - p_y)^gamma log p_y
    times ``weight[y]``, p = softmax over the C classes, over :func:`fastloss.softmax_focal_loss`.

    Args:
        input: logits (N, C), floating.
        target: int64 labels (N,) in [0, C); a negative label gives its row loss 0 (mmcv).
        gamma: >= 0; alpha: >= 0, the same for every class; weight: optional (C,).
        reduction: "none" (N,) | "sum" | "mean" (the sum over the N rows).

    Returns the loss in input's dtype.  Raises ValueError for mmcv's assertions, labels >= C,
    gamma or alpha < 0."""
    _check_focal_args("softmax_focal_loss", input, target, weight, reduction)
    loss = _rowwise.softmax_focal_loss(input, target, alpha=alpha, gamma=gamma, weight=weight,
                                       reduction="none" if reduction == "none" else "sum", ignore_index=None)
    return _row_mean(loss, input, reduction)


class _FocalModule(nn.Module):
    """mmcv's focal-loss module shape: (gamma, alpha, weight buffer, reduction), forward(input, target)."""

    _fn = None

    def __init__(self, gamma: float, alpha: float, weight: Optional[torch.Tensor] = None, reduction: str = 'mean'):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.register_buffer('weight', weight)
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: Union[torch.LongTensor, torch.cuda.LongTensor]) -> torch.Tensor:
        return type(self)._fn(input, target, self.gamma, self.alpha, self.weight, self.reduction)

    def __repr__(self):
        return f"{self.__class__.__name__}(gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction})"


class SigmoidFocalLoss(_FocalModule):
    """mmcv's ``SigmoidFocalLoss`` module: :func:`sigmoid_focal_loss` with its arguments stored.

    Args: gamma, alpha, weight (a buffer, (C,)), reduction -- as :func:`sigmoid_focal_loss`.
    Raises ValueError at construction for alpha outside [0, 1]."""

    _fn = staticmethod(sigmoid_focal_loss)

    def __init__(self, gamma: float, alpha: float, weight: Optional[torch.Tensor] = None, reduction: str = 'mean'):
        _check_alpha("SigmoidFocalLoss", alpha)
        super().__init__(gamma, alpha, weight, reduction)


class SoftmaxFocalLoss(_FocalModule):
    """mmcv's ``SoftmaxFocalLoss`` module: :func:`softmax_focal_loss` with its arguments stored.

    Args: gamma, alpha, weight (a buffer, (C,)), reduction -- as :func:`softmax_focal_loss`."""

    _fn = staticmethod(softmax_focal_loss)


def bbox_overlaps(bboxes1: torch.Tensor, bboxes2: torch.Tensor, mode: str = 'iou', aligned: bool = False,
                  offset: int = 0) -> torch.Tensor:
    """mmcv's ``bbox_overlaps`` (``mmcv.ops``) over :func:`fastloss.box_iou` (formula: module docstring).

    Args:
        bboxes1: (m, 4) xyxy boxes (pixels), or an empty tensor; bboxes2: (n, 4) or empty.
        mode: "iou" | "iof" (intersection over bboxes1's area).
        aligned: False -> (m, n); True -> m == n and (m,).
        offset: 0, or 1 for the "+1" pixel convention.

    Returns the overlaps in bboxes1's dtype, zeros when either set is empty, without autograd
    history.  Raises ValueError where mmcv asserts (mode, shapes, offset)."""
    if mode not in ('iou', 'iof'):
        raise ValueError(f"bbox_overlaps: mode must be 'iou' or 'iof', got {mode!r}")
    for name, b in (("bboxes1", bboxes1), ("bboxes2", bboxes2)):
        if not (b.size(-1) == 4 or b.size(0) == 0):
            raise ValueError(f"bbox_overlaps: {name} must be (n, 4) or empty, got {tuple(b.shape)}")
    if offset not in (0, 1):
        raise ValueError(f"bbox_overlaps: offset must be 0 or 1, got {offset!r}")
    rows, cols = bboxes1.size(0), bboxes2.size(0)
    if aligned and rows != cols:
        raise ValueError(f"bbox_overlaps: aligned needs as many boxes in each set, got {rows} and {cols}")
    if rows * cols == 0:
        return bboxes1.new_zeros(rows if aligned else (rows, cols))
    with torch.no_grad():
        b1, b2 = bboxes1.reshape(rows, 4), bboxes2.reshape(cols, 4)
        if offset:
            # (x2 + 1) - x1 is the kernel's extent: mmcv's (x2 - x1) + 1
            shift = b1.new_tensor([0, 0, 1, 1])
            b1, b2 = b1 + shift, b2 + shift.to(b2.dtype)
            eps = 1.0
        else:
            eps = torch.finfo(torch.promote_types(b1.dtype, b2.dtype)).tiny  # max(U, tiny): mmcv's max(U, 0) for U > 0
        ious = _box_iou.box_iou(b1, b2, mode, aligned=aligned, eps=eps, convention="mmdet")
    return ious.to(bboxes1.dtype)
