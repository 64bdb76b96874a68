"""Matching costs of DETR-family Hungarian matchers (family ``match_cost``): registration and
the public functions.

Design: ../shared/assigners.md sections 7 and 11.4; the spec and the peers' formulas:
fastloss/reference/match_cost.py.  The peers (DETR, DINO, mmdetection's HungarianAssigner)
build the whole (B*Q, sum T) matrix and use only its per-image diagonal blocks; the custom op
``fastloss::match_cost`` computes only the blocks, bit-equal to the peer's (CPU, fp32 and fp64;
the GPU kernels round every product and sum on its own, as the CPU does, and sum the L1 term in
cdist(p=1)'s CUDA order, as the peers do on CUDA).

Steps: (1) the (B, Q, C) class table in the peer's arithmetic (torch ops, shared by every
backend: -softmax or focal pos - neg); (2) the box forms each term needs (torch ops, the peer's
conversions); (3) one kernel over the (query, target) pairs: weighted L1 in cdist(p=1)'s order +
the weighted class-table lookup + the weighted -GIoU, added in the peer's order.  Costs are
not differentiable (the matchers run under no_grad).

Kernel convention of ``fastloss::match_cost``: table (B, Q, C), pred_l1 / pred_xyxy (B, Q, 4),
tgt_l1 / tgt_xyxy (N, 4), one floating dtype, contiguous; tgt_labels, tgt_image (N,) and
offsets (B + 1,) int64 contiguous -> (Q * N,) costs (the layout of the reference's docstring).
"""
import numbers
from typing import Optional

import torch
from torch import Tensor

from fastloss import _backend, _extension
from fastloss.ops import _common
from fastloss.reference import match_cost as reference

OP = "match_cost"


@torch.library.custom_op("fastloss::match_cost", mutates_args=())
def match_cost_op(table: Tensor, pred_l1: Tensor, pred_xyxy: Tensor, tgt_l1: Tensor, tgt_xyxy: Tensor, tgt_labels: Tensor, tgt_image: Tensor,
                  offsets: Tensor, w_class: float, w_bbox: float, w_giou: float, giou_mode: int, order: list[int],
                  backend: Optional[str]) -> Tensor:
    forward, _ = _backend.implementation(OP, table.device, backend)
    return forward(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, tgt_labels, tgt_image, offsets, w_class, w_bbox, w_giou, giou_mode, order)


@match_cost_op.register_fake
def _(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, tgt_labels, tgt_image, offsets, w_class, w_bbox, w_giou, giou_mode, order, backend):
    return table.new_empty((table.shape[1] * tgt_labels.shape[0],))


def _native(*args):
    return torch.ops.fastloss.match_cost_native(*args)


def _triton(*args):
    from fastloss.triton_kernels import match_cost as tk

    return tk.match_cost(*args)


_backend.register(OP, "reference", reference.block_costs, None)
_backend.register(OP, "triton", _triton, None)
if _extension.has_cpu() and hasattr(torch.ops.fastloss, "match_cost_native"):
    _backend.register(OP, "cpu", _native, None)
if _extension.has_cuda() and hasattr(torch.ops.fastloss, "match_cost_native"):
    _backend.register(OP, "cuda", _native, None)

CONVENTIONS = ("detr", "dino", "mmdet")


def _weight(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
        raise ValueError(f"match_cost: {name} must be a real number, got {v!r}")
    return float(v)


def _sizes(sizes, B, N, device):
    """(offsets (B + 1,), tgt_image (N,)) int64 on ``device`` from a list of ints or a (B,) tensor."""
    if isinstance(sizes, torch.Tensor):
        if sizes.shape != (B,) or sizes.is_floating_point() or sizes.dtype == torch.bool:
            raise ValueError(f"match_cost: sizes must be a (B,) = ({B},) integer tensor, got {sizes.dtype} {tuple(sizes.shape)}")
        counts = sizes.to(device=device, dtype=torch.int64)
        if counts.device.type == "cpu" and not torch.compiler.is_compiling() and (bool((counts < 0).any()) or int(counts.sum()) != N):
            raise ValueError(f"match_cost: sizes must be non-negative and sum to the {N} targets, got {sizes.tolist()}")
    else:
        sizes = list(sizes)
        if len(sizes) != B or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in sizes) or sum(sizes) != N:
            raise ValueError(f"match_cost: sizes must be {B} non-negative ints summing to the {N} targets, got {sizes}")
        counts = torch.tensor(sizes, dtype=torch.int64, device=device)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    image = torch.repeat_interleave(torch.arange(B, device=device), counts, output_size=N)
    return offsets, image


def match_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, sizes, *, convention="detr", weights=(1.0, 1.0, 1.0), class_cost=None,
               focal_alpha=0.25, focal_gamma=2.0, focal_eps=None, img_shapes=None, l1_format="xyxy", order=None, backend=None):
    """Per-image Hungarian matching costs of DETR, DINO or mmdetection's HungarianAssigner, bit-equal
    to the diagonal blocks of the peer's (B*Q, sum T) cost matrix (on the CPU, fp32 and fp64),
    without computing the off-diagonal blocks.  Formulas and peers: fastloss/reference/match_cost.py.

    Args:
        pred_logits: (B, Q, C) class logits, floating.
        pred_boxes: (B, Q, 4) query boxes: cxcywh normalised to [0, 1] (``detr``, ``dino``) or
            xyxy pixels (``mmdet``: what its HungarianAssigner receives).
        tgt_labels: (N,) integer class labels in [0, C), the images' targets concatenated
            (N = sum of ``sizes``); checked on CPU tensors.
        tgt_boxes: (N, 4) target boxes in ``pred_boxes``' format.
        sizes: the B target counts T_b, a list of ints or a (B,) integer tensor (stays on the
            device: no host sync on GPU).
        convention: ``detr`` (class cost -softmax, C = w_bbox L1 + w_class cls + w_giou (-GIoU)),
            ``dino`` (DINO's focal class cost, eps 1e-8, the same sum), ``mmdet`` (class cost
            ``class_cost``, L1 over boxes divided by the image size, mmdet's GIoU with eps 1e-6,
            the terms added in ``order``).
        weights: (w_class, w_bbox, w_giou), real numbers.
        class_cost: mmdet only: ``"softmax"`` (ClassificationCost, the default) or ``"focal"``
            (FocalLossCost).
        focal_alpha, focal_gamma: the focal class cost's alpha (0.25) and gamma (2; DINO fixes 2.0).
        focal_eps: mmdet's FocalLossCost eps (default 1e-12); DINO's is 1e-8 (fixed).
        img_shapes: mmdet only: the B images' (h, w) in pixels, a (B, 2) tensor or a list of pairs.
        l1_format: mmdet only: BBoxL1Cost's box_format, ``"xyxy"`` or ``"xywh"`` (cxcywh).
        order: mmdet only: the terms' names in its config's ``match_costs`` order, a permutation of
            ("class", "bbox", "giou"); default that order.
        backend: reference, cpu, cuda, triton (as every fastloss op).

    Returns:
        A flat (Q * N,) tensor in the promoted floating dtype of logits and boxes (fp32 at least):
        image b's (Q, T_b) block, row-major, starts at element Q * (T_0 + ... + T_{b-1}).
        :func:`hungarian_match` splits it; ``costs[Q*o:Q*(o+T)].view(Q, T)`` does by hand.

    Differences from the peers: DETR's asserts on inverted boxes are dropped (an inverted box
    has zero area in the DETR/DINO conventions) and a 0 / 0 in DETR's GIoU gives 0, not NaN.

    Raises:
        ValueError: bad shapes, dtypes, devices, sizes, labels out of range (CPU), unknown
            convention / class_cost / l1_format / order, weights or focal parameters that are not
            real numbers (alpha in [0, 1], gamma >= 0, eps >= 0), a missing ``img_shapes`` for mmdet.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"match_cost: convention must be one of {CONVENTIONS}, got {convention!r}")
    for name, t, dims in (("pred_logits", pred_logits, 3), ("pred_boxes", pred_boxes, 3), ("tgt_boxes", tgt_boxes, 2)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != dims:
            raise ValueError(f"match_cost: {name} must be a floating {dims}-D tensor, got "
                             f"{(t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__}")
    B, Q, C = pred_logits.shape
    if pred_boxes.shape != (B, Q, 4):
        raise ValueError(f"match_cost: pred_boxes must be (B, Q, 4) = ({B}, {Q}, 4), got {tuple(pred_boxes.shape)}")
    if tgt_boxes.shape[1] != 4:
        raise ValueError(f"match_cost: tgt_boxes must be (N, 4), got {tuple(tgt_boxes.shape)}")
    N = tgt_boxes.shape[0]
    if (not isinstance(tgt_labels, torch.Tensor) or tgt_labels.shape != (N,) or tgt_labels.is_floating_point()
            or tgt_labels.dtype == torch.bool or tgt_labels.is_complex()):
        raise ValueError(f"match_cost: tgt_labels must be an (N,) = ({N},) integer tensor, got "
                         f"{(tgt_labels.dtype, tuple(tgt_labels.shape)) if isinstance(tgt_labels, torch.Tensor) else type(tgt_labels).__name__}")
    _common.check_same_device("pred_logits", pred_logits, pred_boxes=pred_boxes, tgt_labels=tgt_labels, tgt_boxes=tgt_boxes,
                              sizes=sizes, img_shapes=img_shapes)
    if tgt_labels.device.type == "cpu" and not torch.compiler.is_compiling() and N and bool(((tgt_labels < 0) | (tgt_labels >= C)).any()):
        raise ValueError(f"match_cost: tgt_labels must lie in [0, C = {C})")
    if not isinstance(weights, (tuple, list)) or len(weights) != 3:
        raise ValueError(f"match_cost: weights must be (w_class, w_bbox, w_giou), got {weights!r}")
    w_class, w_bbox, w_giou = (_weight(n, w) for n, w in zip(("w_class", "w_bbox", "w_giou"), weights))
    alpha = _common.check_param("focal_alpha", focal_alpha, lambda a: 0.0 <= a <= 1.0, "[0, 1]")
    gamma = _common.check_param("focal_gamma", focal_gamma, lambda g: g >= 0.0, ">= 0")
    dtype = torch.promote_types(torch.promote_types(pred_logits.dtype, pred_boxes.dtype), torch.promote_types(tgt_boxes.dtype, torch.float32))
    # contiguous logits: the peers flatten them (a copy) before their elementwise class terms, whose CPU
    # log / exp round by position in memory order
    logits, pred, tgt = pred_logits.to(dtype).contiguous(), pred_boxes.to(dtype), tgt_boxes.to(dtype)
    offsets, image = _sizes(sizes, B, N, pred_logits.device)
    if convention != "mmdet":
        for name, v in (("class_cost", class_cost), ("img_shapes", img_shapes), ("focal_eps", focal_eps), ("order", order)):
            if v is not None:
                raise ValueError(f"match_cost: {name} is an mmdet-convention argument, not {convention!r}'s")
        if l1_format != "xyxy":
            raise ValueError(f"match_cost: l1_format is an mmdet-convention argument, not {convention!r}'s")
        table = (reference.class_table(logits, reference.CLASS_SOFTMAX) if convention == "detr" else
                 reference.class_table(logits, reference.CLASS_FOCAL_DINO, alpha, gamma, 1e-8))
        pred_l1, tgt_l1 = pred, tgt
        pred_xyxy, tgt_xyxy = reference.cxcywh_to_xyxy(pred), reference.cxcywh_to_xyxy(tgt)
        giou_mode, term_order = reference.GIOU_DETR, (1, 0, 2)  # bbox, class, giou
    else:
        class_cost = "softmax" if class_cost is None else class_cost
        if class_cost not in ("softmax", "focal"):
            raise ValueError(f"match_cost: class_cost must be 'softmax' or 'focal', got {class_cost!r}")
        eps = _common.check_param("focal_eps", 1e-12 if focal_eps is None else focal_eps, lambda e: e >= 0.0, ">= 0")
        kind = reference.CLASS_SOFTMAX if class_cost == "softmax" else reference.CLASS_FOCAL_MMDET
        # image by image, as mmdet's assigner computes it: torch's CPU log / exp round by position in
        # the tensor (vector body, scalar tail), so only the peer's own (Q, C) tensors give its bits
        table = (torch.stack([reference.class_table(x, kind, alpha, gamma, eps) for x in logits]) if B else
                 reference.class_table(logits, kind, alpha, gamma, eps))
        if l1_format not in ("xyxy", "xywh"):
            raise ValueError(f"match_cost: l1_format must be 'xyxy' or 'xywh' (mmdet's box_format), got {l1_format!r}")
        if img_shapes is None:
            raise ValueError("match_cost: the mmdet convention needs img_shapes, the B images' (h, w)")
        hw = torch.as_tensor(img_shapes, device=pred.device).to(dtype)
        if hw.shape != (B, 2):
            raise ValueError(f"match_cost: img_shapes must be (B, 2) = ({B}, 2) (h, w) pairs, got {tuple(hw.shape)}")
        factor = hw[:, [1, 0, 1, 0]]  # (w, h, w, h) per image
        pred_l1, tgt_l1 = (reference.xyxy_to_cxcywh(pred), reference.xyxy_to_cxcywh(tgt)) if l1_format == "xywh" else (pred, tgt)
        pred_l1, tgt_l1 = pred_l1 / factor[:, None], tgt_l1 / factor[image]
        pred_xyxy, tgt_xyxy = pred, tgt
        order = reference.TERMS if order is None else tuple(order)
        if sorted(order) != sorted(reference.TERMS):
            raise ValueError(f"match_cost: order must be a permutation of {reference.TERMS}, got {order!r}")
        giou_mode, term_order = reference.GIOU_MMDET, tuple(reference.TERMS.index(t) for t in order)
    return match_cost_op(table.contiguous(), pred_l1.contiguous(), pred_xyxy.contiguous(), tgt_l1.contiguous(), tgt_xyxy.contiguous(),
                         tgt_labels.to(torch.int64).contiguous(), image, offsets, w_class, w_bbox, w_giou, giou_mode, list(term_order), backend)



def split_blocks(costs, sizes, num_queries):
    """The (Q, T_b) views of :func:`match_cost`'s flat result; ``sizes`` a list of ints."""
    sizes = [int(s) for s in sizes]
    return [block.view(num_queries, s) for block, s in zip(costs.split([num_queries * s for s in sizes]), sizes)]


def hungarian_match(costs, sizes, num_queries):
    """scipy's ``linear_sum_assignment`` on each image's block of :func:`match_cost`'s result,
    as DETR's matcher returns it: one copy of the costs to the host, then per image b a pair
    (query indices, target indices), int64 CPU tensors of length min(Q, T_b), sorted by query.

    Args: costs: the flat (Q * N,) costs; sizes: the B target counts (a list of ints or a (B,)
    tensor); num_queries: Q.  Raises ImportError naming the extra when scipy is missing,
    ValueError when costs has NaN (scipy's "invalid numeric entries")."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:
        raise ImportError("fastloss.hungarian_match needs scipy: pip install 'fastloss[match]' (or pip install scipy)") from e
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    host = costs.detach().cpu()
    out = []
    for block in split_blocks(host, sizes, num_queries):
        i, j = linear_sum_assignment(block.numpy())
        out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return out
