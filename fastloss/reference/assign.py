"""Label assigners in pure PyTorch, gt-chunked: the specification of the fused assigners
(family ``assign``; design and the peers' algorithms: ../shared/assigners.md).  Three so far:
:func:`task_aligned_assign` (ultralytics), :func:`max_iou_core` (mmdetection's
MaxIoUAssigner, batched over padded ground truths; its docstring has the rules; the public
entry point is :func:`fastloss.max_iou_assign`) and :func:`atss_core` (mmdetection's
ATSSAssigner, likewise; public: :func:`fastloss.atss_assign`).

Task-aligned assignment (TOOD, Feng et al., arXiv 2108.07755) with ultralytics' semantics
(``ultralytics.utils.tal.TaskAlignedAssigner``, release 8.4.190), without the dense
(B images, M padded ground truths, A anchors) tensors ultralytics builds (about 14 bytes per
(image, gt, anchor) pair at its peak): the ground truths are taken ``chunk`` at a time, and
per anchor a running state (claims, the overlap argmax) carries the decisions across chunks.

For image b, ground truth g (label l_g, box G_g, valid v_g) and anchor a (point c_a,
predicted box P_a, class scores s_a):

1. candidates: c_a strictly inside G_g (each side by more than 1e-9 px), where a side of a
   valid G_g shorter than ``stride_val`` is first widened to ``stride_val`` about its centre
   (through ultralytics' xyxy -> xywh -> xyxy round trip, the same float operations), and
   v_g.
2. overlap o_ga = max(CIoU(G_g, P_a), 0) for candidates, else 0 -- ultralytics' CIoU
   (``bbox_iou(..., CIoU=True)``, eps 1e-7: heights + eps, union + eps, atan(w / h)), not
   fastloss's ``ciou``; alignment t_ga = s_a[l_g]^alpha o_ga^beta (0 for non-candidates).
3. each valid g claims the anchors among the ``topk`` largest t_ga of its row (torch.topk's
   own tie rule on the device, so zero-metric anchors fill short rows) that are candidates.
4. an anchor claimed once goes to its claimant; one claimed by several goes to the first
   argmax over ALL M ground truths of o_ga (which may be a gt that did not claim it, or gt 0
   when all its overlaps are 0); unclaimed anchors are background with gt index 0.
5. targets: label and box of the assigned gt (gt 0's for background); score = for a
   foreground anchor of gt g, t_ga * max_a'(o_ga') / (max_a'(t_ga') + eps) over g's
   foreground anchors a' (two roundings in this order, eps = 1e-9 in fp32), times the one-hot
   of the label; 0 for background.

Memory: O(chunk * A) temporaries plus O(B * (A + M)) state, instead of O(B * M * A).  No host
synchronisation: every shape is static (no ``nonzero``).  The alignment is computed densely
over each chunk, so on the CPU torch's position-dependent vectorised ``pow`` can round a value
differently from ultralytics (which evaluates it on the flat candidate list): scores may
differ by an ulp or two; assignments follow unless such a value sits exactly at a top-k tie.
"""
import math

import torch

# ultralytics' constants (tal.py / metrics.py, release 8.4.190)
_CIOU_EPS = 1e-7     # bbox_iou's eps
_IN_GT_EPS = 1e-9    # select_candidates_in_gts' margin
_FOUR_OVER_PI2 = 4 / math.pi ** 2


def ciou_ultralytics(gt, pd, eps=_CIOU_EPS):
    """CIoU of aligned xyxy boxes (..., 4) in ultralytics' arithmetic (``bbox_iou(gt, pd,
    xywh=False, CIoU=True)``: the same operations in the same order), clamped at 0.  (...)."""
    g1, g2, g3, g4 = gt.unbind(-1)
    p1, p2, p3, p4 = pd.unbind(-1)
    w1, h1 = g3 - g1, g4 - g2 + eps  # the heights carry eps (ultralytics)
    w2, h2 = p3 - p1, p4 - p2 + eps
    inter = (torch.minimum(g3, p3) - torch.maximum(g1, p1)).clamp(min=0) * (torch.minimum(g4, p4) - torch.maximum(g2, p2)).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(g3, p3) - torch.minimum(g1, p1)  # enclosing box
    ch = torch.maximum(g4, p4) - torch.minimum(g2, p2)
    c2 = cw * cw + ch * ch + eps
    rho2 = ((p1 + p3 - g1 - g3) * (p1 + p3 - g1 - g3) + (p2 + p4 - g2 - g4) * (p2 + p4 - g2 - g4)) / 4  # centre distance^2
    dv = torch.atan(w2 / h2) - torch.atan(w1 / h1)
    v = _FOUR_OVER_PI2 * (dv * dv)  # aspect-ratio consistency
    alpha = v / (1 - iou + v + eps)
    return (iou - (rho2 / c2 + v * alpha)).clamp(min=0)


def _widened(gt_bboxes, valid, stride_val):
    """ultralytics' select_candidates_in_gts box: sides of valid boxes below stride_val set to
    it about the centre, through xyxy -> xywh -> xyxy (the round trip's roundings included)."""
    x1, y1, x2, y2 = gt_bboxes.unbind(-1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    wh = torch.stack([x2 - x1, y2 - y1], -1)
    floor = torch.tensor(stride_val, dtype=wh.dtype, device=wh.device)
    wh = torch.where((wh < stride_val) & valid[..., None], floor, wh)
    half = wh / 2
    return torch.stack([cx - half[..., 0], cy - half[..., 1], cx + half[..., 0], cy + half[..., 1]], -1)


def _point_in_box(points, boxes):
    """Anchor point (A, 2) strictly inside boxes (..., A, 4) by more than 1e-9 on every side
    (ultralytics' four float tests), broadcast: (..., A) bool."""
    x, y = points[:, 0], points[:, 1]
    return ((x - boxes[..., 0] > _IN_GT_EPS) & (y - boxes[..., 1] > _IN_GT_EPS) & (boxes[..., 2] - x > _IN_GT_EPS)
            & (boxes[..., 3] - y > _IN_GT_EPS))


def _align(scores, overlaps, alpha, beta):
    """ultralytics' alignment metric s^alpha o^beta (each power in its operand's dtype)."""
    return scores.pow(alpha) * overlaps.pow(beta)


def topk_indices(t, k, tie_rule):
    """Indices (..., k) of the k largest of t (..., n) along the last dim under torch.topk's tie
    rule on a device: ``"cpu"`` (TopKImpl.h's heap select / introselect: which equal values win
    depends on the heap; evaluated on the CPU), ``"cuda"`` (TensorTopK.cu: the k largest under
    the order (value descending, index ascending) -- the first k of a stable descending sort)."""
    if tie_rule == "cuda":
        return torch.sort(t, dim=-1, descending=True, stable=True).indices[..., :k]
    if tie_rule == "cpu":
        return torch.topk(t.cpu(), k, dim=-1).indices.to(t.device)
    raise ValueError(f"tie_rule must be 'cpu' or 'cuda', got {tie_rule!r}")


def task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, *, topk=13, num_classes=80, alpha=1.0,
                        beta=6.0, stride_val=16, eps=1e-9, chunk=None, tie_rule=None, compact=False):
    """ultralytics' ``TaskAlignedAssigner.forward`` (8.4.190), gt-chunked (module docstring).

    Args:
        pd_scores: (B, A, nc) class probabilities (sigmoid of the logits), floating.
        pd_bboxes: (B, A, 4) predicted boxes, xyxy pixels, floating (gt_bboxes' dtype).
        anc_points: (A, 2) anchor points (cell centres), pixels.
        gt_labels: (B, M, 1) class indices (float or integer) in [0, nc).
        gt_bboxes: (B, M, 4) xyxy pixels; mask_gt: (B, M, 1), non-zero for real ground truths.
        topk: candidates per ground truth (<= A); num_classes: nc; alpha, beta: the metric's
            exponents; stride_val: the smallest box side of the candidate test (ultralytics:
            its second stride); eps: the normalisation's.
        chunk: ground truths per step (default: as many as keep a step near 2^22 pairs).
        tie_rule: torch.topk's tie rule of ``"cpu"`` or ``"cuda"`` (:func:`topk_indices`);
            None: that of pd_scores' device.
        compact: target_scores (B, A), the score of the assigned label only.

    Returns (target_labels (B, A) int64, target_bboxes (B, A, 4), target_scores (B, A, nc)
    (or (B, A) with compact), fg_mask (B, A) bool, target_gt_idx (B, A) int64) -- for M = 0
    ultralytics' early return: labels nc and gt indices 0 in pd_scores' dtype.
    Raises ValueError for num_classes < 1 (ultralytics' assigner fails there too), topk > A and
    labels outside [0, nc) on real ground truths."""
    B, A, nc = pd_scores.shape
    M = gt_bboxes.shape[1]
    dev = pd_scores.device
    if num_classes < 1:
        raise ValueError(f"task_aligned_assign: num_classes must be >= 1, got {num_classes}")
    if M == 0:
        return (torch.full_like(pd_scores[..., 0], num_classes), torch.zeros_like(pd_bboxes),
                torch.zeros_like(pd_scores[..., 0] if compact else pd_scores), torch.zeros_like(pd_scores[..., 0], dtype=torch.bool),
                torch.zeros_like(pd_scores[..., 0]))
    tie_rule = tie_rule or ("cuda" if dev.type == "cuda" else "cpu")
    if topk > A:
        raise ValueError(f"task_aligned_assign: topk = {topk} exceeds the {A} anchors")
    valid = mask_gt[..., 0].bool()
    labels = gt_labels[..., 0].long()
    if bool(((labels < 0) | (labels >= num_classes))[valid].any()):
        raise ValueError(f"task_aligned_assign: gt labels must lie in [0, num_classes = {num_classes})")
    boxes_in = _widened(gt_bboxes, valid, stride_val)
    chunk = chunk or max(1, (1 << 22) // max(1, B * A))
    scores_t = pd_scores.transpose(1, 2)  # (B, nc, A): a gather of each gt's class row
    claims = torch.zeros(B, A, dtype=torch.int64, device=dev)
    claim_gsum = torch.zeros(B, A, dtype=torch.int64, device=dev)  # the claimant of a once-claimed anchor
    best_ov = torch.full((B, A), -1.0, dtype=gt_bboxes.dtype, device=dev)
    best_g = torch.zeros(B, A, dtype=torch.int64, device=dev)
    for g0 in range(0, M, chunk):
        g1 = min(M, g0 + chunk)
        m = g1 - g0
        cand = _point_in_box(anc_points, boxes_in[:, g0:g1, None, :]) & valid[:, g0:g1, None]  # (B, m, A)
        ov = ciou_ultralytics(gt_bboxes[:, g0:g1, None, :].expand(B, m, A, 4), pd_bboxes[:, None, :, :].expand(B, m, A, 4))
        ov = torch.where(cand, ov, torch.zeros_like(ov))
        s = scores_t.gather(1, labels[:, g0:g1, None].clamp(0, nc - 1).expand(B, m, A))
        t = _align(s, ov, alpha, beta)
        t = torch.where(cand, t, torch.zeros_like(t))
        idx = topk_indices(t, topk, tie_rule)  # (B, m, k): torch's tie rule, zero-metric fill
        claimed = cand.gather(-1, idx)  # a top-k slot claims its anchor if it is a candidate
        g_ids = torch.arange(g0, g1, device=dev)[None, :, None].expand_as(idx)
        claims.scatter_add_(1, idx.flatten(1), claimed.flatten(1).long())  # flatten(1), not reshape(B, -1): B may be 0
        claim_gsum.scatter_add_(1, idx.flatten(1), (claimed * g_ids).flatten(1))
        cmax, carg = ov.max(dim=1)  # first index on ties (and the first NaN), as ultralytics' overlaps.argmax(1)
        better = (cmax > best_ov) | (cmax.isnan() & ~best_ov.isnan())  # strict: an earlier chunk keeps its tie, its NaN
        best_ov = torch.where(better, cmax, best_ov)
        best_g = torch.where(better, carg + g0, best_g)
    fg = claims > 0
    gt_idx = torch.where(claims > 1, best_g, torch.where(fg, claim_gsum, torch.zeros_like(claim_gsum)))

    # the assigned pair's metrics (0 where the assigned gt does not hold the anchor as a candidate)
    bi = torch.arange(B, device=dev)[:, None]
    g_box = gt_bboxes[bi, gt_idx]  # (B, A, 4)
    g_lab = labels[bi, gt_idx]
    pair_cand = fg & valid[bi, gt_idx] & _point_in_box(anc_points, boxes_in[bi, gt_idx])
    ov_a = torch.where(pair_cand, ciou_ultralytics(g_box, pd_bboxes), torch.zeros_like(best_ov))
    s_a = pd_scores.gather(2, g_lab.clamp(0, nc - 1)[..., None])[..., 0]
    t_a = _align(s_a, ov_a, alpha, beta)
    t_a = torch.where(pair_cand, t_a, torch.zeros_like(t_a))

    # per gt: the largest metric and overlap over its foreground anchors (scatter max: order-free)
    gfg = torch.where(fg, gt_idx, torch.full_like(gt_idx, M))  # background to a dump slot M
    pos_t = torch.zeros(B, M + 1, dtype=t_a.dtype, device=dev).scatter_reduce_(1, gfg, t_a, "amax")
    pos_o = torch.zeros(B, M + 1, dtype=ov_a.dtype, device=dev).scatter_reduce_(1, gfg, ov_a, "amax")
    norm = t_a * pos_o.gather(1, gfg) / (pos_t.gather(1, gfg) + eps)
    norm = torch.where(fg, norm, torch.zeros_like(norm))

    target_labels = labels[bi, gt_idx].clamp(min=0)
    target_bboxes = g_box
    if compact:
        return target_labels, target_bboxes, norm, fg, gt_idx
    # the label's one-hot; a label >= nc (possible for a padded gt that resolution falls back to)
    # matches no class
    onehot = target_labels[..., None] == torch.arange(num_classes, device=dev)
    target_scores = onehot * fg[..., None] * norm[..., None]
    return target_labels, target_bboxes, target_scores, fg, gt_idx



# ====================================================================== max-IoU (mmdetection)

_OVERLAPS_EPS = 1e-6  # mmdetection's bbox_overlaps default eps


def iou_mmdet(boxes1, boxes2, mode="iou"):
    """mmdetection's ``bbox_overlaps(boxes1, boxes2, mode)`` matrix in its arithmetic (the same
    operations in the same order: signed areas, I / max(U, 1e-6) or I / max(area1, 1e-6)):
    (..., m, 4) x (..., n, 4) -> (..., m, n)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2[..., None, :] - overlap if mode == "iou" else area1[..., None]
    return overlap / torch.maximum(union, union.new_tensor([_OVERLAPS_EPS]))


def ignored_priors(priors, ignore_bboxes, ignore_valid, ignore_iof_thr, ignore_wrt_candidates):
    """(B, A) bool: mmdetection's ignored priors -- IoF with some valid ignore box above
    ignore_iof_thr, the IoF over the prior's area (``ignore_wrt_candidates``) or over the
    ignore box's; none without ignore boxes or with ignore_iof_thr <= 0.  priors (B, A, 4),
    ignore_bboxes (B, K, 4), ignore_valid (B, K) bool (None: all valid)."""
    B, A = priors.shape[:2]
    if not (ignore_iof_thr > 0 and ignore_bboxes is not None and ignore_bboxes.shape[1] > 0):
        return torch.zeros(B, A, dtype=torch.bool, device=priors.device)
    if ignore_valid is None:
        ignore_valid = torch.ones(ignore_bboxes.shape[:2], dtype=torch.bool, device=priors.device)
    if ignore_wrt_candidates:  # IoF over the prior's area
        iof = iou_mmdet(priors, ignore_bboxes, "iof").masked_fill(~ignore_valid[:, None, :], -math.inf)
        return iof.max(dim=2).values > ignore_iof_thr
    iof = iou_mmdet(ignore_bboxes, priors, "iof").masked_fill(~ignore_valid[:, :, None], -math.inf)  # over the ignore box's area
    return iof.max(dim=1).values > ignore_iof_thr


def max_iou_core(priors, gt_bboxes, gt_valid, ignored, pos_iou_thr, neg_lo, neg_hi, min_pos_iou, match_low_quality, gt_max_assign_all,
                 chunk=None):
    """mmdetection's ``MaxIoUAssigner.assign_wrt_overlaps`` (3.3.0) for a batch of images with
    padded ground truths, gt-chunked (memory O(chunk * A + B * (A + M))); the kernels'
    calling convention (csrc/fastloss.cpp ``max_iou_assign_native``).

    Args:
        priors: (B or 1, A, 4) anchors / proposals, xyxy pixels; gt_bboxes: (B, M, 4), one
            floating dtype; gt_valid: (B, M) bool (padding False: a padded box never claims
            or blocks a prior); ignored: (B, A) bool (:func:`ignored_priors`).
        pos_iou_thr; negatives: best IoU in [neg_lo, neg_hi); min_pos_iou, match_low_quality,
            gt_max_assign_all: mmdetection's; chunk: ground truths per step.

    Per prior (mmdetection's steps, in its order): -1 (ignore) everywhere; 0 where the best
    IoU is a negative; g + 1 where it is >= pos_iou_thr (g the first argmax); then with
    match_low_quality, for g = 0, 1, ... with its best IoU >= min_pos_iou, the priors
    attaining it (all of them, or its first argmax) become g + 1, a later g winning.  IoU:
    :func:`iou_mmdet`, -1 for an ignored prior.  Thresholds compare in the boxes' dtype.

    Returns (gt_inds (B, A) int64 in {-1, 0, g + 1} (g the padded index), max_overlaps (B, A):
    the best IoU, 0 for images without ground truths)."""
    B, M = gt_bboxes.shape[:2]
    priors = priors.expand(B, *priors.shape[-2:])
    A = priors.shape[1]
    dev, dtype = priors.device, priors.dtype
    if A == 0:  # no prior to assign: mmdetection's empty result (and no max over priors per gt)
        return torch.zeros(B, 0, dtype=torch.int64, device=dev), torch.zeros(B, 0, dtype=dtype, device=dev)
    chunk = chunk or max(1, (1 << 22) // max(1, B * A))

    def overlaps(g0, g1):  # (B, m, A): ignored priors -1, padded gts -inf (never a max)
        iou = iou_mmdet(gt_bboxes[:, g0:g1], priors)
        iou = iou.masked_fill(ignored[:, None, :], -1.0)
        return iou.masked_fill(~gt_valid[:, g0:g1, None], -math.inf)

    best = torch.full((B, A), -math.inf, dtype=dtype, device=dev)
    best_g = torch.zeros(B, A, dtype=torch.int64, device=dev)
    gt_max = torch.full((B, M), -math.inf, dtype=dtype, device=dev)
    gt_arg = torch.zeros(B, M, dtype=torch.int64, device=dev)
    for g0 in range(0, M, chunk):
        g1 = min(M, g0 + chunk)
        iou = overlaps(g0, g1)
        cmax, carg = iou.max(dim=1)  # first gt on ties
        better = cmax > best  # strict: an earlier chunk keeps its tie
        best, best_g = torch.where(better, cmax, best), torch.where(better, carg + g0, best_g)
        gt_max[:, g0:g1], gt_arg[:, g0:g1] = iou.max(dim=2)  # first prior on ties

    gt_inds = torch.full((B, A), -1, dtype=torch.int64, device=dev)
    gt_inds = torch.where((best >= neg_lo) & (best < neg_hi), torch.zeros_like(gt_inds), gt_inds)
    gt_inds = torch.where(best >= pos_iou_thr, best_g + 1, gt_inds)
    if match_low_quality:
        qualifies = gt_valid & (gt_max >= min_pos_iou)  # (B, M)
        g_plus_1 = torch.arange(1, M + 1, device=dev).expand(B, M)
        last = torch.zeros(B, A, dtype=torch.int64, device=dev)  # the last qualifying g + 1 per prior (0: none)
        if gt_max_assign_all:
            for g0 in range(0, M, chunk):  # the same IoU again, bit for bit
                g1 = min(M, g0 + chunk)
                hit = (overlaps(g0, g1) == gt_max[:, g0:g1, None]) & qualifies[:, g0:g1, None]
                last = torch.maximum(last, (hit * g_plus_1[:, g0:g1, None]).amax(dim=1))
        else:
            last.scatter_reduce_(1, gt_arg, torch.where(qualifies, g_plus_1, torch.zeros_like(g_plus_1)), "amax")
        gt_inds = torch.where(last > 0, last, gt_inds)
    none = ~gt_valid.any(dim=1, keepdim=True)  # mmdetection: no gts -> every prior background, overlaps 0
    gt_inds = torch.where(none, torch.zeros_like(gt_inds), gt_inds)
    return gt_inds, torch.where(none, torch.zeros_like(best), best)


# ====================================================================== ATSS (mmdetection)

_ATSS_INF = 1e8  # mmdetection's INF: an ignored prior's distance, -INF the non-positives' overlap
_ATSS_INSIDE = 0.01  # a positive's centre lies inside its gt by more than this on every side


def centres(boxes):
    """Box centres ((x1 + x2) / 2, (y1 + y2) / 2) of (..., 4) -> (..., 2), mmdetection's arithmetic."""
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2.0, (boxes[..., 1] + boxes[..., 3]) / 2.0], -1)


def atss_threshold(cand):
    """The ATSS threshold mean + unbiased std of the candidates' IoU along the last dim of cand
    (..., n), in a fixed order (the kernels' too): the mean a sequential sum in the boxes' dtype
    divided by n (torch's CPU mean sums in a shape-dependent cascade instead: the mean may
    differ from mmdetection's by an ulp), the std Welford's recurrence in float64 (torch's CPU
    std: delta = x - mean, mean += delta / i, m2 += delta (x - mean)), torch's sqrt of m2 / (n - 1)
    rounded to the dtype -- NaN for n <= 1 (no positives, as mmdetection's NaN std; n = 0:
    no priors at all).  torch's std takes the C library's sqrt: on a CPU where torch's own is
    not correctly rounded the std may differ by an ulp of float64 (invisible after rounding to
    fp32).  (...)."""
    n = cand.shape[-1]
    s = cand.new_zeros(cand.shape[:-1])  # not zeros_like(cand[..., 0]): n is 0 without priors
    mean = torch.zeros(cand.shape[:-1], dtype=torch.float64, device=cand.device)
    m2 = torch.zeros_like(mean)
    for j in range(n):
        s = s + cand[..., j]
        x = cand[..., j].double()
        delta = x - mean
        mean = mean + delta / (j + 1)
        m2 = m2 + delta * (x - mean)
    mean_t = s / n if n else torch.full_like(s, math.nan)
    std = (m2 / (n - 1)).sqrt() if n > 1 else torch.full_like(m2, math.nan)
    return mean_t + std.to(cand.dtype)


def atss_core(priors, num_level_priors, gt_bboxes, gt_valid, ignored, topk, chunk=None):
    """mmdetection's ``ATSSAssigner.assign`` (3.3.0, ``alpha=None``) for a batch of images with
    padded ground truths, gt-chunked (memory O(chunk * A + B * (A + M))); the kernels' calling
    convention (csrc/fastloss.cpp ``atss_assign_native``).

    Args:
        priors: (B or 1, A, 4) xyxy pixels; gt_bboxes: (B, M, 4), one floating dtype;
            gt_valid: (B, M) bool (a padded gt has no candidates); ignored: (B, A) bool
            (:func:`ignored_priors` over the prior's area).
        num_level_priors: priors per pyramid level (ints summing to A, in the priors' order).
        topk: candidates per (gt, level); chunk: ground truths per step.

    For image b and valid gt g (Paper: Zhang et al., "Bridging the Gap Between Anchor-based and
    Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020; mmdetection's steps):
    1. d(g, i) = sqrt((cx_i - cx_g)^2 + (cy_i - cy_g)^2) between centres (x1 + x2) / 2, ..., each
       operation rounded, the sqrt torch's (on the CPU not always the correctly rounded one:
       the kernels call it too, so that distance ties are mmdetection's); 1e8 for an ignored
       prior.
    2. per level, the min(topk, n_level) smallest d under torch's top-k tie rule (torch.topk on
       the same values: the CPU's heap / introselect, the CUDA's lowest index among ties).
    3. thr_g = mean + unbiased std of the candidates' IoU (:func:`iou_mmdet`;
       :func:`atss_threshold`); a candidate is positive if IoU >= thr_g and its centre lies
       inside g by more than 0.01 on all four sides.
    4. per prior: the largest IoU over the gts holding it as a positive, the first such gt on
       ties.

    Returns (gt_inds (B, A) int64: g + 1 for a positive (g the padded index), else -1 for an
    ignored prior, else 0; max_overlaps (B, A): the positive's IoU, else -1e8 -- for images
    without ground truths gt_inds 0 and max_overlaps 0, mmdetection's early return)."""
    B, M = gt_bboxes.shape[:2]
    priors = priors.expand(B, *priors.shape[-2:])
    A = priors.shape[1]
    dev, dtype = priors.device, priors.dtype
    chunk = chunk or max(1, (1 << 22) // max(1, 2 * B * A))
    pc = centres(priors)  # (B, A, 2)
    gc = centres(gt_bboxes)  # (B, M, 2)
    starts = [0]
    for n in num_level_priors:
        starts.append(starts[-1] + n)
    best = torch.full((B, A), -_ATSS_INF, dtype=dtype, device=dev)
    best_g = torch.zeros(B, A, dtype=torch.int64, device=dev)
    for g0 in range(0, M, chunk):
        g1 = min(M, g0 + chunk)
        dist = (pc[:, None, :, :] - gc[:, g0:g1, None, :]).pow(2).sum(-1).sqrt()  # (B, m, A), mmdetection's arithmetic
        dist = dist.masked_fill(ignored[:, None, :], _ATSS_INF)
        cand = []
        for lvl, n in enumerate(num_level_priors):  # the candidates: per level, torch's top-k of the smallest distances
            k = min(topk, n)
            if k == 0:
                continue
            d = dist[..., starts[lvl]:starts[lvl + 1]]
            idx = torch.topk(d, k, dim=-1, largest=False).indices.sort(-1).values  # the set; then a canonical order:
            order = d.gather(-1, idx).sort(dim=-1, stable=True).indices  # distance ascending, index ascending among ties
            cand.append(idx.gather(-1, order) + starts[lvl])
        m = g1 - g0
        cand = torch.cat(cand, -1) if cand else torch.zeros(B, m, 0, dtype=torch.int64, device=dev)  # (B, m, Lk)
        bi = torch.arange(B, device=dev)[:, None, None]
        cand_boxes = priors[bi, cand]  # (B, m, Lk, 4)
        ov = iou_mmdet(cand_boxes, gt_bboxes[:, g0:g1, None, :])[..., 0]  # (B, m, Lk): IoU(prior, gt)
        thr = atss_threshold(ov)
        c = pc[bi, cand]  # candidate centres (B, m, Lk, 2)
        box = gt_bboxes[:, g0:g1, None, :]
        ltrb = torch.stack([c[..., 0] - box[..., 0], c[..., 1] - box[..., 1], box[..., 2] - c[..., 0], box[..., 3] - c[..., 1]], -1)
        pos = (ov >= thr[..., None]) & (ltrb.min(dim=-1).values > _ATSS_INSIDE) & gt_valid[:, g0:g1, None]
        for j in range(g1 - g0):  # gts in order, strict >: the first gt keeps a tie
            v = torch.full((B, A), -_ATSS_INF, dtype=dtype, device=dev)
            v = v.scatter(1, cand[:, j], torch.where(pos[:, j], ov[:, j], torch.full_like(ov[:, j], -_ATSS_INF)))
            better = v > best
            best, best_g = torch.where(better, v, best), torch.where(better, torch.full_like(best_g, g0 + j), best_g)
    positive = best > -_ATSS_INF
    gt_inds = torch.where(positive, best_g + 1, torch.where(ignored, -1, 0))
    none = ~gt_valid.any(dim=1, keepdim=True)  # mmdetection: no gts -> every prior background, overlaps 0
    return torch.where(none, torch.zeros_like(gt_inds), gt_inds), torch.where(none, torch.zeros_like(best), best)
