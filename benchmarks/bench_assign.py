"""Benchmark cases of the label assigners.

* max-IoU assignment (``fastloss.max_iou_assign``, RetinaNet's thresholds 0.5 / 0.4 / 0 with
  tie-sharing low-quality matches) for a batch of 8 images, A = 8400 priors, M = 20 / 100 / 400
  ground truths per image, against the eager baseline: mmdetection 3.3.0's
  ``MaxIoUAssigner`` algorithm image by image as it runs it (the (M, A) IoU matrix, then a
  Python loop over the gts with a host sync each), written out here with the same tensor ops
  (mmdetection's models do not import without a full mmcv build).  GPU: also a crowded batch
  (2 images, M = 2000).

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


def providers(device):
    out = {"eager": _mmdet_per_image}
    for name in fastloss.available_backends(device):
        if name in ("cpu", "cuda", "reference"):
            out[f"fastloss-{name}"] = _fastloss(name)
    return out


def case(B, A, M):
    return Case(op=OP, label=f"{B} images x {A} priors x {M} gts", dtype=torch.float32,
                make_inputs=functools.partial(make_inputs, B=B, A=A, M=M), make_providers=providers, modes=("fwd",))


def cases(device, quick=False):
    if quick:
        return [case(2, 2_100, 20)]
    full = [case(8, 8_400, 20), case(8, 8_400, 100), case(8, 8_400, 400)]
    if torch.device(device).type == "cuda":
        full.append(case(2, 8_400, 2_000))
    return full
