"""The pointwise engine: every loss with one value and one derivative per element, on one
machinery -- and the public functions of those losses.

The engine, written once (this module, csrc/cpu/pointwise.cpp, csrc/cuda/pointwise.cu,
triton_kernels/pointwise.py, fastloss/reference/pointwise.py): loading any float dtype with
fp32 math and the input's dtype out; float targets, or integer class labels expanded in
registers (never one-hot), optionally with a per-row value at the label's class (QFL's
quality score); a weight and an auxiliary operand (BCE's ``pos_weight``, VFL's positive mask)
per element, per row or per column (no broadcast copy); reduction none / sum / mean (the mean
of nothing is 0) and mmdetection's ``avg_factor`` (a tensor stays on the device);
deterministic reductions; the store-gradient-in-forward vs recompute choice per device
(fastloss/_backend.py); a ``torch.library`` custom op per loss (``fastloss::<loss>`` and
``fastloss::<loss>_backward``, same schema for all) with fake impl, autograd and autocast, and
the eager fast path (:class:`PointwiseFunction`, tests check both agree bit for bit).

Forward/backward fusion.  Bytes per element (fp32, one forward + one backward):
  * store dL/dx in the forward, scale it in the backward: read x, t; write g | read g, write g
  * recompute in the backward: read x, t | read x, t, write g
Both move 20 B with float targets; with class labels (t costs ~0 B) recomputing moves
12 B against 16 B, keeps no input-sized buffer alive between forward and backward, and the
forward of an evaluation call writes nothing: so on GPUs, which are bandwidth-bound here, the
backward recomputes.  CPUs are compute-bound instead (exp / log1p / divisions cost ~3 ns per
element and pass with AVX2, moving its bytes ~0.3 ns), so there the forward computes dL/dx in
the same pass when the input requires grad, and the backward is one multiply.

Adding a loss, step by step:
  1. csrc/kernels/pointwise.h: a functor ``eval(x, t, aux, p, loss, grad)`` with the formula and
     its paper in a comment, a code in ``Loss`` and a line in ``dispatch_loss``;
  2. triton_kernels/pointwise.py: the same math as one ``@triton.jit`` function, and its branch
     in ``_loss``;
  3. fastloss/reference/pointwise.py: the same math in PyTorch (float64-capable) in ``ELEMENTS``;
  4. here: its code in ``LOSSES`` and a public function that checks the parameters, forms the
     parameter slots in double (derived scalars such as 1 - alpha too) and calls :func:`_run`;
     ``fastloss.nn``: its module; ``fastloss/__init__.py``: the export;
  5. tests/test_pointwise.py: its row in the loss table (and the peers' values it must match).
Everything else -- targets, weights, reductions, autograd, backends, torch.compile -- comes
with the engine.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common
from fastloss.reference import pointwise as reference

# name -> code (csrc/kernels/pointwise.h Loss)
LOSSES = {
    "sigmoid_focal_loss": 0, "l1_loss": 1, "mse_loss": 2, "smooth_l1_loss": 3, "huber_loss": 4, "balanced_l1_loss": 5,
    "binary_cross_entropy_with_logits": 6, "binary_cross_entropy": 7, "poly1_bce_loss": 8, "poly1_focal_loss": 9,
    "quality_focal_loss": 10, "varifocal_loss": 11, "gaussian_focal_loss": 12, "hinge_loss": 13, "kl_div": 14, "mean_bias_error": 15,
    "focal_loss_with_prob": 16, "quality_focal_loss_with_prob": 17, "reduced_focal_loss": 18, "focal_term": 19,
}
NAMES = {code: name for name, code in LOSSES.items()}
# the number of parameter slots each loss reads (csrc/kernels/pointwise.h), checked by the ops
N_PARAMS = {0: 4, 1: 0, 2: 0, 3: 4, 4: 2, 5: 7, 6: 2, 7: 0, 8: 1, 9: 5, 10: 1, 11: 4, 12: 3, 13: 2, 14: 1, 15: 0, 16: 5, 17: 5, 18: 6,
            19: 3}
LAYOUTS = {"elem": 1, "row": 2, "col": 3}  # csrc/include/fastloss/op_checks.h Layout
# The arguments of every loss's custom op fastloss::<loss>, in order (PointwiseFunction takes
# the same plus the loss code after aux_layout).
OP_ARGS = ("input", "target", "target_value", "weight", "weight_layout", "aux", "aux_layout", "params", "reduction", "store_grad", "backend")

# ====================================================================== the custom ops


def _validate(loss, input, target, target_value, weight, weight_layout, aux, aux_layout, params):
    """Checks once per call before any backend runs, inside the op (so they also run under
    torch.compile and guard direct ``torch.ops.fastloss.*`` calls): the parameter count, the
    operands' sizes against their layouts (no kernel reads past them), class labels in [0, C]
    (C: background), probabilities in [0, 1] for the losses over probabilities (:data:`_PROBABILITY_LOSSES`).
    Value checks: CPU tensors always; CUDA tensors in checked mode only (a host sync)."""
    op = NAMES[loss]
    if len(params) != N_PARAMS[loss]:
        raise ValueError(f"{op}: expected {N_PARAMS[loss]} parameters, got {len(params)} ({params})")
    C = input.shape[-1] if input.dim() else 1
    sizes = {1: input.numel(), 2: math.prod(input.shape[:-1]), 3: C}  # per element / row / column
    for name, v, layout in (("weight", weight, weight_layout), ("aux", aux, aux_layout)):
        if v is not None and (layout not in sizes or v.numel() != sizes[layout]):
            raise ValueError(f"{op}: {name} of {v.numel()} values does not match layout {layout} of input {tuple(input.shape)}")
    if not target.is_floating_point():
        if target.numel() != sizes[2] or (target_value is not None and target_value.numel() != sizes[2]):
            raise ValueError(f"{op}: class labels (and target values) must have one value per row of input {tuple(input.shape)}")
        _common.check_labels(op, target, C + 1, hint=_FOCAL_LABEL_HINT.format(C=C))
    elif target.numel() != input.numel():
        raise ValueError(f"{op}: a float target must have input's size")
    if loss in _PROBABILITY_LOSSES:
        for name, t in (("input", input), ("target", target), ("scores", target_value)):
            if t is not None and t.is_floating_point():  # class labels were checked above
                _common.check_range(op, name, t, 0.0, 1.0)


# losses whose input (and float target) are probabilities, checked to lie in [0, 1]
_PROBABILITY_LOSSES = tuple(LOSSES[n] for n in ("binary_cross_entropy", "gaussian_focal_loss", "focal_loss_with_prob",
                                                 "quality_focal_loss_with_prob"))

_FOCAL_LABEL_HINT = ("; label C = {C} is the background, and an anchor to ignore keeps any label with weight 0 for its row "
                     "(mmdetection's label_weights)")


def _forward_impl(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, store_grad, backend):
    _validate(loss, input, target, target_value, weight, weight_layout, aux, aux_layout, params)
    op = NAMES[loss]
    forward, _ = _backend.implementation(op, input.device, backend)
    return forward(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, store_grad)


def _backward_impl(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, cache, loss, params, reduction, backend,
                   in_place=False):
    if cache.shape == input.shape:  # the forward stored dL/dx * weight: only scale it
        scale = grad / max(input.numel(), 1) if reduction == 2 else grad
        return _common.scale_stored_grad(cache, scale, input.dtype, in_place)
    _, backward = _backend.implementation(NAMES[loss], input.device, backend)
    return backward(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction)


def _define_ops(name, code):
    """The custom ops ``fastloss::<name>`` (forward: (loss, cache); cache = dL/dx * weight if
    store_grad, else empty) and ``fastloss::<name>_backward``, with fake impls, autograd and
    autocast.  One schema for every loss; the loss code is bound here."""

    def forward(input: Tensor, target: Tensor, target_value: Optional[Tensor], weight: Optional[Tensor], weight_layout: int,
                aux: Optional[Tensor], aux_layout: int, params: list[float], reduction: int, store_grad: bool,
                backend: Optional[str]) -> tuple[Tensor, Tensor]:
        return _forward_impl(input, target, target_value, weight, weight_layout, aux, aux_layout, code, params, reduction, store_grad,
                             backend)

    def backward(grad: Tensor, input: Tensor, target: Tensor, target_value: Optional[Tensor], weight: Optional[Tensor], weight_layout: int,
                 aux: Optional[Tensor], aux_layout: int, cache: Tensor, params: list[float], reduction: int,
                 backend: Optional[str]) -> Tensor:
        return _backward_impl(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, cache, code, params, reduction,
                              backend)

    fwd_op = torch.library.custom_op(f"fastloss::{name}", forward, mutates_args=())
    bwd_op = torch.library.custom_op(f"fastloss::{name}_backward", backward, mutates_args=())

    @fwd_op.register_fake
    def _(input, target, target_value, weight, weight_layout, aux, aux_layout, params, reduction, store_grad, backend):
        acc = _common.reduced_dtype(input.dtype)
        loss = torch.empty_like(input) if reduction == 0 else input.new_empty((), dtype=acc)
        return loss, input.new_empty(input.shape if store_grad else (0,), dtype=acc)

    @bwd_op.register_fake
    def _(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, cache, params, reduction, backend):
        return torch.empty_like(input)

    def setup_context(ctx, inputs, output):
        input, target, target_value, weight, weight_layout, aux, aux_layout, params, reduction, _store, backend = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the cache output
        ctx.save_for_backward(input, target, target_value, weight, aux, output[1])
        # the backward runs on the forward's backend (autograd may run it on another thread,
        # outside the caller's use_backend context)
        ctx.args = (weight_layout, aux_layout, params, reduction, _backend.backward_backend(name, input.device, backend))

    def grad_fn(ctx, grad, _grad_cache):
        if grad is None:  # grads are not materialized: no gradient flowed into the loss
            return (None,) * 11
        input, target, target_value, weight, aux, cache = ctx.saved_tensors
        weight_layout, aux_layout, params, reduction, backend = ctx.args
        g = bwd_op(grad.contiguous(), input, target, target_value, weight, weight_layout, aux, aux_layout, cache, params, reduction, backend)
        return (g,) + (None,) * 10

    fwd_op.register_autograd(grad_fn, setup_context=setup_context)
    _common.register_autocast(fwd_op)
    return fwd_op


class PointwiseFunction(torch.autograd.Function):
    """The custom ops' forward / backward as one autograd.Function for every loss (the eager
    fast path: no custom-op dispatch).  Returns (loss, cache) like the ops; the backward may
    scale the cache in place (_common.take_stored_grad)."""

    @staticmethod
    def forward(ctx, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, store_grad, backend):
        out, cache = _forward_impl(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, store_grad,
                                   backend)
        ctx.mark_non_differentiable(cache)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the cache output
        ctx.save_for_backward(input, target, target_value, weight, aux)
        ctx.stored_grad = cache  # may be scaled in place by the backward (_common.take_stored_grad)
        ctx.args = (weight_layout, aux_layout, loss, params, reduction, _backend.backward_backend(NAMES[loss], input.device, backend))
        return out, cache

    @staticmethod
    @_common.once_differentiable  # no double backward: an error, not a silent constant (_common)
    def backward(ctx, grad, _grad_cache):
        if grad is None:  # grads are not materialized: no gradient flowed into the loss
            return (None,) * 12
        input, target, target_value, weight, aux = _common.saved_tensors(ctx)
        weight_layout, aux_layout, loss, params, reduction, backend = ctx.args
        cache, in_place = _common.take_stored_grad(ctx)
        g = _backward_impl(grad.contiguous(), input, target, target_value, weight, weight_layout, aux, aux_layout, cache, loss, params,
                           reduction, backend, in_place)
        return (g,) + (None,) * 11


OPS = {name: _define_ops(name, code) for name, code in LOSSES.items()}

# ====================================================================== argument handling


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _prepare_target(op, input, target, labels):
    """A float target of input's shape (bool -> float), or, where the loss takes them
    (``labels``), integer class labels of shape input.shape[:-1] in [0, C] (C: background)."""
    _check_tensor("target", target)
    if target.is_complex():
        raise ValueError(f"{op}: target must be float (soft) targets" + (" or integer class labels" if labels else "") + f", got {target.dtype}")
    if target.is_floating_point() or target.dtype == torch.bool:
        if target.shape != input.shape:
            msg = f"{op}: a float target must have input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
            if labels:
                msg += (f"; integer class labels of shape input.shape[:-1] = {tuple(input.shape[:-1])} are accepted too "
                        f"(labels in [0, C], C = input.shape[-1] meaning background)")
            else:
                msg += " (no broadcasting: a mismatch is an error, not torch's warning)"
            raise ValueError(msg)
        _common.no_grad_required(target=target)
        return target
    if not labels:
        raise ValueError(f"{op}: target must be a float tensor of input's shape, got {target.dtype}")
    if input.dim() == 0 or target.shape != input.shape[:-1]:
        raise ValueError(f"{op}: an integer class-label target must have shape input.shape[:-1] = {tuple(input.shape[:-1])}, "
                         f"got {tuple(target.shape)} (labels in [0, C], C = input.shape[-1] meaning background)")
    return target.to(torch.int64).contiguous()


def _prepare_operand(name, input, v, dtype, rule="mmdet"):
    """(tensor, layout code) of a weight / aux operand of ``input``, whose shape is read by
    ``rule``:

    * "mmdet" (every loss but torch's BCE pair): input's shape; else input.shape[:-1], per row
      (mmdetection's per-anchor weight, mmcv's focal weight) -- before broadcasting, so a (C,)
      operand of a square (C, C) input is per row; else torch's broadcasting to input.
    * "torch" (``F.binary_cross_entropy_with_logits``'s ``pos_weight``): torch's broadcasting
      to input only, so a (C,) operand of a square (C, C) input is per column.
    * "torch_rows" (the ``weight`` of torch's BCE pair): torch's broadcasting first, as
      "torch"; an operand of shape input.shape[:-1] that does not broadcast (torch rejects
      it) is per row (fastloss's documented extension: per-anchor weights of class labels).

    Layouts, none but the last copies: per element (input's shape), per row (input.shape[:-1],
    or a broadcasting (..., 1) holding one value per row), per column ((C,) or (1, ..., 1, C)),
    else the broadcast operand expanded to per element.  ValueError for a shape the rule does
    not accept (one that would broadcast input to a larger shape included)."""
    if v is None:
        return None, 0
    _check_tensor(name, v)
    _common.no_grad_required(**{name: v})
    _common.check_same_device("input", input, **{name: v})
    v = v.to(dtype)
    if v.shape == input.shape:
        return v.contiguous(), LAYOUTS["elem"]
    broadcasts = _common.broadcasts_to(v.shape, input.shape)
    if input.dim() > 0 and v.shape == input.shape[:-1] and (rule == "mmdet" or (rule == "torch_rows" and not broadcasts)):
        return v.contiguous(), LAYOUTS["row"]
    if not broadcasts:
        rows = "" if rule == "torch" else f", nor its rows {tuple(input.shape[:-1])}"
        raise ValueError(f"{name} of shape {tuple(v.shape)} matches neither input {tuple(input.shape)}{rows}, nor broadcasts to it")
    if input.dim() > 0 and v.dim() > 0:
        if v.shape[-1] == input.shape[-1] and v.numel() == input.shape[-1]:
            return v.reshape(-1).contiguous(), LAYOUTS["col"]
        # (..., 1) broadcasting to input with one value per row: every leading dim is input's
        if input.dim() > 1 and v.shape[-1] == 1 and v.numel() == math.prod(input.shape[:-1]):
            return v.reshape(-1).contiguous(), LAYOUTS["row"]
    return v.expand(input.shape).contiguous(), LAYOUTS["elem"]


def _run(op, input, target, params, reduction, weight=None, avg_factor=None, *, aux=None, aux_name="aux", weight_rule="mmdet",
         aux_rule="mmdet", target_value=None, labels=False, sync_avg_factor=False, backend=None):
    """The engine's public path: checks, dtype rules, layouts (the operands' shapes read by
    ``weight_rule`` / ``aux_rule``, see :func:`_prepare_operand`), then the custom op (under
    torch.compile) or the eager fast path, then avg_factor.  Returns the loss in the promoted
    dtype of input and a float target (fp32 under autocast)."""
    _common.check_logits("input", input)
    code = _common.check_reduction(reduction, avg_factor, sync_avg_factor)
    _common.check_same_device("input", input, target=target, weight=weight, avg_factor=avg_factor)
    target = _prepare_target(op, input, target, labels)
    dtype = _common.compute_dtype(input, target)
    input = input.to(dtype).contiguous()
    if target.is_floating_point() or target.dtype == torch.bool:
        target = target.to(dtype).contiguous()
    acc = _common.reduced_dtype(dtype)
    weight, weight_layout = _prepare_operand("weight", input, weight, acc, weight_rule)
    aux, aux_layout = _prepare_operand(aux_name, input, aux, acc, aux_rule)
    if target_value is not None:
        _check_tensor("target_value", target_value)
        _common.no_grad_required(target_value=target_value)
        _common.check_same_device("input", input, target_value=target_value)
        target_value = target_value.to(acc).reshape(-1).contiguous()
    if avg_factor is not None and reduction == "mean":
        code = _common.REDUCTIONS["sum"]
        avg_factor = _common.global_avg_factor(avg_factor, sync_avg_factor, dtype, input.device)
    store_grad = input.requires_grad and torch.is_grad_enabled() and _backend.store_grad_in_forward(input.device)
    compiling = torch.compiler.is_compiling()
    # the eager CPU path folds a host-known avg_factor into a per-row / per-column weight (a
    # vector, not an element-sized copy): the stored gradient is then that of the mean itself,
    # and loss.backward() takes it with no pass scaling it ((100000, 80) sigmoid focal: 12.8 ->
    # 11.5 ms).  A new per-column weight only for label losses, which walk rows anyway: it
    # would put a flat loss on the row walk ((400000, 4) smooth L1: 0.7 -> 3.2 ms).
    foldable = weight_layout in (LAYOUTS["row"], LAYOUTS["col"]) or (weight is None and labels and input.dim() > 0)
    if avg_factor is not None and reduction == "mean" and store_grad and not compiling and foldable:
        scale = _common.fold_scale(1.0, _common.host_avg_factor(avg_factor, sync_avg_factor), acc)
        if scale is not None:
            if weight is None:
                weight, weight_layout = torch.full(input.shape[-1:], scale, dtype=acc, device=input.device), LAYOUTS["col"]
            else:
                weight = weight * scale
            avg_factor = None
    params = [float(p) for p in params]
    args = (input, target, target_value, weight, weight_layout, aux, aux_layout)
    rest = (params, code, store_grad, backend)
    if compiling:
        loss, _ = OPS[op](*args, *rest)
    else:
        loss, _ = PointwiseFunction.apply(*args, LOSSES[op], *rest)
    return _common.finish(loss, dtype, reduction, avg_factor)


# ====================================================================== the losses

_REDUCTION_DOC = """reduction: "none" | "mean" | "sum"; the mean of an empty input is 0.
        weight: per element (input's shape), per row (input.shape[:-1], mmdetection's
            per-anchor weight -- also a (C,) weight of a square (C, C) input, as mmdetection's
            focal weight; or (..., 1)), per column ((C,) or (1, ..., 1, C)), all without a
            copy, or anything that broadcasts to input; it does not take part in dtype
            promotion (as torch's ``weight=``).  "mean" divides the weighted sum by the number
            of elements (mmdetection's rule; torch's ``F.l1_loss(weight=)`` / ``mse_loss``
            divide by the sum of the weights instead).
        avg_factor: mmdetection's normaliser: "mean" returns sum / (avg_factor + eps); a
            number or a tensor kept on the device; an error with "sum", ignored with "none".
        sync_avg_factor: (keyword) True: divide by the mean of avg_factor over the ranks of
            torch.distributed's default group (mmdetection's ``reduce_mean``, see
            :mod:`fastloss.distributed`), the same normaliser on every rank of a
            DistributedDataParallel job; detached (no gradient through it); no communication
            without an initialised process group or with "none".  ValueError without avg_factor."""


def _focal_params(alpha, gamma):
    alpha = _common.check_param("alpha", alpha, lambda a: a <= 1, "in [0, 1], or negative to disable the alpha weighting")
    gamma = _common.nonneg("gamma", gamma)
    return [alpha, 1.0 - alpha, gamma, 1.0 if alpha >= 0 else 0.0]  # 1 - alpha formed in double


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None, *, sync_avg_factor=False,
                       backend=None):
    """Sigmoid focal loss (Lin et al., arXiv 1708.02002) over logits ``input`` (..., C).

    Args:
        input: logits (..., C), fp16/bf16/fp32 (fp64 on CPU/reference).
        target: float targets (probabilities in [0, 1]) of input's shape (torchvision; soft
            targets allowed), or integer class labels of shape ``input.shape[:-1]`` in [0, C]
            with C = background (mmcv/mmdetection); labels are expanded inside the kernel.
            Out-of-range labels raise ValueError for CPU tensors; for CUDA tensors (no host
            sync) they match no class, i.e. count as background, unless checked mode is on
            (:func:`fastloss.checked_labels`, ``FASTLOSS_CHECK_LABELS=1``).
        alpha: weight of the positive class, in [0, 1]; a negative value disables it (torchvision's -1).
        gamma: focusing exponent, >= 0; 0 gives BCE-with-logits.
        {reduction}
        backend: force a backend for this call (see :mod:`fastloss._backend`).

    Returns the loss in the promoted dtype of input and a float target (torch's type
    promotion, as its own losses; ``weight`` takes no part; fp32 for fp16/bf16 under
    ``torch.autocast``): input's shape for "none", else a scalar.  Raises ValueError for bad
    shapes, parameters outside their domain, out-of-range labels (above) or a target / weight
    that requires grad (the gradient is taken w.r.t. ``input`` only).
    """
    return _run("sigmoid_focal_loss", input, target, _focal_params(alpha, gamma), reduction, weight, avg_factor, labels=True,
                sync_avg_factor=sync_avg_factor, backend=backend)


sigmoid_focal_loss.__doc__ = sigmoid_focal_loss.__doc__.format(reduction=_REDUCTION_DOC)


def _threshold(threshold):
    """(cutoff, divisor) of the reduced focal term for ``threshold`` (None: the plain focal term)."""
    if threshold is None:
        return [0.0, 1.0]  # p_t < 0 never holds, q / 1 = q
    th = _common.check_param("threshold", threshold, lambda v: 0 < v < math.inf, "positive and finite")
    return [th, th]


def reduced_focal_loss(input, target, alpha=0.25, gamma=2.0, threshold=0.5, reduction="mean", weight=None, avg_factor=None, *,
                       sync_avg_factor=False, backend=None):
    """Reduced focal loss (Sergievskiy & Ponamarev, arXiv 1903.01347; segmentation_models_pytorch's
    ``reduced_threshold``) over logits: per element ``a_t f BCE(x, t)`` with the focal term
    ``f = 1`` where ``p_t < threshold`` (hard examples keep their full BCE) and
    ``f = ((1 - p_t) / threshold)^gamma`` elsewhere (easy ones are down-weighted as in the focal
    loss); ``a_t = alpha t + (1 - alpha)(1 - t)``.  Its gradient differentiates f on the power
    branch (0 on the constant one), as autograd does through smp's formula.

    Args:
        input: logits (..., C), fp16/bf16/fp32 (fp64 on CPU/reference).
        target: hard 0 / 1 float targets of input's shape, or integer class labels of shape
            ``input.shape[:-1]`` in [0, C] with C = background (expanded inside the kernel).
            Soft targets run, with p_t = t p + (1 - t)(1 - p) (smp's exp(-BCE) differs there).
        alpha: in [0, 1], or negative to disable the weighting (torchvision's -1).
        gamma: >= 0.
        threshold: positive and finite; the paper uses 0.5.  Values >= 1 leave f = 1 wherever
            p_t < 1, i.e. a_t BCE.
        reduction, weight, avg_factor, sync_avg_factor, backend: as :func:`sigmoid_focal_loss`.

    Returns the loss as :func:`sigmoid_focal_loss` (input's shape for "none", else a scalar;
    promoted dtype, fp32 under autocast).  Raises ValueError as it does and for a threshold
    that is not positive and finite.
    """
    params = _focal_params(alpha, gamma) + _threshold(threshold)
    return _run("reduced_focal_loss", input, target, params, reduction, weight, avg_factor, labels=True, sync_avg_factor=sync_avg_factor,
                backend=backend)


def focal_term(input, target, gamma=2.0, threshold=None, reduction="sum", weight=None, *, backend=None):
    """The focal term alone, per element, over logits: ``(1 - p_t)^gamma``, or with
    ``threshold`` the reduced focal term of :func:`reduced_focal_loss` (1 where p_t < threshold,
    ``((1 - p_t) / threshold)^gamma`` elsewhere), with its derivative.

    Its sum is the normaliser of the normalised focal loss (arXiv 1909.07829, smp's
    ``normalized=True``: loss / max(sum f, eps), differentiated through the sum too).  It is
    the engine's op ``fastloss::focal_term`` on every backend, but not exported as
    ``fastloss.focal_term``: it is a weighting term, not a loss to train on by itself, so
    it stays out of the public loss list; :mod:`fastloss.compat.smp` uses it for smp's
    ``normalized=True``.

    Args:
        input: logits (..., C); target: hard 0 / 1 float targets of input's shape or integer
            class labels of shape ``input.shape[:-1]`` in [0, C] (C = background).
        gamma: >= 0; threshold: None, or positive and finite.
        reduction: "sum" (default), "mean" or "none"; weight: as :func:`sigmoid_focal_loss`
            (a 0 weight leaves an element out of the sum).

    Returns a scalar (or input's shape for "none") in the promoted dtype; ValueError for bad
    shapes or parameters."""
    params = [_common.nonneg("gamma", gamma)] + _threshold(threshold)
    return _run("focal_term", input, target, params, reduction, weight, None, labels=True, backend=backend)


def poly1_focal_loss(input, target, alpha=0.25, gamma=2.0, epsilon=1.0, reduction="mean", weight=None, avg_factor=None, *,
                     sync_avg_factor=False, backend=None):
    """Poly-1 focal loss (PolyLoss, Leng et al., arXiv 2204.12511): the sigmoid focal loss
    plus ``epsilon (1 - p_t)^(gamma + 1)`` per element.  Arguments, targets (float or class
    labels), returns and errors as :func:`sigmoid_focal_loss`; ``epsilon`` any real number
    (the paper uses -1 to 1)."""
    params = _focal_params(alpha, gamma) + [_common.check_param("epsilon", epsilon, math.isfinite, "finite")]
    return _run("poly1_focal_loss", input, target, params, reduction, weight, avg_factor, labels=True, sync_avg_factor=sync_avg_factor,
                backend=backend)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None, label_smoothing=0.0, avg_factor=None, *,
                                     sync_avg_factor=False, backend=None):
    """BCE with logits, torch's ``F.binary_cross_entropy_with_logits`` (same ``weight`` and
    ``pos_weight`` semantics), plus binary label smoothing and mmdetection's avg_factor.

    Args:
        input: logits (..., C), fp16/bf16/fp32 (fp64 on CPU/reference).
        target: probabilities in [0, 1] of input's shape, or integer class labels of shape
            input.shape[:-1] in [0, C] (one-hot in registers, C = background).
        weight: rescales each element; torch's broadcasting to input's shape, so a (C,)
            weight is per column (per class) whatever N, square (C, C) inputs included (unlike
            the mmdetection-style losses' per-row reading there); (..., 1) is per row, e.g.
            per anchor, without a copy.  Extension: a weight of shape input.shape[:-1] that
            torch's broadcasting rejects (an (N,) weight of an (N, C) input, N != C) is per
            row; prefer ``weight[..., None]``, which means one value per row for every shape.
            It does not take part in dtype promotion (as torch's ``weight=``).
        pos_weight: weight of the positive term, torch's semantics: broadcast to input's shape
            ((C,): per class, also for square inputs),
            -[pos_weight t log p + (1 - t) log(1 - p)].
        label_smoothing: s in [0, 1]: targets become t (1 - s) + s / 2 (YOLOv5's smooth_BCE).
        reduction, avg_factor, sync_avg_factor: as :func:`sigmoid_focal_loss`.

    Returns the loss (promoted dtype of input and a float target; fp32 under autocast);
    ValueError for bad shapes (a weight or pos_weight that does not broadcast to input's
    shape, or broadcasts it to a larger one: torch raises there too) or parameters."""
    s = _common.check_param("label_smoothing", label_smoothing, lambda v: 0 <= v <= 1, "in [0, 1]")
    return _run("binary_cross_entropy_with_logits", input, target, [1.0 - s, 0.5 * s], reduction, weight, avg_factor, aux=pos_weight,
                aux_name="pos_weight", weight_rule="torch_rows", aux_rule="torch", labels=True, sync_avg_factor=sync_avg_factor,
                backend=backend)


def binary_cross_entropy(input, target, weight=None, reduction="mean", avg_factor=None, *, sync_avg_factor=False, backend=None):
    """BCE over probabilities, torch's ``F.binary_cross_entropy``: each log clamped at -100
    and torch's gradient (p - t) / max(p (1 - p), 1e-12).  ``input`` and ``target`` must lie in
    [0, 1]: ValueError otherwise for CPU tensors (as torch); for CUDA tensors only in checked
    mode (:func:`fastloss.checked_labels`; no host sync otherwise: values outside give
    meaningless numbers or NaN, unchecked).
    Under autocast, as torch, it computes in fp32 (torch refuses it under CUDA autocast:
    fastloss's kernel is safe there).  Other arguments (``weight``'s torch broadcasting and
    per-row extension too) as :func:`binary_cross_entropy_with_logits`."""
    return _run("binary_cross_entropy", input, target, [], reduction, weight, avg_factor, weight_rule="torch_rows",
                sync_avg_factor=sync_avg_factor, backend=backend)


def poly1_bce_loss(input, target, epsilon=1.0, weight=None, reduction="mean", avg_factor=None, *, sync_avg_factor=False, backend=None):
    """Poly-1 BCE (PolyLoss, arXiv 2204.12511): BCE-with-logits + epsilon (1 - p_t) per
    element.  Targets (float or class labels), returns and errors as
    :func:`binary_cross_entropy_with_logits`; ``weight``, reduction and avg_factor as
    :func:`sigmoid_focal_loss` (a (C,) weight of a square input per row)."""
    eps = _common.check_param("epsilon", epsilon, math.isfinite, "finite")
    return _run("poly1_bce_loss", input, target, [eps], reduction, weight, avg_factor, labels=True, sync_avg_factor=sync_avg_factor,
                backend=backend)


def quality_focal_loss(input, target, beta=2.0, weight=None, reduction="mean", avg_factor=None, *, sync_avg_factor=False, backend=None):
    """Quality focal loss (Generalized Focal Loss, Li et al., arXiv 2006.04388), mmdetection's
    form: BCE(x, q) |sigmoid(x) - q|^beta per element, q the IoU-quality target.

    Args:
        input: logits (N, C) (any leading dims).
        target: mmdetection's ``(labels, scores)``: labels (N,) in [0, C] (C = background) and the
            quality score (N,) of each label's class, expanded in registers (q = score at the
            label's class, 0 elsewhere); or dense soft targets q of input's shape
            (``quality_focal_loss_tensor_target``).
        beta: >= 0.
        weight, reduction, avg_factor, sync_avg_factor: as :func:`sigmoid_focal_loss`; mmdetection sums over the
            classes first, so its "mean" (over anchors) is this "sum" / N, and with avg_factor
            the two agree.

    Returns the loss (promoted dtype; fp32 under autocast); ValueError for bad shapes / beta."""
    beta = _common.nonneg("beta", beta)
    target, score = _quality_target("quality_focal_loss", target)
    return _run("quality_focal_loss", input, target, [beta], reduction, weight, avg_factor, target_value=score, labels=True,
                sync_avg_factor=sync_avg_factor, backend=backend)


def _quality_target(op, target):
    """QFL's target: mmdetection's ``(labels, scores)`` split into labels and per-row scores,
    or a dense float target (scores None)."""
    if not isinstance(target, (tuple, list)):
        return target, None
    if len(target) != 2:
        raise ValueError(f"{op}: a tuple target must be (labels, scores)")
    labels, score = target
    _check_tensor("scores", score)
    if score.shape != labels.shape or labels.is_floating_point():
        raise ValueError(f"{op}: (labels, scores) must be integer labels and float scores of one shape, got "
                         f"{labels.dtype} {tuple(labels.shape)} and {score.dtype} {tuple(score.shape)}")
    return labels, score


def focal_loss_with_prob(input, target, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None, *, sync_avg_factor=False,
                         backend=None):
    """Focal loss (Lin et al., arXiv 1708.02002) over probabilities: mmdetection's
    ``FocalLoss(activated=True)`` (``py_focal_loss_with_prob``), for heads that apply the
    sigmoid themselves (TOOD, DDOD).  Per element
    ``BCE(p, t) (alpha t + (1 - alpha)(1 - t)) ((1 - p) t + p (1 - t))^gamma`` with torch's
    binary_cross_entropy (each log clamped at -100); both factors are differentiated.

    Args:
        input: probabilities (..., C) in [0, 1], fp16/bf16/fp32 (fp64 on CPU/reference).
        target: float targets in [0, 1] of input's shape, or integer class labels of shape
            ``input.shape[:-1]`` in [0, C] with C = background (expanded inside the kernel).
        alpha, gamma, weight, reduction, avg_factor, sync_avg_factor, backend: as
            :func:`sigmoid_focal_loss`.

    Returns the loss as :func:`sigmoid_focal_loss`.  Raises ValueError as it does, and for
    an input or float target outside [0, 1] (CPU tensors; CUDA tensors in checked mode).
    Prefer :func:`sigmoid_focal_loss` on logits where the head allows: it is exact where
    p saturates at 0 or 1, this form clamps the logs as torch does.
    """
    return _run("focal_loss_with_prob", input, target, _focal_params(alpha, gamma) + [0.0], reduction, weight, avg_factor, labels=True,
                sync_avg_factor=sync_avg_factor, backend=backend)


def quality_focal_loss_with_prob(input, target, beta=2.0, weight=None, reduction="mean", avg_factor=None, *, sync_avg_factor=False,
                                 backend=None):
    """Quality focal loss (Generalized Focal Loss, arXiv 2006.04388) over probabilities:
    mmdetection's ``QualityFocalLoss(activated=True)`` (``quality_focal_loss_with_prob``),
    ``BCE(p, q) |p - q|^beta`` per element with torch's binary_cross_entropy.

    Args:
        input: probabilities (N, C) in [0, 1] (any leading dims).
        target: ``(labels, scores)`` or dense soft targets q in [0, 1], as
            :func:`quality_focal_loss`.
        beta, weight, reduction, avg_factor, sync_avg_factor, backend: as :func:`quality_focal_loss`.

    Returns the loss (promoted dtype; fp32 under autocast); ValueError for bad shapes / beta,
    or an input or dense target outside [0, 1] (CPU tensors; CUDA tensors in checked mode)."""
    beta = _common.nonneg("beta", beta)
    target, score = _quality_target("quality_focal_loss_with_prob", target)
    return _run("quality_focal_loss_with_prob", input, target, [0.0, 1.0, beta, 0.0, 1.0], reduction, weight, avg_factor,
                target_value=score, labels=True, sync_avg_factor=sync_avg_factor, backend=backend)


def varifocal_loss(input, target, alpha=0.75, gamma=2.0, iou_weighted=True, weight=None, reduction="mean", avg_factor=None, *, positive=None,
                   sync_avg_factor=False, backend=None):
    """Varifocal loss (VarifocalNet, Zhang et al., arXiv 2008.13367), mmdetection's form:
    BCE(x, t) weighted by t (``iou_weighted``) or 1 on positives, alpha |sigmoid(x) - t|^gamma on
    negatives (that weight differentiated, as mmdetection's autograd does).

    Args:
        input: logits (..., C); target: IoU-aware scores in [0, 1] of input's shape.
        alpha: in [0, 1]; gamma: >= 0.
        iou_weighted: positives weighted by their target (True) or by 1.
        positive: optional mask of input's shape marking the positives (ultralytics' ``label``:
            its ``VarifocalLoss()(pred, gt_score, label)`` is
            ``varifocal_loss(pred, gt_score, positive=label, reduction="none").mean(1).sum()``);
            default t > 0 (mmdetection).
        weight, reduction, avg_factor, sync_avg_factor: as :func:`sigmoid_focal_loss`.

    Returns the loss (promoted dtype; fp32 under autocast); ValueError for bad shapes / parameters."""
    alpha = _common.check_param("alpha", alpha, lambda a: 0 <= a <= 1, "in [0, 1]")
    gamma = _common.nonneg("gamma", gamma)
    if positive is not None:
        _check_tensor("positive", positive)
        if positive.shape != input.shape:
            raise ValueError(f"varifocal_loss: positive must have input's shape {tuple(input.shape)}, got {tuple(positive.shape)}")
        positive = positive.to(_common.reduced_dtype(input.dtype))
    params = [alpha, gamma, _common.flag("iou_weighted", iou_weighted), 1.0 if positive is not None else 0.0]
    return _run("varifocal_loss", input, target, params, reduction, weight, avg_factor, aux=positive, aux_name="positive",
                sync_avg_factor=sync_avg_factor, backend=backend)


def gaussian_focal_loss(input, target, alpha=2.0, gamma=4.0, weight=None, reduction="mean", avg_factor=None, eps=1e-12, *,
                        sync_avg_factor=False, backend=None):
    """Gaussian focal loss (CenterNet, Zhou et al., arXiv 1904.07850; mmdetection's form) over
    probabilities ``input`` (a sigmoid already applied, as CenterNet's heads do) against a
    Gaussian heatmap ``target`` in [0, 1] of the same shape:
    -[t == 1] log(p + eps) (1 - p)^alpha - (1 - t)^gamma log(1 - p + eps) p^alpha.
    alpha, gamma >= 0, eps > 0.  weight / reduction / avg_factor / sync_avg_factor as
    :func:`sigmoid_focal_loss`."""
    params = [_common.nonneg("alpha", alpha), _common.nonneg("gamma", gamma), _common.positive("eps", eps)]
    return _run("gaussian_focal_loss", input, target, params, reduction, weight, avg_factor, sync_avg_factor=sync_avg_factor,
                backend=backend)


def hinge_loss(input, target, margin=1.0, squared=False, weight=None, reduction="mean", avg_factor=None, *, sync_avg_factor=False,
               backend=None):
    """Binary SVM hinge loss max(0, margin - y x) (``squared``: its square, the L2-SVM), y = +1
    where target > 0 and -1 elsewhere: targets in {-1, 1} or {0, 1} of input's shape.
    margin: finite.  weight / reduction / avg_factor / sync_avg_factor as :func:`sigmoid_focal_loss`."""
    margin = _common.check_param("margin", margin, math.isfinite, "finite")
    return _run("hinge_loss", input, target, [margin, _common.flag("squared", squared)], reduction, weight, avg_factor,
                sync_avg_factor=sync_avg_factor, backend=backend)


def kl_div(input, target, reduction="mean", log_target=False, weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """KL divergence, torch's pointwise ``F.kl_div``: ``input`` log-probabilities, ``target``
    probabilities (or log-probabilities with ``log_target``), t (log t - input) per element.
    reduction: "none" | "mean" (over elements) | "sum" | "batchmean" (sum / input.size(0),
    the mathematical KL; torch's recommended one; no avg_factor, so no sync_avg_factor).
    weight / avg_factor / sync_avg_factor as :func:`sigmoid_focal_loss`."""
    if reduction == "batchmean":
        if avg_factor is not None:
            raise ValueError('kl_div: avg_factor can not be used with reduction="batchmean"')
        total = _run("kl_div", input, target, [_common.flag("log_target", log_target)], "sum", weight, None,
                     sync_avg_factor=sync_avg_factor, backend=backend)
        return total / (input.shape[0] if input.dim() and input.shape[0] else 1)
    return _run("kl_div", input, target, [_common.flag("log_target", log_target)], reduction, weight, avg_factor,
                sync_avg_factor=sync_avg_factor, backend=backend)


# ---------------------------------------------------------------------- regression


def l1_loss(input, target, reduction="mean", weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """L1 loss (MAE) |input - target| per element, torch's ``F.l1_loss`` (no broadcasting:
    input and target of one shape, e.g. (..., 4) box deltas), with mmdetection's weight and
    avg_factor (``sync_avg_factor`` as :func:`sigmoid_focal_loss`).  Gradient sign(input -
    target), 0 at 0.  Returns the loss in the promoted dtype of input and target (fp32 under
    autocast); ValueError for a shape mismatch."""
    return _run("l1_loss", input, target, [], reduction, weight, avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)


def mse_loss(input, target, reduction="mean", weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """MSE (L2) loss (input - target)^2 per element, torch's ``F.mse_loss``; arguments as :func:`l1_loss`."""
    return _run("mse_loss", input, target, [], reduction, weight, avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)


def sse_loss(input, target, weight=None, *, backend=None):
    """Sum of squared errors: :func:`mse_loss` with reduction "sum"."""
    return _run("mse_loss", input, target, [], "sum", weight, None, backend=backend)


def rmse_loss(input, target, weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """Root mean squared error sqrt(mean((input - target)^2)) (with avg_factor: sqrt(sum /
    avg_factor); ``sync_avg_factor`` as :func:`sigmoid_focal_loss`).  Its gradient is finite
    at zero error: 0 there (the limit along any path is bounded and 0 is the subgradient's
    minimum-norm element), where sqrt's derivative is infinite."""
    m = _run("mse_loss", input, target, [], "mean", weight, avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)
    pos = m > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, m, torch.ones_like(m))), m * 0)


def mean_bias_error(input, target, weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """Mean bias error: the signed mean of input - target (with avg_factor: sum / avg_factor);
    gradient 1 / n per element.  Arguments (``sync_avg_factor`` too) as :func:`l1_loss`."""
    return _run("mean_bias_error", input, target, [], "mean", weight, avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)


def smooth_l1_loss(input, target, beta=1.0, reduction="mean", weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """Smooth L1 (Fast R-CNN, Girshick, arXiv 1504.08083), torch's ``F.smooth_l1_loss``:
    0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (d = input - target); beta >= 0,
    and beta = 0 is exactly L1 (never NaN).  Arguments as :func:`l1_loss`."""
    beta = _common.nonneg("beta", beta)
    if beta > 0 and 1.0 / beta > torch.finfo(torch.float32).max:
        beta = 0.0  # below fp32's range: the quadratic zone |d| < beta holds nothing representable -- exactly L1
    params = [beta, 0.5 / beta if beta > 0 else 0.0, 0.5 * beta, 1.0 / beta if beta > 0 else 0.0]
    return _run("smooth_l1_loss", input, target, params, reduction, weight, avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)


def huber_loss(input, target, delta=1.0, reduction="mean", weight=None, avg_factor=None, *, sync_avg_factor=False, backend=None):
    """Huber loss, torch's ``F.huber_loss``: 0.5 d^2 where |d| < delta, delta (|d| - 0.5 delta)
    elsewhere; delta > 0.  Arguments as :func:`l1_loss`."""
    delta = _common.positive("delta", delta)
    return _run("huber_loss", input, target, [delta, 0.5 * delta], reduction, weight, avg_factor, sync_avg_factor=sync_avg_factor,
                backend=backend)


def balanced_l1_loss(input, target, alpha=0.5, gamma=1.5, beta=1.0, reduction="mean", weight=None, avg_factor=None, *,
                     sync_avg_factor=False, backend=None):
    """Balanced L1 (Libra R-CNN, Pang et al., arXiv 1904.02701), mmdetection's form: with
    a = |input - target| and b = e^(gamma / alpha) - 1, alpha / b (b a + 1) ln(b a / beta + 1) -
    alpha a where a < beta, gamma a + gamma / b - alpha beta elsewhere.  alpha, gamma, beta > 0.
    Arguments as :func:`l1_loss`."""
    alpha, gamma, beta = _common.positive("alpha", alpha), _common.positive("gamma", gamma), _common.positive("beta", beta)
    if gamma / alpha > 80:  # b = e^(gamma / alpha) - 1 must stay inside fp32's range (e^88)
        raise ValueError(f"balanced_l1_loss: gamma / alpha must be <= 80 (b = e^(gamma / alpha) - 1 in fp32's range), got "
                         f"gamma={gamma}, alpha={alpha}")
    b = math.exp(gamma / alpha) - 1  # every derived scalar in double
    params = [alpha, gamma, beta, b, alpha / b, gamma / b - alpha * beta, b / beta]
    return _run("balanced_l1_loss", input, target, params, reduction, weight, avg_factor, sync_avg_factor=sync_avg_factor, backend=backend)


# ====================================================================== backends


def _reference_forward(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, with_grad):
    return reference.forward(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, with_grad)


def _reference_backward(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction):
    return reference.backward(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction)


def _native_forward(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction, with_grad):
    return torch.ops.fastloss.pointwise_forward_native(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params,
                                                       reduction, with_grad)


def _native_backward(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction):
    return torch.ops.fastloss.pointwise_backward_native(grad, input, target, target_value, weight, weight_layout, aux, aux_layout, loss,
                                                        params, reduction)


def _triton_forward(*args):
    from fastloss.triton_kernels import pointwise as tk

    return tk.forward(*args)


def _triton_backward(*args):
    from fastloss.triton_kernels import pointwise as tk

    return tk.backward(*args)


for _name in LOSSES:
    _backend.register(_name, "reference", _reference_forward, _reference_backward, family="pointwise")
    if _extension.has_cpu():
        _backend.register(_name, "cpu", _native_forward, _native_backward, family="pointwise")
    if _extension.has_cuda():
        _backend.register(_name, "cuda", _native_forward, _native_backward, family="pointwise")
    # imported lazily: the Triton module (and Triton) load at the first call on this backend
    _backend.register(_name, "triton", _triton_forward, _triton_backward, family="pointwise")
