"""Benchmark cases of the sigmoid focal loss.

Two target forms, as the users call it:

* ``labels``: int64 class labels, one per row of C = 80 logits, C = background
  (mmdetection's ``FocalLoss``): ``reduction="mean"`` with ``avg_factor`` = number of
  positives.  (mmdetection's contract forbids ``avg_factor`` with ``"sum"``; fastloss raises
  there, so "mean" + avg_factor is the mmdet form.)
* ``float``: float 0/1 targets shaped like the logits (torchvision), ``reduction="mean"``.

About 1% of the anchors are positive.  Bytes that must move (per call, bytes of the inputs'
dtypes; labels cost 8 B per row, a reduced loss ~0 B):
  fwd: read logits + targets (+ weights); write the loss elements (reduction "none") or ~nothing;
  bwd: read logits + targets (+ weights) + upstream gradient ("none"); write the gradient;
  fwd+bwd: the sum.

    python -m benchmarks.run --ops sigmoid_focal_loss [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch

import fastloss
from benchmarks.harness import Case, Inputs, standard_providers
from fastloss.reference.sigmoid_focal_loss import sigmoid_focal_loss as reference_sigmoid_focal_loss

OP = "sigmoid_focal_loss"
NUM_CLASSES = 80
POSITIVE_FRACTION = 0.01


def focal_bytes(rows, C, dtype, labels, reduction, weight_bytes=0):
    es = torch.empty((), dtype=dtype).element_size()
    n = rows * C
    x = n * es
    t = rows * 8 if labels else n * es
    loss_out = x if reduction == "none" else 0
    upstream = x if reduction == "none" else 0
    fwd = x + t + weight_bytes + loss_out
    bwd = x + t + weight_bytes + upstream + x
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def make_inputs(device, rows, C, dtype, labels, reduction, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(rows, C, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    positive = torch.rand(rows, generator=g) < POSITIVE_FRACTION
    label = torch.where(positive, torch.randint(0, C, (rows,), generator=g), torch.full((rows,), C))
    kwargs = {"alpha": 0.25, "gamma": 2.0, "reduction": reduction}
    if labels:
        target = label.to(device)
        if reduction == "mean":
            kwargs["avg_factor"] = float(max(int(positive.sum()), 1))  # a host number, as mmdet passes it
    else:
        target = torch.nn.functional.one_hot(label, C + 1)[:, :C].to(device=device, dtype=dtype)
    grad_output = torch.randn(rows, C, generator=g).to(device=device, dtype=dtype) if reduction == "none" else None
    return Inputs(args=(x, target), kwargs=kwargs, grad_inputs=[x], grad_output=grad_output,
                  bytes=focal_bytes(rows, C, dtype, labels, reduction), numel=rows * C)


def make_providers(device):
    return standard_providers(device, reference_sigmoid_focal_loss, fastloss.sigmoid_focal_loss)


def case(rows, dtype, labels, reduction=None, C=NUM_CLASSES):
    reduction = reduction or "mean"
    form = "labels mean+avg_factor" if labels and reduction == "mean" else ("labels" if labels else "float") + f" {reduction}"
    label = f"({rows}, {C}) {form}"
    return Case(op=OP, label=label, dtype=dtype,
                make_inputs=functools.partial(make_inputs, rows=rows, C=C, dtype=dtype, labels=labels, reduction=reduction),
                make_providers=make_providers)


def cases(device, quick=False):
    device = torch.device(device)
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    if device.type == "cpu":
        rows = 2_500 if quick else 25_000  # 200k / 2M logits
        return [case(rows, f32, labels=True), case(rows, f32, labels=False)]
    if quick:
        return [case(12_500, f32, labels=True), case(12_500, f32, labels=False), case(16 * 12_000, bf16, labels=True)]
    retina = 16 * 120_000  # RetinaNet-like: batch 16 x ~120k anchors, 80 classes = 153.6M logits
    mid = 12_500  # 1M logits
    return [
        case(retina, f32, labels=True), case(retina, f16, labels=True), case(retina, bf16, labels=True),
        case(retina, f32, labels=False), case(retina, f16, labels=False), case(retina, bf16, labels=False),
        case(mid, f32, labels=True), case(mid, f32, labels=False),
    ]
