"""Benchmark cases of the Hungarian matching cost blocks (``fastloss.match_cost``).

DETR / DINO-scale matching: 8 images, 900 queries, 91 classes, 100 targets per image (DINO's
4-scale config: class 2, bbox 5, giou 2, focal alpha 0.25), against the peer's eager code --
DINO's matcher cost, restated with the same tensor ops (IDEA-Research/DINO models/dino/matcher.py,
DETR util/box_ops.py): the whole (B*Q, sum T) matrix, then its diagonal blocks.  Both rows stop
before scipy (its time is the same for both).  Peak memory shows the full matrix's temporaries
(assigners.md section 12: 447 MB measured eager vs blocks 2.9 MB + class table 2.6 MB).

Bytes that must move: logits once (B Q C), the boxes, the blocks out (Q sum T floats).

    python -m benchmarks.run --ops match_cost [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch

import fastloss
from benchmarks.harness import Case, Inputs
from fastloss.reference import match_cost as R

OP = "match_cost"
WEIGHTS = (2.0, 5.0, 2.0)  # DINO_4scale: class, bbox, giou


def make_inputs(device, B, Q, C, T, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(B, Q, C, generator=g) * 3
    pred = torch.cat([torch.rand(B, Q, 2, generator=g) * 0.8 + 0.1, torch.rand(B, Q, 2, generator=g) * 0.4 + 0.01], -1)
    tgt = torch.cat([torch.rand(B * T, 2, generator=g) * 0.8 + 0.1, torch.rand(B * T, 2, generator=g) * 0.4 + 0.01], -1)
    labels = torch.randint(0, C, (B * T,), generator=g)
    # forward-only op: a 0-d leaf lets the harness's warm-up call .backward() (only "fwd" is timed)
    dummy = torch.zeros((), device=device, requires_grad=True)
    args = tuple(t.to(device) for t in (logits, pred, labels, tgt)) + (dummy,)
    kwargs = {"sizes": [T] * B}
    return Inputs(args=args, kwargs=kwargs, grad_inputs=[dummy], bytes={"fwd": 4 * (B * Q * C + B * Q * 4 + B * T * 5 + Q * B * T)},
                  numel=B * Q * T)


def _dino_eager(logits, pred, labels, tgt, dummy, sizes):
    """DINO's matcher cost as it runs (the full matrix), then the per-image blocks."""
    B, Q = logits.shape[:2]
    p = logits.flatten(0, 1).sigmoid()
    neg = (1 - 0.25) * (p ** 2.0) * (-(1 - p + 1e-8).log())
    pos = 0.25 * ((1 - p) ** 2.0) * (-(p + 1e-8).log())
    out_bbox = pred.flatten(0, 1)
    cost_class = pos[:, labels] - neg[:, labels]
    cost_bbox = torch.cdist(out_bbox, tgt, p=1)
    b1, b2 = R.cxcywh_to_xyxy(out_bbox), R.cxcywh_to_xyxy(tgt)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    wh = (torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2 - inter
    hull = (torch.max(b1[:, None, 2:], b2[:, 2:]) - torch.min(b1[:, None, :2], b2[:, :2])).clamp(min=0)
    hull = hull[..., 0] * hull[..., 1]
    giou = inter / union - (hull - union) / hull
    full = WEIGHTS[1] * cost_bbox + WEIGHTS[0] * cost_class + WEIGHTS[2] * (-giou)
    blocks = [c[b] for b, c in enumerate(full.view(B, Q, -1).split(sizes, -1))]
    return dummy + sum(c.sum() for c in blocks)


def _fastloss(backend):
    def run(logits, pred, labels, tgt, dummy, sizes):
        return dummy + fastloss.match_cost(logits, pred, labels, tgt, sizes, convention="dino", weights=WEIGHTS, backend=backend).sum()
    return run


def providers(device):
    out = {"eager": _dino_eager}
    for name in fastloss.available_backends(device):
        if name in ("cpu", "cuda", "reference", "triton") and not (name == "triton" and torch.device(device).type == "cpu"):
            out[f"fastloss-{name}"] = _fastloss(name)
    return out


def case(B, Q, C, T):
    return Case(op=OP, label=f"{B} images x {Q} queries x {T} targets, {C} classes", dtype=torch.float32,
                make_inputs=functools.partial(make_inputs, B=B, Q=Q, C=C, T=T), make_providers=providers, modes=("fwd",))


def cases(device, quick=False):
    if quick:
        return [case(2, 100, 91, 10)]
    return [case(8, 900, 91, 100), case(4, 900, 91, 20), case(2, 900, 91, 1000)]
