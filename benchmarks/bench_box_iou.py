"""Benchmark cases of the IoU family.

* paired losses (``box_iou_loss``, reduction "mean"): 1M pairs on CPU; 1M and 10M pairs on GPU;
  GIoU and CIoU (+ SIoU on GPU), fp32 (+ bf16 on GPU).
* pairwise matrices (``box_iou``): 100 x 120k (RetinaNet-style: ground truths x anchors) and
  batched 16 x 100 x 8400 (YOLO at 640 px), IoU (+ GIoU), forward and forward+backward.
* the fused max (``box_iou_max``, forward only) against "pairwise then max" (eager reference,
  and fastloss's own matrix followed by torch.max), over the ground truths for each anchor.

Bytes that must move (per call, input dtype):
  paired fwd: read pred + target (32 B/pair fp32); bwd: read pred + target, write grad (48 B);
  matrix fwd: read both box sets, write N x M; bwd: read upstream N x M + boxes, write grads;
  max: read both box sets, write the results (values + int64 indices).

    python -m benchmarks.run --ops box_iou [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import functools

import torch

import fastloss
from benchmarks.harness import Case, Inputs, standard_providers
from fastloss.reference import box_iou as R

OP = "box_iou"


def _boxes(g, shape, scale=600.0):
    xy = torch.rand(shape + (2,), generator=g) * scale
    wh = torch.rand(shape + (2,), generator=g) * 100 + 2
    return torch.cat([xy, xy + wh], -1)


# ----------------------------------------------------------------------------- paired


def make_paired_inputs(device, n, dtype, kind, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    t = _boxes(g, (n,))
    p = t + torch.randn(t.shape, generator=g) * 5
    p = p.to(device=device, dtype=dtype).requires_grad_(True)
    t = t.to(device=device, dtype=dtype)
    es = p.element_size()
    fwd = 8 * es * n
    bwd = 12 * es * n
    return Inputs(args=(p, t), kwargs={"kind": kind, "reduction": "mean"}, grad_inputs=[p], bytes={"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd},
                  numel=n)


def paired_providers(device):
    return standard_providers(device, R.box_iou_loss, fastloss.box_iou_loss)


def paired_case(n, dtype, kind):
    return Case(op=OP, label=f"paired {kind} {n}", dtype=dtype,
                make_inputs=functools.partial(make_paired_inputs, n=n, dtype=dtype, kind=kind), make_providers=paired_providers)


# ----------------------------------------------------------------------------- matrices


def make_matrix_inputs(device, lead, N, M, dtype, kind, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = _boxes(g, lead + (N,)).to(device=device, dtype=dtype).requires_grad_(True)
    b = _boxes(g, lead + (M,)).to(device=device, dtype=dtype).requires_grad_(True)
    B = 1
    for d in lead:
        B *= d
    es = a.element_size()
    boxes = 4 * es * B * (N + M)
    mat = es * B * N * M
    grad_output = torch.randn(lead + (N, M), generator=g).to(device=device, dtype=dtype)
    return Inputs(args=(a, b), kwargs={"kind": kind}, grad_inputs=[a, b], grad_output=grad_output,
                  bytes={"fwd": boxes + mat, "bwd": 2 * boxes + mat, "fwd+bwd": 3 * boxes + 2 * mat}, numel=B * N * M)


def matrix_providers(device):
    return standard_providers(device, R.box_iou, fastloss.box_iou)


def matrix_case(lead, N, M, dtype, kind, modes=("fwd", "fwd+bwd")):
    shape = "x".join(map(str, lead + (N, M)))
    return Case(op=OP, label=f"pairwise {kind} {shape}", dtype=dtype,
                make_inputs=functools.partial(make_matrix_inputs, lead=lead, N=N, M=M, dtype=dtype, kind=kind),
                make_providers=matrix_providers, modes=modes)


# ----------------------------------------------------------------------------- fused max


def make_max_inputs(device, lead, N, M, dtype, kind, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = _boxes(g, lead + (N,)).to(device=device, dtype=dtype)
    b = _boxes(g, lead + (M,)).to(device=device, dtype=dtype)
    # forward-only op: a 0-d leaf lets the harness's warm-up call .backward() (only "fwd" is timed)
    dummy = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
    B = 1
    for d in lead:
        B *= d
    es = a.element_size()
    return Inputs(args=(a, b, dummy), kwargs={"kind": kind}, grad_inputs=[dummy],
                  bytes={"fwd": 4 * es * B * (N + M) + (es + 8) * B * M}, numel=B * N * M)


def _max_provider(fn):
    def run(a, b, dummy, kind):
        values, _ = fn(a, b, kind, dim=-2)  # each anchor's best ground truth
        return values.sum() + dummy
    return run


def max_providers(device):
    providers = {"eager (matrix+max)": _max_provider(R.box_iou_max)}
    for name in fastloss.available_backends(device):
        if name == "reference" or (name == "triton" and torch.device(device).type == "cpu"):
            continue
        providers[f"fastloss-{name} matrix+max"] = _max_provider(
            lambda a, b, kind, dim, _n=name: fastloss.box_iou(a, b, kind, backend=_n).max(dim=dim))
        providers[f"fastloss-{name}"] = _max_provider(functools.partial(fastloss.box_iou_max, backend=name))
    return providers


def max_case(lead, N, M, dtype, kind="iou"):
    shape = "x".join(map(str, lead + (N, M)))
    return Case(op=OP, label=f"max {kind} {shape}", dtype=dtype,
                make_inputs=functools.partial(make_max_inputs, lead=lead, N=N, M=M, dtype=dtype, kind=kind),
                make_providers=max_providers, modes=("fwd",))


def cases(device, quick=False):
    device = torch.device(device)
    f32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cpu":
        if quick:
            return [paired_case(100_000, f32, "giou"), matrix_case((), 20, 12_000, f32, "iou"), max_case((2,), 20, 2_000, f32)]
        return [
            paired_case(1_000_000, f32, "giou"), paired_case(1_000_000, f32, "ciou"),
            matrix_case((), 100, 120_000, f32, "iou"),
            matrix_case((16,), 100, 8_400, f32, "iou", modes=("fwd",)),
            max_case((), 100, 120_000, f32), max_case((16,), 100, 8_400, f32),
        ]
    if quick:
        return [paired_case(1_000_000, f32, "ciou"), matrix_case((), 100, 120_000, f32, "iou"), max_case((16,), 100, 8_400, f32)]
    return [
        paired_case(1_000_000, f32, "giou"), paired_case(1_000_000, f32, "ciou"),
        paired_case(10_000_000, f32, "giou"), paired_case(10_000_000, f32, "ciou"), paired_case(10_000_000, bf16, "ciou"),
        paired_case(10_000_000, f32, "siou"),
        matrix_case((), 100, 120_000, f32, "iou"), matrix_case((), 100, 120_000, f32, "giou"),
        matrix_case((16,), 100, 8_400, f32, "iou"),
        max_case((), 100, 120_000, f32), max_case((16,), 100, 8_400, f32), max_case((128,), 500, 8_400, f32),
    ]
