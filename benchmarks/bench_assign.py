"""Benchmark cases of the label assigners.

* task-aligned assignment (``fastloss.task_aligned_assign``, ultralytics' detection-loss settings
  topk 10, alpha 0.5, beta 6) for 8 images at 640 px (A = 8400), nc 80, M = 20 / 100 / 400,
  against ultralytics 8.4's ``TaskAlignedAssigner`` (eager: its (B, M, A) tensors); the
  ``fastloss-<backend>-compact`` rows return the (B, A) scores (``compact=True``) instead of
  the dense (B, A, nc): their peak memory shows the saving (B A (nc - 1) 4 bytes, 21.2 MB here).
* max-IoU assignment (``fastloss.max_iou_assign``, RetinaNet's thresholds 0.5 / 0.4 / 0 with
  tie-sharing low-quality matches) for a batch of 8 images, A = 8400 priors, M = 20 / 100 / 400
  ground truths per image, against the eager baseline: mmdetection 3.3.0's
  ``MaxIoUAssigner`` algorithm image by image as it runs it (the (M, A) IoU matrix, then a
  Python loop over the gts with a host sync each), written out here with the same tensor ops
  (mmdetection's models do not import without a full mmcv build).  GPU: also a crowded batch
  (2 images, M = 2000).
* ATSS (``fastloss.atss_assign``, topk 9) for 8 images at 640 px (A = 8400 in 3 levels),
  M = 20 / 100 / 400, against mmdetection 3.3.0's ``ATSSAssigner.assign`` image by image,
  written out here with its tensor ops (the (A, M) IoU and distance matrices, per-level top-k,
  the expanded copies and the -INF array; the same reason as above).

Bytes that must move: the priors and boxes once, the outputs (gt_inds int64 + max_overlaps):
the fused op is compute-bound (2 - 3 IoU evaluations per (gt, prior) pair).

    python -m benchmarks.run --ops assign [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch

import fastloss
from benchmarks.harness import Case, Inputs
from fastloss.reference import assign as R

OP = "max_iou_assign"
THRESHOLDS = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)


def make_inputs(device, B, A, M, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    xy = torch.rand(A, 2, generator=g) * 640
    priors = torch.cat([xy, xy + 8 + torch.rand(A, 2, generator=g) * 120], -1)
    xy = torch.rand(B, M, 2, generator=g) * 600
    boxes = torch.cat([xy, xy + 4 + torch.rand(B, M, 2, generator=g) * 200], -1)
    labels = torch.randint(0, 80, (B, M), generator=g)
    valid = torch.ones(B, M, dtype=torch.bool)
    # forward-only op: a 0-d leaf lets the harness's warm-up call .backward() (only "fwd" is timed)
    dummy = torch.zeros((), device=device, requires_grad=True)
    args = tuple(t.to(device) for t in (priors, boxes, labels, valid)) + (dummy,)
    return Inputs(args=args, kwargs={}, grad_inputs=[dummy], bytes={"fwd": 16 * A + B * M * 24 + B * A * 12}, numel=B * M * A)


def _mmdet_per_image(priors, boxes, labels, valid, dummy):
    """mmdetection's MaxIoUAssigner.assign_wrt_overlaps per image (its steps and ops)."""
    total = dummy
    for b in range(boxes.shape[0]):
        gt, lab = boxes[b][valid[b]], labels[b][valid[b]]
        overlaps = R.iou_mmdet(gt, priors)  # (M, A)
        inds = overlaps.new_full((priors.shape[0],), -1, dtype=torch.long)
        max_ov, argmax = overlaps.max(dim=0)
        gt_max, _ = overlaps.max(dim=1)
        inds[(max_ov >= 0) & (max_ov < THRESHOLDS["neg_iou_thr"])] = 0
        pos = max_ov >= THRESHOLDS["pos_iou_thr"]
        inds[pos] = argmax[pos] + 1
        for i in range(gt.shape[0]):
            if gt_max[i] >= THRESHOLDS["min_pos_iou"]:  # a host sync per gt, as mmdetection's loop
                inds[overlaps[i, :] == gt_max[i]] = i + 1
        assigned = inds.new_full((priors.shape[0],), -1)
        fg = torch.nonzero(inds > 0, as_tuple=False).squeeze()
        if fg.numel() > 0:
            assigned[fg] = lab[inds[fg] - 1]
        total = total + max_ov.sum() + assigned.sum()
    return total


def _fastloss(backend):
    def run(priors, boxes, labels, valid, dummy):
        gt_inds, max_ov, assigned = fastloss.max_iou_assign(priors, boxes, labels, valid, backend=backend, **THRESHOLDS)
        return dummy + max_ov.sum() + assigned.sum()
    return run


def _with_backends(device, eager, make):
    """{"eager": eager, "fastloss-<backend>": make(backend)} for the device's backends."""
    out = {"eager": eager}
    for name in fastloss.available_backends(device):
        if name in ("cpu", "cuda", "reference"):
            out[f"fastloss-{name}"] = make(name)
    return out


def providers(device):
    return _with_backends(device, _mmdet_per_image, _fastloss)


def case(B, A, M):
    return Case(op=OP, label=f"{B} images x {A} priors x {M} gts", dtype=torch.float32,
                make_inputs=functools.partial(make_inputs, B=B, A=A, M=M), make_providers=providers, modes=("fwd",))


# ----------------------------------------------------------------------------- task-aligned

TAL_OP = "task_aligned_assign"
TAL = dict(topk=10, num_classes=80, alpha=0.5, beta=6.0)


def make_tal_inputs(device, B, M, imgsz=640, seed=0):
    """v8DetectionLoss' inputs: cell-centre anchors of strides 8 / 16 / 32, gts with
    log-uniform sides (image 0 full, the others 50 - 100 % of M), predictions near their gt."""
    import math

    g = torch.Generator(device="cpu").manual_seed(seed)
    pts, st = [], []
    for s in (8, 16, 32):
        n = imgsz // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        pts.append(torch.stack([xs.flatten(), ys.flatten()], -1) * s)
        st.append(torch.full((n * n,), float(s)))
    pts, st = torch.cat(pts), torch.cat(st)
    A = pts.shape[0]
    gt, mask = torch.zeros(B, M, 4), torch.zeros(B, M, 1)
    for b in range(B):
        n = M if b == 0 else int(M * (0.5 + 0.5 * torch.rand(1, generator=g)))
        side = torch.exp(math.log(4) + torch.rand(n, 2, generator=g) * (math.log(320) - math.log(4)))
        ctr = torch.rand(n, 2, generator=g) * imgsz
        gt[b, :n] = torch.cat([(ctr - side / 2).clamp(0, imgsz), (ctr + side / 2).clamp(0, imgsz)], -1)
        mask[b, :n] = 1
    labels = torch.randint(0, TAL["num_classes"], (B, M, 1), generator=g).float()
    scores = torch.sigmoid(torch.randn(B, A, TAL["num_classes"], generator=g) * 2 - 3)
    ltrb = torch.rand(B, A, 4, generator=g) * st[None, :, None] * 6
    pd = torch.cat([pts - ltrb[..., :2], pts + ltrb[..., 2:]], -1)
    dummy = torch.zeros((), device=device, requires_grad=True)
    args = tuple(t.to(device) for t in (scores, pd, pts, labels, gt, mask)) + (dummy,)
    return Inputs(args=args, kwargs={}, grad_inputs=[dummy], bytes={"fwd": 4 * B * A * (TAL["num_classes"] * 2 + 9)}, numel=B * M * A)


def _ultralytics_tal(scores, pd, pts, labels, gt, mask, dummy):
    from ultralytics.utils.tal import TaskAlignedAssigner

    out = TaskAlignedAssigner(topk=TAL["topk"], num_classes=TAL["num_classes"], alpha=TAL["alpha"], beta=TAL["beta"])(
        scores, pd, pts, labels, gt, mask)
    return dummy + out[2].sum()


def _fastloss_tal(backend, compact=False):
    def run(scores, pd, pts, labels, gt, mask, dummy):
        return dummy + fastloss.task_aligned_assign(scores, pd, pts, labels, gt, mask, compact=compact, backend=backend, **TAL)[2].sum()
    return run


def tal_providers(device):
    out = {}
    try:
        import ultralytics.utils.tal  # noqa: F401
        out["eager"] = _ultralytics_tal
    except ImportError:  # the peer is a test requirement; without it only fastloss's rows
        pass
    for name in fastloss.available_backends(device):
        if name in ("cpu", "cuda", "reference"):
            out[f"fastloss-{name}"] = _fastloss_tal(name)
            out[f"fastloss-{name}-compact"] = _fastloss_tal(name, compact=True)
    return out


def tal_case(B, M):
    return Case(op=TAL_OP, label=f"{B} images x 8400 anchors x {M} gts, nc 80", dtype=torch.float32,
                make_inputs=functools.partial(make_tal_inputs, B=B, M=M), make_providers=tal_providers, modes=("fwd",))


# ----------------------------------------------------------------------------- ATSS

ATSS_OP = "atss_assign"


def make_atss_inputs(device, B, M, imgsz=640, seed=0):
    """ATSS heads' priors at 640 px: one square of side 8 x stride per point of strides
    8 / 16 / 32 (A = 8400 in 3 levels), gts with log-uniform sides (image 0 full, the others
    50 - 100 % of M, padded)."""
    import math

    g = torch.Generator(device="cpu").manual_seed(seed)
    priors, levels = [], []
    for s in (8, 16, 32):
        n = imgsz // s
        ys, xs = torch.meshgrid(torch.arange(n) * s + s / 2, torch.arange(n) * s + s / 2, indexing="ij")
        ctr = torch.stack([xs.flatten(), ys.flatten()], -1).float()
        priors.append(torch.cat([ctr - 4 * s, ctr + 4 * s], -1))
        levels.append(n * n)
    priors = torch.cat(priors)
    gt, valid = torch.zeros(B, M, 4), torch.zeros(B, M, dtype=torch.bool)
    for b in range(B):
        n = M if b == 0 else int(M * (0.5 + 0.5 * torch.rand(1, generator=g)))
        side = torch.exp(math.log(8) + torch.rand(n, 2, generator=g) * (math.log(320) - math.log(8)))
        ctr = torch.rand(n, 2, generator=g) * imgsz
        gt[b, :n] = torch.cat([ctr - side / 2, ctr + side / 2], -1)
        valid[b, :n] = True
    labels = torch.randint(0, 80, (B, M), generator=g)
    dummy = torch.zeros((), device=device, requires_grad=True)
    args = tuple(t.to(device) for t in (priors, gt, labels, valid)) + (dummy,)
    A = priors.shape[0]
    return Inputs(args=args, kwargs={"levels": levels}, grad_inputs=[dummy], bytes={"fwd": 16 * A + B * M * 24 + B * A * 20}, numel=B * M * A)


def _mmdet_atss_per_image(priors, boxes, labels, valid, dummy, levels):
    """mmdetection 3.3.0's ATSSAssigner.assign per image, its steps and tensors: the (A, n) IoU
    and distance matrices, per-level top-k, mean + std, the expanded centre copies, the -INF
    (n A) array, boolean-mask indexing and nonzero (host syncs)."""
    INF = 100000000
    total = dummy
    A = priors.shape[0]
    pcx, pcy = (priors[:, 0] + priors[:, 2]) / 2.0, (priors[:, 1] + priors[:, 3]) / 2.0
    for b in range(boxes.shape[0]):
        gt, lab = boxes[b][valid[b]], labels[b][valid[b]]
        n = gt.shape[0]
        overlaps = R.iou_mmdet(priors, gt)  # (A, n)
        gc = R.centres(gt)
        dist = (torch.stack([pcx, pcy], 1)[:, None, :] - gc[None]).pow(2).sum(-1).sqrt()
        cand, start = [], 0
        for k in levels:
            cand.append(dist[start:start + k].topk(min(9, k), dim=0, largest=False).indices + start)
            start += k
        cand = torch.cat(cand)
        cand_ov = overlaps[cand, torch.arange(n, device=priors.device)]
        is_pos = cand_ov >= (cand_ov.mean(0) + cand_ov.std(0))[None]
        flat = cand + torch.arange(n, device=priors.device) * A
        ecx, ecy = pcx.view(1, -1).expand(n, A).contiguous().view(-1), pcy.view(1, -1).expand(n, A).contiguous().view(-1)
        cx, cy = ecx[flat].view(-1, n), ecy[flat].view(-1, n)
        inside = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy], 1).min(dim=1)[0] > 0.01
        index = flat.view(-1)[(is_pos & inside).view(-1)]
        ov_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
        ov_inf[index] = overlaps.t().contiguous().view(-1)[index]
        max_ov, argmax = ov_inf.view(n, -1).t().max(dim=1)
        inds = overlaps.new_zeros((A,), dtype=torch.long)
        inds[max_ov != -INF] = argmax[max_ov != -INF] + 1
        assigned = inds.new_full((A,), -1)
        fg = torch.nonzero(inds > 0, as_tuple=False).squeeze()
        if fg.numel() > 0:
            assigned[fg] = lab[inds[fg] - 1]
        total = total + max_ov.clamp(min=0).sum() + assigned.sum()
    return total


def _fastloss_atss(backend):
    def run(priors, boxes, labels, valid, dummy, levels):
        gt_inds, max_ov, assigned = fastloss.atss_assign(priors, levels, boxes, labels, valid, backend=backend)
        return dummy + max_ov.clamp(min=0).sum() + assigned.sum()
    return run


def atss_providers(device):
    return _with_backends(device, _mmdet_atss_per_image, _fastloss_atss)


def atss_case(B, M):
    return Case(op=ATSS_OP, label=f"{B} images x 8400 priors (3 levels) x {M} gts, topk 9", dtype=torch.float32,
                make_inputs=functools.partial(make_atss_inputs, B=B, M=M), make_providers=atss_providers, modes=("fwd",))


def cases(device, quick=False):
    if quick:
        return [case(2, 2_100, 20), tal_case(2, 20), atss_case(2, 20)]
    # the last two: a crowded batch (2 images x 2000 gts), where the peers' (M, A) tensors dominate
    # memory and fastloss's stays O(B (M k + A)) plus the outputs
    return [tal_case(8, 20), tal_case(8, 100), tal_case(8, 400), case(8, 8_400, 20), case(8, 8_400, 100), case(8, 8_400, 400),
            atss_case(8, 20), atss_case(8, 100), atss_case(8, 400), tal_case(2, 2_000), case(2, 8_400, 2_000)]
