"""nn.Module wrappers of the functional losses."""
from torch import nn

from fastloss.ops.sigmoid_focal_loss import sigmoid_focal_loss


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`fastloss.sigmoid_focal_loss`; ``forward(input, target, weight=None, avg_factor=None)``."""

    def __init__(self, alpha=0.25, gamma=2.0, reduction="mean"):
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, input, target, weight=None, avg_factor=None):
        return sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction, weight, avg_factor)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
