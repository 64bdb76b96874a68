"""Dice / Tversky / Jaccard losses (+ Dice + cross entropy): public functions, torch.library
registration and autograd.

The fused work is ONE custom op, ``fastloss::dice_sums``: pass 1 over the logits (N, C, S)
returns the per-(image, class) sums I, P', G' (N, C, 3) -- plain (p g, p, g), squared (p g, p^2,
g^2) or, with ``soft``, the soft-label form (h(p, g) = (|p| + |g| - |p - g|) / 2, |p|, |g|;
fastloss/reference/dice.py) -- and, for :func:`dice_ce_loss`, the per-image cross-entropy sum
and count (N, 2).  Its backward, ``fastloss::dice_sums_backward`` (its own op), is pass 2: it
reads the logits and targets again and writes dL/dlogits directly through the softmax/sigmoid
Jacobian (the softmax is recomputed, never stored: pass 2 moves the same bytes as storing it
would, and no logit-sized buffer stays alive between forward and backward; the eager CPU path
of a softmax over a label map keeps max, 1 / Z and p_y per pixel (and 1 - p_y with the CE
term), so pass 2 skips the max sweep and the class sums: :func:`_keeps_stats`).  Everything after the sums --
score, log, gamma, class weights, batch or per-image sums, reduction -- is a handful of
ordinary torch ops on the tiny (N, C, 3) tensor (fastloss/reference/dice.py:finish), so autograd supplies dL/d(I, P', G') for pass 2
and every option combines with every backend without a second copy of the math.

In eager mode the public functions go through :class:`DiceSumsFunction` (an
autograd.Function over the same implementations; tests check it agrees bit for bit with the
custom op); under torch.compile they call the custom op.

Semantics, defaults and the mapping to MONAI / segmentation_models_pytorch:
fastloss/reference/dice.py.  Limits: CUDA and Triton launch one grid row per image (N <= 65535).
"""
import numbers
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common, rowwise
from fastloss.reference import dice as reference

OP = "dice"
MODES = ("binary", "multiclass", "multilabel")
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)


def _check_form(squared, soft):
    if squared and soft:  # the compiled ops refuse it too (csrc/kernels/dice.h make_args)
        raise ValueError("fastloss dice: `soft` and `squared` exclude each other (the squared sums are the soft form's)")


def _forward_impl(input, target, activation, squared, soft, ignore_index, with_ce, backend, stats=False):
    """(sums, ce); with ``stats`` (:func:`_keeps_stats`) (sums, ce, per-pixel statistics) of
    ``dice_sums_stats_native``."""
    _check_form(squared, soft)
    if not target.is_floating_point():  # once per call, every backend (CUDA: checked mode only)
        high = 2 if (input.shape[1] == 1 and activation != 2) else input.shape[1]
        _common.check_labels("dice", target, high, ignore_index,
                             hint="; to leave such pixels out of the loss, pass ignore_index=<their label>")
    if stats:
        return torch.ops.fastloss.dice_sums_stats_native(input, target, squared, ignore_index, with_ce)
    forward, _ = _backend.implementation(OP, input.device, backend)
    return forward(input, target, activation, squared, soft, ignore_index, with_ce)


def _grad_operands(grad_sums, grad_ce, dtype):
    acc = _common.reduced_dtype(dtype)
    grad_sums = grad_sums.to(acc).contiguous()
    grad_ce = grad_ce.to(acc).contiguous() if grad_ce is not None and grad_ce.numel() else grad_sums.new_empty((0,))
    return grad_sums, grad_ce


def _backward_impl(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index, backend):
    _check_form(squared, soft)
    _, backward = _backend.implementation(OP, input.device, backend)
    grad_sums, grad_ce = _grad_operands(grad_sums, grad_ce, input.dtype)
    return backward(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index)


def _keeps_stats(grad_wanted, input, target, activation, soft, backend):
    """Whether the eager forward keeps each pixel's softmax statistics (max, 1 / Z, p_y, and
    1 - p_y with the CE term: 3 or 4 values per pixel in the accumulation dtype, at most half an
    fp32 input's bytes for C >= 8) for its backward, which then skips the max sweep and the class
    sums: on the CPU backend (compute-bound) for a softmax over an integer label map, when the
    input's gradient is wanted.  The same bits as recomputing."""
    return (grad_wanted and backend == "cpu" and _backend.store_grad_in_forward(input.device) and activation == 2
            and not soft and not target.is_floating_point() and input.shape[1] >= 8)


@torch.library.custom_op("fastloss::dice_sums", mutates_args=())
def dice_sums_op(input: Tensor, target: Tensor, activation: int, squared: bool, soft: bool, ignore_index: Optional[int],
                 with_ce: bool, backend: Optional[str]) -> tuple[Tensor, Tensor]:
    """(sums (N, C, 3) = [I, P', G'], ce (N, 2) = [ce sum, count] or empty), fp32 (fp64).
    ``soft``: the soft-label sums (not with ``squared``: ValueError)."""
    return _forward_impl(input, target, activation, squared, soft, ignore_index, with_ce, backend)


@dice_sums_op.register_fake
def _(input, target, activation, squared, soft, ignore_index, with_ce, backend):
    _check_form(squared, soft)
    acc = _common.reduced_dtype(input.dtype)
    N, C = input.shape[0], input.shape[1]
    return input.new_empty((N, C, 3), dtype=acc), input.new_empty((N, 2) if with_ce else (0,), dtype=acc)


@torch.library.custom_op("fastloss::dice_sums_backward", mutates_args=())
def dice_sums_backward_op(grad_sums: Tensor, grad_ce: Tensor, input: Tensor, target: Tensor, activation: int, squared: bool,
                          soft: bool, ignore_index: Optional[int], backend: Optional[str]) -> Tensor:
    return _backward_impl(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index, backend)


@dice_sums_backward_op.register_fake
def _(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index, backend):
    _check_form(squared, soft)
    return torch.empty_like(input)


def _setup_context(ctx, inputs, output):
    input, target, activation, squared, soft, ignore_index, _with_ce, backend = inputs
    ctx.save_for_backward(input, target)
    ctx.args = (activation, squared, soft, ignore_index, _backend.backward_backend(OP, input.device, backend))


def _backward(ctx, grad_sums, grad_ce):
    input, target = ctx.saved_tensors
    activation, squared, soft, ignore_index, backend = ctx.args
    if grad_ce is None:
        grad_ce = input.new_empty((0,), dtype=grad_sums.dtype)
    grad_input = dice_sums_backward_op(grad_sums.contiguous(), grad_ce.contiguous(), input, target, activation, squared, soft,
                                       ignore_index, backend)
    return grad_input, None, None, None, None, None, None, None


dice_sums_op.register_autograd(_backward, setup_context=_setup_context)
_common.register_autocast(dice_sums_op)


class DiceSumsFunction(torch.autograd.Function):
    """The same two passes as the custom ops, as an autograd.Function (the eager fast path).
    ``grad_wanted``: the caller will run the backward (grad mode on, input requires grad), so the
    CPU path may keep the softmax statistics for it (:func:`_keeps_stats`)."""

    @staticmethod
    def forward(ctx, input, target, activation, squared, soft, ignore_index, with_ce, backend, grad_wanted=False):
        resolved = _backend.backward_backend(OP, input.device, backend)
        # saved with the inputs (freed with them after the backward, seen by saved-tensor hooks)
        ctx.kept_stats = _keeps_stats(grad_wanted, input, target, activation, soft, resolved)
        if ctx.kept_stats:
            sums, ce, stats = _forward_impl(input, target, activation, squared, soft, ignore_index, with_ce, backend, stats=True)
            ctx.save_for_backward(input, target, stats)
        else:
            sums, ce = _forward_impl(input, target, activation, squared, soft, ignore_index, with_ce, backend)
            ctx.save_for_backward(input, target)
        ctx.args = (activation, squared, soft, ignore_index, resolved)
        return sums, ce

    @staticmethod
    @_common.once_differentiable  # no double backward: an error, not a silent constant (_common)
    def backward(ctx, grad_sums, grad_ce):
        input, target, *stats = _common.saved_tensors(ctx)
        activation, squared, soft, ignore_index, backend = ctx.args
        if ctx.kept_stats:
            grad_sums, grad_ce = _grad_operands(grad_sums, grad_ce, input.dtype)
            grad_input = torch.ops.fastloss.dice_grad_stats_native(grad_sums, grad_ce, input, target, stats[0], squared, ignore_index)
        else:
            grad_input = _backward_impl(grad_sums.contiguous(), grad_ce, input, target, activation, squared, soft, ignore_index,
                                        backend)
        return grad_input, None, None, None, None, None, None, None, None


# ------------------------------------------------------------------ argument handling


def _prepare(input, target, mode, from_logits, ignore_index):
    """Validate; return kernel views x (N, C, S), target ((N, S) labels or (N, C, S) float),
    activation and the kernels' ignore_index (reference.canonicalize)."""
    _common.check_logits("input", input)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    _common.check_same_device("input", input, target=target)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if target.is_complex():
        raise ValueError(f"target must be an integer label map or a float tensor, got {target.dtype}")
    is_float = target.is_floating_point()
    if is_float:
        _common.no_grad_required(target=target)
    if mode == "binary":
        if input.dim() < 1:
            raise ValueError("binary input must be (N, 1, *) or (N, *)")
        with_channel = input.dim() >= 2 and input.shape[1] == 1
        spatial = input.shape[:1] + input.shape[2:] if with_channel else input.shape
        if target.dtype == torch.bool:
            target = target.to(torch.uint8)
        ok = tuple(target.shape) in (tuple(input.shape), tuple(spatial))
        if not ok:
            raise ValueError(f"binary target must have input's shape {tuple(input.shape)}"
                             f"{' or ' + str(tuple(spatial)) if with_channel else ''}, got {tuple(target.shape)}")
    else:
        if input.dim() < 2:
            raise ValueError(f"{mode} input must be (N, C, *), got shape {tuple(input.shape)}")
        spatial = input.shape[:1] + input.shape[2:]
        if input.shape[1] == 0:
            raise ValueError(f"{mode} input must have at least one class (N, C >= 1, *), got shape {tuple(input.shape)}")
        if mode == "multiclass":
            if is_float:
                if target.shape != input.shape:
                    raise ValueError(f"a float multiclass target (one-hot / soft labels) must have input's shape "
                                     f"{tuple(input.shape)}, got {tuple(target.shape)}")
                if ignore_index is not None:
                    raise ValueError("ignore_index needs an integer label map in multiclass mode (a float target has no labels)")
            else:
                if target.dtype == torch.bool:
                    raise ValueError("multiclass target must be an integer label map (N, *) or a float tensor like input, got bool")
                if target.shape != spatial:
                    raise ValueError(f"a multiclass label map must have shape (N, *) = {tuple(spatial)} for input "
                                     f"{tuple(input.shape)}, got {tuple(target.shape)}")
        else:  # multilabel
            if target.shape != input.shape:
                raise ValueError(f"multilabel target must have input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
            if not is_float:
                target = target.to(input.dtype)
    if not target.is_floating_point() and target.dtype not in LABEL_DTYPES:
        target = target.to(torch.int64)
    input = input.to(_common.compute_dtype(input, target)).contiguous()  # torch's promotion; fp32 under autocast
    if target.is_floating_point():
        target = target.to(input.dtype)
    activation = 0 if not from_logits else (2 if mode == "multiclass" else 1)
    if (mode == "multiclass" and not target.is_floating_point() and input.shape[1] == 1 and activation != 2
            and not torch.compiler.is_compiling()):
        # one class: labels in [0, 1) (the op's own check allows binary mode's 1 and runs after
        # canonicalize's mapping); not traced, as the op's check is not: under torch.compile an
        # out-of-range label is unchecked here and matches no class (P' only), as on CUDA
        _common.check_labels("dice", target, 1, ignore_index, hint="; to leave such pixels out of the loss, pass ignore_index=<their label>")
    x, t, ignore_index = reference.canonicalize(input, target, mode, activation, ignore_index)
    return x, t.contiguous(), activation, ignore_index


def _check_params(alpha, beta, gamma, smooth_nr, smooth_dr, reduction):
    """The scalar parameters as floats, each in its domain (ValueError naming it otherwise)."""
    if reduction not in _common.REDUCTIONS:
        raise ValueError(f"reduction must be one of {tuple(_common.REDUCTIONS)}, got {reduction!r}")
    return (_common.nonneg("alpha", alpha), _common.nonneg("beta", beta), _common.positive("gamma", gamma),
            _common.nonneg("smooth_nr", smooth_nr), _common.nonneg("smooth_dr", smooth_dr))


def _class_weights(class_weights, C, device, dtype):
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=dtype, device=device)
    if w.requires_grad:
        _common.no_grad_required(class_weights=w)
    if w.shape != (C,):
        raise ValueError(f"class_weights must have one value per class (C = {C}), got shape {tuple(w.shape)}")
    if w.device.type == "cpu" and not torch.compiler.is_compiling():  # no device sync, no graph break
        if not bool(torch.isfinite(w).all() & (w >= 0).all()):
            raise ValueError(f"class_weights must be finite and >= 0, got {w.tolist()}")
    return w


def _sums(x, t, activation, squared, soft, ignore_index, with_ce, backend):
    args = (x, t, activation, squared, soft, ignore_index, with_ce, backend)
    if torch.compiler.is_compiling():
        return dice_sums_op(*args)
    return DiceSumsFunction.apply(*args, torch.is_grad_enabled() and x.requires_grad)


def _loss(input, target, a, alpha, beta, gamma, mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index,
          include_background, per_image, class_weights, log, reduction, zero_empty, backend, soft_label, with_ce=False):
    alpha, beta, gamma, smooth_nr, smooth_dr = _check_params(alpha, beta, gamma, smooth_nr, smooth_dr, reduction)
    x, t, activation, ignore_index = _prepare(input, target, mode, from_logits, ignore_index)
    ignore_index = None if ignore_index is None else int(ignore_index)
    w = _class_weights(class_weights, x.shape[1], x.device, _common.reduced_dtype(x.dtype))
    squared = bool(squared)
    soft = bool(soft_label) and not squared  # squared: the soft form's sums are the squared ones
    sums, ce = _sums(x, t, activation, squared, soft, ignore_index, with_ce, backend)
    loss = reference.finish(sums, alpha, beta, gamma, a, smooth_nr, smooth_dr, include_background, per_image, w, log, reduction,
                            zero_empty, empty=x.numel() == 0)
    return loss.to(x.dtype), ce


def tversky_loss(input, target, alpha=0.5, beta=0.5, gamma=1.0, mode="multiclass", from_logits=True, smooth_nr=0.0,
                 smooth_dr=1e-5, squared=False, ignore_index=None, include_background=True, per_image=False,
                 class_weights=None, log=False, reduction="mean", *, zero_empty=False, soft_label=False, backend=None):
    """Tversky loss (Salehi et al. 2017), focal with ``gamma`` (Abraham & Khan 2019):
    score = (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr), loss = (1 - score) ** gamma
    (``log=True``: (-log score) ** gamma) per class, reduced over classes (and images).

    Args:
        input: logits (N, C, *) ("multiclass": softmax over C; "multilabel": sigmoid per
            channel) or (N, 1, *) / (N, *) ("binary": sigmoid); probabilities when
            ``from_logits=False``.  fp16/bf16/fp32 (fp64 on CPU).  ``*``: any spatial dims.
        target: multiclass: an integer label map (N, *) (uint8/int32/int64; labels in
            [0, C)) or a float one-hot / soft target shaped like input; binary: a 0/1 label
            map or float target (N, *) or like input; multilabel: like input.  Integer labels
            are expanded inside the kernel (no one-hot).  Out-of-range labels raise ValueError
            for CPU tensors; for CUDA tensors (no host sync) they match no class (the pixel
            counts in P' only) unless checked mode is on (:func:`fastloss.checked_labels`,
            ``FASTLOSS_CHECK_LABELS=1``).
        alpha, beta: weights of false positives / false negatives (>= 0).
        gamma: exponent (> 0) of the per-class loss (focal Tversky).
        smooth_nr, smooth_dr: added to numerator / denominator; they decide the score of a
            class absent from prediction and target (smooth_nr / smooth_dr).
        squared: sums of p^2 and g^2 (V-Net) instead of p and g.
        ignore_index: pixels whose label equals it (float targets in binary/multilabel: the
            elements equal to it) take no part in any sum.
        include_background: False drops class 0 (ignored when C = 1, like MONAI).
        per_image: True: a loss per image and class (MONAI's default); False: sums over the
            batch per class (smp's convention).
        class_weights: C weights of the per-class losses.
        log: loss = -log(score).
        reduction: "mean" | "sum" | "none" ((N, C') per image, else (C',)).
        zero_empty: a class with no target pixels (in the image with ``per_image``, else in
            the batch) gets loss 0, still counted in the mean (smp's rule); False: the smooth
            terms decide its score (MONAI).
        soft_label: the soft-label sums (Wang & Blaschko 2023; MONAI's ``soft_label=True``,
            smp's intersection): I = sum (|p| + |g| - |p - g|) / 2 (= sum min(p, g) for
            p, g >= 0), P' = sum |p|, G' = sum |g|, so a soft target scores 1 against itself.
            For hard targets and p in [0, 1] the values equal the default's; derivatives are
            torch's of that formula (sgn 0 = 0: 1/2 at a tie p == g).  With ``squared`` it
            changes nothing (the squared sums are the soft form's).
        backend: force a backend (see :mod:`fastloss._backend`).

    Returns the loss in the promoted dtype of input and a float target (torch's type
    promotion; fp32 for fp16/bf16 under ``torch.autocast``).  An input without elements (an
    empty batch, no pixels) gives 0 (the mean of nothing), still connected to the graph.
    Raises ValueError for bad shapes / modes, parameters outside their domain, out-of-range
    labels (above) and a float target that requires grad.

    Semantics and the mapping to MONAI / smp: fastloss/reference/dice.py.
    """
    loss, _ = _loss(input, target, 1.0, alpha, beta, gamma, mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index,
                    include_background, per_image, class_weights, log, reduction, zero_empty, backend, soft_label)
    return loss


def dice_loss(input, target, mode="multiclass", from_logits=True, smooth_nr=0.0, smooth_dr=1e-5, squared=False,
              ignore_index=None, include_background=True, per_image=False, class_weights=None, log=False, reduction="mean",
              gamma=1.0, *, zero_empty=False, soft_label=False, backend=None):
    """Soft Dice loss: score = (2 I + smooth_nr) / (P' + G' + smooth_dr) (MONAI / smp form);
    arguments as :func:`tversky_loss`."""
    loss, _ = _loss(input, target, 2.0, 0.5, 0.5, gamma, mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index,
                    include_background, per_image, class_weights, log, reduction, zero_empty, backend, soft_label)
    return loss


def jaccard_loss(input, target, mode="multiclass", from_logits=True, smooth_nr=0.0, smooth_dr=1e-5, squared=False,
                 ignore_index=None, include_background=True, per_image=False, class_weights=None, log=False, reduction="mean",
                 gamma=1.0, *, zero_empty=False, soft_label=False, backend=None):
    """Soft Jaccard (IoU) loss: score = (I + smooth_nr) / (P' + G' - I + smooth_dr) (Tversky with
    alpha = beta = 1); arguments as :func:`tversky_loss`."""
    loss, _ = _loss(input, target, 1.0, 1.0, 1.0, gamma, mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index,
                    include_background, per_image, class_weights, log, reduction, zero_empty, backend, soft_label)
    return loss


def dice_ce_loss(input, target, mode="multiclass", lambda_dice=1.0, lambda_ce=1.0, smooth_nr=0.0, smooth_dr=1e-5,
                 squared=False, ignore_index=None, include_background=True, per_image=False, class_weights=None,
                 log=False, reduction="mean", gamma=1.0, *, ce_weight=None, zero_empty=False, soft_label=False, backend=None):
    """MONAI's DiceCE: lambda_dice * :func:`dice_loss` + lambda_ce * cross entropy, from ONE
    read of the logits per pass.  Cross entropy: softmax CE per pixel ("multiclass"; soft
    targets: -sum_c g_c log p_c) or BCE-with-logits per element (sigmoid modes), averaged
    ("mean") or summed ("sum") over the pixels / elements not equal to ``ignore_index``
    (all ignored: 0).  ``class_weights`` weight the Dice term only.  Logits only.

    ``ce_weight`` (C,) (mode "multiclass" only; MONAI's ``DiceCELoss(weight=)`` for its CE
    term): class weights of the cross entropy with torch's semantics -- "mean" divides by the
    summed weights of the counted pixels' labels (soft targets: by the pixel count), as
    ``F.cross_entropy(weight=)``.  The CE term then comes from :func:`fastloss.cross_entropy`
    (the row-wise engine): one more read of the logits per pass.  ``soft_label`` applies to the
    Dice term only (the cross entropy of a soft target is already -sum_c g_c log p_c)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f'dice_ce_loss reduction must be "mean" or "sum", got {reduction!r}')
    lambda_dice, lambda_ce = _common.nonneg("lambda_dice", lambda_dice), _common.nonneg("lambda_ce", lambda_ce)
    if ce_weight is not None:
        if mode != "multiclass":
            raise ValueError(f'dice_ce_loss: ce_weight weights the softmax cross entropy of mode "multiclass"; got mode {mode!r}')
        d, _ = _loss(input, target, 2.0, 0.5, 0.5, gamma, mode, True, smooth_nr, smooth_dr, squared, ignore_index,
                     include_background, per_image, class_weights, log, reduction, zero_empty, backend, soft_label)
        x, t, _, _ = _prepare(input, target, mode, True, ignore_index)
        if not isinstance(ce_weight, torch.Tensor):
            ce_weight = torch.as_tensor(ce_weight, dtype=_common.reduced_dtype(x.dtype), device=x.device)
        ce_term = rowwise.cross_entropy(x, t, weight=ce_weight, ignore_index=-100 if ignore_index is None else int(ignore_index),
                                        reduction=reduction, backend=backend)
        return (lambda_dice * d + lambda_ce * ce_term).to(d.dtype)
    d, ce = _loss(input, target, 2.0, 0.5, 0.5, gamma, mode, True, smooth_nr, smooth_dr, squared, ignore_index,
                  include_background, per_image, class_weights, log, reduction, zero_empty, backend, soft_label, with_ce=True)
    ce = ce.sum(0)
    ce_term = ce[0] / ce[1].clamp_min(1) if reduction == "mean" else ce[0]
    return (lambda_dice * d + lambda_ce * ce_term).to(d.dtype)


# ------------------------------------------------------------------ backends


def _native_forward(input, target, activation, squared, soft, ignore_index, with_ce):
    return torch.ops.fastloss.dice_sums_native(input, target, activation, squared, soft, ignore_index, with_ce)


def _native_backward(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index):
    return torch.ops.fastloss.dice_grad_native(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index)


_backend.register(OP, "reference", reference.forward, reference.backward)
if _extension.has_cpu() and hasattr(torch.ops.fastloss, "dice_sums_native"):
    _backend.register(OP, "cpu", _native_forward, _native_backward)
if _extension.has_cuda() and hasattr(torch.ops.fastloss, "dice_sums_native"):
    _backend.register(OP, "cuda", _native_forward, _native_backward)
