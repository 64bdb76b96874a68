"""IoU family: the public ops, their torch.library registration and autograd.

Paired (aligned) losses, :func:`box_iou_loss`: two custom ops, ``fastloss::box_iou_loss``
(forward, fake impl, autograd) and ``fastloss::box_iou_loss_backward`` (its own op), each
calling the backend :mod:`fastloss._backend` picks; in eager mode the public function goes
through :class:`BoxIoULossFunction` (the same impls, no custom-op dispatch; tests check
both paths agree bit for bit).  The kinds and their exact formulas: fastloss/reference/box_iou.py.

Gradient w.r.t. ``pred`` only (``target``/``weight`` requiring grad raise ValueError).
Forward/backward fusion, as for the focal loss (fastloss/_backend.py STORE_GRAD_IN_FORWARD):
on CPUs (compute-bound: atan2/exp/divisions per box) the forward also writes dL/dpred
(16 B/box fp32) and the backward scales it; on GPUs (bandwidth-bound: 32 B/box of input)
the backward re-reads pred/target and recomputes, which moves 32 B instead of 16 + 16 and
keeps no (n, 4) buffer alive between forward and backward.
"""
import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common
from fastloss.reference import box_iou as reference

OP = "box_iou_loss"
KINDS = {k: i for i, k in enumerate(reference.KINDS)}
METRICS = {k: i for i, k in enumerate(reference.METRICS)}
FMTS = {k: i for i, k in enumerate(reference.FMTS)}
CONVENTIONS = {k: i for i, k in enumerate(reference.CONVENTIONS)}
TERMS = reference.TERMS  # the kernels' reduction code of bounded_iou's per-term output: loss and upstream gradient (n, 4)


def _forward_impl(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, store_grad, backend):
    forward, _ = _backend.implementation(OP, pred.device, backend)
    return forward(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, store_grad)


def _backward_impl(grad, pred, target, weight, cache, kind, fmt, convention, eps, power, gamma, reduction, backend, in_place=False):
    if cache.shape == pred.shape:  # the forward stored dL/dpred * weight: only scale it
        if reduction == 0:
            scale = grad.to(cache.dtype)[:, None]
        else:
            scale = grad / max(pred.shape[0], 1) if reduction == 2 else grad
        return _common.scale_stored_grad(cache, scale, pred.dtype, in_place)
    _, backward = _backend.implementation(OP, pred.device, backend)
    return backward(grad, pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction)


@torch.library.custom_op("fastloss::box_iou_loss", mutates_args=())
def box_iou_loss_op(pred: Tensor, target: Tensor, weight: Optional[Tensor], kind: int, fmt: int, convention: int, eps: float, power: float, gamma: float,
                    reduction: int, store_grad: bool, backend: Optional[str]) -> tuple[Tensor, Tensor]:
    """pred/target (n, 4) or 3-D (n, 6); returns (loss, cache): cache = dL/dpred * weight if store_grad, else empty.
    reduction TERMS (kind bounded_iou, 2-D): loss (n, 4), the 4 terms per box; no cache."""
    return _forward_impl(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, store_grad, backend)


@box_iou_loss_op.register_fake
def _(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, store_grad, backend):
    acc = _common.reduced_dtype(pred.dtype)
    if reduction == TERMS:
        loss = pred.new_empty((pred.shape[0], 4))
    else:
        loss = pred.new_empty(pred.shape[:1]) if reduction == 0 else pred.new_empty((), dtype=acc)
    return loss, pred.new_empty(pred.shape if store_grad else (0,), dtype=acc)


@torch.library.custom_op("fastloss::box_iou_loss_backward", mutates_args=())
def box_iou_loss_backward_op(grad: Tensor, pred: Tensor, target: Tensor, weight: Optional[Tensor], cache: Tensor, kind: int, fmt: int, convention: int, eps: float,
                             power: float, gamma: float, reduction: int, backend: Optional[str]) -> Tensor:
    return _backward_impl(grad, pred, target, weight, cache, kind, fmt, convention, eps, power, gamma, reduction, backend)


@box_iou_loss_backward_op.register_fake
def _(grad, pred, target, weight, cache, kind, fmt, convention, eps, power, gamma, reduction, backend):
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output):
    pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, _store, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled (n, 4) gradient for the cache output
    ctx.save_for_backward(pred, target, weight, output[1])
    ctx.args = (kind, fmt, convention, eps, power, gamma, reduction, _backend.backward_backend(OP, pred.device, backend))


def _backward(ctx, grad, _grad_cache):
    if grad is None:  # grads are not materialized: no gradient flowed into the loss
        return (None,) * 12
    pred, target, weight, cache = ctx.saved_tensors
    kind, fmt, convention, eps, power, gamma, reduction, backend = ctx.args
    g = box_iou_loss_backward_op(grad.contiguous(), pred, target, weight, cache, kind, fmt, convention, eps, power, gamma, reduction, backend)
    return (g,) + (None,) * 11


box_iou_loss_op.register_autograd(_backward, setup_context=_setup_context)
_common.register_autocast(box_iou_loss_op)


class BoxIoULossFunction(torch.autograd.Function):
    """The same forward/backward as the custom ops as an autograd.Function (eager fast path);
    returns (loss, cache) like the op; the backward may scale the cache in place
    (_common.take_stored_grad)."""

    @staticmethod
    def forward(ctx, pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, store_grad, backend):
        loss, cache = _forward_impl(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, store_grad, backend)
        ctx.mark_non_differentiable(cache)
        ctx.set_materialize_grads(False)  # no zero-filled (n, 4) gradient for the cache output
        ctx.save_for_backward(pred, target, weight)
        ctx.stored_grad = cache  # may be scaled in place by the backward (_common.take_stored_grad)
        ctx.args = (kind, fmt, convention, eps, power, gamma, reduction, _backend.backward_backend(OP, pred.device, backend))
        return loss, cache

    @staticmethod
    @_common.once_differentiable  # no double backward: an error, not a silent constant (_common)
    def backward(ctx, grad, _grad_cache):
        if grad is None:  # grads are not materialized: no gradient flowed into the loss
            return (None,) * 12
        pred, target, weight = _common.saved_tensors(ctx)
        kind, fmt, convention, eps, power, gamma, reduction, backend = ctx.args
        cache, in_place = _common.take_stored_grad(ctx)
        g = _backward_impl(grad.contiguous(), pred, target, weight, cache, kind, fmt, convention, eps, power, gamma, reduction, backend, in_place)
        return (g,) + (None,) * 11


# ------------------------------------------------------------------------- argument checks


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return choices[value]


def _check_convention(convention, kind, defined):
    """The convention's code; ValueError for an unknown convention or a kind it does not define."""
    code = _check_choice("convention", convention, CONVENTIONS)
    if kind not in defined[convention]:
        what = "kinds" if defined is reference.CONVENTION_KINDS else "metrics"
        raise ValueError(f"convention {convention!r} defines the {what} {defined[convention]}, not kind {kind!r}")
    return code


def check_boxes(name, b, three_d=False):
    """TypeError / ValueError unless b is a floating tensor of boxes (..., 4) (or, three_d,
    3-D boxes (..., 6): the paired losses only)."""
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
    if not b.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (fp16/bf16/fp32/fp64), got {b.dtype}")
    if b.dim() == 0 or b.shape[-1] not in ((4, 6) if three_d else (4,)):
        if three_d:
            raise ValueError(f"{name} must have shape (..., 4) or, 3-D, (..., 6) (one box per row), got {tuple(b.shape)}")
        hint = " (3-D boxes (..., 6) are supported by box_iou_loss only)" if b.dim() and b.shape[-1] == 6 else ""
        raise ValueError(f"{name} must have shape (..., 4) (one box per row), got {tuple(b.shape)}{hint}")


def _check_3d(kind, fmt, convention):
    if kind not in reference.KINDS_3D or fmt != "xyxy" or convention != "fastloss":
        raise ValueError(f"3-D boxes (..., 6) support kinds {reference.KINDS_3D} with fmt 'xyxy' and convention 'fastloss', "
                         f"got kind {kind!r}, fmt {fmt!r}, convention {convention!r}")


def _check_scalars(eps, power, gamma):
    """The scalar parameters as floats, each in its domain (ValueError naming it otherwise)."""
    return _common.positive("eps", eps), _common.positive("power", power), _common.nonneg("gamma", gamma)


def _prepare_weight(pred, weight):
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    _common.no_grad_required(weight=weight)
    boxes = pred.shape[:-1]
    dtype = _common.reduced_dtype(pred.dtype)
    if weight.shape == pred.shape and weight.shape != boxes:
        weight = weight.to(dtype).mean(-1)  # per coordinate -> per box (mmdetection)
    else:
        if not _common.broadcasts_to(weight.shape, boxes):
            raise ValueError(f"weight of shape {tuple(weight.shape)} must be per box {tuple(boxes)} (or broadcast to it) "
                             f"or per coordinate {tuple(pred.shape)}")
        weight = weight.to(dtype).expand(boxes)
    return weight.reshape(-1).contiguous()


def _kind_parameter(kind, convention, power, gamma, neg_gamma, smooth_point):
    """The kernels' one slot for the kind's extra parameter (csrc/kernels/box_iou.h Params::gamma):
    focal_eiou's gamma, mmdet siou's neg_gamma (1 / 0), extended_iou's smooth_point, bounded_iou's
    beta (smooth_point)."""
    mmdet_siou = kind == "siou" and convention == "mmdet"
    if neg_gamma and not mmdet_siou:
        raise ValueError(f"neg_gamma is a parameter of kind 'siou' under convention 'mmdet', not of kind {kind!r} / convention {convention!r}")
    if (mmdet_siou or kind in ("extended_iou", "bounded_iou")) and power != 1:
        raise ValueError(f"power must be 1 for kind {kind!r} (convention {convention!r}), got {power!r}")
    if mmdet_siou:
        return 1.0 if neg_gamma else 0.0
    if kind in ("extended_iou", "bounded_iou"):
        return _common.positive("smooth_point", smooth_point)
    return gamma


def box_iou_loss(pred, target, kind="giou", reduction="mean", weight=None, avg_factor=None, fmt="xyxy", eps=1e-7, power=1.0, gamma=0.5, *,
                 convention="fastloss", neg_gamma=False, smooth_point=0.1, per_coordinate=False, sync_avg_factor=False, backend=None):
    """Paired IoU-family loss of ``pred`` against ``target``, both (..., 4) or, 3-D, (..., 6).

    Args:
        pred: predicted boxes (..., 4), fp16/bf16/fp32 (fp64 on CPU/reference); the box math
            runs in fp32 (fp64 for fp64).  Differentiable.  3-D boxes (..., 6) =
            (x1, y1, z1, x2, y2, z2): kinds "iou", "giou", "diou" (volumes for areas, DIoU over
            3 axes) with fmt "xyxy" and convention "fastloss" only (ValueError otherwise).
        target: target boxes of pred's shape (not differentiated).
        kind: "iou" | "log_iou" | "giou" | "diou" | "ciou" | "eiou" | "focal_eiou" | "siou" |
            "cdiou" | "extended_iou" (Extended-IoU, IEEE 9429909; not Efficient-IoU "eiou") |
            "bounded_iou" (arXiv 1711.00164, the sum of its 4 per-coordinate terms) -- formulas
            in :mod:`fastloss.reference.box_iou`.
        reduction: "none" (pred.shape[:-1]) | "mean" | "sum".
        weight: per box (pred.shape[:-1], or broadcastable) or per coordinate ((..., 4),
            averaged over the coordinates as mmdetection does).
        avg_factor: mmdetection's normaliser ("mean" -> sum / (avg_factor + eps)); a number or
            a tensor kept on the device; error with "sum", ignored with "none".
        fmt: "xyxy" | "xywh" | "cxcywh" (torchvision's names) for both pred and target.
        eps: stabiliser (> 0), placed as torchvision does (IoU = I / (U + eps), ...).
        power: alpha-IoU exponent (> 0; 1 = the plain losses).
        gamma: Focal-EIoU exponent (>= 0).
        convention: where eps goes, as a peer places it (formulas in
            :mod:`fastloss.reference.box_iou`, "Conventions"): "fastloss" (the default, as
            above), "ultralytics" (its ``bbox_iou`` corner form: heights + eps; kinds iou, giou,
            diou, ciou), "mmdet" (mmdetection 3.3: ``bbox_overlaps``' max(U, eps) for iou /
            log_iou / giou, its ``ciou_loss`` with the IoU > 0.5 gate and clamp; kinds iou,
            log_iou, giou, diou, ciou, and ``siou_loss`` for siou, ``eiou_loss`` for
            extended_iou, ``bounded_iou_loss`` summed over the coordinates for bounded_iou).
            ValueError for another kind.
        neg_gamma: mmdetection's SIoU flag (kind "siou", convention "mmdet" only): the paper's
            negative exponent gamma = angle - 2 instead of mmdetection's default 2 - angle.
        smooth_point: the smoothing point (> 0) of kinds "extended_iou" and "bounded_iou" (the
            latter's beta, mmdetection's default 0.2).
        per_coordinate: kind "bounded_iou" (2-D boxes) only: the loss is its 4 terms per box
            [l_x, l_y, l_w, l_h] (mmdetection's per-coordinate ``bounded_iou_loss``), shape
            (..., 4) with "none"; "mean" averages over the 4 terms of every box; a weight of
            pred's shape then weights each term (not averaged), a per-box weight all 4.
        sync_avg_factor: True: divide by the mean of avg_factor over the ranks of
            torch.distributed's default group (mmdetection's ``reduce_mean``, see
            :mod:`fastloss.distributed`), the same normaliser on every rank of a
            DistributedDataParallel job; detached (no gradient through it); no communication
            without an initialised process group or with "none".  ValueError without avg_factor.
        backend: force a backend for this call.

    Units: pixels (or any common unit) for the coordinates; the loss is unitless.  Returns
    the loss in the promoted dtype of pred and target (torch's type promotion, as its own
    losses; ``weight`` takes no part; fp32 for fp16/bf16 under ``torch.autocast``); the mean of
    an empty input is 0.  Gradients at
    degenerate boxes follow torchvision's autograd where it is finite (a collapsed prediction
    gets the direction that grows it back; conventions in :mod:`fastloss.reference.box_iou`);
    a NaN coordinate makes its box's loss and all 4 gradient components NaN.  Raises
    ValueError for bad shapes, an unknown kind / fmt / reduction / convention (or a kind the
    convention does not define), a parameter outside its domain, ``per_coordinate`` with another
    kind or 3-D boxes, or a target / weight that requires grad.
    """
    check_boxes("pred", pred, three_d=True)
    check_boxes("target", target, three_d=True)
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    kind_code = _check_choice("kind", kind, KINDS)
    fmt_code = _check_choice("fmt", fmt, FMTS)
    conv_code = _check_convention(convention, kind, reference.CONVENTION_KINDS)
    nc = pred.shape[-1]  # coordinates per box
    if nc == 6:
        _check_3d(kind, fmt, convention)
    code = _common.check_reduction(reduction, avg_factor, sync_avg_factor)
    eps, power, gamma = _check_scalars(eps, power, gamma)
    gamma = _kind_parameter(kind, convention, power, gamma, neg_gamma, smooth_point)
    _common.check_same_device("pred", pred, target=target, weight=weight, avg_factor=avg_factor)
    _common.no_grad_required(target=target)
    if _common.flag("per_coordinate", per_coordinate):
        if kind != "bounded_iou" or nc != 4:
            raise ValueError(f"per_coordinate=True is for kind 'bounded_iou' with 2-D boxes (..., 4), got kind {kind!r}, "
                             f"boxes {tuple(pred.shape)}")
        return _bounded_iou_terms(pred, target, reduction, weight, avg_factor, fmt_code, conv_code, eps, gamma, sync_avg_factor, backend)
    dtype = _common.compute_dtype(pred, target)
    pred = pred.to(dtype)
    w = _prepare_weight(pred, weight)
    if avg_factor is not None and reduction == "mean":
        code = _common.REDUCTIONS["sum"]
        avg_factor = _common.global_avg_factor(avg_factor, sync_avg_factor, dtype, pred.device)
    p = pred.reshape(-1, nc).contiguous()
    t = target.to(dtype).reshape(-1, nc).contiguous()
    store_grad = pred.requires_grad and torch.is_grad_enabled() and _backend.store_grad_in_forward(pred.device)
    args = (p, t, w, kind_code, fmt_code, conv_code, eps, power, gamma, code, store_grad, backend)
    if torch.compiler.is_compiling():
        loss, _ = box_iou_loss_op(*args)
    else:
        loss, _ = BoxIoULossFunction.apply(*args)
    if reduction == "none":
        loss = loss.reshape(pred.shape[:-1])
    return _common.finish(loss, dtype, reduction, avg_factor)


def _bounded_iou_terms(pred, target, reduction, weight, avg_factor, fmt_code, conv_code, eps, beta, sync_avg_factor, backend):
    """box_iou_loss(kind="bounded_iou", per_coordinate=True): the kernel's (n, 4) terms (reduction
    code TERMS; its backward takes an (n, 4) upstream gradient), a per-box weight applied in the
    kernel, a per-term weight and the reduction here."""
    dtype = _common.compute_dtype(pred, target)
    acc = _common.reduced_dtype(dtype)
    w_box = None
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        _common.no_grad_required(weight=weight)
        if weight.shape != pred.shape:  # per box: the same for the 4 terms
            if not _common.broadcasts_to(weight.shape, pred.shape[:-1]):
                raise ValueError(f"weight of shape {tuple(weight.shape)} must be per term {tuple(pred.shape)} or per box "
                                 f"{tuple(pred.shape[:-1])} (or broadcast to it)")
            w_box, weight = weight.to(acc).expand(pred.shape[:-1]).reshape(-1).contiguous(), None
    p = pred.to(dtype).reshape(-1, 4).contiguous()
    t = target.to(dtype).reshape(-1, 4).contiguous()
    args = (p, t, w_box, KINDS["bounded_iou"], fmt_code, conv_code, eps, 1.0, beta, TERMS, False, backend)
    if torch.compiler.is_compiling():
        terms, _ = box_iou_loss_op(*args)
    else:
        terms, _ = BoxIoULossFunction.apply(*args)
    terms = terms.reshape(pred.shape)
    if weight is not None:
        terms = terms.to(acc) * weight.to(acc)
    if reduction == "none":
        return terms.to(dtype)
    total = terms.sum(dtype=acc)
    if reduction == "sum":
        return total.to(dtype)
    if avg_factor is None:
        return (total / max(terms.numel(), 1)).to(dtype)  # the mean of nothing is 0
    return _common.finish(total, dtype, reduction, _common.global_avg_factor(avg_factor, sync_avg_factor, dtype, pred.device))


def _reference_forward(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, with_grad):
    return reference.loss_forward(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, with_grad)


def _reference_backward(grad, pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction):
    return reference.loss_backward(grad, pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction)


def _native_forward(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, with_grad):
    return torch.ops.fastloss.box_iou_loss_forward_native(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, with_grad)


def _native_backward(grad, pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction):
    return torch.ops.fastloss.box_iou_loss_backward_native(grad, pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction)


def _has_native(name):
    return _extension.C is not None and hasattr(torch.ops.fastloss, name)


_backend.register(OP, "reference", _reference_forward, _reference_backward)
if _extension.has_cpu() and _has_native("box_iou_loss_forward_native"):
    _backend.register(OP, "cpu", _native_forward, _native_backward)
if _extension.has_cuda() and _has_native("box_iou_loss_forward_native"):
    _backend.register(OP, "cuda", _native_forward, _native_backward)


def _triton_forward(*args):
    from fastloss.triton_kernels import box_iou as tk

    return tk.loss_forward(*args)


def _triton_backward(*args):
    from fastloss.triton_kernels import box_iou as tk

    return tk.loss_backward(*args)


# registered lazily: the module (and Triton) is imported at the first call on this backend
_backend.register(OP, "triton", _triton_forward, _triton_backward)


# ========================================================================================
# Pairwise / batched matrices: box_iou, and the fused max box_iou_max
# ========================================================================================
#
# Kernel convention: boxes1 (B, N, 4), boxes2 (B, M, 4) contiguous, same dtype; out (B, N, M)
# (aligned: N == M, out (B, N)) in the input dtype.  The backward returns (grad1, grad2) in
# the input dtype from two deterministic passes: grad1 reduces over M per row of boxes1,
# grad2 over N per box of boxes2 (fixed order, no atomics).

MATRIX_OP = "box_iou"
MAX_OP = "box_iou_max"


def _matrix_forward_impl(b1, b2, kind, fmt, convention, eps, aligned, backend):
    forward, _ = _backend.implementation(MATRIX_OP, b1.device, backend)
    return forward(b1, b2, kind, fmt, convention, eps, aligned)


def _matrix_backward_impl(grad, b1, b2, kind, fmt, convention, eps, aligned, backend):
    _, backward = _backend.implementation(MATRIX_OP, b1.device, backend)
    return backward(grad, b1, b2, kind, fmt, convention, eps, aligned)


@torch.library.custom_op("fastloss::box_iou", mutates_args=())
def box_iou_op(boxes1: Tensor, boxes2: Tensor, kind: int, fmt: int, convention: int, eps: float, aligned: bool, backend: Optional[str]) -> Tensor:
    return _matrix_forward_impl(boxes1, boxes2, kind, fmt, convention, eps, aligned, backend)


@box_iou_op.register_fake
def _(boxes1, boxes2, kind, fmt, convention, eps, aligned, backend):
    shape = boxes1.shape[:2] if aligned else (boxes1.shape[0], boxes1.shape[1], boxes2.shape[1])
    return boxes1.new_empty(shape)


@torch.library.custom_op("fastloss::box_iou_backward", mutates_args=())
def box_iou_backward_op(grad: Tensor, boxes1: Tensor, boxes2: Tensor, kind: int, fmt: int, convention: int, eps: float, aligned: bool,
                        backend: Optional[str]) -> tuple[Tensor, Tensor]:
    return _matrix_backward_impl(grad, boxes1, boxes2, kind, fmt, convention, eps, aligned, backend)


@box_iou_backward_op.register_fake
def _(grad, boxes1, boxes2, kind, fmt, convention, eps, aligned, backend):
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


def _matrix_setup_context(ctx, inputs, output):
    b1, b2, kind, fmt, convention, eps, aligned, backend = inputs
    ctx.save_for_backward(b1, b2)
    ctx.args = (kind, fmt, convention, eps, aligned, _backend.backward_backend(MATRIX_OP, b1.device, backend))


def _matrix_backward(ctx, grad):
    b1, b2 = ctx.saved_tensors
    kind, fmt, convention, eps, aligned, backend = ctx.args
    g1, g2 = box_iou_backward_op(grad.contiguous(), b1, b2, kind, fmt, convention, eps, aligned, backend)
    return g1, g2, None, None, None, None, None, None


box_iou_op.register_autograd(_matrix_backward, setup_context=_matrix_setup_context)
_common.register_autocast(box_iou_op)


class BoxIoUFunction(torch.autograd.Function):
    """Eager fast path of the pairwise/aligned matrices (the same impls as the custom ops)."""

    @staticmethod
    def forward(ctx, b1, b2, kind, fmt, convention, eps, aligned, backend):
        out = _matrix_forward_impl(b1, b2, kind, fmt, convention, eps, aligned, backend)
        ctx.save_for_backward(b1, b2)
        ctx.args = (kind, fmt, convention, eps, aligned, _backend.backward_backend(MATRIX_OP, b1.device, backend))
        return out

    @staticmethod
    @_common.once_differentiable  # no double backward: an error, not a silent constant (_common)
    def backward(ctx, grad):
        b1, b2 = _common.saved_tensors(ctx)
        kind, fmt, convention, eps, aligned, backend = ctx.args
        g1, g2 = _matrix_backward_impl(grad.contiguous(), b1, b2, kind, fmt, convention, eps, aligned, backend)
        return g1, g2, None, None, None, None, None, None


def _prepare_pair_sets(boxes1, boxes2, aligned):
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    _common.check_same_device("boxes1", boxes1, boxes2=boxes2)
    dtype = _common.compute_dtype(boxes1, boxes2)  # torch's promotion; fp32 for fp16/bf16 under autocast
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    if aligned:
        if boxes1.shape != boxes2.shape:
            raise ValueError(f"aligned=True needs boxes1 and boxes2 of the same shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
        lead = boxes1.shape[:-2] if boxes1.dim() >= 2 else ()
    else:
        if boxes1.dim() < 2 or boxes2.dim() < 2:
            raise ValueError(f"boxes1 and boxes2 must be (..., N, 4) and (..., M, 4), got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
        if boxes1.shape[:-2] != boxes2.shape[:-2]:
            raise ValueError(f"boxes1 and boxes2 must have the same leading (batch) dims, got {tuple(boxes1.shape[:-2])} and "
                             f"{tuple(boxes2.shape[:-2])}")
        lead = boxes1.shape[:-2]
    if boxes1.dim() < 2:  # aligned single box
        b1, b2 = boxes1.reshape(1, 1, 4), boxes2.reshape(1, 1, 4)
    else:
        batch = math.prod(lead)
        b1 = boxes1.reshape(batch, boxes1.shape[-2], 4).contiguous()
        b2 = boxes2.reshape(batch, boxes2.shape[-2], 4).contiguous()
    return b1, b2, lead


def box_iou(boxes1, boxes2, kind="iou", fmt="xyxy", aligned=False, eps=1e-7, *, convention="fastloss", backend=None):
    """Pairwise (or aligned) IoU-family matrix.

    Args:
        boxes1: (..., N, 4); boxes2: (..., M, 4) with the same leading (batch) dims; coordinates
            in pixels (any common unit).
        kind: "iou" | "iof" (intersection over boxes1's area, mmcv) | "giou" | "diou" | "ciou"
            (formulas in :mod:`fastloss.reference.box_iou`; CIoU's alpha is a constant in the
            backward).
        fmt: "xyxy" | "xywh" | "cxcywh".
        aligned: False -> (..., N, M); True -> boxes of the same shape, (..., N).
        eps: stabiliser (> 0; IoU = I / (U + eps)); padded all-zero boxes give 0, never NaN.
        convention: where eps goes (:mod:`fastloss.reference.box_iou`, "Conventions"):
            "fastloss" (default), "ultralytics" (heights + eps; iou, giou, diou, ciou), "mmdet"
            (``bbox_overlaps``: max(U, eps), max(C, eps), iof max(area, eps); diou / ciou as its
            losses), "torchvision_matrix" (torchvision's ``box_iou`` / ``generalized_box_iou``
            without eps, 0 for 0 / 0; ``distance_box_iou`` / ``complete_box_iou``; iou, giou,
            diou, ciou).

    Differentiable w.r.t. both box sets, with a deterministic backward.  Returns the promoted
    dtype of boxes1 and boxes2 (torch's type promotion; fp32 for fp16/bf16 under
    ``torch.autocast``).  Raises ValueError for bad shapes, unknown kind / fmt / convention (or
    a kind the convention does not define), eps <= 0.
    """
    kind_code = _check_choice("kind", kind, METRICS)
    fmt_code = _check_choice("fmt", fmt, FMTS)
    conv_code = _check_convention(convention, kind, reference.CONVENTION_METRICS)
    eps = _common.positive("eps", eps)
    b1, b2, lead = _prepare_pair_sets(boxes1, boxes2, aligned)
    args = (b1, b2, kind_code, fmt_code, conv_code, float(eps), bool(aligned), backend)
    if torch.compiler.is_compiling():
        out = box_iou_op(*args)
    else:
        out = BoxIoUFunction.apply(*args)
    if aligned:
        return out.reshape(boxes1.shape[:-1])
    return out.reshape(tuple(lead) + (boxes1.shape[-2], boxes2.shape[-2]))


def _ref_matrix_forward(b1, b2, kind, fmt, convention, eps, aligned):
    return reference.matrix_forward(b1, b2, kind, fmt, convention, eps, aligned)


def _ref_matrix_backward(grad, b1, b2, kind, fmt, convention, eps, aligned):
    return reference.matrix_backward(grad, b1, b2, kind, fmt, convention, eps, aligned)


_backend.register(MATRIX_OP, "reference", _ref_matrix_forward, _ref_matrix_backward)


def _native_matrix_forward(b1, b2, kind, fmt, convention, eps, aligned):
    return torch.ops.fastloss.box_iou_native(b1, b2, kind, fmt, convention, eps, aligned)


def _native_matrix_backward(grad, b1, b2, kind, fmt, convention, eps, aligned):
    return torch.ops.fastloss.box_iou_backward_native(grad, b1, b2, kind, fmt, convention, eps, aligned)


if _extension.has_cpu() and _has_native("box_iou_native"):
    _backend.register(MATRIX_OP, "cpu", _native_matrix_forward, _native_matrix_backward)


# ----------------------------------------------------------------------------- fused max


@torch.library.custom_op("fastloss::box_iou_max", mutates_args=())
def box_iou_max_op(boxes1: Tensor, boxes2: Tensor, kind: int, fmt: int, convention: int, eps: float, dim: int, backend: Optional[str]) -> tuple[Tensor, Tensor]:
    """dim 1: max over boxes2 -> (B, N); dim 0: max over boxes1 -> (B, M).  Forward only."""
    forward, _ = _backend.implementation(MAX_OP, boxes1.device, backend)
    return forward(boxes1, boxes2, kind, fmt, convention, eps, dim)


@box_iou_max_op.register_fake
def _(boxes1, boxes2, kind, fmt, convention, eps, dim, backend):
    shape = (boxes1.shape[0], boxes1.shape[1] if dim == 1 else boxes2.shape[1])
    return boxes1.new_empty(shape), boxes1.new_empty(shape, dtype=torch.int64)


_common.register_autocast(box_iou_max_op)


def box_iou_max(boxes1, boxes2, kind="iou", dim=-1, fmt="xyxy", eps=1e-7, *, convention="fastloss", backend=None):
    """``box_iou(boxes1, boxes2, kind, fmt).max(dim)`` without writing the (..., N, M) matrix.

    Args:
        boxes1: (..., N, 4); boxes2: (..., M, 4), same leading (batch) dims (dtypes promote as
            torch's, fp32 for fp16/bf16 under ``torch.autocast``).
        dim: -1 (or the index of M): the max over boxes2 for each box of boxes1 -> (..., N)
            (an assigner's best anchor per ground truth when boxes1 are the ground truths);
            -2 (or the index of N): the max over boxes1 for each box of boxes2 -> (..., M)
            (each anchor's best ground truth).
    Returns ``(values, indices)`` like ``torch.max(dim)``: values in the promoted dtype, int64
    indices; ties give the first index; a NaN is the maximum (as in torch.max).
    ``convention``: as in :func:`box_iou`.

    Forward only: the result is not differentiable (assigners use it under no_grad); values
    are returned detached.  Raises ValueError for an empty reduced set.
    """
    kind_code = _check_choice("kind", kind, METRICS)
    fmt_code = _check_choice("fmt", fmt, FMTS)
    conv_code = _check_convention(convention, kind, reference.CONVENTION_METRICS)
    eps = _common.positive("eps", eps)
    b1, b2, lead = _prepare_pair_sets(boxes1, boxes2, False)
    nd = boxes1.dim()
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or int(dim) not in (-1, -2, nd - 1, nd - 2):
        raise ValueError(f"dim must be -1 (over boxes2, the M axis) or -2 (over boxes1, the N axis), got {dim!r}")
    over_m = int(dim) in (-1, nd - 1)
    if (b2.shape[1] if over_m else b1.shape[1]) == 0 and (b1.shape[1] if over_m else b2.shape[1]) > 0 and b1.shape[0] > 0:
        raise ValueError("box_iou_max: the set reduced over is empty (max of nothing)")
    values, indices = box_iou_max_op(b1.detach(), b2.detach(), kind_code, fmt_code, conv_code, float(eps), 1 if over_m else 0, backend)
    shape = tuple(lead) + ((boxes1.shape[-2],) if over_m else (boxes2.shape[-2],))
    return values.reshape(shape), indices.reshape(shape)


def _ref_max(b1, b2, kind, fmt, convention, eps, dim):
    return reference.max_forward(b1, b2, kind, fmt, convention, eps, dim)


def _native_max(b1, b2, kind, fmt, convention, eps, dim):
    return torch.ops.fastloss.box_iou_max_native(b1, b2, kind, fmt, convention, eps, dim)


_backend.register(MAX_OP, "reference", _ref_max, None)
if _extension.has_cpu() and _has_native("box_iou_max_native"):
    _backend.register(MAX_OP, "cpu", _native_max, None)
if _extension.has_cuda() and _has_native("box_iou_native"):
    _backend.register(MATRIX_OP, "cuda", _native_matrix_forward, _native_matrix_backward)
    _backend.register(MAX_OP, "cuda", _native_max, None)


def _triton_module():
    from fastloss.triton_kernels import box_iou as tk

    return tk


_backend.register(MATRIX_OP, "triton", lambda *a: _triton_module().matrix_forward(*a), lambda *a: _triton_module().matrix_backward(*a))
_backend.register(MAX_OP, "triton", lambda *a: _triton_module().max_forward(*a), None)
