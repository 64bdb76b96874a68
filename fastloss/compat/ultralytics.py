"""ultralytics' box IoU and detection losses over fastloss's kernels.

Peer: ultralytics 8.4 (checked against 8.4.190): ``ultralytics.utils.metrics.bbox_iou`` /
``box_iou`` and ``ultralytics.utils.loss.VarifocalLoss`` / ``FocalLoss`` / ``DFLoss`` /
``BboxLoss``, with their names, signatures, defaults, return shapes and dtypes::

    from fastloss.compat import ultralytics as ul     # instead of ultralytics.utils.loss / metrics
    iou = ul.bbox_iou(pred_xywh, gt_xywh, GIoU=True)  # (..., 1), gradients for both boxes

or patch ultralytics in place (before its loss / trainer is built)::

    fastloss.patch("ultralytics")

This module imports ultralytics only in :func:`_patch`.

What runs where:

* ``bbox_iou``, ``box_iou``: fastloss's box kernels (:func:`fastloss.box_iou`, differentiable
  w.r.t. both box sets; IoU, GIoU, DIoU and CIoU are symmetric in the two boxes, CIoU's alpha
  held constant in the backward as ultralytics does).  ``bbox_iou``'s centre form
  (``xywh=True``) is fastloss's convention "fastloss" in fmt cxcywh (ultralytics puts eps only
  in the denominators there); its corner form (``xywh=False``) is convention "ultralytics",
  which adds eps to each box's height (h = y2 - y1 + eps) in the union and in CIoU's aspect
  term, as ultralytics does.
* ``VarifocalLoss``, ``FocalLoss``: the pointwise engine (:func:`fastloss.varifocal_loss`
  with ``positive=label``, :func:`fastloss.sigmoid_focal_loss`), summed in the kernel:
  ultralytics' ``.mean(1).sum()`` is the total over ``pred.shape[1]``.
* ``DFLoss``: the row-wise engine (:func:`fastloss.distribution_focal_loss` with
  ``max_target = reg_max - 1 - 0.01``, ultralytics' clamp), mean over the 4 sides.
* ``BboxLoss``: its CIoU term is the paired kernel (:func:`fastloss.box_iou_loss`, kind "ciou",
  convention "ultralytics": ultralytics' ``1 - bbox_iou(..., xywh=False, CIoU=True)``), its DFL
  (or, for ``reg_max <= 1``, L1) term the row-wise / pointwise engine.

Differences from ultralytics (each deliberate; the tests check the rest is equal):

* Boxes with a negative width or height are clamped to zero area (ultralytics multiplies the
  signed sides: a box inverted in both axes gets a positive area, and its GIoU against any
  box comes out as a perfect match, 1 - eps).  In corner form the height is clamped first,
  then carries eps: max(y2 - y1, 0) + eps.
* CIoU of a box with zero width and height is finite (its aspect angle is 0); ultralytics'
  ``atan(w / h)`` gives NaN there (centre form; the corner form's h + eps is never 0).
* Exactly touching boxes (zero-width overlap): the intersection's derivative is 0 there
  (fastloss's relu convention); ultralytics' ``clamp_(0)`` passes 1.  Values agree.
* ``eps`` must be > 0 (ValueError); ultralytics accepts 0 and returns NaN for an empty union.
* fp16 / bf16 boxes are computed in float32 and returned in their dtype (ultralytics computes
  in fp16 / bf16); integer boxes are computed in the default float dtype (ultralytics mixes
  integer areas with float corners; the values agree while areas fit the float's mantissa).
* ``VarifocalLoss``: ``label`` must be 0 / 1 and ``gt_score`` 0 where ``label`` is 0 (how
  ultralytics' RT-DETR loss calls it); anything else raises ValueError for CPU tensors (for
  CUDA tensors only in checked mode, :func:`fastloss.checked_labels`, which syncs; unchecked,
  an element counts as positive where label > 0 and its negative weight is
  alpha |sigmoid(x) - gt_score|^gamma).  Its BCE is computed in the result dtype (float64
  for float64 inputs) where ultralytics casts it to float32 first.  For fp16 / bf16 inputs
  the whole loss, focal weight included, is computed in float32; ultralytics forms the weight
  alpha sigmoid(x)^gamma (1 - label) + gt_score label in fp16 / bf16 and multiplies its
  float32 BCE by it (a relative difference of about fp16's rounding, ~1e-3, e.g. 8e-4 on a
  sum of a few hundred elements).  The value checks are skipped under torch.compile.
* ``FocalLoss``: ``alpha`` must be one number (ultralytics' tensor also takes a per-class
  list); alpha <= 0 disables the alpha factor as in ultralytics; 0 < alpha <= 1 required
  otherwise (alpha > 1 gives negative weights in ultralytics: ValueError here).  ``gamma``
  must be >= 0.  alpha's number is read when ``self.alpha`` is set, not in the forward (no
  ``.item()`` in a compiled graph); ultralytics also moves ``self.alpha`` to pred's device and
  dtype in its forward, this module leaves the attribute as set.
* ``DFLoss``: ``target`` is not clamped in place (ultralytics' ``clamp_`` rewrites the
  caller's tensor) and is not differentiated (ValueError if it requires grad; ultralytics
  differentiates its interpolation weights).  It defines ``forward`` (module hooks run);
  ultralytics overrides ``__call__`` with the same signature.
"""
from __future__ import annotations

import torch
from torch import nn

import fastloss
from fastloss.ops import _common

__all__ = ["bbox_iou", "box_iou", "VarifocalLoss", "FocalLoss", "DFLoss", "BboxLoss", "TaskAlignedAssigner"]


def _float_boxes(name, b):
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
    if b.dim() == 0 or b.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(b.shape)}")
    return b if b.is_floating_point() else b.to(torch.get_default_dtype())


def bbox_iou(
    box1: torch.Tensor,
    box2: torch.Tensor,
    xywh: bool = True,
    GIoU: bool = False,
    DIoU: bool = False,
    CIoU: bool = False,
    eps: float = 1e-7,
) -> torch.Tensor:
    """IoU, GIoU, DIoU or CIoU of ``box1`` and ``box2``, element by element with broadcasting
    (ultralytics 8.4 ``ultralytics.utils.metrics.bbox_iou``).

    Args:
        box1, box2: (..., 4) boxes whose leading dims broadcast ((4,), (N, 4), (B, N, 1, 4)
            against (B, 1, M, 4), ...); any unit, fp16/bf16/fp32/fp64.
        xywh: True: (cx, cy, w, h) boxes; False: (x1, y1, x2, y2).
        GIoU, DIoU, CIoU: the metric; CIoU wins over DIoU over GIoU, none set gives IoU.
        eps: > 0; placed as ultralytics does: IoU = I / (U + eps), GIoU's (C - U) / (C + eps),
            c2 = cw^2 + ch^2 + eps, CIoU alpha = v / (1 - IoU + v + eps); with ``xywh=False``
            also h = y2 - y1 + eps for both boxes (in U and in CIoU's v).

    Returns the metric, shape broadcast(box1.shape[:-1], box2.shape[:-1]) + (1,), in the
    promoted dtype of the boxes; differentiable w.r.t. both.  Raises ValueError for a last
    dim other than 4, non-broadcasting shapes, eps <= 0.
    """
    box1, box2 = _float_boxes("box1", box1), _float_boxes("box2", box2)
    try:
        box1, box2 = torch.broadcast_tensors(box1, box2)
    except RuntimeError as e:
        raise ValueError(f"bbox_iou: box1 {tuple(box1.shape)} and box2 {tuple(box2.shape)} do not broadcast") from e
    kind = "ciou" if CIoU else "diou" if DIoU else "giou" if GIoU else "iou"
    fmt, convention = ("cxcywh", "fastloss") if xywh else ("xyxy", "ultralytics")
    return fastloss.box_iou(box1, box2, kind=kind, fmt=fmt, aligned=True, eps=eps, convention=convention).unsqueeze(-1)


def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of (x1, y1, x2, y2) boxes (ultralytics 8.4 ``ultralytics.utils.metrics.box_iou``).

    Args:
        box1: (N, 4); box2: (M, 4); computed in float32 whatever their dtype, as ultralytics
            does (its ``.float()``).
        eps: > 0; IoU = I / (area1 + area2 - I + eps).

    Returns (N, M) float32, differentiable w.r.t. both box sets.  Raises ValueError for inputs
    that are not 2-D (..., 4) or eps <= 0.
    """
    for name, b in (("box1", box1), ("box2", box2)):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"box_iou: {name} must be an (n, 4) tensor, got {getattr(b, 'shape', type(b).__name__)}")
    return fastloss.box_iou(box1.float(), box2.float(), kind="iou", fmt="xyxy", eps=eps)


def _sum_over_dim1(name, pred):
    """ultralytics' ``loss.mean(1).sum()`` is the total over pred.shape[1]: check it has a dim 1."""
    if not isinstance(pred, torch.Tensor) or pred.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dims (the loss is averaged over dim 1), got "
                         f"{getattr(pred, 'shape', type(pred).__name__)}")
    return pred.shape[1]


class VarifocalLoss(nn.Module):
    """Varifocal loss (Zhang et al., arXiv 2008.13367), ultralytics 8.4's form
    (``ultralytics.utils.loss.VarifocalLoss``), on fastloss's pointwise engine.

    Per element BCE(x, q) * (alpha sigmoid(x)^gamma (1 - label) + q label), the weight
    differentiated; the result is ``.mean(1).sum()`` of that.

    Args:
        gamma: focusing exponent (>= 0); alpha: weight of the negatives, in [0, 1].
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.75):
        super().__init__()
        _common.nonneg("gamma", gamma)
        _common.check_param("alpha", alpha, lambda a: 0 <= a <= 1, "in [0, 1]")
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, pred_score: torch.Tensor, gt_score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Args:
            pred_score: logits (B, N, C) (any shape with a dim 1); differentiable.
            gt_score: the IoU-aware target q in [0, 1], pred_score's shape, 0 where label is 0.
            label: 1 for the positives, 0 elsewhere (any dtype), pred_score's shape or
                broadcastable to it.

        Returns a 0-dim loss: the sum over elements / pred_score.shape[1], in float32 or the
        promoted dtype of the inputs if wider (ultralytics' float32 BCE times its weight).
        Raises ValueError for bad shapes, a label other than 0 / 1 or a nonzero gt_score where
        label is 0 (CPU tensors; CUDA in checked mode; not under torch.compile, where the
        checks, host reads, are skipped).
        """
        n = _sum_over_dim1("pred_score", pred_score)
        for name, t in (("gt_score", gt_score), ("label", label)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if gt_score.shape != pred_score.shape:
            raise ValueError(f"VarifocalLoss: gt_score must have pred_score's shape {tuple(pred_score.shape)}, got {tuple(gt_score.shape)}")
        try:
            label = label.expand(pred_score.shape)
        except RuntimeError as e:
            raise ValueError(f"VarifocalLoss: label of shape {tuple(label.shape)} does not broadcast to pred_score's "
                             f"{tuple(pred_score.shape)}") from e
        dtype = torch.promote_types(torch.float32, torch.promote_types(pred_score.dtype, gt_score.dtype))
        if label.is_floating_point():
            dtype = torch.promote_types(dtype, label.dtype)
        # value checks read the tensors on the host: eager only (no graph break under torch.compile)
        if _common.labels_checked_on(label.device) and label.numel() and not torch.compiler.is_compiling():
            neg = label == 0
            if bool((~neg & (label != 1)).any()):
                raise ValueError("VarifocalLoss: label must be 0 or 1 (fastloss weights an element either as a positive or a negative)")
            if bool((neg & (gt_score != 0)).any()):
                raise ValueError("VarifocalLoss: gt_score must be 0 where label is 0 (fastloss's negative weight is "
                                 "alpha |sigmoid(x) - gt_score|^gamma, ultralytics' alpha sigmoid(x)^gamma: equal only there)")
        loss = fastloss.varifocal_loss(pred_score.to(dtype), gt_score.to(dtype), alpha=self.alpha, gamma=self.gamma,
                                       iou_weighted=True, reduction="sum", positive=label.to(dtype))
        return loss / n


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., arXiv 1708.02002), ultralytics 8.4's form
    (``ultralytics.utils.loss.FocalLoss``), on fastloss's pointwise engine.

    Per element BCE(x, t) (1 - p_t)^gamma alpha_t (alpha_t = t alpha + (1 - t)(1 - alpha),
    only when alpha > 0); the result is ``.mean(1).sum()`` of that.

    Args:
        gamma: focusing exponent (>= 0).
        alpha: one number; <= 0 disables the alpha factor; else in (0, 1].  Kept as
            ``self.alpha = torch.tensor(alpha)`` like ultralytics (the default dtype's rounding
            of alpha is the value used, as there).  Its number is read on the host when it is
            set (here and on any later ``self.alpha = ...``), so the forward holds no
            ``.item()`` (torch.compile(fullgraph=True) traces it; ultralytics' own forward
            branches on ``(self.alpha > 0).any()``, a graph break).
    """

    def __init__(self, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        _common.nonneg("gamma", gamma)
        self.gamma = gamma
        self.alpha = torch.tensor(alpha)

    @property
    def alpha(self) -> torch.Tensor:
        return self._alpha

    @alpha.setter
    def alpha(self, value) -> None:
        value = torch.as_tensor(value)
        if value.numel() != 1:
            raise ValueError(f"FocalLoss: alpha must be one number (a per-class alpha is not supported), got {value!r}")
        number = value.item()  # the kernel's alpha, read once here rather than in the forward
        if number > 1:
            raise ValueError(f"FocalLoss: alpha must be <= 1 (or <= 0 to disable it), got {number!r}")
        self._alpha, self._alpha_number = value, number

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Args:
            pred: logits (B, N, C) (any shape with a dim 1); differentiable.
            label: float targets in [0, 1] (soft allowed) of pred's shape.

        Returns a 0-dim loss, the sum over elements / pred.shape[1], in the promoted dtype of
        pred and label.  Raises ValueError for bad shapes or a non-float label.
        """
        n = _sum_over_dim1("pred", pred)
        if not isinstance(label, torch.Tensor) or not label.is_floating_point() or label.shape != pred.shape:
            raise ValueError(f"FocalLoss: label must be a float tensor of pred's shape {tuple(pred.shape)}, got "
                             f"{getattr(label, 'dtype', type(label).__name__)} {tuple(getattr(label, 'shape', ()))}")
        alpha = self._alpha_number
        loss = fastloss.sigmoid_focal_loss(pred, label, alpha=alpha if alpha > 0 else -1.0, gamma=self.gamma, reduction="sum")
        return loss / n


class DFLoss(nn.Module):
    """Distribution focal loss (Li et al., arXiv 2006.04388), ultralytics 8.4's form
    (``ultralytics.utils.loss.DFLoss``), on fastloss's row-wise engine.

    Args:
        reg_max: number of bins (>= 2 for a usable loss); targets are clamped to
            [0, reg_max - 1 - 0.01] as in ultralytics.
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max

    def forward(self, pred_dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args:
            pred_dist: logits (target.numel(), C) over C >= reg_max bins; differentiable.
            target: distances in bins, (..., 4) (any shape; not modified, not differentiated).

        Returns the loss averaged over target's last dim, shape target.shape[:-1] + (1,), in
        the promoted dtype of pred_dist and target.  Raises ValueError for bad shapes, a
        reg_max past the bins, or a target that requires grad.
        """
        if not isinstance(pred_dist, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError("DFLoss: pred_dist and target must be torch.Tensors")
        if pred_dist.dim() != 2 or target.dim() == 0 or pred_dist.shape[0] != target.numel():
            raise ValueError(f"DFLoss: pred_dist must be (target.numel(), bins) = ({target.numel()}, bins), got {tuple(pred_dist.shape)} "
                             f"for target {tuple(target.shape)}")
        loss = fastloss.distribution_focal_loss(pred_dist.view(*target.shape, pred_dist.shape[1]), target, reduction="none",
                                                max_target=self.reg_max - 1 - 0.01)
        return loss.mean(-1, keepdim=True)


def _ltrb(anchor_points, boxes, hi=None):
    """Distances (left, top, right, bottom) from each anchor point (..., 2) to the sides of
    its (x1, y1, x2, y2) box (..., 4), clamped to [0, hi - 0.01] when ``hi`` is given
    (ultralytics' ``bbox2dist``)."""
    dist = torch.cat((anchor_points - boxes[..., :2], boxes[..., 2:] - anchor_points), -1)
    return dist if hi is None else dist.clamp(0, hi - 0.01)


class BboxLoss(nn.Module):
    """YOLO box-regression losses (ultralytics 8.4 ``ultralytics.utils.loss.BboxLoss``): the
    CIoU loss and the DFL (``reg_max > 1``) or L1 (``reg_max <= 1``) loss over the
    foreground anchors, each weighted by the anchor's summed target score and divided by
    ``target_scores_sum``.

    Both terms run on fastloss: the CIoU term is the paired kernel in ultralytics' corner-form
    eps placement (convention "ultralytics", eps 1e-7), the DFL / L1 term
    (``self.dfl_loss`` is this module's :class:`DFLoss`) the row-wise / pointwise engine.

    Args:
        reg_max: bins of the distance distribution; DFL when > 1, else L1 on distances
            normalised by the image size.
    """

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.dfl_loss = DFLoss(reg_max) if reg_max > 1 else None

    def forward(
        self,
        pred_dist: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        target_bboxes: torch.Tensor,
        target_scores: torch.Tensor,
        target_scores_sum: torch.Tensor,
        fg_mask: torch.Tensor,
        imgsz: torch.Tensor,
        stride: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args (B images, A anchors, units of the feature grid unless said):
            pred_dist: (B, A, 4 reg_max) distribution logits (reg_max > 1) or (B, A, 4)
                distances; differentiable.
            pred_bboxes: (B, A, 4) decoded (x1, y1, x2, y2) boxes; differentiable.
            anchor_points: (A, 2); target_bboxes: (B, A, 4) assigned boxes;
            target_scores: (B, A, nc); target_scores_sum: 0-dim normaliser;
            fg_mask: (B, A) bool; imgsz: (2,) (h, w) in pixels; stride: (A, 1) pixels per cell.

        Returns ``(loss_iou, loss_dfl)``, two 0-dim tensors (0 without foreground anchors,
        still connected to the predictions).
        """
        fg = fg_mask.nonzero(as_tuple=True)
        weight = target_scores[fg].sum(-1, keepdim=True)
        # 1 - CIoU per foreground anchor: ultralytics' 1 - bbox_iou(..., xywh=False, CIoU=True)
        loss_ciou = fastloss.box_iou_loss(pred_bboxes[fg], target_bboxes[fg], "ciou", "none", convention="ultralytics")
        loss_iou = (loss_ciou.unsqueeze(-1) * weight).sum() / target_scores_sum
        # the target distances of the foreground anchors only (ultralytics encodes every anchor, then selects)
        anchors, boxes = anchor_points[fg[-1]], target_bboxes[fg]
        if self.dfl_loss:
            reg_max = self.dfl_loss.reg_max
            loss_dfl = self.dfl_loss(pred_dist[fg].view(-1, reg_max), _ltrb(anchors, boxes, reg_max - 1)) * weight
        else:
            # distances in pixels over the image size: x sides by the width, y sides by the height
            size, scale = imgsz[[1, 0, 1, 0]], stride[fg[-1]]
            target_ltrb = _ltrb(anchors, boxes) * scale / size
            loss_dfl = fastloss.l1_loss(pred_dist[fg] * scale / size, target_ltrb, reduction="none").mean(-1, keepdim=True) * weight
        return loss_iou, loss_dfl.sum() / target_scores_sum


def _assign(a, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
    """fastloss.task_aligned_assign with the settings of assigner ``a`` (ultralytics' attributes)."""
    return fastloss.task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=a.topk, num_classes=a.num_classes,
                                        alpha=a.alpha, beta=a.beta, stride_val=a.stride_val, eps=a.eps)


class TaskAlignedAssigner(nn.Module):
    """ultralytics' ``TaskAlignedAssigner`` (``ultralytics.utils.tal``, 8.4.190) over
    :func:`fastloss.task_aligned_assign`: the same arguments, ``forward(pd_scores, pd_bboxes,
    anc_points, gt_labels, gt_bboxes, mask_gt)`` and five outputs with their dtypes, without its
    (B, M, A) tensors, its host sync or its out-of-memory fallback (a crowded batch at xView
    scale, B 128 x M 5000 x A 8400, needs about 75 GB there, the outputs plus O(candidates)
    here).  On the CPU all five outputs are bit-equal to ultralytics' (tests/test_assign.py);
    on CUDA the cuda backend follows ultralytics' CUDA arithmetic and torch's CUDA top-k tie
    rule (checked on a GPU by tools/cuda_smoke.py).  :func:`fastloss.patch` swaps it in for
    the detection loss (``_patch``); explicit use:
    ``loss.assigner = fastloss.compat.ultralytics.TaskAlignedAssigner(topk=10, num_classes=nc,
    alpha=0.5, beta=6.0, stride=model.stride.tolist())``.

    Not supported (ValueError): ``topk2`` other than ``topk`` (ultralytics' second filtering,
    off by default) and extra batch tensors for ``pair_overlaps`` (its subclasses' hook); the
    patched class falls back to ultralytics' code for these."""

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0, beta: float = 6.0, stride: list | None = None,
                 eps: float = 1e-9, topk2: int | None = None):
        super().__init__()
        if topk2 is not None and topk2 != topk:
            raise ValueError("TaskAlignedAssigner: topk2 != topk is not supported by fastloss's compat layer")
        self.topk, self.topk2, self.num_classes, self.alpha, self.beta, self.eps = topk, topk2 or topk, num_classes, alpha, beta, eps
        self.stride = stride if stride is not None else [8, 16, 32]
        self.stride_val = self.stride[1] if len(self.stride) > 1 else self.stride[0]

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra):
        """ultralytics' shapes: pd_scores (B, A, nc) probabilities, pd_bboxes (B, A, 4) and
        gt_bboxes (B, M, 4) xyxy pixels, anc_points (A, 2), gt_labels / mask_gt (B, M, 1) ->
        (target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx)."""
        if extra:
            raise ValueError(f"TaskAlignedAssigner: extra tensors {sorted(extra)} (pair_overlaps) are not supported by fastloss's "
                             f"compat layer")
        return _assign(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)


_SWAPPED = {}  # ultralytics' TaskAlignedAssigner class -> the subclass fastloss.patch puts in its place


def _swapped_assigner(original):
    """A subclass of ultralytics' ``TaskAlignedAssigner`` (so isinstance checks, attributes and
    state hold) whose forward is :class:`TaskAlignedAssigner`'s, except where that cannot
    reproduce ultralytics: ``topk2 != topk``, extra ``pair_overlaps`` tensors, or a subclass
    of it (which may override any step) -- there ultralytics' own forward runs."""
    if original not in _SWAPPED:
        class SwappedTaskAlignedAssigner(original):
            __doc__ = f"ultralytics' TaskAlignedAssigner with fastloss's forward ({__name__}._swapped_assigner)."

            def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra):
                if extra or self.topk2 != self.topk or type(self) is not SwappedTaskAlignedAssigner:
                    return super().forward(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra)
                with torch.no_grad():
                    return _assign(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)

        SwappedTaskAlignedAssigner.__name__ = SwappedTaskAlignedAssigner.__qualname__ = "TaskAlignedAssigner"
        _SWAPPED[original] = SwappedTaskAlignedAssigner
    return _SWAPPED[original]


def _patch(handle):
    """``fastloss.patch("ultralytics")``: replaces, in place,

    * in ``ultralytics.utils.loss`` (its module globals): ``VarifocalLoss``, ``FocalLoss``,
      ``DFLoss``, ``BboxLoss`` -- the detection losses (v8DetectionLoss and its subclasses)
      and the original ``RotatedBboxLoss`` (whose inherited ``__init__`` builds ``DFLoss``)
      built after the patch use them;
    * in ``ultralytics.models.utils.loss`` (RT-DETR's ``DETRLoss``): ``FocalLoss``,
      ``VarifocalLoss`` and ``bbox_iou`` (called there in centre form only: its GIoU loss
      and the IoU targets of the varifocal loss);
    * in ``ultralytics.utils.loss``: ``TaskAlignedAssigner``, the name ``v8DetectionLoss.__init__``
      (inherited by the segmentation and pose losses) builds its assigner from, by a
      subclass of ultralytics' class running :func:`fastloss.task_aligned_assign` (the five
      outputs bit-equal on the CPU; on CUDA torch's CUDA tie rule), ultralytics' own forward
      where fastloss cannot follow (``topk2``, ``pair_overlaps`` tensors, subclasses).  The
      Seg / Pose / Rotated assigners (built under their own names: SegmentLoss26,
      PoseLoss26, v8OBBLoss) stay ultralytics'.

    Left alone, on purpose: ``ultralytics.utils.metrics.bbox_iou`` / ``box_iou`` (the
    public functions, called by the task-aligned assigner, validation and users: the same
    formulas, but not the same rounding, and fastloss's finite answers where ultralytics
    gives NaN), ``ultralytics.utils.tal``'s
    ``bbox_iou`` (the assigner's CIoU chooses anchors by top-k / argmax: any difference, even
    in the last bit, can change an assignment and with it the whole loss; the swapped
    assigner computes ultralytics' CIoU bit for bit itself) and
    ``ultralytics.models.utils.ops``' (the Hungarian matcher's GIoU cost, the same reason).
    Objects keep what they captured: loss objects (``v8DetectionLoss``, ``DETRLoss``, ...)
    built before the patch keep ultralytics' classes, and those built while patched keep
    fastloss's after undo (undo restores the module attributes only).
    """
    import ultralytics.models.utils.loss as detr_loss
    import ultralytics.utils.loss as yolo_loss

    for name in ("VarifocalLoss", "FocalLoss", "DFLoss", "BboxLoss"):
        handle.setattr(yolo_loss, name, globals()[name])
    for name in ("FocalLoss", "VarifocalLoss", "bbox_iou"):
        handle.setattr(detr_loss, name, globals()[name])
    import ultralytics.utils.tal as tal

    handle.setattr(yolo_loss, "TaskAlignedAssigner", _swapped_assigner(tal.TaskAlignedAssigner))
