"""Benchmark cases of the row-wise (softmax) engine, each against the peer's eager formula and
``torch.compile`` of it:

* segmentation cross entropy: (4, 19, 512, 512) logits (Cityscapes' 19 classes), an int64 label
  map with ~5 % of the pixels ``ignore_index`` 255, ``label_smoothing`` 0.1 -- eager
  ``F.cross_entropy``;
* detection cross entropy: (100000, 81) box-head logits (75 % background, class 80) with class
  weights -- eager ``F.cross_entropy(weight=)``;
* softmax focal loss on the same rows -- eager: mmcv's formula (-alpha (1 - p_y)^gamma log p_y,
  mean over rows);
* distribution focal loss: YOLOv8's (16 x 8400 anchors x 4 sides, reg_max 16 bins) -- eager:
  ultralytics' ``DFLoss`` formula (two cross entropies, target clamped to reg_max - 1.01, mean
  over the sides, then the mean);
* softmax Dice and DiceCE over (4, 19, 256, 256) logits and int64 labels -- eager: MONAI's
  ``DiceLoss(softmax=True, to_onehot_y=True)`` / ``DiceCELoss`` formula (smooth_nr = smooth_dr
  = 1e-5, mean over (N, C)); fastloss's ``dice_loss`` / ``dice_ce_loss`` with the same
  smoothing and ``per_image=True`` (MONAI's ``batch=False``).

Bytes that must move per call (the floor; labels 8 B per row, reduced losses ~0 B):
  fwd: read the logits + targets;  bwd: read the logits + targets, write dL/dlogits;
  fwd+bwd: the sum (the Dice backward needs the global sums: two passes are inherent).

    python -m benchmarks.run --ops rowwise [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import fastloss
from benchmarks.harness import Case, Inputs, standard_providers

OP = "rowwise"


def _bytes(logits, dtype, target_bytes):
    x = logits * torch.empty((), dtype=dtype).element_size()
    fwd, bwd = x + target_bytes, 2 * x + target_bytes
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


# ----------------------------------------------------------------------------- the peers' formulas


def mmcv_softmax_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="mean"):
    """mmcv's ``softmax_focal_loss`` as eager PyTorch: -alpha (1 - p_y)^gamma log p_y per row."""
    logp = F.log_softmax(input, 1).gather(1, target[:, None]).squeeze(1)
    loss = -alpha * (1 - logp.exp()).pow(gamma) * logp
    return loss.mean() if reduction == "mean" else loss.sum()


def ultralytics_dfl(pred, target, reg_max=16):
    """ultralytics' ``DFLoss``: pred (n, 4, reg_max) bins, target (n, 4) distances; the mean."""
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl = target.long()
    tr = tl + 1
    wl = tr - target
    wr = 1 - wl
    logits = pred.reshape(-1, reg_max)
    loss = (F.cross_entropy(logits, tl.view(-1), reduction="none").view(tl.shape) * wl
            + F.cross_entropy(logits, tr.view(-1), reduction="none").view(tl.shape) * wr)
    return loss.mean(-1, keepdim=True).mean()


def fastloss_dfl(pred, target, reg_max=16, backend=None):
    return fastloss.distribution_focal_loss(pred, target, reduction="none", max_target=reg_max - 1.01,
                                            backend=backend).mean(-1, keepdim=True).mean()


def monai_dice(input, target, smooth_nr=1e-5, smooth_dr=1e-5):
    """MONAI's ``DiceLoss(softmax=True, to_onehot_y=True)``: per (image, class) over the pixels."""
    p = torch.softmax(input, 1)
    t = F.one_hot(target, input.shape[1]).movedim(-1, 1).to(p.dtype)
    dims = tuple(range(2, input.dim()))
    inter = (p * t).sum(dims)
    den = t.sum(dims) + p.sum(dims)
    return (1.0 - (2.0 * inter + smooth_nr) / (den + smooth_dr)).mean()


def monai_dice_ce(input, target):
    """MONAI's ``DiceCELoss(softmax=True, to_onehot_y=True)``: Dice + mean cross entropy."""
    return monai_dice(input, target) + F.cross_entropy(input, target)


def fastloss_dice(input, target, backend=None):
    return fastloss.dice_loss(input, target, smooth_nr=1e-5, smooth_dr=1e-5, per_image=True, backend=backend)


def fastloss_dice_ce(input, target, backend=None):
    return fastloss.dice_ce_loss(input, target, smooth_nr=1e-5, smooth_dr=1e-5, per_image=True, backend=backend)


# ----------------------------------------------------------------------------- cases


def make_seg_inputs(device, shape, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    N, C = shape[:2]
    x = (torch.randn(shape, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, C, (N,) + tuple(shape[2:]), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.05] = 255
    return Inputs(args=(x, labels.to(device)), kwargs={"ignore_index": 255, "label_smoothing": 0.1}, grad_inputs=[x],
                  bytes=_bytes(x.numel(), dtype, labels.numel() * 8), numel=x.numel())


def make_det_inputs(device, rows, C, dtype, weighted, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(rows, C, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.where(torch.rand(rows, generator=g) < 0.25, torch.randint(0, C - 1, (rows,), generator=g), torch.full((rows,), C - 1))
    kwargs = {"weight": (torch.rand(C, generator=g) + 0.5).to(device=device, dtype=dtype)} if weighted else {}
    return Inputs(args=(x, labels.to(device)), kwargs=kwargs, grad_inputs=[x], bytes=_bytes(x.numel(), dtype, rows * 8), numel=x.numel())


def make_dfl_inputs(device, anchors, reg_max, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(anchors, 4, reg_max, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    t = (torch.rand(anchors, 4, generator=g) * reg_max).to(device=device, dtype=dtype)
    return Inputs(args=(x, t), kwargs={}, grad_inputs=[x], bytes=_bytes(x.numel(), dtype, t.numel() * t.element_size()), numel=x.numel())


def make_dice_inputs(device, shape, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    N, C = shape[:2]
    x = (torch.randn(shape, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, C, (N,) + tuple(shape[2:]), generator=g)
    return Inputs(args=(x, labels.to(device)), kwargs={}, grad_inputs=[x], bytes=_bytes(x.numel(), dtype, labels.numel() * 8),
                  numel=x.numel())


def seg_case(shape, dtype):
    return Case(op="cross_entropy", label=f"{tuple(shape)} ignore_index+label_smoothing", dtype=dtype,
                make_inputs=functools.partial(make_seg_inputs, shape=shape, dtype=dtype),
                make_providers=lambda device: standard_providers(device, F.cross_entropy, fastloss.cross_entropy))


def det_case(rows, dtype, C=81):
    return Case(op="cross_entropy", label=f"({rows}, {C}) class weights", dtype=dtype,
                make_inputs=functools.partial(make_det_inputs, rows=rows, C=C, dtype=dtype, weighted=True),
                make_providers=lambda device: standard_providers(device, F.cross_entropy, fastloss.cross_entropy))


def focal_case(rows, dtype, C=81):
    return Case(op="softmax_focal_loss", label=f"({rows}, {C}) mmcv", dtype=dtype,
                make_inputs=functools.partial(make_det_inputs, rows=rows, C=C, dtype=dtype, weighted=False),
                make_providers=lambda device: standard_providers(device, mmcv_softmax_focal_loss, fastloss.softmax_focal_loss))


def dfl_case(anchors, dtype, reg_max=16):
    return Case(op="distribution_focal_loss", label=f"({anchors}, 4, {reg_max}) ultralytics", dtype=dtype,
                make_inputs=functools.partial(make_dfl_inputs, anchors=anchors, reg_max=reg_max, dtype=dtype),
                make_providers=lambda device: standard_providers(device, ultralytics_dfl, fastloss_dfl))


def dice_case(shape, dtype, with_ce):
    name = "dice_ce_loss" if with_ce else "dice_loss"
    eager, ours = (monai_dice_ce, fastloss_dice_ce) if with_ce else (monai_dice, fastloss_dice)
    return Case(op=name, label=f"{tuple(shape)} softmax labels(int64) vs MONAI", dtype=dtype,
                make_inputs=functools.partial(make_dice_inputs, shape=shape, dtype=dtype),
                make_providers=lambda device: standard_providers(device, eager, ours))


def cases(device, quick=False):
    device = torch.device(device)
    f32, bf16 = torch.float32, torch.bfloat16
    if quick:
        return [seg_case((2, 19, 128, 128), f32), det_case(10_000, f32), dfl_case(2_000, f32), dice_case((2, 19, 64, 64), f32, True)]
    full = [seg_case((4, 19, 512, 512), f32), det_case(100_000, f32), focal_case(100_000, f32), dfl_case(16 * 8_400, f32),
            dice_case((4, 19, 256, 256), f32, False), dice_case((4, 19, 256, 256), f32, True)]
    if device.type == "cuda":
        full += [seg_case((4, 19, 512, 512), bf16), seg_case((16, 19, 512, 1024), f32), det_case(100_000, bf16)]
    return full
