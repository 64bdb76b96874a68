"""Benchmark cases of the Dice family: multiclass soft Dice over softmax logits (N, C, *)
and an integer label map (N, *), ``reduction="mean"``, batch sums (smp's convention).

Bytes that must move per call (the floor; the label map is read once per pass):
  fwd: read logits + labels;  bwd: read logits + labels, write dL/dlogits;  fwd+bwd: the sum
(two passes are inherent: the gradient needs the global sums).

    python -m benchmarks.run --ops dice [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch

import fastloss
from benchmarks.harness import Case, Inputs, standard_providers
from fastloss.reference.dice import dice_loss as reference_dice_loss

OP = "dice"


def dice_bytes(N, C, S, dtype, label_dtype):
    es = torch.empty((), dtype=dtype).element_size()
    ls = torch.empty((), dtype=label_dtype).element_size()
    x, t = N * C * S * es, N * S * ls
    fwd, bwd = x + t, 2 * x + t
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def make_inputs(device, shape, dtype, label_dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    N, C = shape[:2]
    x = (torch.randn(shape, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, C, (N,) + tuple(shape[2:]), generator=g).to(device=device, dtype=label_dtype)
    S = 1
    for s in shape[2:]:
        S *= s
    return Inputs(args=(x, labels), kwargs={"mode": "multiclass"}, grad_inputs=[x],
                  bytes=dice_bytes(N, C, S, dtype, label_dtype), numel=x.numel())


def make_providers(device):
    return standard_providers(device, reference_dice_loss, fastloss.dice_loss)


def case(shape, dtype, label_dtype=torch.int64):
    label = f"{tuple(shape)} multiclass dice labels({str(label_dtype).replace('torch.', '')})"
    return Case(op=OP, label=label, dtype=dtype,
                make_inputs=functools.partial(make_inputs, shape=shape, dtype=dtype, label_dtype=label_dtype),
                make_providers=make_providers)


def cases(device, quick=False):
    device = torch.device(device)
    f32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cpu":
        if quick:
            return [case((2, 19, 128, 128), f32)]  # 622k logits
        return [case((4, 19, 256, 256), f32), case((2, 4, 64, 64, 64), f32, torch.uint8)]  # 4.98M / 2.1M logits
    if quick:
        return [case((2, 19, 512, 1024), f32), case((1, 4, 128, 128, 128), f32, torch.uint8)]
    return [
        case((16, 19, 512, 1024), f32), case((16, 19, 512, 1024), bf16), case((16, 19, 512, 1024), bf16, torch.uint8),
        case((2, 4, 128, 128, 128), f32), case((2, 4, 128, 128, 128), bf16, torch.uint8),
    ]
