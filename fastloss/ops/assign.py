"""Label assigners (family ``assign``): registration and the public functions.

Design, the peers' algorithms and what each materialises: ../shared/assigners.md.  The spec of
each assigner is fastloss/reference/assign.py; the kernels (csrc/cpu/assign.cpp,
csrc/cuda/assign.cu) compute the same numbers without the (images, ground truths, anchors)
tensors, with static shapes and no host synchronisation.

Kernel convention of ``max_iou_assign``: priors (B or 1, A, 4), gt_bboxes (B, M, 4)
contiguous, one floating dtype; gt_valid (B, M) and ignored (B, A) contiguous bool ->
(gt_inds (B, A) int64, max_overlaps (B, A)).  ``atss_assign``: the same, plus the priors
per level (a list of ints summing to A) and topk.  Assignments are not differentiable.
"""
import numbers
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common
from fastloss.reference import assign as reference

MAX_IOU_OP = "max_iou_assign"


@torch.library.custom_op("fastloss::max_iou_assign", mutates_args=())
def max_iou_assign_op(priors: Tensor, gt_bboxes: Tensor, gt_valid: Tensor, ignored: Tensor, pos_iou_thr: float, neg_lo: float, neg_hi: float,
                      min_pos_iou: float, match_low_quality: bool, gt_max_assign_all: bool, backend: Optional[str]) -> tuple[Tensor, Tensor]:
    forward, _ = _backend.implementation(MAX_IOU_OP, priors.device, backend)
    return forward(priors, gt_bboxes, gt_valid, ignored, pos_iou_thr, neg_lo, neg_hi, min_pos_iou, match_low_quality, gt_max_assign_all)


def _per_prior_outputs(priors, gt_bboxes):
    """The fake outputs of the max-IoU and ATSS ops: (gt_inds (B, A) int64, max_overlaps (B, A))."""
    shape = (gt_bboxes.shape[0], priors.shape[1])
    return priors.new_empty(shape, dtype=torch.int64), priors.new_empty(shape)


@max_iou_assign_op.register_fake
def _(priors, gt_bboxes, gt_valid, ignored, pos_iou_thr, neg_lo, neg_hi, min_pos_iou, match_low_quality, gt_max_assign_all, backend):
    return _per_prior_outputs(priors, gt_bboxes)


def _register_backends(op, reference_fn, native_name, devices):
    """The reference and, where fastloss._C has ``native_name``, its kernels on ``devices``."""
    _backend.register(op, "reference", reference_fn, None)
    if not hasattr(torch.ops.fastloss, native_name):
        return

    def native(*args):
        return getattr(torch.ops.fastloss, native_name)(*args)

    for device, built in (("cpu", _extension.has_cpu), ("cuda", _extension.has_cuda)):
        if device in devices and built():
            _backend.register(op, device, native, None)


_register_backends(MAX_IOU_OP, reference.max_iou_core, "max_iou_assign_native", ("cpu", "cuda"))


def _threshold(name, v):
    """An IoU / IoF threshold as a float: a real number, +-inf allowed (never / always met); NaN
    raises (no comparison with it holds: no positive, no negative, no ignored prior, silently)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
        raise ValueError(f"{name} must be a real number (not NaN), got {v!r}")
    return float(v)


def _boxes(name, t, dims, op="max_iou_assign"):
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in dims or t.shape[-1] != 4:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be floating xyxy boxes of shape {' or '.join(f'{d}-D (..., 4)' for d in dims)}, "
                         f"got {shape}")


def _describe(t):
    """A tensor argument's dtype and shape (anything else's type) for an error message."""
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _check_gts(op, priors, gt_bboxes, gt_labels, gt_valid, ignore_bboxes, ignore_valid):
    """The max-IoU / ATSS argument checks shared by both; returns gt_valid (all True for None).
    The masks are bool, as gt_valid always was: an integer mask raises rather than being read as
    True / False."""
    _boxes("priors", priors, (2, 3), op)
    _boxes("gt_bboxes", gt_bboxes, (3,), op)
    B, M = gt_bboxes.shape[:2]
    if priors.dim() == 3 and priors.shape[0] not in (1, B):
        raise ValueError(f"{op}: priors (B, A, 4) must have B = {B} images, got {tuple(priors.shape)}")
    if not isinstance(gt_labels, torch.Tensor) or gt_labels.shape != (B, M) or gt_labels.is_floating_point():
        raise ValueError(f"{op}: gt_labels must be integer (B, M) = ({B}, {M}), got "
                         f"{tuple(gt_labels.shape) if isinstance(gt_labels, torch.Tensor) else type(gt_labels).__name__}")
    if gt_valid is None:
        gt_valid = torch.ones(B, M, dtype=torch.bool, device=gt_bboxes.device)
    elif not isinstance(gt_valid, torch.Tensor) or gt_valid.shape != (B, M) or gt_valid.dtype != torch.bool:
        raise ValueError(f"{op}: gt_valid must be bool (B, M) = ({B}, {M}), got {_describe(gt_valid)}")
    if ignore_bboxes is not None:
        _boxes("ignore_bboxes", ignore_bboxes, (3,), op)
        Bi, K = ignore_bboxes.shape[:2]
        if Bi not in (1, B):  # one set shared by every image, or one per image
            raise ValueError(f"{op}: ignore_bboxes (B, K, 4) must have gt_bboxes' B = {B} images (or 1, shared), "
                             f"got {tuple(ignore_bboxes.shape)}")
        if ignore_valid is not None and (not isinstance(ignore_valid, torch.Tensor) or ignore_valid.shape != (Bi, K)
                                         or ignore_valid.dtype != torch.bool):
            raise ValueError(f"{op}: ignore_valid must be bool (B, K) = ({Bi}, {K}), ignore_bboxes' first two dims, "
                             f"got {_describe(ignore_valid)}")
    elif ignore_valid is not None:
        raise ValueError(f"{op}: ignore_valid without ignore_bboxes (the mask of which boxes?)")
    _common.check_same_device("priors", priors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, gt_valid=gt_valid, ignore_bboxes=ignore_bboxes,
                              ignore_valid=ignore_valid)
    return gt_valid


def _promoted(op, priors, gt_bboxes, ignore_bboxes, ignore_valid, ignore_iof_thr, ignore_wrt_candidates):
    """Priors (B or 1, A, 4) and gt_bboxes in one contiguous floating dtype (fp32 at least) and
    the ignored priors (B, A) bool."""
    dtype = torch.promote_types(torch.promote_types(priors.dtype, gt_bboxes.dtype), torch.float32)
    p = (priors if priors.dim() == 3 else priors[None]).to(dtype).contiguous()
    g = gt_bboxes.to(dtype).contiguous()
    ignored = reference.ignored_priors(p.expand(gt_bboxes.shape[0], *p.shape[1:]), None if ignore_bboxes is None else ignore_bboxes.to(dtype),
                                       ignore_valid, _threshold("ignore_iof_thr", ignore_iof_thr),
                                       bool(_common.flag("ignore_wrt_candidates", ignore_wrt_candidates)))
    return p, g, ignored.contiguous()


def _labels(gt_inds, gt_labels):
    """The assigned gts' labels (B, A) int64, -1 where gt_inds <= 0."""
    none = torch.full_like(gt_inds, -1)
    if gt_labels.shape[1] == 0:  # no gt to gather a label from
        return none
    return torch.where(gt_inds > 0, gt_labels.long().gather(1, (gt_inds - 1).clamp(min=0)), none)


def max_iou_assign(priors, gt_bboxes, gt_labels, gt_valid=None, *, pos_iou_thr, neg_iou_thr, min_pos_iou=0.0, gt_max_assign_all=True,
                   match_low_quality=True, ignore_bboxes=None, ignore_valid=None, ignore_iof_thr=-1.0, ignore_wrt_candidates=True,
                   backend=None):
    """Max-IoU label assignment with mmdetection's semantics (``MaxIoUAssigner``, mmdetection
    3.3.0: RetinaNet, RPN, Faster R-CNN's RoI head) for a whole batch in one call, without the
    (M, A) IoU matrix per image or a host sync: the IoU in mmdetection's arithmetic (signed
    areas, I / max(U, 1e-6), no FMA), so gt_inds, labels and max_overlaps are bit-equal to
    mmdetection's image-by-image result (fastloss/reference/assign.py ``max_iou_core`` has the
    rules).

    Args:
        priors: (A, 4) anchors shared by the images, or (B, A, 4) (proposals), xyxy pixels.
        gt_bboxes: (B, M, 4) xyxy pixels, padded to the batch's largest gt count.
        gt_labels: (B, M) integer class labels.
        gt_valid: (B, M) bool, False for padding (None: every box real); a padded box never
            claims or blocks a prior.
        pos_iou_thr: a prior whose best IoU is >= this is a positive of its best gt.
        neg_iou_thr: a number t (best IoU in [0, t) is a negative) or a (low, high) tuple.
        min_pos_iou, gt_max_assign_all, match_low_quality: the low-quality matches -- each gt
            with best IoU >= min_pos_iou takes the priors attaining it (all of them, or only
            its first argmax), a later gt winning; off with match_low_quality=False.
        ignore_bboxes: (B, K, 4) (or (1, K, 4), shared by every image) boxes whose priors are ignored (IoF > ignore_iof_thr, over
            the prior's area, or the ignore box's with ``ignore_wrt_candidates=False``);
            ignore_valid bool of ignore_bboxes' (B, K) or (1, K) for their padding (None: every box real).
        The thresholds are real numbers (+-inf allowed: never / always met), not NaN; the
        flags True / False.
        backend: as every fastloss op (reference, cpu, cuda).

    Returns ``(gt_inds, max_overlaps, labels)``, each (B, A): gt_inds int64 (-1 ignored, 0
    negative, g + 1 for gt g's positive, g its index in the padded (B, M)), the best IoU in
    the boxes' dtype (-1 for ignored priors, 0 for images without gts), labels int64 (the
    positive's gt label, -1 elsewhere); (B, 0) for A = 0.  The priors and boxes promote to one
    floating dtype (fp32 at least).  Raises ValueError for bad shapes or dtypes (a mask not
    bool, ignore boxes of another B), a NaN threshold or a flag that is not a bool."""
    gt_valid = _check_gts("max_iou_assign", priors, gt_bboxes, gt_labels, gt_valid, ignore_bboxes, ignore_valid)
    B, M = gt_bboxes.shape[:2]
    pos = _threshold("pos_iou_thr", pos_iou_thr)
    if isinstance(neg_iou_thr, tuple):
        if len(neg_iou_thr) != 2:
            raise ValueError(f"max_iou_assign: a tuple neg_iou_thr must be (low, high), got {neg_iou_thr!r}")
        lo, hi = (_threshold("neg_iou_thr", v) for v in neg_iou_thr)
    else:
        lo, hi = 0.0, _threshold("neg_iou_thr", neg_iou_thr)
    p, g, ignored = _promoted("max_iou_assign", priors, gt_bboxes, ignore_bboxes, ignore_valid, ignore_iof_thr, ignore_wrt_candidates)
    gt_inds, max_overlaps = max_iou_assign_op(p, g, gt_valid.contiguous(), ignored, pos, lo, hi,
                                              _threshold("min_pos_iou", min_pos_iou), bool(_common.flag("match_low_quality", match_low_quality)),
                                              bool(_common.flag("gt_max_assign_all", gt_max_assign_all)), backend)
    return gt_inds, max_overlaps, _labels(gt_inds, gt_labels)


# ====================================================================== ATSS (mmdetection)

ATSS_OP = "atss_assign"


@torch.library.custom_op("fastloss::atss_assign", mutates_args=())
def atss_assign_op(priors: Tensor, num_level_priors: list[int], gt_bboxes: Tensor, gt_valid: Tensor, ignored: Tensor, topk: int,
                   backend: Optional[str]) -> tuple[Tensor, Tensor]:
    forward, _ = _backend.implementation(ATSS_OP, priors.device, backend)
    return forward(priors, num_level_priors, gt_bboxes, gt_valid, ignored, topk)


@atss_assign_op.register_fake
def _(priors, num_level_priors, gt_bboxes, gt_valid, ignored, topk, backend):
    return _per_prior_outputs(priors, gt_bboxes)


_register_backends(ATSS_OP, reference.atss_core, "atss_assign_native", ("cpu", "cuda"))


def atss_assign(priors, num_level_priors, gt_bboxes, gt_labels, gt_valid=None, *, topk=9, ignore_bboxes=None, ignore_valid=None,
                ignore_iof_thr=-1.0, backend=None):
    """Adaptive training sample selection (ATSS, Zhang et al., CVPR 2020, arXiv 1912.02424) with
    mmdetection's semantics (``ATSSAssigner``, mmdetection 3.3.0, ``alpha=None``: ATSS, GFL,
    PAA-free heads) for a whole batch in one call, without mmdetection's (A, M) IoU and
    distance matrices per image or its host syncs: per gt the ``topk`` nearest priors of each
    level by centre distance (torch's top-k tie rule of the device), the threshold mean +
    unbiased std of their IoU (mmdetection's IoU arithmetic), positives at or above it whose
    centre lies inside the gt by more than 0.01 px, and a prior positive for several gts going
    to the largest IoU (the first gt on ties).  The rules: fastloss/reference/assign.py
    ``atss_core``.  gt_inds, labels and max_overlaps equal mmdetection's except where an IoU
    lies within a few ulp of its gt's threshold (the mean's summation order differs from
    torch's shape-dependent one).

    Args:
        priors: (A, 4) anchors shared by the images, or (B, A, 4), xyxy pixels, the levels
            concatenated in order.
        num_level_priors: priors per level, a list of non-negative ints summing to A.
        gt_bboxes: (B, M, 4) xyxy pixels, padded to the batch's largest gt count.
        gt_labels: (B, M) integer class labels.
        gt_valid: (B, M) bool, False for padding (None: every box real); a padded box has no
            candidates and claims no prior.
        topk: candidates per (gt, level), an int >= 1 (mmdetection's configs: 9).
        ignore_bboxes: (B, K, 4) (or (1, K, 4), shared) boxes whose priors are ignored (IoF over the prior's area >
            ignore_iof_thr, mmdetection's rule; their distance becomes 1e8 and, unless
            positive, their gt_inds -1); ignore_valid bool (B, K) (ignore_bboxes' first dims) for their padding (None:
            every box real); ignore_iof_thr a real number (not NaN).
        backend: as every fastloss op (reference, cpu, cuda).

    Returns ``(gt_inds, max_overlaps, labels)``, each (B, A) -- max_iou_assign's order:
    gt_inds int64 (g + 1 for gt g's positive, g its index in the padded (B, M); -1 ignored;
    0 negative), max_overlaps in the boxes' dtype (the positive's IoU, -1e8 elsewhere, as
    mmdetection; 0 for images without gts), labels int64 (the positive's gt label, -1
    elsewhere); (B, 0) for A = 0.  The priors and boxes promote to one floating dtype (fp32 at
    least).  Raises ValueError for bad shapes or dtypes (as :func:`max_iou_assign`), a
    num_level_priors not summing to A, topk < 1 or a NaN ignore_iof_thr."""
    gt_valid = _check_gts("atss_assign", priors, gt_bboxes, gt_labels, gt_valid, ignore_bboxes, ignore_valid)
    A = priors.shape[-2]
    levels = list(num_level_priors) if isinstance(num_level_priors, (list, tuple)) else None
    if (levels is None or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0 for n in levels)
            or sum(levels) != A):
        raise ValueError(f"atss_assign: num_level_priors must be a list of non-negative ints summing to A = {A}, got {num_level_priors!r}")
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
        raise ValueError(f"atss_assign: topk must be an int >= 1, got {topk!r}")
    p, g, ignored = _promoted("atss_assign", priors, gt_bboxes, ignore_bboxes, ignore_valid, ignore_iof_thr, True)
    gt_inds, max_overlaps = atss_assign_op(p, [int(n) for n in levels], g, gt_valid.contiguous(), ignored, int(topk), backend)
    return gt_inds, max_overlaps, _labels(gt_inds, gt_labels)


# ====================================================================== task-aligned (ultralytics)

TAL_OP = "task_aligned_assign"


TIE_RULES = ("cpu", "cuda")  # the native op's tie_rule 0 / 1: torch.topk's tie rule on that device


@torch.library.custom_op("fastloss::task_aligned_assign", mutates_args=())
def task_aligned_assign_op(pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor, gt_bboxes: Tensor, gt_valid: Tensor,
                           topk: int, num_classes: int, alpha: float, beta: float, stride_val: float, eps: float, tie_rule: int,
                           compact: bool, backend: Optional[str]) -> list[Tensor]:
    forward, _ = _backend.implementation(TAL_OP, pd_scores.device, backend)
    return list(forward(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, gt_valid, topk, num_classes, alpha, beta, stride_val, eps,
                        tie_rule, compact))


@task_aligned_assign_op.register_fake
def _(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, gt_valid, topk, num_classes, alpha, beta, stride_val, eps, tie_rule, compact,
      backend):
    B, A = pd_scores.shape[:2]
    return [pd_scores.new_empty((B, A), dtype=torch.int64), pd_scores.new_empty((B, A, 4)),
            pd_scores.new_empty((B, A) if compact else (B, A, num_classes)), pd_scores.new_empty((B, A), dtype=torch.bool),
            pd_scores.new_empty((B, A), dtype=torch.int64)]


def _reference_tal(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, gt_valid, topk, num_classes, alpha, beta, stride_val, eps, tie_rule,
                   compact):
    return reference.task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels[..., None], gt_bboxes, gt_valid[..., None], topk=topk,
                                         num_classes=num_classes, alpha=alpha, beta=beta, stride_val=stride_val, eps=eps,
                                         tie_rule=TIE_RULES[tie_rule], compact=compact)


def _native_tal(*args):
    return torch.ops.fastloss.task_aligned_assign_native(*args)


_backend.register(TAL_OP, "reference", _reference_tal, None)
if _extension.has_cpu() and hasattr(torch.ops.fastloss, "task_aligned_assign_native"):
    _backend.register(TAL_OP, "cpu", _native_tal, None)
if _extension.has_cuda() and hasattr(torch.ops.fastloss, "task_aligned_assign_native"):
    _backend.register(TAL_OP, "cuda", _native_tal, None)


def task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, *, topk=13, num_classes=80, alpha=1.0, beta=6.0,
                        stride_val=16, eps=1e-9, compact=False, tie_rule=None, backend=None):
    """Task-aligned label assignment (TOOD, arXiv 2108.07755) with ultralytics' semantics
    (``ultralytics.utils.tal.TaskAlignedAssigner``, 8.4.190: its candidate test with the
    stride_val widening, its CIoU, torch's top-k tie rule, an anchor claimed by several gts
    going to the first argmax of the overlap over all of them, its normalised scores), without
    ultralytics' (B, M, A) tensors (about 14 bytes per (image, gt, anchor) pair) or its host
    sync.  The rules: fastloss/reference/assign.py.  The cpu backend is bit-equal to
    ultralytics on the CPU (all five outputs); the cuda backend reproduces ultralytics on CUDA
    (torch's CUDA top-k tie rule, CUDA pow and atan, no FMA contraction); the reference's
    scores may differ by a few ulp (torch's CPU ``pow`` rounds by position).

    Args (ultralytics' forward):
        pd_scores: (B, A, nc) class probabilities (the sigmoid of the logits), read in the
            boxes' compute dtype (the promotion of pd_bboxes', gt_bboxes' and fp32): fp16 /
            bf16 in fp32, as ultralytics' assigner computes under autocast; fp64 with fp32
            boxes in fp32 (ultralytics' metric then differs by an fp32 rounding: its CIoU is
            fp32 there too).
        pd_bboxes: (B, A, 4) predicted boxes, xyxy pixels.
        anc_points: (A, 2) anchor points, pixels.
        gt_labels: (B, M, 1) class indices in [0, nc) for real gts (checked on CPU tensors; on
            CUDA ones the kernels clamp a label to [0, nc - 1] to read its score, and a label
            >= nc matches no class of the dense target_scores); gt_bboxes: (B, M, 4) xyxy
            pixels; mask_gt: (B, M, 1), non-zero for real gts (the padding is 0).
        topk, num_classes, alpha, beta, eps: ultralytics' (its detection loss: 10, nc, 0.5,
            6.0, 1e-9); stride_val: the smallest gt side the candidate test widens to (its
            second stride, 16).  num_classes >= 1 (ultralytics fails with 0); alpha, beta and
            stride_val >= 0 and finite; eps > 0 and finite.
        backend: reference, cpu.

    Returns (target_labels (B, A) int64, target_bboxes (B, A, 4), target_scores (B, A, nc),
    fg_mask (B, A) bool, target_gt_idx (B, A) int64), ultralytics' dtypes: target_bboxes in
    gt_bboxes', target_scores in the promotion of pd_scores', pd_bboxes', gt_bboxes' and fp32
    (ultralytics' under autocast; without it, all-fp16 inputs give it fp16); with M = 0 its
    early return (labels nc and gt index 0 in pd_scores' dtype, boxes in pd_bboxes').  Raises
    ValueError for bad shapes, topk > A, labels outside [0, nc) of real gts (checked on CPU
    tensors), scalar parameters outside their domains (NaN included)."""
    for name, t, shape in (("pd_scores", pd_scores, None), ("pd_bboxes", pd_bboxes, 4), ("anc_points", anc_points, 2),
                           ("gt_bboxes", gt_bboxes, 4)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or (shape is not None and t.shape[-1] != shape):
            raise ValueError(f"task_aligned_assign: {name} must be a floating tensor" + (f" (..., {shape})" if shape else "")
                             + f", got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if pd_scores.dim() != 3 or pd_bboxes.shape != pd_scores.shape[:2] + (4,) or anc_points.shape != (pd_scores.shape[1], 2):
        raise ValueError(f"task_aligned_assign: pd_scores (B, A, nc), pd_bboxes (B, A, 4) and anc_points (A, 2) disagree: "
                         f"{tuple(pd_scores.shape)}, {tuple(pd_bboxes.shape)}, {tuple(anc_points.shape)}")
    B, A, nc = pd_scores.shape
    if gt_bboxes.dim() != 3 or gt_bboxes.shape[0] != B:
        raise ValueError(f"task_aligned_assign: gt_bboxes must be (B, M, 4) with B = {B}, got {tuple(gt_bboxes.shape)}")
    M = gt_bboxes.shape[1]
    for name, t in (("gt_labels", gt_labels), ("mask_gt", mask_gt)):
        if not isinstance(t, torch.Tensor) or t.shape != (B, M, 1):
            raise ValueError(f"task_aligned_assign: {name} must be (B, M, 1) = ({B}, {M}, 1), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or nc != num_classes:
        raise ValueError(f"task_aligned_assign: num_classes must be an int equal to pd_scores' {nc} classes, got {num_classes!r}")
    if nc < 1:  # ultralytics fails here too, with M = 0 (its early return reads pd_scores[..., 0]) or not
        raise ValueError("task_aligned_assign: num_classes must be >= 1, got 0")
    alpha, beta = _common.nonneg("alpha", alpha), _common.nonneg("beta", beta)
    stride_val, eps = _common.nonneg("stride_val", stride_val), _common.positive("eps", eps)
    compact = bool(_common.flag("compact", compact))
    if tie_rule is None:
        tie_rule = "cuda" if pd_scores.device.type == "cuda" else "cpu"
    if tie_rule not in TIE_RULES:
        raise ValueError(f"task_aligned_assign: tie_rule must be one of {TIE_RULES} or None, got {tie_rule!r}")
    if tie_rule == "cpu" and pd_scores.device.type == "cuda" and backend in (None, "cuda"):
        raise ValueError("task_aligned_assign: the cuda backend has torch's CUDA tie rule only; tie_rule='cpu' on CUDA tensors needs "
                         "backend='reference'")
    if M == 0:  # ultralytics' early return, its dtypes included
        return (torch.full_like(pd_scores[..., 0], num_classes), torch.zeros_like(pd_bboxes),
                torch.zeros_like(pd_scores[..., 0] if compact else pd_scores), torch.zeros_like(pd_scores[..., 0], dtype=torch.bool),
                torch.zeros_like(pd_scores[..., 0]))
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or not 1 <= topk <= A:
        raise ValueError(f"task_aligned_assign: topk must be an int in [1, A = {A}], got {topk!r}")
    _common.check_same_device("pd_scores", pd_scores, pd_bboxes=pd_bboxes, anc_points=anc_points, gt_labels=gt_labels, gt_bboxes=gt_bboxes,
                              mask_gt=mask_gt)
    valid = mask_gt[..., 0].bool()
    labels = gt_labels[..., 0].long()
    if labels.device.type == "cpu" and not torch.compiler.is_compiling() and bool(((labels < 0) | (labels >= nc))[valid].any()):
        raise ValueError(f"task_aligned_assign: gt labels must lie in [0, num_classes = {nc})")
    # the kernels take one dtype: the boxes' (ultralytics' CIoU arithmetic; fp16 / bf16 boxes in
    # fp32), the scores read in it -- not the promotion with the scores': fp64 scores would move
    # fp32 boxes' CIoU to fp64, and its ulps, raised to beta = 6, off ultralytics' by up to 1e-3
    dtype = torch.promote_types(torch.promote_types(pd_bboxes.dtype, gt_bboxes.dtype), torch.float32)
    target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx = task_aligned_assign_op(
        pd_scores.to(dtype).contiguous(), pd_bboxes.to(dtype).contiguous(), anc_points.to(dtype).contiguous(), labels.contiguous(),
        gt_bboxes.to(dtype).contiguous(), valid.contiguous(), int(topk), int(num_classes), alpha, beta, stride_val, eps,
        TIE_RULES.index(tie_rule), compact, backend)
    # ultralytics' dtypes: its target boxes are a gather of gt_bboxes (exact back in their dtype);
    # its scores its metric's, score^alpha * overlap^beta, with pd_scores' dtype (fp32 at least, as
    # under autocast)
    return (target_labels, target_bboxes.to(gt_bboxes.dtype), target_scores.to(torch.promote_types(pd_scores.dtype, dtype)), fg_mask,
            target_gt_idx)
