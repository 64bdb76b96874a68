"""Matching costs of DETR-family Hungarian matchers, per image, in pure PyTorch: the
specification of the fused cost blocks (family ``match_cost``; design: ../shared/assigners.md
sections 7 and 11.4).

The peers build one (B*Q, sum T) matrix -- every query of every image against every target of
the batch -- and then hand only its per-image diagonal blocks (Q, T_b) to scipy's
``linear_sum_assignment``.  fastloss computes only those blocks, each element with the
peer's float operations in the peer's order, so the blocks are bit-equal to the peer's.
The peers (formulas restated here, their code not copied):

* DETR, facebookresearch/detr ``models/matcher.py`` and ``util/box_ops.py`` @ 29901c5:
  boxes cxcywh (normalised);
  class cost  k = -softmax(logits)[label];
  L1          l = torch.cdist(p=1) on cxcywh, which sums ((|d0| + |d1|) + |d2|) + |d3|
              left to right on the CPU (checked: bit-equal) and (|d0| + |d2|) + (|d1| + |d3|)
              on CUDA (DistanceKernel.cu: one lane per coordinate, a shuffle-down tree);
  GIoU        on xyxy = (cx - 0.5 w, cy - 0.5 h, cx + 0.5 w, cy + 0.5 h):
              A = (x2 - x1)(y2 - y1) per box, I = clamp(min(x2) - max(x1), 0) * (y alike),
              U = (A_p + A_t) - I, iou = I / U, E = clamp(max(x2) - min(x1), 0) * (y alike),
              giou = iou - (E - U) / E (no eps);
  C = w_bbox l + w_class k + w_giou (-giou), summed left to right.
* DINO, IDEA-Research/DINO ``models/dino/matcher.py`` @ 2a4df86: as DETR with the focal class
  cost, p = sigmoid(x), gamma 2.0:
  neg = ((1 - alpha) * p^gamma) * -log((1 - p) + 1e-8),
  pos = (alpha * (1 - p)^gamma) * -log(p + 1e-8),   k = pos[label] - neg[label].
* mmdetection 3.3.0 ``HungarianAssigner`` (mmdet/models/task_modules/assigners/
  hungarian_assigner.py, match_cost.py), per image, boxes xyxy in pixels:
  ClassificationCost k = -softmax(x)[label];
  FocalLossCost neg = (-log((1 - p) + eps) * (1 - alpha)) * p^gamma,
  pos = (-log(p + eps) * alpha) * (1 - p)^gamma, k = pos[label] - neg[label], eps 1e-12;
  BBoxL1Cost: boxes converted to cxcywh first when box_format 'xywh'
  (((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)), then divided by (w, h, w, h) of the
  image, then cdist(p=1);
  IoUCost (giou) -bbox_overlaps: signed areas A = (x2 - x1)(y2 - y1), U = max((A_p + A_t) - I,
  1e-6), E = max(clamp(...) * clamp(...), 1e-6), giou = I / U - (E - U) / E;
  each term times its weight, then ``torch.stack(costs).sum(0)``, which adds left to right in
  the config's list order ((c0 + c1) + c2, checked on the CPU).

fastloss's departures (document, never silently different on valid input):
* DETR's two asserts on degenerate boxes (x2 < x1: two host syncs) are dropped: in the DETR
  convention box areas are clamped at 0 (the same number for every valid box), so an inverted
  box counts as zero-area; where DETR would divide 0 / 0 (both boxes of a pair have zero
  area, or their enclosing box does) the term is 0 instead of NaN (scipy rejects NaN).
  NaN in an input still reaches the costs it touches.

Layout of the result: ONE flat tensor of Q * sum(T) elements; image b's block (Q, T_b),
row-major, starts at element Q * o_b where o_b = T_0 + ... + T_{b-1}.
"""
import torch

from fastloss.reference import box_iou

CLASS_SOFTMAX, CLASS_FOCAL_DINO, CLASS_FOCAL_MMDET = "softmax", "focal_dino", "focal_mmdet"
GIOU_DETR, GIOU_MMDET = 0, 1  # GIoU arithmetic: DETR (clamped areas, no eps, 0 / 0 -> 0) / mmdet (signed areas, eps 1e-6)
TERMS = ("class", "bbox", "giou")  # term indices of ``order``
MMDET_EPS = 1e-6  # mmdet bbox_overlaps' eps


def class_table(logits, kind, alpha=0.25, gamma=2.0, eps=1e-8):
    """The (B, Q, C) class-cost table, unweighted, in the peer's arithmetic (module docstring):
    ``softmax``: -softmax(logits); ``focal_dino`` / ``focal_mmdet``: pos - neg with each peer's
    order of products.  The peers gather pos and neg at the labels, then subtract: the same
    numbers as subtracting first."""
    if kind == CLASS_SOFTMAX:
        return -logits.softmax(-1)
    p = logits.sigmoid()
    if kind == CLASS_FOCAL_DINO:
        neg = (1 - alpha) * (p ** gamma) * (-(1 - p + eps).log())
        pos = alpha * ((1 - p) ** gamma) * (-(p + eps).log())
    elif kind == CLASS_FOCAL_MMDET:
        neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
        pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    else:
        raise ValueError(f"unknown class cost {kind!r}")
    return pos - neg


def cxcywh_to_xyxy(b):
    """DETR's box_cxcywh_to_xyxy: (cx - 0.5 w, cy - 0.5 h, cx + 0.5 w, cy + 0.5 h), the same
    roundings as the box family's conversion (a product commutes)."""
    return torch.stack(box_iou.to_xyxy(b, "cxcywh"), -1)


def xyxy_to_cxcywh(b):
    """mmdet's bbox_xyxy_to_cxcywh: ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def giou(p, t, mode):
    """Generalized IoU of xyxy boxes p and t (broadcast), in DETR's or mmdet's arithmetic."""
    def side(lo, hi):
        d = hi - lo
        return d.clamp(min=0) if mode == GIOU_DETR else d

    ap = side(p[..., 0], p[..., 2]) * side(p[..., 1], p[..., 3])
    at = side(t[..., 0], t[..., 2]) * side(t[..., 1], t[..., 3])
    iw = (torch.minimum(p[..., 2], t[..., 2]) - torch.maximum(p[..., 0], t[..., 0])).clamp(min=0)
    ih = (torch.minimum(p[..., 3], t[..., 3]) - torch.maximum(p[..., 1], t[..., 1])).clamp(min=0)
    inter = iw * ih
    union = ap + at - inter
    ew = (torch.maximum(p[..., 2], t[..., 2]) - torch.minimum(p[..., 0], t[..., 0])).clamp(min=0)
    eh = (torch.maximum(p[..., 3], t[..., 3]) - torch.minimum(p[..., 1], t[..., 1])).clamp(min=0)
    enclose = ew * eh
    if mode == GIOU_MMDET:
        eps = union.new_tensor(MMDET_EPS)
        union = torch.maximum(union, eps)
        enclose = torch.maximum(enclose, eps)
        return inter / union - (enclose - union) / enclose
    zero = inter.new_zeros(())
    iou = torch.where(union == 0, zero, inter / union)  # 0 / 0: both boxes of zero area
    return iou - torch.where(enclose == 0, zero, (enclose - union) / enclose)


def cdist_l1_sum(d):
    """torch.cdist(p=1)'s sum of the absolute differences d (..., 4), in its order on d's
    device: ((d0 + d1) + d2) + d3 on the CPU (a sequential sum), (d0 + d2) + (d1 + d3) on CUDA
    (DistanceKernel.cu: lane k holds d_k, then a shuffle-down tree).  (...)."""
    if d.device.type == "cuda":
        return (d[..., 0] + d[..., 2]) + (d[..., 1] + d[..., 3])
    return ((d[..., 0] + d[..., 1]) + d[..., 2]) + d[..., 3]


def block_costs(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, tgt_labels, tgt_image, offsets, w_class, w_bbox, w_giou, giou_mode, order):
    """The per-image cost blocks, flat (module docstring's layout).

    Args:
        table: (B, Q, C) class-cost table (:func:`class_table`), floating dtype D.
        pred_l1, pred_xyxy: (B, Q, 4) D, the query boxes the L1 term and the GIoU use.
        tgt_l1, tgt_xyxy: (N, 4) D, the targets of all images concatenated (N = sum T_b).
        tgt_labels: (N,) int64 in [0, C) (others: NaN costs); tgt_image: (N,) int64, each target's image b;
        offsets: (B + 1,) int64, o_b (targets of image b are tgt[o_b:o_{b+1}]).
        w_class, w_bbox, w_giou: the weights (each term is w * term, rounded in D).
        giou_mode: GIOU_DETR / GIOU_MMDET; order: the term indices (into TERMS) in summation order.

    Returns the (Q * N,) costs, dtype D.  Pure tensor code, no host synchronisation.
    """
    B, Q = table.shape[:2]
    N = tgt_labels.shape[0]
    j = torch.arange(N, device=table.device)
    q = torch.arange(Q, device=table.device)
    first = offsets[tgt_image]  # o_b of each target's image
    count = offsets[tgt_image + 1] - first  # T_b
    d = (pred_l1[tgt_image] - tgt_l1[:, None]).abs()  # (N, Q, 4)
    l1 = cdist_l1_sum(d)
    C = table.shape[2]
    ok = (tgt_labels >= 0) & (tgt_labels < C)  # an out-of-range label gives NaN costs (every backend)
    if C:
        cls = table[tgt_image[:, None], q[None], tgt_labels.clamp(0, C - 1)[:, None]]  # (N, Q)
    else:
        cls = table.new_zeros(N, Q)
    cls = torch.where(ok[:, None], cls, cls.new_tensor(float("nan")))
    g = giou(pred_xyxy[tgt_image], tgt_xyxy[:, None], giou_mode)
    terms = (w_class * cls, w_bbox * l1, w_giou * (-g))
    cost = (terms[order[0]] + terms[order[1]]) + terms[order[2]]
    pos = Q * first[:, None] + q[None] * count[:, None] + (j - first)[:, None]
    out = cost.new_empty(Q * N)
    out[pos.reshape(-1)] = cost.reshape(-1)
    return out
