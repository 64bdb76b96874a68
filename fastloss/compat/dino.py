"""Drop-in for DINO's Hungarian matcher (IDEA-Research/DINO ``models/dino/matcher.py``,
``HungarianMatcher``): DETR's matcher (:mod:`fastloss.compat.detr`, whose docstring lists the
differences from the peer) with DINO's focal class cost -- p = sigmoid(x), gamma 2.0, eps 1e-8:
cost = alpha (1 - p)^2 (-log(p + 1e-8)) - (1 - alpha) p^2 (-log(1 - p + 1e-8)) at the target
class, in DINO's float operations (bit-equal costs on the CPU).  Needs scipy."""
import numbers

from fastloss.compat import detr


class HungarianMatcher(detr.HungarianMatcher):
    """DINO's ``HungarianMatcher(cost_class=1, cost_bbox=1, cost_giou=1, focal_alpha=0.25)``.

    Raises ValueError when all three weights are 0 (DINO asserts), for a weight that is not a
    real number, or focal_alpha outside [0, 1]."""

    _convention = "dino"

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, focal_alpha=0.25):
        super().__init__(cost_class, cost_bbox, cost_giou)
        if isinstance(focal_alpha, bool) or not isinstance(focal_alpha, numbers.Real) or not 0 <= focal_alpha <= 1:
            raise ValueError(f"HungarianMatcher: focal_alpha must be a real number in [0, 1], got {focal_alpha!r}")
        self.focal_alpha = focal_alpha

    def _options(self):
        return {"focal_alpha": self.focal_alpha}


def build_matcher(args):
    """DINO's ``build_matcher(args)`` for ``args.matcher_type == "HungarianMatcher"`` (the
    SimpleMinsumMatcher is not provided: ValueError)."""
    if getattr(args, "matcher_type", "HungarianMatcher") != "HungarianMatcher":
        raise ValueError(f"fastloss.compat.dino provides the HungarianMatcher only, not {args.matcher_type!r}")
    return HungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox, cost_giou=args.set_cost_giou,
                            focal_alpha=args.focal_alpha)
