"""Sigmoid focal loss: the public op, its torch.library registration and autograd.

Two torch.library custom ops (namespace ``fastloss``) carry the work:
``sigmoid_focal_loss`` (forward, with a fake impl and autograd) and
``sigmoid_focal_loss_backward`` (its own op, so torch.compile and opcheck see both).
Each calls the backend that :mod:`fastloss._backend` picks.  In eager mode the public
function goes through :class:`SigmoidFocalLossFunction`, a thin autograd.Function over
the same two implementations that skips the custom-op dispatch (measured: see
benchmarks/bench_dispatch.py); tests check both paths agree bit for bit.

Forward/backward fusion.  Bytes per logit (fp32, one forward + one backward):
  * store dL/dx in the forward, scale it in the backward: read x, t; write g | read g, write g
  * recompute in the backward: read x, t | read x, t, write g
Both move 20 B with float targets; with class labels (t costs ~0 B) recomputing moves
12 B against 16 B, keeps no logit-sized buffer alive between forward and backward, and
the forward of an evaluation call writes nothing: so on GPUs, which are bandwidth-bound
here, the backward recomputes.  CPUs are compute-bound instead (the exp/log1p/divisions
cost ~3 ns per logit and pass with AVX2, moving its bytes ~0.3 ns), so there the forward
computes dL/dx in the same pass when the input requires grad ("store"), and the backward
is one multiply.  The choice is per device type in fastloss/_backend.py
(STORE_GRAD_IN_FORWARD); every backend implements both.
"""
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common
from fastloss.reference import sigmoid_focal_loss as reference

OP = "sigmoid_focal_loss"


_LABEL_HINT = ("; label C = {C} is the background, and an anchor to ignore keeps any label with weight 0 for its row "
               "(mmdetection's label_weights)")


def _forward_impl(input, target, weight, alpha, gamma, reduction, store_grad, backend):
    if not target.is_floating_point():  # once per call, every backend (CUDA: checked mode only)
        C = input.shape[-1] if input.dim() else 1
        _common.check_labels(OP, target, C + 1, hint=_LABEL_HINT.format(C=C))
    forward, _ = _backend.implementation(OP, input.device, backend)
    return forward(input, target, weight, alpha, gamma, reduction, store_grad)


def _backward_impl(grad, input, target, weight, cache, alpha, gamma, reduction, backend, in_place=False):
    if cache.shape == input.shape:  # the forward stored dL/dx * weight: only scale it
        scale = grad / max(input.numel(), 1) if reduction == 2 else grad
        return _common.scale_stored_grad(cache, scale, input.dtype, in_place)
    _, backward = _backend.implementation(OP, input.device, backend)
    return backward(grad, input, target, weight, alpha, gamma, reduction)


@torch.library.custom_op("fastloss::sigmoid_focal_loss", mutates_args=())
def sigmoid_focal_loss_op(input: Tensor, target: Tensor, weight: Optional[Tensor], alpha: float, gamma: float, reduction: int,
                          store_grad: bool, backend: Optional[str]) -> tuple[Tensor, Tensor]:
    """Returns (loss, cache): cache = dL/dx * weight (fp32/fp64) if store_grad, else empty."""
    return _forward_impl(input, target, weight, alpha, gamma, reduction, store_grad, backend)


@sigmoid_focal_loss_op.register_fake
def _(input, target, weight, alpha, gamma, reduction, store_grad, backend):
    acc = _common.reduced_dtype(input.dtype)
    loss = torch.empty_like(input) if reduction == 0 else input.new_empty((), dtype=acc)
    return loss, input.new_empty(input.shape if store_grad else (0,), dtype=acc)


@torch.library.custom_op("fastloss::sigmoid_focal_loss_backward", mutates_args=())
def sigmoid_focal_loss_backward_op(grad: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor], cache: Tensor, alpha: float,
                                   gamma: float, reduction: int, backend: Optional[str]) -> Tensor:
    return _backward_impl(grad, input, target, weight, cache, alpha, gamma, reduction, backend)


@sigmoid_focal_loss_backward_op.register_fake
def _(grad, input, target, weight, cache, alpha, gamma, reduction, backend):
    return torch.empty_like(input)


def _setup_context(ctx, inputs, output):
    input, target, weight, alpha, gamma, reduction, _store_grad, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the cache output
    ctx.save_for_backward(input, target, weight, output[1])
    # the backward runs on the forward's backend (autograd may run it on another thread,
    # outside the caller's use_backend context)
    ctx.args = (alpha, gamma, reduction, _backend.resolve(OP, input.device, backend))


def _backward(ctx, grad, _grad_cache):
    if grad is None:  # grads are not materialized: no gradient flowed into the loss
        return None, None, None, None, None, None, None, None
    input, target, weight, cache = ctx.saved_tensors
    alpha, gamma, reduction, backend = ctx.args
    grad_input = sigmoid_focal_loss_backward_op(grad.contiguous(), input, target, weight, cache, alpha, gamma, reduction, backend)
    return grad_input, None, None, None, None, None, None, None


sigmoid_focal_loss_op.register_autograd(_backward, setup_context=_setup_context)
_common.register_autocast(sigmoid_focal_loss_op)


class SigmoidFocalLossFunction(torch.autograd.Function):
    """The same forward/backward as the custom ops, as an autograd.Function (the eager fast
    path).  Returns (loss, cache) like the op; the backward may scale the cache in place
    (_common.take_stored_grad)."""

    @staticmethod
    def forward(ctx, input, target, weight, alpha, gamma, reduction, store_grad, backend):
        loss, cache = _forward_impl(input, target, weight, alpha, gamma, reduction, store_grad, backend)
        ctx.mark_non_differentiable(cache)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the cache output
        ctx.save_for_backward(input, target, weight)
        ctx.stored_grad = cache  # may be scaled in place by the backward (_common.take_stored_grad)
        ctx.args = (alpha, gamma, reduction, _backend.resolve(OP, input.device, backend))
        return loss, cache

    @staticmethod
    def backward(ctx, grad, _grad_cache):
        if grad is None:  # grads are not materialized: no gradient flowed into the loss
            return None, None, None, None, None, None, None, None
        input, target, weight = ctx.saved_tensors
        alpha, gamma, reduction, backend = ctx.args
        cache, in_place = _common.take_stored_grad(ctx)
        grad_input = _backward_impl(grad.contiguous(), input, target, weight, cache, alpha, gamma, reduction, backend, in_place)
        return grad_input, None, None, None, None, None, None, None


def _prepare_target(input, target):
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.dtype == torch.bool:
        if target.shape != input.shape:
            raise ValueError(f"a float target must have input's shape {tuple(input.shape)}, got {tuple(target.shape)}; "
                             f"integer class labels of shape input.shape[:-1] = {tuple(input.shape[:-1])} are accepted too "
                             f"(labels in [0, C], C = input.shape[-1] meaning background)")
        _common.no_grad_required(target=target)
        return target.to(input.dtype).contiguous()
    if target.is_complex():
        raise ValueError(f"target must be float (soft) targets or integer class labels, got {target.dtype}")
    if input.dim() == 0 or target.shape != input.shape[:-1]:
        raise ValueError(f"integer class-label target must have shape input.shape[:-1] = {tuple(input.shape[:-1])}, "
                         f"got {tuple(target.shape)} (labels in [0, C], C = input.shape[-1] meaning background)")
    return target.to(torch.int64).contiguous()


def _prepare_weight(input, weight):
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    _common.no_grad_required(weight=weight)
    dtype = _common.reduced_dtype(input.dtype)
    if weight.shape == input.shape or (input.dim() > 0 and weight.shape == input.shape[:-1]):
        return weight.to(dtype).contiguous()  # per element, or per row (mmdetection's per-anchor weight)
    try:
        broadcast = torch.broadcast_shapes(weight.shape, input.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != input.shape:
        raise ValueError(f"weight of shape {tuple(weight.shape)} matches neither input {tuple(input.shape)}, "
                         f"nor its rows {tuple(input.shape[:-1])}, nor broadcasts to it")
    return weight.to(dtype).expand(input.shape).contiguous()


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None, *, backend=None):
    """Sigmoid focal loss (Lin et al. 2017) over logits ``input`` (..., C).

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
        reduction: "none" | "mean" | "sum"; the mean of an empty input is 0.
        weight: per-element (input's shape, or broadcastable to it) or per-row
            (``input.shape[:-1]``, mmdetection's per-anchor) weights.
        avg_factor: mmdetection's normaliser: "mean" returns sum / (avg_factor + eps); a
            float or a tensor (kept on the device).  Error with "sum", ignored with "none".
        backend: force a backend for this call (see :mod:`fastloss._backend`).

    Returns the loss in the promoted dtype of input and a float target (torch's type
    promotion, as its own losses; ``weight`` takes no part; fp32 for fp16/bf16 under
    ``torch.autocast``): input's shape for "none", else a scalar.  Raises ValueError for bad shapes, parameters outside their domain, out-of-range
    labels (above) or a target / weight that requires grad (the gradient is taken w.r.t.
    ``input`` only).
    """
    _common.check_logits("input", input)
    code = _common.check_reduction(reduction, avg_factor)
    alpha = _common.check_param("alpha", alpha, lambda a: a <= 1, "in [0, 1], or negative to disable the alpha weighting")
    gamma = _common.nonneg("gamma", gamma)
    _common.check_same_device("input", input, target=target, weight=weight, avg_factor=avg_factor)
    dtype = _common.compute_dtype(input, target)
    input = input.to(dtype)
    target = _prepare_target(input, target)
    weight = _prepare_weight(input, weight)
    if avg_factor is not None and reduction == "mean":
        code = _common.REDUCTIONS["sum"]
    store_grad = input.requires_grad and torch.is_grad_enabled() and _backend.store_grad_in_forward(input.device)
    args = (input.contiguous(), target, weight, alpha, gamma, code, store_grad, backend)
    if torch.compiler.is_compiling():
        loss, _ = sigmoid_focal_loss_op(*args)
    else:
        loss, _ = SigmoidFocalLossFunction.apply(*args)
    return _common.finish(loss, dtype, reduction, avg_factor)


def _reference_forward(input, target, weight, alpha, gamma, reduction, with_grad):
    return reference.forward(input, target, weight, alpha, gamma, reduction, with_grad)


def _reference_backward(grad, input, target, weight, alpha, gamma, reduction):
    return reference.backward(grad, input, target, weight, alpha, gamma, reduction)


def _native_forward(input, target, weight, alpha, gamma, reduction, with_grad):
    return torch.ops.fastloss.sigmoid_focal_loss_forward_native(input, target, weight, alpha, gamma, reduction, with_grad)


def _native_backward(grad, input, target, weight, alpha, gamma, reduction):
    return torch.ops.fastloss.sigmoid_focal_loss_backward_native(grad, input, target, weight, alpha, gamma, reduction)


_backend.register(OP, "reference", _reference_forward, _reference_backward)
if _extension.has_cpu():
    _backend.register(OP, "cpu", _native_forward, _native_backward)
if _extension.has_cuda():
    _backend.register(OP, "cuda", _native_forward, _native_backward)
