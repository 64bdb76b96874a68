"""Drop-in for DETR's Hungarian matcher (facebookresearch/detr ``models/matcher.py``,
``HungarianMatcher``), over fastloss's per-image cost blocks (:func:`fastloss.match_cost`).

DETR builds the (B*Q, sum T) cost matrix of every query against every target of the batch and
keeps only the per-image diagonal blocks; this matcher computes only those blocks (bit-equal to
DETR's on the CPU) and runs scipy's ``linear_sum_assignment`` on each, as DETR does.  DINO's
focal-cost variant: :mod:`fastloss.compat.dino`.  Needs scipy (``pip install 'fastloss[match]'``).

Differences from DETR: its two asserts on inverted boxes (two host syncs) are gone -- an
inverted box has zero area -- and a pair of zero-area boxes (or a zero-area enclosing box)
gets GIoU 0 where DETR divides 0 / 0 and scipy then rejects the NaN.
"""
import numbers

import torch
from torch import nn

from fastloss.ops.match_cost import hungarian_match, match_cost


class HungarianMatcher(nn.Module):
    """DETR's ``HungarianMatcher(cost_class=1, cost_bbox=1, cost_giou=1)``: the cost
    C = cost_bbox * L1(cxcywh) + cost_class * (-softmax prob of the target class) + cost_giou * (-GIoU).

    Raises ValueError when all three weights are 0 (DETR asserts) or one is not a real number."""

    _convention = "detr"

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1):
        super().__init__()
        for name, w in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou)):
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise ValueError(f"HungarianMatcher: {name} must be a real number, got {w!r}")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs cant be 0 (DETR's assert)")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def _options(self):
        return {}

    @torch.no_grad()
    def forward(self, outputs, targets):
        """DETR's forward.

        Args:
            outputs: dict with "pred_logits" (B, Q, C) logits and "pred_boxes" (B, Q, 4)
                normalised cxcywh boxes (other keys are ignored).
            targets: B dicts with "labels" (T_b,) integer classes and "boxes" (T_b, 4)
                normalised cxcywh.

        Returns B tuples (query indices, target indices), int64 CPU tensors of length
        min(Q, T_b), sorted by query index (scipy's order)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        sizes = [len(v["boxes"]) for v in targets]
        labels = torch.cat([v["labels"] for v in targets]) if targets else logits.new_zeros(0, dtype=torch.int64)
        tgt = torch.cat([v["boxes"] for v in targets]) if targets else boxes.new_zeros(0, 4)
        costs = match_cost(logits, boxes, labels, tgt, sizes, convention=self._convention,
                           weights=(self.cost_class, self.cost_bbox, self.cost_giou), **self._options())
        return hungarian_match(costs, sizes, logits.shape[1])


def build_matcher(args):
    """DETR's ``build_matcher(args)``: the weights from args.set_cost_class / set_cost_bbox / set_cost_giou."""
    return HungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox, cost_giou=args.set_cost_giou)
