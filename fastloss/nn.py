"""nn.Module wrappers of the functional losses."""
from torch import nn

from fastloss.ops.sigmoid_focal_loss import sigmoid_focal_loss
from fastloss.ops import dice as _dice


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`fastloss.sigmoid_focal_loss`; ``forward(input, target, weight=None, avg_factor=None)``."""

    def __init__(self, alpha=0.25, gamma=2.0, reduction="mean"):
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, input, target, weight=None, avg_factor=None):
        return sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction, weight, avg_factor)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class TverskyLoss(nn.Module):
    """Module form of :func:`fastloss.tversky_loss`; ``forward(input, target)``; keyword
    arguments as the function's."""

    _fn = staticmethod(_dice.tversky_loss)

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, input, target):
        return self._fn(input, target, **self.kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class DiceLoss(TverskyLoss):
    """Module form of :func:`fastloss.dice_loss`."""

    _fn = staticmethod(_dice.dice_loss)


class JaccardLoss(TverskyLoss):
    """Module form of :func:`fastloss.jaccard_loss`."""

    _fn = staticmethod(_dice.jaccard_loss)


class DiceCELoss(TverskyLoss):
    """Module form of :func:`fastloss.dice_ce_loss` (MONAI's DiceCELoss)."""

    _fn = staticmethod(_dice.dice_ce_loss)


class BoxIoULoss(nn.Module):
    """Module form of :func:`fastloss.box_iou_loss`; ``forward(pred, target, weight=None, avg_factor=None)``."""

    def __init__(self, kind="giou", reduction="mean", fmt="xyxy", eps=1e-7, power=1.0, gamma=0.5, loss_weight=1.0):
        super().__init__()
        self.kind, self.reduction, self.fmt, self.eps, self.power, self.gamma = kind, reduction, fmt, eps, power, gamma
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None):
        from fastloss.ops.box_iou import box_iou_loss

        loss = box_iou_loss(pred, target, self.kind, self.reduction, weight, avg_factor, self.fmt, self.eps, self.power, self.gamma)
        return loss * self.loss_weight if self.loss_weight != 1.0 else loss

    def extra_repr(self):
        return f"kind={self.kind!r}, reduction={self.reduction!r}, fmt={self.fmt!r}, power={self.power}"
