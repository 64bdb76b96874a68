"""Benchmark cases of the pointwise engine's losses.

* sigmoid focal loss, two target forms as the users call it: ``labels`` (int64 class labels,
  one per row of C = 80 logits, C = background; mmdetection's ``FocalLoss``: "mean" with
  ``avg_factor`` = number of positives) and ``float`` (0/1 targets shaped like the logits,
  torchvision), about 1% of the anchors positive;
* weighted smooth L1 on (N, 4) box deltas with per-coordinate weights and avg_factor
  (mmdetection's Faster R-CNN / RetinaNet box loss), and plain L1 on (N, 4);
* BCE-with-logits, varifocal and quality focal losses on dense YOLO-style scores
  (16 x 8400 anchors x 80 classes), soft IoU-quality targets on ~1% of the anchors.

The eager baseline is the peer's formula (torch.nn.functional, or mmdetection's functions,
with its weight and avg_factor: fastloss.reference.pointwise), compiled as is for the
torch.compile provider.  Bytes that must move (per call, the inputs' dtypes; labels cost 8 B
per row, a reduced loss ~0 B):
  fwd: read input + target (+ weights); write the loss elements (reduction "none") or ~nothing;
  bwd: read input + target (+ weights) (+ the upstream gradient for "none"); write the gradient;
  fwd+bwd: the sum.

    python -m benchmarks.run --ops pointwise [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch

import fastloss
from benchmarks.harness import Case, Inputs, standard_providers
from fastloss.reference import pointwise as R

OP = "pointwise"
NUM_CLASSES = 80
POSITIVE_FRACTION = 0.01


def _bytes(n, dtype, target_bytes, weight_bytes=0, reduction="mean"):
    es = torch.empty((), dtype=dtype).element_size()
    x = n * es
    out = x if reduction == "none" else 0
    fwd = x + target_bytes + weight_bytes + out
    bwd = x + target_bytes + weight_bytes + out + x
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


# ----------------------------------------------------------------------------- focal


def make_focal_inputs(device, rows, C, dtype, labels, reduction, seed=0):
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
    es = torch.empty((), dtype=dtype).element_size()
    return Inputs(args=(x, target), kwargs=kwargs, grad_inputs=[x], grad_output=grad_output,
                  bytes=_bytes(rows * C, dtype, rows * 8 if labels else rows * C * es, reduction=reduction), numel=rows * C)


def focal_case(rows, dtype, labels, reduction="mean", C=NUM_CLASSES):
    form = "labels mean+avg_factor" if labels and reduction == "mean" else ("labels" if labels else "float") + f" {reduction}"
    return Case(op="sigmoid_focal_loss", label=f"({rows}, {C}) {form}", dtype=dtype,
                make_inputs=functools.partial(make_focal_inputs, rows=rows, C=C, dtype=dtype, labels=labels, reduction=reduction),
                make_providers=lambda device: standard_providers(device, R.sigmoid_focal_loss, fastloss.sigmoid_focal_loss))


# ----------------------------------------------------------------------------- box regression


def make_delta_inputs(device, n, dtype, weighted, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, 4, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    t = (torch.randn(n, 4, generator=g) * 0.5).to(device=device, dtype=dtype)
    kwargs = {"reduction": "mean"}
    weight_bytes = 0
    if weighted:  # mmdetection: per-coordinate weights (0 for negatives), mean over avg_factor positives
        pos = torch.rand(n, generator=g) < 0.25
        w = pos[:, None].expand(n, 4).float().to(device)
        kwargs.update(weight=w, avg_factor=float(max(int(pos.sum()), 1)))
        weight_bytes = n * 4 * 4
    es = torch.empty((), dtype=dtype).element_size()
    return Inputs(args=(x, t), kwargs=kwargs, grad_inputs=[x], bytes=_bytes(n * 4, dtype, n * 4 * es, weight_bytes), numel=n * 4)


def delta_case(name, n, dtype, weighted, reference_fn, fastloss_fn):
    label = f"({n}, 4)" + (" weight+avg_factor" if weighted else "")
    return Case(op=name, label=label, dtype=dtype, make_inputs=functools.partial(make_delta_inputs, n=n, dtype=dtype, weighted=weighted),
                make_providers=lambda device: standard_providers(device, reference_fn, fastloss_fn))


# ----------------------------------------------------------------------------- dense scores


def make_dense_inputs(device, batch, anchors, C, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(batch, anchors, C, generator=g) * 2 - 3).to(device=device, dtype=dtype).requires_grad_(True)
    positive = torch.rand(batch, anchors, generator=g) < POSITIVE_FRACTION
    label = torch.randint(0, C, (batch, anchors), generator=g)
    quality = torch.rand(batch, anchors, generator=g) * positive
    t = (torch.nn.functional.one_hot(label, C) * quality[..., None]).to(device=device, dtype=dtype)
    es = torch.empty((), dtype=dtype).element_size()
    n = batch * anchors * C
    return Inputs(args=(x, t), kwargs={"reduction": "mean", "avg_factor": float(max(int(positive.sum()), 1))}, grad_inputs=[x],
                  bytes=_bytes(n, dtype, n * es), numel=n)


def dense_case(name, batch, anchors, dtype, reference_fn, fastloss_fn, C=NUM_CLASSES):
    return Case(op=name, label=f"({batch}, {anchors}, {C}) soft targets mean+avg_factor", dtype=dtype,
                make_inputs=functools.partial(make_dense_inputs, batch=batch, anchors=anchors, C=C, dtype=dtype),
                make_providers=lambda device: standard_providers(device, reference_fn, fastloss_fn))


def _bce_reference(input, target, reduction="mean", avg_factor=None):
    return R.binary_cross_entropy_with_logits(input, target, reduction=reduction, avg_factor=avg_factor)


def cases(device, quick=False):
    device = torch.device(device)
    f32, bf16 = torch.float32, torch.bfloat16
    smooth = functools.partial(delta_case, "smooth_l1_loss", reference_fn=R.smooth_l1_loss, fastloss_fn=fastloss.smooth_l1_loss)
    l1 = functools.partial(delta_case, "l1_loss", reference_fn=R.l1_loss, fastloss_fn=fastloss.l1_loss)
    vfl = functools.partial(dense_case, "varifocal_loss", reference_fn=R.varifocal_loss, fastloss_fn=fastloss.varifocal_loss)
    qfl = functools.partial(dense_case, "quality_focal_loss", reference_fn=R.quality_focal_loss, fastloss_fn=fastloss.quality_focal_loss)
    bce = functools.partial(dense_case, "binary_cross_entropy_with_logits", reference_fn=_bce_reference,
                            fastloss_fn=fastloss.binary_cross_entropy_with_logits)
    if device.type == "cpu":
        if quick:
            return [focal_case(2_500, f32, labels=True), smooth(100_000, f32, True), vfl(2, 1_000, f32)]
        return [focal_case(25_000, f32, labels=True), focal_case(25_000, f32, labels=False), smooth(1_000_000, f32, True),
                l1(1_000_000, f32, False), vfl(16, 8_400, f32), qfl(16, 8_400, f32), bce(16, 8_400, f32)]
    if quick:
        return [focal_case(12_500, f32, labels=True), smooth(1_000_000, f32, True), vfl(16, 8_400, f32), bce(16, 8_400, bf16)]
    retina = 16 * 120_000  # RetinaNet-like: batch 16 x ~120k anchors, 80 classes = 153.6M logits
    return [focal_case(retina, f32, labels=True), focal_case(retina, bf16, labels=True), focal_case(retina, f32, labels=False),
            focal_case(12_500, f32, labels=True), smooth(1_000_000, f32, True), smooth(10_000_000, f32, True), l1(1_000_000, f32, False),
            vfl(16, 8_400, f32), vfl(16, 8_400, bf16), qfl(16, 8_400, f32), bce(16, 8_400, f32), bce(16, 8_400, bf16)]
