"""``nn.Module`` forms of the functional losses.

Every module has an explicit signature mirroring its function (an unknown argument is a
``TypeError`` at construction), checks its arguments at construction (a parameter outside its
domain is a ``ValueError`` there, not at the first forward), multiplies the loss by
``loss_weight`` (mmdetection's convention) and lists its arguments in its ``repr``.  Shapes,
dtypes, units and the errors of ``forward`` are those of the function it names.

Every module whose ``forward`` takes ``avg_factor`` takes the keyword-only constructor
argument ``sync_avg_factor=False``: True makes ``forward`` divide by the mean of avg_factor over
the ranks of torch.distributed's default group (mmdetection's ``reduce_mean``,
:mod:`fastloss.distributed`), the same normaliser on every rank under DistributedDataParallel;
nothing is communicated without an initialised process group.  ``forward`` then needs
avg_factor (ValueError without); a reduction that cannot take avg_factor ("sum", "batchmean")
with ``sync_avg_factor=True`` is a ValueError at construction.
"""
import math
import numbers

import torch
from torch import nn

from fastloss import _backend
from fastloss.ops import _common
from fastloss.ops import box_iou as _box
from fastloss.ops import dice as _dice
from fastloss.ops import pointwise as _pw
from fastloss.ops import rowwise as _rw


def _checked_backend(backend):
    """A module's ``backend`` argument: None or a known backend name (ValueError at
    construction, not at the first forward)."""
    if backend is not None:
        _backend._check_name(backend)
    return backend


class _Loss(nn.Module):
    """Shared: ``loss_weight``, the repr of the arguments named in ``_repr_args``."""

    _repr_args = ()

    def __init__(self, loss_weight):
        super().__init__()
        self.loss_weight = _common.check_param("loss_weight", loss_weight, lambda v: abs(v) < float("inf"), "finite")

    def _set_sync(self, sync_avg_factor, reduction):
        """Check and keep ``sync_avg_factor`` (modules whose forward takes avg_factor)."""
        self.sync_avg_factor = bool(_common.flag("sync_avg_factor", sync_avg_factor))
        if self.sync_avg_factor and reduction in ("sum", "batchmean"):
            raise ValueError(f"sync_avg_factor=True synchronises avg_factor, which reduction={reduction!r} does not take; use "
                             f'reduction="mean"')

    def _scaled(self, loss):
        return loss if self.loss_weight == 1.0 else loss * self.loss_weight

    def extra_repr(self):
        args = [f"{name}={getattr(self, name)!r}" for name in self._repr_args]
        if getattr(self, "sync_avg_factor", False):
            args.append("sync_avg_factor=True")
        if getattr(self, "backend", None) is not None:
            args.append(f"backend={self.backend!r}")
        return ", ".join(args + [f"loss_weight={self.loss_weight!r}"])


def _check_reduction(reduction, allowed=tuple(_common.REDUCTIONS)):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return reduction


class SigmoidFocalLoss(_Loss):
    """Module form of :func:`fastloss.sigmoid_focal_loss`:
    ``forward(input, target, weight=None, avg_factor=None)``."""

    _repr_args = ("alpha", "gamma", "reduction")

    def __init__(self, alpha=0.25, gamma=2.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self.alpha = _common.check_param("alpha", alpha, lambda a: a <= 1, "in [0, 1], or negative to disable the alpha weighting")
        self.gamma = _common.nonneg("gamma", gamma)
        self.reduction = _check_reduction(reduction)
        self._set_sync(sync_avg_factor, self.reduction)
        self.backend = _checked_backend(backend)

    def forward(self, input, target, weight=None, avg_factor=None):
        return self._scaled(_pw.sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction, weight, avg_factor,
                                                      sync_avg_factor=self.sync_avg_factor, backend=self.backend))


class BoxIoULoss(_Loss):
    """Module form of :func:`fastloss.box_iou_loss`: ``forward(pred, target, weight=None, avg_factor=None)``."""

    _repr_args = ("kind", "reduction", "fmt", "eps", "power", "gamma", "convention", "neg_gamma", "smooth_point", "per_coordinate")

    def __init__(self, kind="giou", reduction="mean", fmt="xyxy", eps=1e-7, power=1.0, gamma=0.5, loss_weight=1.0, *, convention="fastloss",
                 neg_gamma=False, smooth_point=0.1, per_coordinate=False, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        _box._check_choice("kind", kind, _box.KINDS)
        _box._check_choice("fmt", fmt, _box.FMTS)
        _box._check_convention(convention, kind, _box.reference.CONVENTION_KINDS)
        self.kind, self.fmt, self.convention, self.reduction = kind, fmt, convention, _check_reduction(reduction)
        self.eps, self.power, self.gamma = _box._check_scalars(eps, power, gamma)
        self.neg_gamma, self.smooth_point, self.per_coordinate = neg_gamma, smooth_point, per_coordinate
        self._set_sync(sync_avg_factor, self.reduction)
        self.backend = _checked_backend(backend)
        # the function's own checks of the kind-specific arguments (neg_gamma, smooth_point, power), now
        empty = torch.zeros(0, 4)
        _box.box_iou_loss(empty, empty, kind, "sum", fmt=fmt, eps=eps, power=power, gamma=gamma, convention=convention, neg_gamma=neg_gamma,
                          smooth_point=smooth_point, per_coordinate=per_coordinate, backend="reference")

    def forward(self, pred, target, weight=None, avg_factor=None):
        return self._scaled(_box.box_iou_loss(pred, target, self.kind, self.reduction, weight, avg_factor, self.fmt, self.eps, self.power,
                                              self.gamma, convention=self.convention, neg_gamma=self.neg_gamma,
                                              smooth_point=self.smooth_point, per_coordinate=self.per_coordinate,
                                              sync_avg_factor=self.sync_avg_factor,
                                              backend=self.backend))


class _DiceFamily(_Loss):
    """Shared construction of the Dice-family modules: checks, and a tensor ``class_weights``
    as a buffer so that ``module.to(device)`` moves it -- non-persistent: like the other
    constructor arguments it is not part of ``state_dict`` (build the module with it)."""

    def _setup(self, mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index, include_background, per_image, class_weights,
               log, reduction, gamma, zero_empty, backend, alpha=0.5, beta=0.5, soft_label=False):
        if mode not in _dice.MODES:
            raise ValueError(f"mode must be one of {_dice.MODES}, got {mode!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.alpha, self.beta, self.gamma, self.smooth_nr, self.smooth_dr = _dice._check_params(alpha, beta, gamma, smooth_nr, smooth_dr,
                                                                                             reduction)
        self.mode, self.from_logits, self.squared = mode, bool(from_logits), bool(squared)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.include_background, self.per_image, self.log = bool(include_background), bool(per_image), bool(log)
        self.reduction, self.zero_empty, self.backend = reduction, bool(zero_empty), _checked_backend(backend)
        self.soft_label = bool(soft_label)
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float64).detach()
            if w.dim() != 1 or not bool(torch.isfinite(w).all() & (w >= 0).all()):
                raise ValueError(f"class_weights must be one finite value >= 0 per class, got {class_weights!r}")
        if isinstance(class_weights, torch.Tensor):
            self.register_buffer("class_weights", class_weights.detach(), persistent=False)
        else:
            self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)

    def _common_kwargs(self):
        return dict(smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr, squared=self.squared, ignore_index=self.ignore_index,
                    include_background=self.include_background, per_image=self.per_image, class_weights=self.class_weights,
                    log=self.log, reduction=self.reduction, gamma=self.gamma, zero_empty=self.zero_empty, soft_label=self.soft_label,
                    backend=self.backend)


class TverskyLoss(_DiceFamily):
    """Module form of :func:`fastloss.tversky_loss`: ``forward(input, target)``."""

    _repr_args = ("alpha", "beta", "gamma", "mode", "from_logits", "smooth_nr", "smooth_dr", "squared", "ignore_index", "include_background",
                  "per_image", "class_weights", "log", "reduction", "zero_empty", "soft_label")

    def __init__(self, alpha=0.5, beta=0.5, gamma=1.0, mode="multiclass", from_logits=True, smooth_nr=0.0, smooth_dr=1e-5, squared=False,
                 ignore_index=None, include_background=True, per_image=False, class_weights=None, log=False, reduction="mean",
                 loss_weight=1.0, *, zero_empty=False, soft_label=False, backend=None):
        super().__init__(loss_weight)
        self._setup(mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index, include_background, per_image, class_weights, log,
                    reduction, gamma, zero_empty, backend, alpha, beta, soft_label)

    def forward(self, input, target):
        return self._scaled(_dice.tversky_loss(input, target, self.alpha, self.beta, mode=self.mode, from_logits=self.from_logits,
                                               **self._common_kwargs()))


class DiceLoss(_DiceFamily):
    """Module form of :func:`fastloss.dice_loss`: ``forward(input, target)``."""

    _repr_args = ("mode", "from_logits", "smooth_nr", "smooth_dr", "squared", "ignore_index", "include_background", "per_image",
                  "class_weights", "log", "reduction", "gamma", "zero_empty", "soft_label")
    _fn = staticmethod(_dice.dice_loss)

    def __init__(self, mode="multiclass", from_logits=True, smooth_nr=0.0, smooth_dr=1e-5, squared=False, ignore_index=None,
                 include_background=True, per_image=False, class_weights=None, log=False, reduction="mean", gamma=1.0, loss_weight=1.0,
                 *, zero_empty=False, soft_label=False, backend=None):
        super().__init__(loss_weight)
        self._setup(mode, from_logits, smooth_nr, smooth_dr, squared, ignore_index, include_background, per_image, class_weights, log,
                    reduction, gamma, zero_empty, backend, soft_label=soft_label)

    def forward(self, input, target):
        return self._scaled(self._fn(input, target, mode=self.mode, from_logits=self.from_logits, **self._common_kwargs()))


class JaccardLoss(DiceLoss):
    """Module form of :func:`fastloss.jaccard_loss`: ``forward(input, target)``; the
    arguments of :class:`DiceLoss`."""

    _fn = staticmethod(_dice.jaccard_loss)


class DiceCELoss(_DiceFamily):
    """Module form of :func:`fastloss.dice_ce_loss` (MONAI's DiceCE): ``forward(input, target)``."""

    _repr_args = ("mode", "lambda_dice", "lambda_ce", "smooth_nr", "smooth_dr", "squared", "ignore_index", "include_background",
                  "per_image", "class_weights", "log", "reduction", "gamma", "ce_weight", "zero_empty", "soft_label")

    def __init__(self, mode="multiclass", lambda_dice=1.0, lambda_ce=1.0, smooth_nr=0.0, smooth_dr=1e-5, squared=False, ignore_index=None,
                 include_background=True, per_image=False, class_weights=None, log=False, reduction="mean", gamma=1.0, loss_weight=1.0,
                 *, ce_weight=None, zero_empty=False, soft_label=False, backend=None):
        super().__init__(loss_weight)
        _check_reduction(reduction, ("mean", "sum"))
        self.lambda_dice, self.lambda_ce = _common.nonneg("lambda_dice", lambda_dice), _common.nonneg("lambda_ce", lambda_ce)
        self._setup(mode, True, smooth_nr, smooth_dr, squared, ignore_index, include_background, per_image, class_weights, log, reduction,
                    gamma, zero_empty, backend, soft_label=soft_label)
        if ce_weight is not None:
            if mode != "multiclass":
                raise ValueError(f'ce_weight weights the softmax cross entropy of mode "multiclass"; got mode {mode!r}')
            w = torch.as_tensor(ce_weight, dtype=torch.float64).detach()
            if w.dim() != 1 or not bool(torch.isfinite(w).all() & (w >= 0).all()):
                raise ValueError(f"ce_weight must be one finite value >= 0 per class, got {ce_weight!r}")
        # as class_weights: a tensor is a buffer (module.to(device) moves it), a sequence keeps
        # its Python floats (not rounded to fp32 before an fp64 input's cross entropy)
        if isinstance(ce_weight, torch.Tensor):
            self.register_buffer("ce_weight", ce_weight.detach(), persistent=False)
        else:
            self.ce_weight = None if ce_weight is None else tuple(float(v) for v in ce_weight)

    def forward(self, input, target):
        return self._scaled(_dice.dice_ce_loss(input, target, mode=self.mode, lambda_dice=self.lambda_dice, lambda_ce=self.lambda_ce,
                                               ce_weight=self.ce_weight, **self._common_kwargs()))


# ---------------------------------------------------------------------- the pointwise engine's losses


class _PointwiseLoss(_Loss):
    """``forward(input, target, weight=None, avg_factor=None)`` of a pointwise loss: the
    function ``_fn`` with the constructor's arguments (checked there, by a call of the function
    on an empty input, so a bad value fails at construction)."""

    _fn = None

    def _setup(self, backend, sync_avg_factor, **kwargs):
        self.backend = _checked_backend(backend)
        self._set_sync(sync_avg_factor, kwargs["reduction"])
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._repr_args = tuple(kwargs)
        self._validate()

    def _validate(self):
        # the function's own checks, now (on the reference: the module's backend may need another device)
        type(self)._fn(torch.zeros(0), torch.zeros(0), backend="reference", **self._kwargs())

    def _kwargs(self):
        return {name: getattr(self, name) for name in self._repr_args}

    def _call(self, input, target, weight=None, avg_factor=None, **extra):
        return type(self)._fn(input, target, weight=weight, avg_factor=avg_factor, sync_avg_factor=self.sync_avg_factor,
                              backend=self.backend, **self._kwargs(), **extra)

    def forward(self, input, target, weight=None, avg_factor=None):
        return self._scaled(self._call(input, target, weight, avg_factor))


class Poly1FocalLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.poly1_focal_loss`."""

    _fn = staticmethod(_pw.poly1_focal_loss)

    def __init__(self, alpha=0.25, gamma=2.0, epsilon=1.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, alpha=alpha, gamma=gamma, epsilon=epsilon, reduction=reduction)


class ReducedFocalLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.reduced_focal_loss`."""

    _fn = staticmethod(_pw.reduced_focal_loss)

    def __init__(self, alpha=0.25, gamma=2.0, threshold=0.5, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, alpha=alpha, gamma=gamma, threshold=threshold, reduction=reduction)


class BCEWithLogitsLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.binary_cross_entropy_with_logits`; ``pos_weight`` (a
    tensor) is a buffer, as in torch's module: ``module.to(device)`` moves it and
    ``state_dict`` holds it."""

    _fn = staticmethod(_pw.binary_cross_entropy_with_logits)

    def __init__(self, pos_weight=None, label_smoothing=0.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).detach())
        self._setup(backend, sync_avg_factor, label_smoothing=label_smoothing, reduction=reduction)

    def _validate(self):
        _pw.binary_cross_entropy_with_logits(torch.zeros(0), torch.zeros(0), backend="reference", **self._kwargs())

    def _call(self, input, target, weight=None, avg_factor=None):
        return _pw.binary_cross_entropy_with_logits(input, target, weight=weight, avg_factor=avg_factor, pos_weight=self.pos_weight,
                                                   sync_avg_factor=self.sync_avg_factor, backend=self.backend, **self._kwargs())


class BCELoss(_PointwiseLoss):
    """Module form of :func:`fastloss.binary_cross_entropy` (probabilities)."""

    _fn = staticmethod(_pw.binary_cross_entropy)

    def __init__(self, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, reduction=reduction)


class Poly1BCELoss(_PointwiseLoss):
    """Module form of :func:`fastloss.poly1_bce_loss`."""

    _fn = staticmethod(_pw.poly1_bce_loss)

    def __init__(self, epsilon=1.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, epsilon=epsilon, reduction=reduction)


class QualityFocalLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.quality_focal_loss`; ``target`` may be ``(labels, scores)``."""

    _fn = staticmethod(_pw.quality_focal_loss)

    def __init__(self, beta=2.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, beta=beta, reduction=reduction)


class FocalLossWithProb(_PointwiseLoss):
    """Module form of :func:`fastloss.focal_loss_with_prob` (probabilities)."""

    _fn = staticmethod(_pw.focal_loss_with_prob)

    def __init__(self, alpha=0.25, gamma=2.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, alpha=alpha, gamma=gamma, reduction=reduction)


class QualityFocalLossWithProb(_PointwiseLoss):
    """Module form of :func:`fastloss.quality_focal_loss_with_prob` (probabilities);
    ``target`` may be ``(labels, scores)``."""

    _fn = staticmethod(_pw.quality_focal_loss_with_prob)

    def __init__(self, beta=2.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, beta=beta, reduction=reduction)

class VarifocalLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.varifocal_loss`: ``forward(input, target, weight=None,
    avg_factor=None, positive=None)``."""

    _fn = staticmethod(_pw.varifocal_loss)

    def __init__(self, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, alpha=alpha, gamma=gamma, iou_weighted=bool(iou_weighted), reduction=reduction)

    def forward(self, input, target, weight=None, avg_factor=None, positive=None):
        return self._scaled(self._call(input, target, weight, avg_factor, positive=positive))


class GaussianFocalLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.gaussian_focal_loss` (probabilities)."""

    _fn = staticmethod(_pw.gaussian_focal_loss)

    def __init__(self, alpha=2.0, gamma=4.0, reduction="mean", loss_weight=1.0, eps=1e-12, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, alpha=alpha, gamma=gamma, reduction=reduction, eps=eps)


class HingeLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.hinge_loss`."""

    _fn = staticmethod(_pw.hinge_loss)

    def __init__(self, margin=1.0, squared=False, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, margin=margin, squared=bool(squared), reduction=reduction)


class KLDivLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.kl_div` (``reduction="batchmean"`` too)."""

    _fn = staticmethod(_pw.kl_div)

    def __init__(self, reduction="mean", log_target=False, loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, reduction=reduction, log_target=bool(log_target))


class L1Loss(_PointwiseLoss):
    """Module form of :func:`fastloss.l1_loss`."""

    _fn = staticmethod(_pw.l1_loss)

    def __init__(self, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, reduction=reduction)


class MSELoss(L1Loss):
    """Module form of :func:`fastloss.mse_loss`."""

    _fn = staticmethod(_pw.mse_loss)


class SmoothL1Loss(_PointwiseLoss):
    """Module form of :func:`fastloss.smooth_l1_loss`."""

    _fn = staticmethod(_pw.smooth_l1_loss)

    def __init__(self, beta=1.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, beta=beta, reduction=reduction)


class HuberLoss(_PointwiseLoss):
    """Module form of :func:`fastloss.huber_loss`."""

    _fn = staticmethod(_pw.huber_loss)

    def __init__(self, delta=1.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, delta=delta, reduction=reduction)


class BalancedL1Loss(_PointwiseLoss):
    """Module form of :func:`fastloss.balanced_l1_loss`."""

    _fn = staticmethod(_pw.balanced_l1_loss)

    def __init__(self, alpha=0.5, gamma=1.5, beta=1.0, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, alpha=alpha, gamma=gamma, beta=beta, reduction=reduction)


# ---------------------------------------------------------------------- the row-wise engine's losses


class _RowwiseLoss(_Loss):
    """A row-wise loss with its constructor's arguments (checked at construction by a call of
    the function on an empty input); class vectors (``weight``, a tensor ``alpha``) are
    buffers, as torch's modules keep ``weight``: ``module.to(device)`` moves them."""

    _fn = None
    _buffers_args = ()

    def _setup(self, backend, sync_avg_factor, buffers=None, **kwargs):
        self.backend = _checked_backend(backend)
        self._set_sync(sync_avg_factor, kwargs["reduction"])
        for name, value in (buffers or {}).items():
            value = None if value is None else torch.as_tensor(value).detach()
            if value is not None and value.dim() != 1:
                raise ValueError(f"{name} must be one value per class (a 1-D tensor), got shape {tuple(value.shape)}")
            self.register_buffer(name, value)
        self._buffers_args = tuple(buffers or {})
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._repr_args = tuple(kwargs)
        self._validate()

    def _kwargs(self):
        kw = {name: getattr(self, name) for name in self._repr_args}
        kw.update({name: getattr(self, name) for name in self._buffers_args})
        return kw

    def _validate(self):
        # on the reference (the module's backend may need another device), on the class
        # vectors' device (a CUDA weight is the usual nn.CrossEntropyLoss(weight=w.cuda()))
        vectors = [getattr(self, n) for n in self._buffers_args if isinstance(getattr(self, n), torch.Tensor)]
        C, device = (vectors[0].numel(), vectors[0].device) if vectors else (2, torch.device("cpu"))
        type(self)._fn(torch.zeros(0, C, device=device), self._empty_target(C, device), backend="reference", **self._kwargs())

    def _empty_target(self, C, device):
        return torch.zeros(0, dtype=torch.long, device=device)


class CrossEntropyLoss(_RowwiseLoss):
    """Module form of :func:`fastloss.cross_entropy` (torch's ``nn.CrossEntropyLoss`` arguments):
    ``forward(input, target, sample_weight=None, avg_factor=None)``."""

    _fn = staticmethod(_rw.cross_entropy)

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, avg_non_ignore=None, loss_weight=1.0, *,
                 sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, {"weight": weight}, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, avg_non_ignore=avg_non_ignore)

    def forward(self, input, target, sample_weight=None, avg_factor=None):
        return self._scaled(type(self)._fn(input, target, sample_weight=sample_weight, avg_factor=avg_factor,
                                           sync_avg_factor=self.sync_avg_factor, backend=self.backend, **self._kwargs()))


class Poly1CrossEntropyLoss(CrossEntropyLoss):
    """Module form of :func:`fastloss.poly1_cross_entropy`."""

    _fn = staticmethod(_rw.poly1_cross_entropy)

    def __init__(self, epsilon=1.0, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, avg_non_ignore=None,
                 loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        _Loss.__init__(self, loss_weight)
        self._setup(backend, sync_avg_factor, {"weight": weight}, epsilon=epsilon, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, avg_non_ignore=avg_non_ignore)


class NLLLoss(_RowwiseLoss):
    """Module form of :func:`fastloss.nll_loss` (log-probabilities in):
    ``forward(input, target, sample_weight=None, avg_factor=None)``."""

    _fn = staticmethod(_rw.nll_loss)

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, {"weight": weight}, ignore_index=ignore_index, reduction=reduction)

    def forward(self, input, target, sample_weight=None, avg_factor=None):
        return self._scaled(_rw.nll_loss(input, target, sample_weight=sample_weight, avg_factor=avg_factor,
                                         sync_avg_factor=self.sync_avg_factor, backend=self.backend, **self._kwargs()))


class SoftmaxFocalLoss(_RowwiseLoss):
    """Module form of :func:`fastloss.softmax_focal_loss` (and, with ``epsilon``, of
    :func:`fastloss.poly1_softmax_focal_loss`): ``forward(input, target, sample_weight=None,
    avg_factor=None)``."""

    _fn = staticmethod(_rw.poly1_softmax_focal_loss)

    def __init__(self, *, alpha=0.25, gamma=2.0, weight=None, reduction="mean", ignore_index=None, epsilon=0.0, loss_weight=1.0,
                 sync_avg_factor=False, backend=None):
        # keyword-only: mmcv's SoftmaxFocalLoss takes (gamma, alpha), torchvision-style code (alpha,
        # gamma) -- a positional call would silently swap them
        super().__init__(loss_weight)
        buffers = {"weight": weight}
        kwargs = {"gamma": gamma, "epsilon": epsilon, "reduction": reduction, "ignore_index": ignore_index}
        if not isinstance(alpha, (numbers.Real, torch.Tensor)):  # a per-class sequence, like weight
            alpha = torch.as_tensor(alpha, dtype=torch.float32)
        if isinstance(alpha, torch.Tensor):
            buffers["alpha"] = alpha
        else:
            kwargs["alpha"] = alpha
        self._setup(backend, sync_avg_factor, buffers, **kwargs)

    def forward(self, input, target, sample_weight=None, avg_factor=None):
        return self._scaled(_rw.poly1_softmax_focal_loss(input, target, sample_weight=sample_weight, avg_factor=avg_factor,
                                                         sync_avg_factor=self.sync_avg_factor, backend=self.backend, **self._kwargs()))


class DistributionFocalLoss(_RowwiseLoss):
    """Module form of :func:`fastloss.distribution_focal_loss`:
    ``forward(pred, target, weight=None, avg_factor=None)``."""

    _fn = staticmethod(_rw.distribution_focal_loss)

    def __init__(self, reduction="mean", max_target=None, loss_weight=1.0, *, sync_avg_factor=False, backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, reduction=reduction, max_target=max_target)

    def _validate(self):
        # enough bins for any valid max_target (the function checks max_target <= n)
        bins = 17
        if isinstance(self.max_target, numbers.Real) and math.isfinite(self.max_target):
            bins = max(bins, math.ceil(self.max_target) + 1)
        _rw.distribution_focal_loss(torch.zeros(0, bins), torch.zeros(0), backend="reference", **self._kwargs())

    def forward(self, pred, target, weight=None, avg_factor=None):
        return self._scaled(_rw.distribution_focal_loss(pred, target, weight=weight, avg_factor=avg_factor,
                                                        sync_avg_factor=self.sync_avg_factor, backend=self.backend, **self._kwargs()))


class DistillationKLDivLoss(_RowwiseLoss):
    """Module form of :func:`fastloss.distillation_kl_div`:
    ``forward(input, target, weight=None, avg_factor=None)`` (target: the teacher, detached)."""

    _fn = staticmethod(_rw.distillation_kl_div)

    def __init__(self, temperature=1.0, target_logits=True, t_squared=True, reduction="mean", loss_weight=1.0, *, sync_avg_factor=False,
                 backend=None):
        super().__init__(loss_weight)
        self._setup(backend, sync_avg_factor, temperature=temperature, target_logits=target_logits, t_squared=t_squared,
                    reduction=reduction)

    def _validate(self):
        _rw.distillation_kl_div(torch.zeros(0, 2), torch.zeros(0, 2), backend="reference", **self._kwargs())

    def forward(self, input, target, weight=None, avg_factor=None):
        return self._scaled(_rw.distillation_kl_div(input, target, weight=weight, avg_factor=avg_factor,
                                                    sync_avg_factor=self.sync_avg_factor, backend=self.backend, **self._kwargs()))
