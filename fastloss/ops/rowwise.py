"""The row-wise (softmax) engine: every loss over a softmax of the class axis, on one
machinery -- and the public functions of those losses.

The engine, written once (this module, csrc/cpu/rowwise.cpp, csrc/cuda/rowwise.cu,
triton_kernels/rowwise.py, fastloss/reference/rowwise.py; the math in csrc/kernels/rowwise.h):
logits (N, C, d1, ..., dk) with the class axis at dim 1 (or last, for the distribution focal
loss) are read through a (B, C, S) view with their own strides -- contiguous NCHW and
channels_last alike, no permute, no contiguous copy; one online softmax per row (running max
and sum) and the loss's terms in the same sweep; targets as class labels (uint8 / int32 /
int64 maps, ``ignore_index``), probabilities of input's shape, a continuous bins value
(distribution focal) or teacher logits (distillation); class weights with torch's semantics
(the mean divides by the summed weights of the counted targets), a per-row sample weight
(mmdetection's ``weight``), ``label_smoothing`` with torch's definition, reductions none /
sum / mean, mmdetection's ``avg_factor`` and ``avg_non_ignore``; deterministic reductions; the
store-gradient-in-forward (CPU: compute-bound) vs recompute (GPU: bandwidth-bound) choice of
fastloss/_backend.py; one ``torch.library`` custom op per loss (``fastloss::<loss>`` and
``fastloss::<loss>_backward``, one schema) with fake impl, autograd and autocast, and the eager
fast path (:class:`RowwiseFunction`).

Every reduced call returns the three sums [loss, class weight of the counted rows, counted
rows] from the kernel, and the normaliser of "mean" is chosen here (torch's, mmdetection's or
the rows), so the kernels never sync the host and every peer's mean is one division.  The one
exception is the eager CPU path that stores the gradient: there the normaliser is formed on the
host first (:func:`_host_mean_normaliser`, a pass over the labels) and folded into the
kernel's ``out_scale``, so the stored gradient is that of the mean and ``loss.backward()``
returns it with no pass scaling it ((100000, 81) CE: the backward from 1.15 to 0.28 ms; the
labels' pass, ``rowwise_mean_normaliser_native``, 0.06 ms).

Bytes per element (fp32 logits, class labels, forward + backward): store the gradient in the
forward: read x, write g | read g, write g (16 B); recompute: read x | read x, write g (12 B),
no logit-sized buffer alive between the passes.  GPUs recompute; the CPU, where the exp per
element costs more than its bytes, stores (fastloss/_backend.py STORE_GRAD_IN_FORWARD).

Adding a loss, step by step:
  1. csrc/kernels/rowwise.h: its terms in ``finish_row`` (the row's loss and the U, E, F of
     its gradient) with the formula and paper in the header comment, and a code in ``Loss``;
  2. triton_kernels/rowwise.py: the same terms in ``_finish_row``;
  3. fastloss/reference/rowwise.py: the same terms in ``_rows``;
  4. here: its name in ``LOSSES`` and a public function (checks, parameters in double, :func:`_run`);
     ``fastloss.nn`` its module, ``fastloss/__init__.py`` the export;
  5. tests/test_rowwise.py: its peer formula and rows in the tables.
"""
import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common
from fastloss.reference import rowwise as reference

# public op name -> loss code (csrc/kernels/rowwise.h Loss); the distribution focal loss is
# cross entropy against the bins target
LOSSES = {"cross_entropy": 0, "nll_loss": 1, "softmax_focal_loss": 2, "poly1_cross_entropy": 3, "distillation_kl_div": 4,
          "distribution_focal_loss": 0}
TARGETS = {"labels": 0, "probs": 1, "bins": 2, "teacher": 3}
MAX_CLASSES = 2**24  # class indices are exact in fp32 lanes up to here (CPU vector lanes, CUDA's label compare)
N_PARAMS = 8
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)
OP_ARGS = ("input", "target", "class_weight", "class_alpha", "sample_weight", "target_kind", "params", "ignore_index", "reduction",
           "store_grad", "backend")

# ====================================================================== the custom ops


def _validate(op, input, target, class_weight, class_alpha, sample_weight, kind, params, ignore_index):
    """Checks once per call before any backend runs, inside the op (also under torch.compile,
    and for direct ``torch.ops.fastloss.*`` calls): shapes against the (B, C, S) view, the
    parameter count, labels in [0, C) or ignore_index (negative labels too for the focal loss)
    and bins targets in [0, C - 1] unless a clamp was asked (CPU tensors always, CUDA tensors in
    checked mode).  Every kernel clamps bins targets to [0, min(bins_hi, C - 1)]: no access past
    the bins."""
    if input.dim() != 3:
        raise ValueError(f"{op}: the engine takes a (B, C, S) view of the logits, got {tuple(input.shape)}")
    B, C, S = input.shape
    if len(params) != N_PARAMS:
        raise ValueError(f"{op}: expected {N_PARAMS} parameters, got {len(params)}")
    if kind in (TARGETS["labels"], TARGETS["bins"]):
        if target.shape != (B, S):
            raise ValueError(f"{op}: a per-row target must be (B, S) = {(B, S)}, got {tuple(target.shape)}")
    elif target.shape != input.shape:
        raise ValueError(f"{op}: a per-class target must be {tuple(input.shape)}, got {tuple(target.shape)}")
    for name, v, n in (("class_weight", class_weight, C), ("class_alpha", class_alpha, C), ("sample_weight", sample_weight, B * S)):
        if v is not None and v.numel() != n:
            raise ValueError(f"{op}: {name} must hold {n} values, got {v.numel()}")
    if kind == TARGETS["labels"]:
        negative_ok = LOSSES[op] == LOSSES["softmax_focal_loss"]
        _check_labels(op, target, C, ignore_index, negative_ok)
    elif kind == TARGETS["bins"] and params[7] > C - 1:  # no clamp asked (bins_hi past the last bin): targets must lie in [0, C - 1]
        _common.check_range(op, "target", target, 0.0, C - 1)


def _check_labels(op, labels, C, ignore_index, negative_ok):
    if negative_ok:  # mmcv: a negative label is an ignored row
        if labels.numel() and _common.labels_checked_on(labels.device):
            lab = labels.long()
            bad = lab >= C
            if ignore_index is not None:
                bad &= lab != ignore_index
            if bool(bad.any()):
                raise ValueError(f"{op}: class label {lab[bad].reshape(-1)[0].item()} in target is out of range: labels must be in "
                                 f"[0, {C - 1}] (a negative label or ignore_index={ignore_index} leaves its row out)")
        return
    _common.check_labels(op, labels, C, ignore_index, hint=f"; to leave such rows out of the loss, pass ignore_index=<their label>")


def _forward_impl(op, input, target, class_weight, class_alpha, sample_weight, kind, params, ignore_index, reduction, store_grad, backend):
    _validate(op, input, target, class_weight, class_alpha, sample_weight, kind, params, ignore_index)
    forward, _ = _backend.implementation(op, input.device, backend)
    return forward(input, target, class_weight, class_alpha, sample_weight, LOSSES[op], kind, params, ignore_index, reduction, store_grad)


def _backward_impl(op, grad, input, target, class_weight, class_alpha, sample_weight, kind, cache, params, ignore_index, reduction, backend,
                   in_place=False):
    if cache.dim() == 3:  # the forward stored dL/dx of the summed loss: only scale it
        scale = grad.unsqueeze(1) if reduction == 0 else grad
        return _common.scale_stored_grad(cache, scale, input.dtype, in_place)
    _, backward = _backend.implementation(op, input.device, backend)
    return backward(grad, input, target, class_weight, class_alpha, sample_weight, LOSSES[op], kind, params, ignore_index, reduction)


def _upstream(grad, reduction):
    """The upstream gradient the kernels take: per row (reduction none), or that of the loss
    sum (the other two sums do not depend on the logits)."""
    return grad.contiguous() if reduction == 0 else grad[0].contiguous()


def _define_ops(name):
    def forward(input: Tensor, target: Tensor, class_weight: Optional[Tensor], class_alpha: Optional[Tensor], sample_weight: Optional[Tensor],
                target_kind: int, params: list[float], ignore_index: Optional[int], reduction: int, store_grad: bool,
                backend: Optional[str]) -> tuple[Tensor, Tensor]:
        return _forward_impl(name, input, target, class_weight, class_alpha, sample_weight, target_kind, params, ignore_index, reduction,
                             store_grad, backend)

    def backward(grad: Tensor, input: Tensor, target: Tensor, class_weight: Optional[Tensor], class_alpha: Optional[Tensor],
                 sample_weight: Optional[Tensor], target_kind: int, cache: Tensor, params: list[float], ignore_index: Optional[int],
                 reduction: int, backend: Optional[str]) -> Tensor:
        return _backward_impl(name, grad, input, target, class_weight, class_alpha, sample_weight, target_kind, cache, params, ignore_index,
                              reduction, backend)

    fwd_op = torch.library.custom_op(f"fastloss::{name}", forward, mutates_args=())
    bwd_op = torch.library.custom_op(f"fastloss::{name}_backward", backward, mutates_args=())

    @fwd_op.register_fake
    def _(input, target, class_weight, class_alpha, sample_weight, target_kind, params, ignore_index, reduction, store_grad, backend):
        acc = _common.reduced_dtype(input.dtype)
        B, C, S = input.shape
        out = input.new_empty((B, S)) if reduction == 0 else input.new_empty((3,), dtype=acc)
        cache = torch.empty_like(input, dtype=acc) if store_grad else input.new_empty((0,), dtype=acc)
        return out, cache

    @bwd_op.register_fake
    def _(grad, input, target, class_weight, class_alpha, sample_weight, target_kind, cache, params, ignore_index, reduction, backend):
        return torch.empty_like(input)

    def setup_context(ctx, inputs, output):
        input, target, class_weight, class_alpha, sample_weight, target_kind, params, ignore_index, reduction, _store, backend = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, class_weight, class_alpha, sample_weight, output[1])
        ctx.args = (target_kind, params, ignore_index, reduction, _backend.backward_backend(name, input.device, backend))

    def grad_fn(ctx, grad, _grad_cache):
        if grad is None:
            return (None,) * 11
        input, target, class_weight, class_alpha, sample_weight, cache = ctx.saved_tensors
        target_kind, params, ignore_index, reduction, backend = ctx.args
        g = bwd_op(_upstream(grad, reduction), input, target, class_weight, class_alpha, sample_weight, target_kind, cache, params,
                   ignore_index, reduction, backend)
        return (g,) + (None,) * 10

    fwd_op.register_autograd(grad_fn, setup_context=setup_context)
    _common.register_autocast(fwd_op)
    return fwd_op


class RowwiseFunction(torch.autograd.Function):
    """The custom ops' forward / backward as one autograd.Function for every loss (the eager
    fast path); ``op`` names the loss.  Returns (out, cache) like the ops."""

    @staticmethod
    def forward(ctx, input, target, class_weight, class_alpha, sample_weight, op, target_kind, params, ignore_index, reduction, store_grad,
                backend):
        out, cache = _forward_impl(op, input, target, class_weight, class_alpha, sample_weight, target_kind, params, ignore_index, reduction,
                                   store_grad, backend)
        ctx.mark_non_differentiable(cache)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, class_weight, class_alpha, sample_weight)
        ctx.stored_grad = cache
        ctx.args = (op, target_kind, params, ignore_index, reduction, _backend.backward_backend(op, input.device, backend))
        return out, cache

    @staticmethod
    @_common.once_differentiable  # no double backward: an error, not a silent constant (_common)
    def backward(ctx, grad, _grad_cache):
        if grad is None:
            return (None,) * 12
        input, target, class_weight, class_alpha, sample_weight = _common.saved_tensors(ctx)
        op, target_kind, params, ignore_index, reduction, backend = ctx.args
        cache, in_place = _common.take_stored_grad(ctx)
        g = _backward_impl(op, _upstream(grad, reduction), input, target, class_weight, class_alpha, sample_weight, target_kind, cache, params,
                           ignore_index, reduction, backend, in_place)
        return (g,) + (None,) * 11


OPS = {name: _define_ops(name) for name in LOSSES}

# ====================================================================== argument handling


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_ignore_index(ignore_index):
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    return None if ignore_index is None else int(ignore_index)


def _per_class(op, name, v, C, input):
    """A (C,) class vector (weights, alpha), contiguous, in its own dtype: :func:`_run` casts it
    to the compute dtype's accumulation dtype and checks it is finite and >= 0 there (CPU tensors)."""
    if v is None:
        return None
    _check_tensor(name, v)
    _common.no_grad_required(**{name: v})
    _common.check_same_device("input", input, **{name: v})
    if v.shape != (C,):
        raise ValueError(f"{op}: {name} must have one value per class (C = {C}), got shape {tuple(v.shape)}")
    return v.contiguous()


def _per_row(op, name, v, rows_shape, input):
    if v is None:
        return None
    _check_tensor(name, v)
    _common.no_grad_required(**{name: v})
    _common.check_same_device("input", input, **{name: v})
    if v.shape != rows_shape:
        raise ValueError(f"{op}: {name} must have one value per row, shape {tuple(rows_shape)}, got {tuple(v.shape)}")
    return v.reshape(-1).contiguous()  # in its own dtype: _run casts it (as _per_class)


def _view(input, class_dim):
    """(B, C, S) view of the logits (a copy only when the trailing dims can not be merged)."""
    C = input.shape[class_dim]
    if class_dim == 1:
        B, S = input.shape[0], math.prod(input.shape[2:])
    else:
        B, S = math.prod(input.shape[:-1]), 1
    return input.reshape(B, C, S)


def _params(keep=1.0, uniform=0.0, epsilon=0.0, gamma=0.0, alpha=1.0, in_scale=1.0, out_scale=1.0, bins_hi=float("inf")):
    return [float(keep), float(uniform), float(epsilon), float(gamma), float(alpha), float(in_scale), float(out_scale), float(bins_hi)]


def _run(op, input, target, kind, params, reduction, *, class_weight=None, class_alpha=None, sample_weight=None, ignore_index=None,
         class_dim=1, mean="weight", avg_factor=None, sync_avg_factor=False, backend=None):
    """The engine's public path after the loss's own checks: dtype rules, the (B, C, S) view,
    the custom op (under torch.compile) or the eager fast path, then the reduction.

    ``mean``: the normaliser of reduction "mean": "weight" (torch: the summed class weights of
    the counted rows), "count" (the counted rows: mmdetection's avg_non_ignore) or "rows" (all
    rows, ignored ones included)."""
    code = _common.check_reduction(reduction, avg_factor, sync_avg_factor)
    dtype = _common.compute_dtype(input, None if kind == TARGETS["labels"] else target)  # a float target takes part (DESIGN)
    x = input.to(dtype)
    # the class / row vectors in the accumulation dtype of the compute dtype (a float64 target
    # promotes an fp32 input: its weights follow)
    acc = _common.reduced_dtype(dtype)
    class_weight, class_alpha, sample_weight = (None if v is None else v.to(acc) for v in (class_weight, class_alpha, sample_weight))
    for name, v in (("weight", class_weight), ("alpha", class_alpha)):  # checked as the kernels will read them
        if v is not None and v.device.type == "cpu" and not torch.compiler.is_compiling() and not bool((torch.isfinite(v) & (v >= 0)).all()):
            raise ValueError(f"{op}: {name} must be finite and >= 0 in {acc} (the accumulation dtype), got {v.tolist()}")
    rows_shape = x.shape[:class_dim] + x.shape[class_dim + 1:] if class_dim == 1 else x.shape[:-1]
    x3 = _view(x, class_dim)
    B, C, S = x3.shape
    if C > MAX_CLASSES:
        raise ValueError(f"{op}: at most 2^24 = {MAX_CLASSES} classes (the kernels compare class indices in fp32), got C = {C}")
    if kind == TARGETS["labels"]:
        t = target if target.dtype in LABEL_DTYPES else target.to(torch.int64)
        t = t.reshape(B, S).contiguous()
    elif kind == TARGETS["bins"]:
        t = target.to(_common.reduced_dtype(dtype)).reshape(B, S).contiguous()
    else:
        t = _view(target.to(dtype), class_dim)
    if avg_factor is not None and reduction == "mean":
        avg_factor = _common.global_avg_factor(avg_factor, sync_avg_factor, dtype, x.device)
    store_grad = x.requires_grad and torch.is_grad_enabled() and _backend.store_grad_in_forward(x.device)
    params = [float(p) for p in params]
    compiling = torch.compiler.is_compiling()
    # the eager CPU path stores dL/dx of the mean itself (the normaliser folded into out_scale):
    # loss.backward() then takes the stored gradient as it is, with no pass scaling it
    folded = False
    if reduction == "mean" and store_grad and not compiling:
        den = _host_mean_normaliser(kind, t, class_weight, ignore_index, mean, avg_factor, sync_avg_factor, B * S, C)
        scale = _common.fold_scale(params[6], den, _common.reduced_dtype(dtype))
        if scale is not None:
            params[6], folded = scale, True
    args = (x3, t, class_weight, class_alpha, sample_weight)
    rest = (kind, params, ignore_index, 0 if code == 0 else 1, store_grad, backend)
    if compiling:
        out, _ = OPS[op](*args, *rest)
    else:
        out, _ = RowwiseFunction.apply(*args, op, *rest)
    if code == 0:
        return out.reshape(rows_shape)
    total = out[0]
    if folded:
        return total.to(dtype)
    if reduction == "mean":
        if avg_factor is not None:
            total = total / (avg_factor + torch.finfo(torch.float32).eps)
        else:
            den = {"weight": out[1], "count": out[2], "rows": out.new_tensor(float(B * S))}[mean].detach()
            total = total / torch.where(den > 0, den, torch.ones_like(den))  # the mean of nothing is 0
    return total.to(dtype)


def _host_mean_normaliser(kind, t, class_weight, ignore_index, mean, avg_factor, sync_avg_factor, rows, C):
    """The normaliser of reduction "mean" (:func:`_run`'s rules, the kernels' sums: the class
    weights of the counted rows, the counted rows, or all rows), formed on the host before the
    kernel runs (labels: one pass of ``rowwise_mean_normaliser_native``); 1 where it is 0 (the
    mean of nothing is 0).  None where it is not known without waiting (a synchronised
    avg_factor, a device tensor), where the division must stay in the graph (an avg_factor that
    requires grad), or without the compiled CPU kernels."""
    if avg_factor is not None:
        return _common.host_avg_factor(avg_factor, sync_avg_factor)
    if mean == "rows" or kind != TARGETS["labels"]:
        den = float(rows)  # every row of a dense / bins / teacher target counts with weight 1
    elif not _extension.has_cpu() or t.device.type != "cpu":  # the labels' pass is a CPU kernel; a device would sync
        return None
    else:
        weight_sum, count = torch.ops.fastloss.rowwise_mean_normaliser_native(t, class_weight, ignore_index, C).tolist()
        den = weight_sum if mean == "weight" else count
    return den if den > 0 else 1.0


def _check_input(op, input, min_dim=2):
    _common.check_logits("input", input)
    if input.dim() < min_dim:
        raise ValueError(f"{op}: input must be (N, C, d1, ..., dk) logits with the class axis at dim 1, got shape {tuple(input.shape)}")
    if input.shape[1] == 0:
        raise ValueError(f"{op}: input must have at least one class, got shape {tuple(input.shape)}")


def _class_target(op, input, target, ignore_index, probs_ok=True):
    """Kind and checks of a class-axis-1 target: integer labels of shape (N, d1, ..., dk), or
    (``probs_ok``) class probabilities of input's shape (torch's two forms)."""
    _check_tensor("target", target)
    _common.check_same_device("input", input, target=target)
    rows = input.shape[:1] + input.shape[2:]
    if target.is_floating_point():
        if not probs_ok:
            raise ValueError(f"{op}: target must be integer class labels of shape {tuple(rows)}, got {target.dtype}")
        if target.shape != input.shape:
            raise ValueError(f"{op}: a float target holds class probabilities and must have input's shape {tuple(input.shape)}, got "
                             f"{tuple(target.shape)}; class indices of shape {tuple(rows)} (integer dtype) are accepted too")
        _common.no_grad_required(target=target)
        return TARGETS["probs"]
    if target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{op}: target must be integer class indices or float probabilities, got {target.dtype}")
    if target.shape != rows:
        raise ValueError(f"{op}: class indices must have shape (N, d1, ..., dk) = {tuple(rows)} for input {tuple(input.shape)}, got "
                         f"{tuple(target.shape)}" + ("; class probabilities of input's shape (float) are accepted too" if probs_ok else ""))
    return TARGETS["labels"]


def _unbatched(input, target):
    """torch's unbatched form: input (C,) with a 0-d target -> (1, C) and (1,)."""
    if input.dim() == 1:
        return input.unsqueeze(0), target.unsqueeze(0), True
    return input, target, False


# ====================================================================== the losses

_MEAN_DOC = """reduction: "none" (a loss per row, shape (N, d1, ..., dk)) | "mean" | "sum".  "mean"
            divides by the summed class weights of the counted (non-ignored) targets, as torch
            does (the row count without ``weight``; for probability targets, all rows); a mean
            over nothing (every target ignored) is 0, where torch returns NaN."""


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, avg_factor=None, *,
                  sample_weight=None, avg_non_ignore=None, sync_avg_factor=False, backend=None):
    """Softmax cross entropy over the class axis (dim 1), torch's ``F.cross_entropy``: the same
    numbers in every case torch supports, from one read of the logits per pass.

    Args:
        input: logits (N, C), (N, C, d1, ..., dk) or unbatched (C,); fp16/bf16/fp32 (fp64 on
            CPU/reference); any strides (channels_last read in place).
        target: class indices (N, d1, ..., dk) (uint8 / int32 / int64, or any integer dtype) in
            [0, C) or ``ignore_index``; or class probabilities of input's shape.
        weight: class weights (C,) (torch's ``weight``), >= 0.
        ignore_index: rows with this label are left out of the loss and the mean (labels only).
        {reduction}
        label_smoothing: s in [0, 1], torch's definition (targets (1 - s) onehot + s / C).
        avg_factor: mmdetection's normaliser: "mean" returns sum / (avg_factor + eps).
        sync_avg_factor: True: divide by the mean of avg_factor over the ranks of
            torch.distributed's default group (mmdetection's ``reduce_mean``, see
            :mod:`fastloss.distributed`), the same normaliser on every rank of a
            DistributedDataParallel job; detached (no gradient through it); no communication
            without an initialised process group or with "none".  ValueError without avg_factor.
        sample_weight: a weight per row (N, d1, ..., dk) (mmdetection's ``weight``): multiplies
            each row's loss, not the mean's normaliser.
        avg_non_ignore: mmdetection's flag: with True "mean" divides by the number of
            non-ignored rows, with False by all rows; None (default) is torch's rule above.
        backend: force a backend for this call (see :mod:`fastloss._backend`).

    Returns the loss in the promoted dtype of input and a float target (fp32 under autocast).
    A counted row with a NaN or +inf logit has a NaN loss and a NaN gradient row, as torch's
    (a -inf logit is a masked class: no cost, gradient 0); an ignored row gives exactly 0.
    Raises ValueError for bad shapes, labels outside [0, C) that are not ignore_index (CPU
    tensors; CUDA tensors in checked mode, :func:`fastloss.checked_labels`: unchecked, such a
    row counts as ignored), more than 2^24 classes, parameters outside their domain."""
    return _cross_entropy("cross_entropy", input, target, weight, ignore_index, reduction, label_smoothing, avg_factor, sample_weight,
                          avg_non_ignore, backend, sync_avg_factor=sync_avg_factor)


cross_entropy.__doc__ = cross_entropy.__doc__.format(reduction=_MEAN_DOC)


def _mean_rule(avg_non_ignore):
    if avg_non_ignore is None:
        return "weight"
    return "count" if _common.flag("avg_non_ignore", avg_non_ignore) else "rows"


def _cross_entropy(op, input, target, weight, ignore_index, reduction, label_smoothing, avg_factor, sample_weight, avg_non_ignore, backend,
                   epsilon=0.0, sync_avg_factor=False):
    _common.check_logits("input", input)
    _check_tensor("target", target)
    input, target, unbatched = _unbatched(input, target)
    _check_input(op, input)
    kind = _class_target(op, input, target, ignore_index)
    ignore_index = _check_ignore_index(ignore_index)
    s = _common.check_param("label_smoothing", label_smoothing, lambda v: 0 <= v <= 1, "in [0, 1]")
    C = input.shape[1]
    w = _per_class(op, "weight", weight, C, input)
    rows = input.shape[:1] + input.shape[2:]
    sw = _per_row(op, "sample_weight", sample_weight, rows, input)
    params = _params(keep=1.0 - s, uniform=s / C, epsilon=epsilon)
    mean = _mean_rule(avg_non_ignore) if kind == TARGETS["labels"] else "rows"
    loss = _run(op, input, target, kind, params, reduction, class_weight=w, sample_weight=sw,
                ignore_index=ignore_index if kind == TARGETS["labels"] else None, mean=mean, avg_factor=avg_factor,
                sync_avg_factor=sync_avg_factor, backend=backend)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def poly1_cross_entropy(input, target, epsilon=1.0, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, avg_factor=None,
                        *, sample_weight=None, avg_non_ignore=None, sync_avg_factor=False, backend=None):
    """Poly-1 cross entropy (PolyLoss, Leng et al., arXiv 2204.12511): per row
    CE + epsilon sum_c a_c (1 - p_c), with a the row's (smoothed, weighted) target -- for an
    unweighted hard label epsilon (1 - p_y), for smoothed or soft targets epsilon (1 - sum_c t_c p_c)
    as the paper's code.  epsilon: finite (the paper uses -1 to 1).  Other arguments, returns
    and errors as :func:`cross_entropy` (the mean's normaliser is cross entropy's)."""
    eps = _common.check_param("epsilon", epsilon, math.isfinite, "finite")
    return _cross_entropy("poly1_cross_entropy", input, target, weight, ignore_index, reduction, label_smoothing, avg_factor, sample_weight,
                          avg_non_ignore, backend, epsilon=eps, sync_avg_factor=sync_avg_factor)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", avg_factor=None, *, sample_weight=None, sync_avg_factor=False,
             backend=None):
    """Negative log-likelihood over log-probabilities ``input`` (N, C, d1, ..., dk) (or (C,)),
    torch's ``F.nll_loss`` (the 2-D "NLLLoss2d" case included): -w_y input[y] per row.
    Integer class indices only; other arguments, returns and errors as :func:`cross_entropy`."""
    op = "nll_loss"
    _common.check_logits("input", input)
    _check_tensor("target", target)
    input, target, unbatched = _unbatched(input, target)
    _check_input(op, input)
    kind = _class_target(op, input, target, ignore_index, probs_ok=False)
    ignore_index = _check_ignore_index(ignore_index)
    w = _per_class(op, "weight", weight, input.shape[1], input)
    sw = _per_row(op, "sample_weight", sample_weight, input.shape[:1] + input.shape[2:], input)
    loss = _run(op, input, target, kind, _params(), reduction, class_weight=w, sample_weight=sw, ignore_index=ignore_index,
                avg_factor=avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def softmax_focal_loss(input, target, *, alpha=0.25, gamma=2.0, weight=None, reduction="mean", avg_factor=None, ignore_index=None,
                       sample_weight=None, sync_avg_factor=False, backend=None):
    """Softmax focal loss (Lin et al., arXiv 1708.02002) with mmcv's semantics
    (``mmcv.ops.softmax_focal_loss``): per row -alpha_y (1 - p_y)^gamma log p_y, times the class
    weight ``weight[y]``.

    Args:
        input: logits (N, C) (or (N, C, d1, ..., dk), class axis 1).
        target: integer class indices (N, ...) in [0, C); a negative label (mmcv) or
            ``ignore_index`` leaves its row out (loss and gradient 0).
        alpha: a number >= 0 (mmcv's scalar), or a tensor (C,) of per-class alphas.
        gamma: >= 0 (0 gives alpha-weighted cross entropy).  alpha and gamma are keyword-only:
            mmcv's positional order is (gamma, alpha), torchvision's sigmoid form (alpha, gamma).
        weight: class weights (C,), mmcv's ``weight``.
        reduction: "none" | "sum" | "mean" -- mmcv's mean: the sum over the number of rows
            (ignored rows included).  avg_factor: mmdetection's normaliser.
        sync_avg_factor: as :func:`cross_entropy`.
        sample_weight: a weight per row.

    log p_y is formed as x_y - logsumexp(x) (no underflow: mmcv's log(max(p, FLT_MIN)) caps
    at 87.3 for a logit margin over 87).  Returns the loss in input's dtype (fp32 under
    autocast); ValueError for bad shapes, labels >= C, parameters outside their domain."""
    return _focal("softmax_focal_loss", input, target, alpha, gamma, 0.0, weight, reduction, avg_factor, ignore_index, sample_weight, backend,
                  sync_avg_factor)


def poly1_softmax_focal_loss(input, target, *, alpha=0.25, gamma=2.0, epsilon=1.0, weight=None, reduction="mean", avg_factor=None,
                             ignore_index=None, sample_weight=None, sync_avg_factor=False, backend=None):
    """Poly-1 softmax focal loss (PolyLoss, arXiv 2204.12511): :func:`softmax_focal_loss` plus
    epsilon (1 - p_y)^(gamma + 1) per row (times the class and sample weights, not alpha, as
    :func:`fastloss.poly1_focal_loss`).  epsilon: finite; the other arguments as
    :func:`softmax_focal_loss`."""
    eps = _common.check_param("epsilon", epsilon, math.isfinite, "finite")
    return _focal("softmax_focal_loss", input, target, alpha, gamma, eps, weight, reduction, avg_factor, ignore_index, sample_weight, backend,
                  sync_avg_factor)


def _focal(op, input, target, alpha, gamma, epsilon, weight, reduction, avg_factor, ignore_index, sample_weight, backend, sync_avg_factor):
    _check_input(op, input)
    kind = _class_target(op, input, target, ignore_index, probs_ok=False)
    ignore_index = _check_ignore_index(ignore_index)
    gamma = _common.nonneg("gamma", gamma)
    C = input.shape[1]
    class_alpha = None
    if isinstance(alpha, torch.Tensor):
        class_alpha = _per_class(op, "alpha", alpha, C, input)
        alpha = 1.0
    else:
        alpha = _common.nonneg("alpha", alpha)
    w = _per_class(op, "weight", weight, C, input)
    sw = _per_row(op, "sample_weight", sample_weight, input.shape[:1] + input.shape[2:], input)
    return _run(op, input, target, kind, _params(epsilon=epsilon, gamma=gamma, alpha=alpha), reduction, class_weight=w,
                class_alpha=class_alpha, sample_weight=sw, ignore_index=ignore_index, mean="rows", avg_factor=avg_factor,
                sync_avg_factor=sync_avg_factor, backend=backend)


def distribution_focal_loss(pred, target, weight=None, reduction="mean", avg_factor=None, *, max_target=None, sync_avg_factor=False,
                            backend=None):
    """Distribution focal loss (Generalized Focal Loss, Li et al., arXiv 2006.04388): cross
    entropy of the logits over n + 1 bins against the two bins around a continuous target v,
    (floor(v) + 1 - v) CE(floor(v)) + (v - floor(v)) CE(floor(v) + 1) -- mmdetection's
    ``distribution_focal_loss``.

    Args:
        pred: logits (..., n + 1), the bins on the last axis (mmdetection's (N, n + 1), or
            (N, 4, n + 1) for the four box sides).
        target: the continuous distances (...) in bins, in [0, n].  Values outside raise
            ValueError for CPU tensors (CUDA tensors: clamped to [0, n] unless checked mode is
            on, :func:`fastloss.checked_labels`) unless ``max_target`` is given.
        weight: a weight per row (...) (mmdetection's).
        reduction: "none" (pred's shape without the bins axis) | "mean" (over rows) | "sum";
            avg_factor: mmdetection's normaliser; sync_avg_factor: as :func:`cross_entropy`.
        max_target: clamp the target to [0, max_target] first -- ultralytics' ``DFLoss`` clamps
            to n - 0.01 (reg_max - 1 - 0.01 with reg_max = n + 1 bins): its value is
            ``distribution_focal_loss(pred.view(-1, 4, reg_max), target, reduction="none",
            max_target=reg_max - 1.01).mean(-1, keepdim=True)``.

    Returns the loss in the promoted dtype of pred and target (mmdetection: fp16 pred with an
    fp32 target gives fp32), fp32 under autocast."""
    op = "distribution_focal_loss"
    _common.check_logits("pred", pred)
    _check_tensor("target", target)
    _common.check_same_device("pred", pred, target=target)
    if pred.dim() < 1 or pred.shape[-1] < 1:
        raise ValueError(f"{op}: pred must be (..., n + 1) logits over the bins, got shape {tuple(pred.shape)}")
    if target.shape != pred.shape[:-1] or not target.is_floating_point():
        raise ValueError(f"{op}: target must be a float tensor of shape pred.shape[:-1] = {tuple(pred.shape[:-1])}, got "
                         f"{target.dtype} {tuple(target.shape)}")
    _common.no_grad_required(target=target)
    C = pred.shape[-1]
    hi = float(C - 1)
    if max_target is not None:
        hi = _common.check_param("max_target", max_target, lambda v: 0 <= v <= C - 1, f"in [0, {C - 1}] (the last bin)")
    sw = _per_row(op, "weight", weight, pred.shape[:-1], pred)
    # without max_target the op checks the range; bins_hi past the last bin says so (the kernels clamp to C - 1)
    params = _params(bins_hi=hi if max_target is not None else C - 0.5)
    return _run(op, pred, target, TARGETS["bins"], params, reduction, sample_weight=sw, class_dim=-1, mean="rows", avg_factor=avg_factor,
                sync_avg_factor=sync_avg_factor, backend=backend)


def distillation_kl_div(input, target, temperature=1.0, target_logits=True, t_squared=True, reduction="mean", weight=None, avg_factor=None,
                        *, sync_avg_factor=False, backend=None):
    """KL divergence over the class axis for knowledge distillation (Hinton et al., arXiv
    1503.02531): KL(t || softmax(input / T)) per row, t = softmax(target / T) (teacher logits) or
    the probabilities ``target``; times T^2 with ``t_squared`` (the gradient scale of the
    original paper; mmdetection's ``KnowledgeDistillationKLDivLoss``).

    Args:
        input: student logits (N, C, d1, ..., dk), class axis 1.
        target: teacher logits (``target_logits``) or probabilities, input's shape.
        temperature: T > 0.
        reduction: "none" (per row) | "mean" (over rows: torch's "batchmean" for (N, C)) |
            "sum"; mmdetection's loss is this mean / C (it averages over the classes).
        weight: a weight per row; avg_factor: mmdetection's normaliser; sync_avg_factor: as
            :func:`cross_entropy`.

    The teacher is not differentiated (pass it detached).  Returns the loss in input's dtype
    (fp32 under autocast)."""
    op = "distillation_kl_div"
    _check_input(op, input)
    _check_tensor("target", target)
    _common.check_same_device("input", input, target=target)
    if target.shape != input.shape or not target.is_floating_point():
        raise ValueError(f"{op}: target must be float teacher logits / probabilities of input's shape {tuple(input.shape)}, got "
                         f"{target.dtype} {tuple(target.shape)}")
    _common.no_grad_required(target=target)
    T = _common.positive("temperature", temperature)
    kind = TARGETS["teacher"] if _common.flag("target_logits", target_logits) else TARGETS["probs"]
    scale = T * T if _common.flag("t_squared", t_squared) else 1.0
    sw = _per_row(op, "weight", weight, input.shape[:1] + input.shape[2:], input)
    return _run(op, input, target, kind, _params(in_scale=1.0 / T, out_scale=scale), reduction, sample_weight=sw, mean="rows",
                avg_factor=avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)


# ====================================================================== backends


def _triton_forward(*args):
    from fastloss.triton_kernels import rowwise as tk

    return tk.forward(*args)


def _triton_backward(*args):
    from fastloss.triton_kernels import rowwise as tk

    return tk.backward(*args)


# every backend takes the compiled ops' calling convention (csrc/fastloss.cpp): the reference and
# the native ops are registered as they are
_native = hasattr(torch.ops.fastloss, "rowwise_forward_native")
for _name in LOSSES:
    _backend.register(_name, "reference", reference.forward, reference.backward, family="rowwise")
    if _extension.has_cpu() and _native:
        _backend.register(_name, "cpu", torch.ops.fastloss.rowwise_forward_native, torch.ops.fastloss.rowwise_backward_native, family="rowwise")
    if _extension.has_cuda() and _native:
        _backend.register(_name, "cuda", torch.ops.fastloss.rowwise_forward_native, torch.ops.fastloss.rowwise_backward_native,
                          family="rowwise")
    _backend.register(_name, "triton", _triton_forward, _triton_backward, family="rowwise")
