"""torchvision's detection losses and box matrices over fastloss's kernels.

Same names, signatures, defaults, return shapes and dtypes as ``torchvision.ops`` (written
against torchvision 0.29; importing this module does not import torchvision)::

    from fastloss.compat import torchvision as tvl       # instead of torchvision.ops
    loss = tvl.sigmoid_focal_loss(logits, targets, reduction="sum")
    loss = tvl.generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum")

or, for torchvision's own models (FCOS, RetinaNet, ...), ``fastloss.patch("torchvision")``,
which replaces the four losses only (:func:`_patch`): the box matrices decide the matchers'
assignments and are not bit-equal to torchvision's, so the patch leaves them alone; call them
from here explicitly where a matrix is wanted.

============================  ==========================================================
function                      kernels
============================  ==========================================================
sigmoid_focal_loss            fastloss.sigmoid_focal_loss (pointwise engine)
generalized_box_iou_loss      fastloss's paired ``giou`` loss op, once per box argument
distance_box_iou_loss         the paired ``diou`` loss op
complete_box_iou_loss         the paired ``ciou`` loss op (eps != 1e-7: composed, below)
box_iou                       fastloss.box_iou ``iou`` matrix, convention "torchvision_matrix"
generalized_box_iou           the ``giou`` matrix, same convention
distance_box_iou              the ``diou`` matrix, same convention
complete_box_iou              the ``ciou`` matrix, same convention
============================  ==========================================================

Semantics kept from torchvision:

* dtypes -- the box functions compute fp16 / bf16 / integer boxes in fp32 and return fp32
  (torchvision upcasts them); fp64 stays fp64, and a mix with fp64 computes in fp64.
  ``sigmoid_focal_loss`` follows torch's promotion of inputs and targets (no upcast: fp16 in,
  fp16 out).
* gradients -- with respect to both box arguments, for the losses and the matrices.  The
  IoU / GIoU / DIoU / CIoU losses are symmetric in their two arguments (I, U, the enclosing
  box, the centre distance and CIoU's v and alpha are), so the gradient for ``boxes2`` is the
  paired kernel's prediction gradient with the arguments swapped (:class:`_SymmetricBoxLoss`).
* eps placement -- the losses: IoU = I / (U + eps), GIoU's (C - U) / (C + eps), DIoU's
  rho^2 / (c^2 + eps); ``complete_box_iou_loss`` uses eps only in its alpha
  (v / (1 - IoU + v + eps)), its IoU and DIoU terms keep 1e-7.  The matrices: ``box_iou`` and
  ``generalized_box_iou`` have no eps (I / U, (C - U) / C); ``distance_box_iou`` /
  ``complete_box_iou`` use eps in c^2 and alpha only, over the eps-free IoU -- fastloss's
  convention "torchvision_matrix" (:mod:`fastloss.reference.box_iou`), one kernel call each.
* CIoU's alpha is a constant in the backward (torchvision computes it under no_grad).
* reductions "none" | "mean" | "sum"; anything else is a ValueError; the box losses' mean of
  no boxes is 0 (graph-connected), as torchvision's.
* broadcasting -- the losses broadcast their two box sets against each other, the matrices
  their leading (batch) dimensions, as torchvision's elementwise formulas do.  A 1-D
  ``boxes1`` (4,) is one box, (1, 4), as torchvision's indexing reads it (``boxes2`` must have
  at least 2 dims, as there: ValueError here, IndexError there).

``complete_box_iou_loss`` with eps != 1e-7, where no fastloss kernel computes torchvision's
eps placement directly (its IoU and DIoU terms keep 1e-7), composes fastloss's kernels
exactly (equal up to rounding, about 2 ulp of 1): DIoU_1e-7 + (CIoU_1e-7 - DIoU_1e-7)
rescaled (no grad) to torchvision's alpha, with v solved from
alpha_1e-7 v = v^2 / (1 - IoU + v + 1e-7) -- three paired kernels (eps == 1e-7, the default,
is one kernel).

Differences from torchvision 0.29 (by design; fastloss's numerical policy):

* degenerate boxes: where torchvision divides 0 by 0 or takes atan(w / 0) it returns NaN;
  fastloss returns the finite limit: ``box_iou`` / ``generalized_box_iou`` / ``distance_box_iou``
  / ``complete_box_iou`` of a pair whose union (or enclosing box) has zero area give 0 for
  that ratio (and 0 gradient through it), CIoU of a zero-height or point box is finite (v uses
  atan2, 0 for w = h = 0; torchvision: NaN).
* inverted boxes (x2 < x1 or y2 < y1) have zero area (torchvision: a negative area, which
  can score an inverted box as a match).
* exactly touching boxes (zero-width intersection): no gradient through the intersection, as
  torchvision's losses (its matrices' clamp agrees with torch 2.14; torch's derivative of
  clamp at the bound has changed across releases).
* the matrices are not guaranteed bit-equal to torchvision's in fp32: ``box_iou`` is on the
  CPU (tests/test_compat_torchvision.py, since the CPU build stopped contracting products into
  FMAs: an IoU of 0.49999994 there was 0.50000006 here before), the other matrices differ by
  a few ulp and the CUDA kernels are unverified -- a flip at a Matcher's 0.5 threshold is why
  :func:`_patch` does not replace them.
* ``sigmoid_focal_loss``: the mean of an empty input is 0 (torchvision: NaN); fp16 / bf16 are
  computed in fp32 and rounded once (torchvision computes in fp16 / bf16); ``gamma`` must be
  >= 0 and ``targets`` a float tensor of ``inputs``' shape that does not require grad
  (ValueError otherwise; torchvision would differentiate soft targets).
* ``xywh`` / ``cxcywh`` in ``box_iou``: areas come from the converted corners, equal to
  torchvision's w * h up to rounding.
* fp16 / bf16 boxes in ``box_iou`` / ``generalized_box_iou``: fastloss upcasts the coordinates
  first; torchvision subtracts the corners in fp16 / bf16 and upcasts the difference (one
  rounding more).
* mixed fp32 / fp64 boxes are computed wholly in fp64 (torchvision's losses raise on them: an
  index_put of fp64 values into fp32).
* the losses broadcast any two shapes (torchvision's only when ``boxes1`` has the broadcast
  shape: its intersection is indexed by a mask of that shape).
* integer boxes are converted to fp32 (fp64 beside an fp64 set) before the math; torchvision
  forms areas in integers -- the same numbers while coordinate products stay below 2^24 --
  and subtracts uint8 coordinates in uint8 (wrapping around for boxes apart).
* the backward is not differentiable again (double backward raises), and the functions are
  not TorchScript-scriptable (torchvision's are); they work under ``torch.compile(fullgraph=True)``.
* rotated formats of ``box_iou`` (``cxcywhr``, ``xywhr``, ``xyxyxyxy``): fastloss has no
  rotated-box kernel, so these calls run torchvision's own ``box_iou_rotated`` op.
"""
import importlib
import sys

import torch
from torch import Tensor

import fastloss
from fastloss import _backend
from fastloss.ops import _common
from fastloss.ops import box_iou as _box_ops

__all__ = ["sigmoid_focal_loss", "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss", "box_iou",
           "generalized_box_iou", "distance_box_iou", "complete_box_iou"]

_REDUCTIONS = ("none", "mean", "sum")
_AXIS_ALIGNED_FMTS = ("xyxy", "xywh", "cxcywh")
_ROTATED_FMTS = ("cxcywhr", "xywhr", "xyxyxyxy")
# the kernels' eps where torchvision's matrices have none (convention "torchvision_matrix"
# does not use it in box_iou / generalized_box_iou)
_UNUSED_EPS = 1e-7
# the eps torchvision's complete_box_iou_loss uses in its IoU and DIoU terms whatever its eps
_CIOU_LOSS_DIOU_EPS = 1e-7


# ------------------------------------------------------------------------------- helpers


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Invalid Value for arg 'reduction': {reduction!r}; supported reduction modes: 'none', 'mean', 'sum'")


def _upcast_pair(boxes1, boxes2):
    """torchvision's upcast of box coordinates: fp16 / bf16 / integer -> fp32; fp64 if either
    set is fp64 (its arithmetic would promote to it)."""
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
        if b.is_complex():
            raise ValueError(f"{name} must hold real coordinates, got {b.dtype}")
    dtype = torch.float64 if torch.float64 in (boxes1.dtype, boxes2.dtype) else torch.float32
    return boxes1.to(dtype), boxes2.to(dtype)


class _SymmetricBoxLoss(torch.autograd.Function):
    """A paired IoU-family loss differentiated with respect to both box sets.

    Forward: fastloss's paired loss op on (boxes1, boxes2).  Backward: its backward op for
    boxes1, and the same op with the arguments swapped for boxes2 -- exact for the symmetric
    kinds (iou, giou, diou, ciou: L(a, b) = L(b, a) as functions, with the same derivative
    conventions at kinks on both sides).  boxes1 / boxes2 (n, 4) contiguous, one dtype."""

    @staticmethod
    def forward(ctx, boxes1, boxes2, kind, eps, reduction):
        # eager: the backend chosen now also runs the backward (as fastloss's own ops do);
        # compiled: each op resolves it when it runs (dynamo need not trace the chooser)
        backend = None if torch.compiler.is_compiling() else _backend.resolve(_box_ops.OP, boxes1.device)
        # on CPUs the forward also writes dL/dboxes1 (fastloss/_backend.py STORE_GRAD_IN_FORWARD)
        store = bool(ctx.needs_input_grad[0]) and _backend.store_grad_in_forward(boxes1.device)
        # the registered custom op under torch.compile; its implementation directly in eager
        # mode (no custom-op dispatch: the same kernels, as fastloss's own eager fast path)
        _forward = _box_ops.box_iou_loss_op if torch.compiler.is_compiling() else _box_ops._forward_impl
        loss, cache = _forward(boxes1, boxes2, None, kind, 0, 0, eps, 1.0, 0.5, reduction, store, backend)
        ctx.save_for_backward(boxes1, boxes2, cache)
        ctx.args = (kind, eps, reduction, backend)
        return loss

    @staticmethod
    @_common.once_differentiable  # no double backward: an error, not a silent constant (_common)
    def backward(ctx, grad):
        boxes1, boxes2, cache = _common.saved_tensors(ctx)
        kind, eps, reduction, backend = ctx.args
        grad = grad.contiguous()
        g1 = g2 = None
        backward = _box_ops.box_iou_loss_backward_op if torch.compiler.is_compiling() else _box_ops._backward_impl
        if ctx.needs_input_grad[0]:
            g1 = backward(grad, boxes1, boxes2, None, cache, kind, 0, 0, eps, 1.0, 0.5, reduction, backend)
        if ctx.needs_input_grad[1]:  # no stored gradient for boxes2: the kernel recomputes it
            g2 = backward(grad, boxes2, boxes1, None, cache.new_empty((0,)), kind, 0, 0, eps, 1.0, 0.5, reduction, backend)
        return g1, g2, None, None, None


def _paired_loss(boxes1, boxes2, kind, reduction, eps):
    """torchvision's paired loss of ``kind`` over broadcast (..., 4) boxes (both differentiable)."""
    _check_reduction(reduction)
    eps = _common.positive("eps", eps)
    boxes1, boxes2 = _upcast_pair(boxes1, boxes2)
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if b.dim() == 0 or b.shape[-1] != 4:
            raise ValueError(f"{name} must have shape (..., 4) (x1, y1, x2, y2 per box), got {tuple(b.shape)}")
    _common.check_same_device("boxes1", boxes1, boxes2=boxes2)
    try:
        boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    except RuntimeError:
        raise ValueError(f"boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} do not broadcast") from None
    shape = boxes1.shape[:-1]
    code = _common.REDUCTIONS[reduction]
    loss = _SymmetricBoxLoss.apply(boxes1.reshape(-1, 4).contiguous(), boxes2.reshape(-1, 4).contiguous(), _box_ops.KINDS[kind], eps, code)
    return loss.reshape(shape) if reduction == "none" else loss


def _reduce(loss, reduction):
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    return loss


def _rescaled_ciou_term(k, one_minus_iou, eps_have, eps_want):
    """CIoU's aspect term alpha v with torchvision's alpha, from what a kernel computed.

    ``k`` = alpha_have v, alpha_have = v / (1 - IoU + v + eps_have) a constant in the backward
    (so dk = alpha_have dv).  Returns k * r with r = alpha_want / alpha_have held constant,
    r = (1 - IoU + v + eps_have) / (1 - IoU + v + eps_want): the value alpha_want v and the
    gradient alpha_want dv, as torchvision's no-grad alpha gives.  v is the positive root of
    v^2 = k (d + v), d = 1 - IoU + eps_have (no cancellation: both terms positive); k is
    clamped at 0 against rounding in the difference that formed it."""
    with torch.no_grad():
        kk = k.detach().clamp(min=0)
        d = one_minus_iou.detach() + eps_have
        v = (kk + torch.sqrt(kk * kk + 4 * kk * d)) * 0.5
        r = (d + v) / (one_minus_iou.detach() + v + eps_want)
    return k * r


# -------------------------------------------------------------------------------- losses


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss (0.29; RetinaNet's focal loss, arXiv 1708.02002).

    Args:
        inputs: logits of any shape, floating point.
        targets: float tensor of ``inputs``' shape, the binary (or soft) label of each element.
        alpha: weight of the positive class in [0, 1], or -1 for none; a number or a 0-dim
            tensor (read on the host, so under torch.compile a graph break; not differentiated).
        gamma: focusing exponent (>= 0).
        reduction: "none" (``inputs``' shape) | "mean" | "sum" (scalars).

    Returns the loss in torch's promotion of the two dtypes (fp16 logits with fp16 targets:
    fp16, computed in fp32).  The mean of an empty input is 0 (torchvision: NaN).  Gradient
    with respect to ``inputs`` only.  Raises ValueError for alpha outside [0, 1] and not -1
    (or a tensor alpha that is not 0-dim or requires grad),
    an unknown reduction, gamma < 0, targets that are not a float tensor of inputs' shape or
    that require grad.
    """
    if isinstance(alpha, torch.Tensor):
        # torchvision multiplies by a tensor alpha; fastloss's kernel takes the number (a host read)
        if alpha.dim() != 0 or alpha.requires_grad or alpha.is_complex():
            raise ValueError(f"alpha must be a number or a 0-dim real tensor that does not require grad, got {alpha!r}")
        alpha = float(alpha)
    if not (0 <= alpha <= 1) and alpha != -1:
        raise ValueError(f"Invalid alpha value: {alpha}. alpha must be in the range [0,1] or -1 for ignore.")
    _check_reduction(reduction)
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point() or targets.shape != inputs.shape:
        got = f"{targets.dtype} {tuple(targets.shape)}" if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a float tensor of inputs' shape {tuple(inputs.shape)} (torchvision's sigmoid_focal_loss), got {got}; "
                         "for class labels use fastloss.sigmoid_focal_loss")
    return fastloss.sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction=reduction)


def generalized_box_iou_loss(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    reduction: str = "none",
    eps: float = 1e-7,
) -> torch.Tensor:
    """torchvision.ops.generalized_box_iou_loss (0.29; arXiv 1902.09630):
    1 - I / (U + eps) + (C - U) / (C + eps), C the area of the smallest enclosing box.

    Args:
        boxes1, boxes2: (..., 4) xyxy boxes (pixels or any common unit), broadcast against each
            other; fp16 / bf16 / integer computed in fp32.  Both differentiable.
        reduction: "none" (the broadcast leading shape) | "mean" | "sum".
        eps: > 0.

    Returns fp32, or fp64 if either set is fp64; the mean of no boxes is 0.  Raises
    ValueError for an unknown reduction, eps <= 0, boxes not (..., 4) or not broadcastable.
    """
    return _paired_loss(boxes1, boxes2, "giou", reduction, eps)


def distance_box_iou_loss(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    reduction: str = "none",
    eps: float = 1e-7,
) -> torch.Tensor:
    """torchvision.ops.distance_box_iou_loss (0.29; arXiv 1911.08287):
    1 - I / (U + eps) + rho^2 / (c^2 + eps), rho the distance of the centres, c the diagonal
    of the enclosing box.  Arguments, returns and errors as :func:`generalized_box_iou_loss`."""
    return _paired_loss(boxes1, boxes2, "diou", reduction, eps)


def complete_box_iou_loss(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    reduction: str = "none",
    eps: float = 1e-7,
) -> torch.Tensor:
    """torchvision.ops.complete_box_iou_loss (0.29; arXiv 1911.08287): DIoU loss (its IoU and
    c^2 with eps 1e-7 whatever ``eps``) + alpha v, v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2,
    alpha = v / (1 - IoU + v + eps) a constant in the backward.  Finite for zero-height and
    point boxes (torchvision: NaN).  Arguments, returns and errors as
    :func:`generalized_box_iou_loss`; eps != 1e-7 runs three paired kernels instead of one."""
    _check_reduction(reduction)
    eps = _common.positive("eps", eps)
    if eps == _CIOU_LOSS_DIOU_EPS:
        return _paired_loss(boxes1, boxes2, "ciou", reduction, eps)
    e7 = _CIOU_LOSS_DIOU_EPS
    diou = _paired_loss(boxes1, boxes2, "diou", "none", e7)
    k = _paired_loss(boxes1, boxes2, "ciou", "none", e7) - diou  # alpha_1e-7 v
    one_minus_iou = _paired_loss(boxes1, boxes2, "iou", "none", e7)  # 1 - I / (U + 1e-7)
    return _reduce(diou + _rescaled_ciou_term(k, one_minus_iou, e7, eps), reduction)


# ------------------------------------------------------------------------------ matrices


def _matrix_sets(boxes1, boxes2):
    """Upcast (torchvision's rule) and broadcast the leading (batch) dims of (..., N, 4) and
    (..., M, 4); a 1-D ``boxes1`` (4,) is one box, (1, 4) (torchvision's ``boxes1[..., None, :2]``
    reads it so; a 1-D ``boxes2`` fails there with an IndexError)."""
    boxes1, boxes2 = _upcast_pair(boxes1, boxes2)
    if boxes1.dim() == 1:
        boxes1 = boxes1.unsqueeze(0)
    if boxes1.dim() < 2 or boxes2.dim() < 2 or boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise ValueError(f"boxes1 and boxes2 must be (..., N, 4) (or (4,)) and (..., M, 4), got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    try:
        lead = torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the leading dims of boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} do not broadcast") from None
    return boxes1.expand(lead + boxes1.shape[-2:]), boxes2.expand(lead + boxes2.shape[-2:])


def _rotated_box_iou(boxes1, boxes2, fmt):
    """Rotated boxes: torchvision's own op (fastloss has no rotated-box kernel)."""
    tvops = importlib.import_module("torchvision.ops")
    if fmt != "cxcywhr":
        boxes1 = tvops.box_convert(boxes1, in_fmt=fmt, out_fmt="cxcywhr")
        boxes2 = tvops.box_convert(boxes2, in_fmt=fmt, out_fmt="cxcywhr")
    return torch.ops.torchvision.box_iou_rotated(boxes1, boxes2)


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """torchvision.ops.box_iou (0.29): the (..., N, M) matrix of I / U (no eps).

    Args:
        boxes1: (..., N, 4), or (4,) for one box; boxes2: (..., M, 4), leading dims broadcast; coordinates in any
            common unit, fp16 / bf16 / integer computed in fp32.  Both differentiable.
        fmt: "xyxy" | "xywh" | "cxcywh"; the rotated formats ("cxcywhr", "xywhr",
            "xyxyxyxy") are passed to torchvision's own op.

    Returns fp32 (fp64 if either set is fp64).  A pair whose union has zero area gives 0
    (torchvision: NaN).  Raises ValueError for an unknown fmt or bad shapes.
    """
    if fmt in _ROTATED_FMTS:
        return _rotated_box_iou(boxes1, boxes2, fmt)
    if fmt not in _AXIS_ALIGNED_FMTS:
        raise ValueError(f"Unsupported format {fmt!r}; supported: {_AXIS_ALIGNED_FMTS + _ROTATED_FMTS}")
    boxes1, boxes2 = _matrix_sets(boxes1, boxes2)
    return fastloss.box_iou(boxes1, boxes2, "iou", fmt, eps=_UNUSED_EPS, convention="torchvision_matrix")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """torchvision.ops.generalized_box_iou (0.29): I / U - (C - U) / C over xyxy boxes
    (..., N, 4) x (..., M, 4) -> (..., N, M), no eps; C the enclosing area.  A pair with zero
    union or enclosing area gives a finite value (torchvision: NaN).  dtypes, gradients and
    errors as :func:`box_iou`."""
    boxes1, boxes2 = _matrix_sets(boxes1, boxes2)
    return fastloss.box_iou(boxes1, boxes2, "giou", "xyxy", eps=_UNUSED_EPS, convention="torchvision_matrix")


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """torchvision.ops.distance_box_iou (0.29): I / U - rho^2 / (c^2 + eps) over xyxy boxes
    (..., N, 4) x (..., M, 4) -> (..., N, M) (eps in the diagonal term only).  dtypes,
    gradients and errors as :func:`box_iou`; ValueError for eps <= 0."""
    eps = _common.positive("eps", eps)
    boxes1, boxes2 = _matrix_sets(boxes1, boxes2)
    return fastloss.box_iou(boxes1, boxes2, "diou", eps=eps, convention="torchvision_matrix")


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """torchvision.ops.complete_box_iou (0.29): :func:`distance_box_iou` - alpha v over xyxy
    boxes (..., N, 4) x (..., M, 4) -> (..., N, M); v = 4 / pi^2 (atan(w1 / h1) - atan(w2 / h2))^2,
    alpha = v / (1 - I / U + v + eps) a constant in the backward.  Finite for zero-height and
    point boxes (torchvision: NaN).  dtypes, gradients and errors as :func:`box_iou`;
    ValueError for eps <= 0."""
    eps = _common.positive("eps", eps)
    boxes1, boxes2 = _matrix_sets(boxes1, boxes2)
    return fastloss.box_iou(boxes1, boxes2, "ciou", eps=eps, convention="torchvision_matrix")


# --------------------------------------------------------------------------------- patch

# torchvision module that defines each loss (the others import it from there); the box
# matrices (box_iou, ...) are left alone: see _patch
_DEFINED_IN = {
    "sigmoid_focal_loss": "torchvision.ops.focal_loss",
    "generalized_box_iou_loss": "torchvision.ops.giou_loss",
    "distance_box_iou_loss": "torchvision.ops.diou_loss",
    "complete_box_iou_loss": "torchvision.ops.ciou_loss",
}
# packages whose modules' references to those functions are replaced too
_REFERENCING_PACKAGES = ("torchvision.ops", "torchvision.models.detection")


def _patch(handle):
    """Replace torchvision's four losses with this module's, in place.

    Replaced: ``sigmoid_focal_loss``, ``generalized_box_iou_loss``, ``distance_box_iou_loss``
    and ``complete_box_iou_loss`` in ``torchvision.ops`` and in the modules that define them
    (``torchvision.ops.focal_loss`` / ``giou_loss`` / ``diou_loss`` / ``ciou_loss``), and every
    reference to them held by a module of ``torchvision.ops`` or
    ``torchvision.models.detection`` -- FCOS's and RetinaNet's focal and GIoU losses and
    ``_utils._box_loss``'s GIoU / DIoU / CIoU losses (RetinaNet's ``bbox_reg_loss_type``), all
    looked up at call time.

    Not replaced, on purpose: the box matrices ``box_iou``, ``generalized_box_iou``,
    ``distance_box_iou``, ``complete_box_iou``.  They decide assignments (``box_ops.box_iou``
    feeds the RetinaNet / SSD / Faster R-CNN Matchers, RPN's and RoIHeads' ``box_similarity``),
    and fastloss's fp32 matrices are not all bit-equal to torchvision's (``box_iou`` is on the
    CPU; the others differ by a few ulp, CUDA unverified): an IoU of 0.49999994 there could be
    0.50000006 here, and the Matcher's 0.5 threshold flips -- a patch must change how losses
    are computed, never which anchor is matched to which box.  Use this module's
    matrices explicitly where they are wanted.

    Objects keep what they captured: the references are module globals, so anything that
    copied one of the four functions while patched (``f = torchvision.ops.sigmoid_focal_loss``)
    keeps fastloss's after undo, and code outside the two packages that imported a name
    itself keeps torchvision's while patched.  (torchvision's own models capture none of the
    four at construction.)
    """
    importlib.import_module("torchvision.ops")
    importlib.import_module("torchvision.models.detection")
    this = sys.modules[__name__]
    originals = {}
    for name, module_name in _DEFINED_IN.items():
        try:
            originals[name] = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):  # an older torchvision without this function
            continue
    modules = [m for key, m in list(sys.modules.items())
               if m is not None and any(key == p or key.startswith(p + ".") for p in _REFERENCING_PACKAGES)]
    for module in modules:
        for name, original in originals.items():
            if module.__dict__.get(name, None) is original:
                handle.setattr(module, name, getattr(this, name))

