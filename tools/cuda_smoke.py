"""Every CUDA and Triton kernel of fastloss once per dtype (forward and backward), on small and
odd sizes: the representative set that tools/gpu_session.sh runs under compute-sanitizer
(memcheck, racecheck), where a full pytest run would take far too long.

    python tools/cuda_smoke.py [--backends cuda triton] [--dtypes fp32 fp16 bf16]

Each call is checked for finite results against the PyTorch reference on the same inputs
(loose tolerances: this is a memory-safety run, the accuracy tests are in tests/); exits
non-zero on the first mismatch or error.  Sizes include 1, an odd size that leaves partial
blocks (4099) and empty inputs, so out-of-bounds accesses at the tails show up.
"""
import argparse
import sys
import time

import torch

import fastloss
from fastloss import _backend
from fastloss.ops.pointwise import focal_term
from fastloss.reference import match_cost as reference_match_cost

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check(name, out, ref, rtol):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape or not torch.allclose(out, ref, rtol=rtol, atol=rtol * (ref.abs().max().item() if ref.numel() else 0) + 1e-6,
                                                    equal_nan=True):
        raise SystemExit(f"MISMATCH {name}: max |diff| {(out - ref).abs().max().item() if out.shape == ref.shape else 'shape'}")


def _fwd_bwd(fn, x, *args, **kwargs):
    x = x.detach().requires_grad_()
    loss = fn(x, *args, **kwargs)
    loss.backward(torch.randn_like(loss) if loss.dim() else None)
    return loss, x.grad, None


def run(backend, dtype, device):
    rtol = 2e-2 if dtype != torch.float32 else 1e-3
    cases = 0
    for n in (1, 4099, 0):
        # the pointwise engine: every loss, float targets (class labels for the focal loss below)
        xs, ts = torch.randn(n, 7, device=device, dtype=dtype) * 3, torch.rand(n, 7, device=device).to(dtype)
        for fn, x, extra in ((fastloss.l1_loss, xs, {}), (fastloss.mse_loss, xs, {}), (fastloss.smooth_l1_loss, xs, {}),
                             (fastloss.huber_loss, xs, {}), (fastloss.balanced_l1_loss, xs, {}), (fastloss.mean_bias_error, xs, {}),
                             (fastloss.binary_cross_entropy_with_logits, xs, {"pos_weight": torch.rand(7, device=device)}),
                             (fastloss.binary_cross_entropy, xs.sigmoid(), {}), (fastloss.poly1_bce_loss, xs, {}),
                             (fastloss.poly1_focal_loss, xs, {}), (fastloss.quality_focal_loss, xs, {}), (fastloss.varifocal_loss, xs, {}),
                             (fastloss.gaussian_focal_loss, xs.sigmoid(), {}), (fastloss.hinge_loss, xs, {}),
                             (fastloss.kl_div, xs.log_softmax(-1), {}), (fastloss.focal_loss_with_prob, xs.sigmoid(), {}),
                             (fastloss.quality_focal_loss_with_prob, xs.sigmoid(), {}),
                             (fastloss.reduced_focal_loss, xs, {"threshold": 0.3}), (focal_term, xs, {"threshold": 0.5}),
                             (focal_term, xs, {})):
            loss, _, _ = _fwd_bwd(fn, x, ts, backend=backend, **extra)
            ref, _, _ = _fwd_bwd(fn, x, ts, backend="reference", **extra)
            _check(f"{fn.__name__} {backend} {dtype} n={n}", loss, ref, rtol)
            cases += 1
        # focal: float targets and class labels, per-row weights, every reduction
        x = torch.randn(n, 7, device=device, dtype=dtype) * 3
        for target in ((torch.rand(n, 7, device=device) < 0.3).to(dtype), torch.randint(0, 8, (n,), device=device)):
            for reduction in ("none", "mean"):
                w = torch.rand(n, device=device)
                loss, g, up = _fwd_bwd(fastloss.sigmoid_focal_loss, x, target, reduction=reduction, weight=w, backend=backend)
                ref, rg, _ = _fwd_bwd(fastloss.sigmoid_focal_loss, x, target, reduction=reduction, weight=w, backend="reference")
                _check(f"focal {backend} {dtype} n={n} {reduction}", loss, ref, rtol)
                cases += 1
        # boxes: every paired kind, per-box losses with an upstream gradient
        p = torch.rand(n, 4, device=device) * 50
        p[:, 2:] += p[:, :2]
        t = p + torch.randn(n, 4, device=device) * 5
        for kind in ("iou", "log_iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "siou", "cdiou", "extended_iou", "bounded_iou"):
            loss, g, _ = _fwd_bwd(fastloss.box_iou_loss, p.to(dtype), t.to(dtype), kind=kind, reduction="sum", backend=backend)
            ref, _, _ = _fwd_bwd(fastloss.box_iou_loss, p.to(dtype), t.to(dtype), kind=kind, reduction="sum", backend="reference")
            _check(f"box {kind} {backend} {dtype} n={n}", loss, ref, rtol * 10)
            cases += 1
        # the peers' eps placements (conventions) of the paired losses
        for conv, kind, extra in (("ultralytics", "ciou", {}), ("mmdet", "giou", {}), ("mmdet", "ciou", {}), ("mmdet", "siou", {}),
                                  ("mmdet", "siou", dict(neg_gamma=True)), ("mmdet", "extended_iou", dict(smooth_point=0.5)),
                                  ("mmdet", "bounded_iou", dict(smooth_point=0.2))):
            kw = dict(kind=kind, reduction="sum", eps=0.5, convention=conv, **extra)
            loss, g, _ = _fwd_bwd(fastloss.box_iou_loss, p.to(dtype), t.to(dtype), backend=backend, **kw)
            ref, _, _ = _fwd_bwd(fastloss.box_iou_loss, p.to(dtype), t.to(dtype), backend="reference", **kw)
            _check(f"box {conv} {kind} {extra} {backend} {dtype} n={n}", loss, ref, rtol * 10)
            cases += 1
        # 3-D boxes (n, 6) (iou, giou, diou), per-box losses with an upstream gradient
        p3 = torch.rand(n, 6, device=device) * 50
        p3[:, 3:] += p3[:, :3]
        t3 = p3 + torch.randn(n, 6, device=device) * 5
        for kind in ("iou", "giou", "diou"):
            loss, g, _ = _fwd_bwd(fastloss.box_iou_loss, p3.to(dtype), t3.to(dtype), kind=kind, reduction="none", backend=backend)
            ref, _, _ = _fwd_bwd(fastloss.box_iou_loss, p3.to(dtype), t3.to(dtype), kind=kind, reduction="none", backend="reference")
            _check(f"box 3-D {kind} {backend} {dtype} n={n}", loss, ref, rtol * 10)
            cases += 1
        # bounded_iou's per-coordinate terms (n, 4), with an (n, 4) upstream gradient
        kw = dict(kind="bounded_iou", reduction="none", smooth_point=0.2, eps=1e-3, per_coordinate=True)
        loss, g, _ = _fwd_bwd(fastloss.box_iou_loss, p.to(dtype), t.to(dtype), backend=backend, **kw)
        ref, _, _ = _fwd_bwd(fastloss.box_iou_loss, p.to(dtype), t.to(dtype), backend="reference", **kw)
        _check(f"box bounded_iou per_coordinate {backend} {dtype} n={n}", loss, ref, rtol * 10)
        cases += 1
        # matrices, aligned and pairwise, and the fused max (with the conventions)
        for kind, conv in (("iou", "fastloss"), ("giou", "fastloss"), ("ciou", "fastloss"), ("giou", "torchvision_matrix"),
                           ("ciou", "mmdet"), ("iof", "mmdet")):
            b1, b2 = p[None, :37].to(dtype), t[None].to(dtype)
            m, _, _ = _fwd_bwd(lambda a, b: fastloss.box_iou(a, b, kind, convention=conv, backend=backend), b1, b2)
            _check(f"box_iou {kind} {conv} {backend} {dtype} n={n}", m, fastloss.box_iou(b1, b2, kind, convention=conv, backend="reference"), rtol)
            _fwd_bwd(lambda a, b: fastloss.box_iou(a, b, kind, aligned=True, convention=conv, backend=backend), p.to(dtype), t.to(dtype))
            if n:
                v, _ = fastloss.box_iou_max(b1, b2, kind, dim=-2, convention=conv, backend=backend)
                _check(f"box_iou_max {kind} {conv} {backend} {dtype} n={n}", v,
                       fastloss.box_iou_max(b1, b2, kind, dim=-2, convention=conv, backend="reference")[0], rtol)
            cases += 3
    # row-wise engine: every softmax loss over (N, C) rows, an NCHW label map (class stride S),
    # channels_last, a long class axis (chunked) and empty inputs
    for shape, cl in (((4099, 81), False), ((2, 19, 33, 31), False), ((2, 19, 33, 31), True), ((3, 1030), False), ((0, 5), False)):
        x = torch.randn(shape, device=device, dtype=dtype) * 3
        if cl:
            x = x.to(memory_format=torch.channels_last)
        C = shape[1]
        labels = torch.randint(0, C, (shape[0],) + shape[2:], device=device)
        if labels.numel():
            labels.view(-1)[::7] = 255
        probs = torch.softmax(torch.randn(shape, device=device), 1).to(dtype)
        rows = [(fastloss.cross_entropy, labels, dict(ignore_index=255, label_smoothing=0.1, weight=torch.rand(C, device=device))),
                (fastloss.cross_entropy, probs, {}), (fastloss.nll_loss, labels, dict(ignore_index=255)),
                (fastloss.poly1_cross_entropy, labels, dict(ignore_index=255)),
                (fastloss.distillation_kl_div, torch.randn(shape, device=device, dtype=dtype), dict(temperature=2.0, target_logits=True))]
        if len(shape) == 2:
            rows.append((fastloss.softmax_focal_loss, labels.masked_fill(labels == 255, -1), dict(alpha=torch.rand(C, device=device))))
            if C > 1:
                rows.append((fastloss.distribution_focal_loss, torch.rand(shape[0], device=device) * (C - 1), {}))
        for fn, target, kwargs in rows:
            xin = x.log_softmax(1) if fn is fastloss.nll_loss else x
            for reduction in ("none", "mean"):
                loss, _, _ = _fwd_bwd(fn, xin, target, reduction=reduction, backend=backend, **kwargs)
                ref, _, _ = _fwd_bwd(fn, xin, target, reduction=reduction, backend="reference", **kwargs)
                _check(f"{fn.__name__} {backend} {dtype} {shape} cl={cl} {reduction}", loss, ref, rtol)
                cases += 1
    # Dice family: softmax over a label map with ignore_index (+ CE), sigmoid over float targets, identity
    for shape in ((2, 5, 33, 31), (1, 1, 7), (0, 3, 4, 4)):
        x = torch.randn(shape, device=device, dtype=dtype)
        labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], device=device, dtype=torch.uint8)
        if labels.numel():
            labels.view(-1)[::7] = 255
        for fn, kwargs in ((fastloss.dice_ce_loss, dict(ignore_index=255)), (fastloss.dice_loss, dict(mode="multilabel", per_image=True)),
                           (fastloss.tversky_loss, dict(mode="multilabel", from_logits=False, squared=True))):
            target = labels if fn is fastloss.dice_ce_loss else (torch.rand(shape, device=device) < 0.5).to(dtype)
            xin = x.sigmoid() if not kwargs.get("from_logits", True) else x
            loss, g, _ = _fwd_bwd(fn, xin, target, backend=backend, **kwargs)
            ref, _, _ = _fwd_bwd(fn, xin, target, backend="reference", **kwargs)
            _check(f"{fn.__name__} {backend} {dtype} {shape}", loss, ref, rtol)
            cases += 1
        soft = torch.softmax(torch.randn(shape, device=device), 1).to(dtype)  # the soft-label sums
        loss, _, _ = _fwd_bwd(fastloss.dice_loss, x, soft, soft_label=True, backend=backend)
        ref, _, _ = _fwd_bwd(fastloss.dice_loss, x, soft, soft_label=True, backend="reference")
        _check(f"dice_loss soft_label {backend} {dtype} {shape}", loss, ref, rtol)
        cases += 1
    # label assigners (no Triton kernel): mmdetection's max-IoU rules, bit-equal to the reference
    if backend in _backend.preference("max_iou_assign")[device] and dtype == torch.float32:
        xy = torch.rand(3, 1000, 2, device=device) * 300
        priors = torch.cat([xy, xy + torch.rand(3, 1000, 2, device=device) * 80], -1)
        boxes = priors[:, :37] + torch.randn(3, 37, 4, device=device)
        valid = torch.rand(3, 37, device=device) > 0.2
        labels = torch.randint(0, 9, (3, 37), device=device)
        for kw in (dict(pos_iou_thr=0.5, neg_iou_thr=0.4), dict(pos_iou_thr=0.7, neg_iou_thr=(0.1, 0.3), gt_max_assign_all=False)):
            got = fastloss.max_iou_assign(priors, boxes, labels, valid, backend=backend, **kw)
            ref = fastloss.max_iou_assign(priors, boxes, labels, valid, backend="reference", **kw)
            if not all(torch.equal(a, b) for a, b in zip(got, ref)):
                raise AssertionError(f"max_iou_assign {backend} {kw}: differs from the reference")
            cases += 1
    # Hungarian matching cost blocks: bit-equal to the reference's (the same rounded operations),
    # empty images and a block size past one thread block included
    if backend in _backend.preference("match_cost")[device] and dtype == torch.float32:
        sizes = [0, 5, 300, 1]
        n, queries = sum(sizes), 37
        logits = torch.randn(4, queries, 11, device=device) * 3
        pred = torch.cat([torch.rand(4, queries, 2, device=device), torch.rand(4, queries, 2, device=device) * 0.3 + 0.01], -1)
        tgt = torch.cat([torch.rand(n, 2, device=device), torch.rand(n, 2, device=device) * 0.3 + 0.01], -1)
        labels = torch.randint(0, 11, (n,), device=device)
        shapes = [(480, 640)] * 4
        for kw in (dict(convention="detr", weights=(1, 5, 2)), dict(convention="dino", weights=(2.0, 5.0, 2.0)),
                   dict(convention="mmdet", class_cost="focal", l1_format="xywh", img_shapes=shapes, weights=(2.0, 5.0, 2.0))):
            boxes = (pred * 400, tgt * 400) if kw["convention"] == "mmdet" else (pred, tgt)
            got = fastloss.match_cost(logits, boxes[0], labels, boxes[1], torch.tensor(sizes, device=device), backend=backend, **kw)
            ref = fastloss.match_cost(logits, boxes[0], labels, boxes[1], sizes, backend="reference", **kw)
            if not torch.equal(got, ref):
                raise AssertionError(f"match_cost {backend} {kw['convention']}: {(got != ref).sum().item()} costs differ from the reference")
        # the L1 term's summation order is torch.cdist(p=1)'s on this device (the peers' L1 cost)
        l1 = reference_match_cost.cdist_l1_sum((pred[0][:, None] - tgt[None]).abs())
        if not torch.equal(l1, torch.cdist(pred[0], tgt, p=1)):
            raise AssertionError("match_cost: the reference's L1 sum is not torch.cdist(p=1)'s on " + device)
            cases += 1
    # ultralytics' task-aligned assigner: the kernel against the spec on the same device (torch's
    # CUDA pow / atan in both, the CUDA top-k tie rule): all five outputs bit-equal (on the CPU
    # dry run the spec's dense pow may move scores by an ulp); ultralytics itself too where
    # installed.  Ties at the k-th place: constant scores and shared box shapes.
    def same(xs, ys):
        return all(x.dtype == y.dtype and (torch.equal(x, y) or (device == "cpu" and i == 2 and torch.allclose(x, y, rtol=1e-6, atol=0)))
                   for i, (x, y) in enumerate(zip(xs, ys)))

    if backend in _backend.preference("task_aligned_assign")[device] and dtype == torch.float32:
        xs = (torch.arange(40, device=device) + 0.5) * 8
        pts = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
        for seed, M, nc in ((0, 37, 7), (1, 1, 1), (2, 120, 80)):
            g = torch.Generator(device="cpu").manual_seed(seed)
            xy = torch.rand(3, M, 2, generator=g) * 300
            gt = torch.cat([xy, xy + 2 + torch.rand(3, M, 2, generator=g) * 80], -1).to(device)
            mask = (torch.rand(3, M, 1, generator=g) > 0.2).float().to(device)
            labels = torch.randint(0, nc, (3, M, 1), generator=g).float().to(device)
            scores = torch.rand(3, pts.shape[0], nc, generator=g).to(device)
            if seed == 1:
                scores.fill_(0.01)
            pd = torch.cat([pts - 12, pts + 12], -1)[None] + torch.randn(3, pts.shape[0], 4, generator=g).to(device) * (seed != 1)
            for kw in (dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0, compact=True)):
                args = (scores, pd, pts, labels, gt, mask)
                got = fastloss.task_aligned_assign(*args, num_classes=nc, backend=backend, **kw)
                ref = fastloss.task_aligned_assign(*args, num_classes=nc, backend="reference", **kw)
                if not same(got, ref):
                    raise AssertionError(f"task_aligned_assign {backend} seed {seed} {kw}: differs from the reference")
                try:
                    from ultralytics.utils.tal import TaskAlignedAssigner
                except ImportError:
                    TaskAlignedAssigner = None
                if TaskAlignedAssigner is not None and not kw.get("compact"):
                    peer = TaskAlignedAssigner(topk=kw["topk"], num_classes=nc, alpha=kw["alpha"], beta=kw["beta"])(*args)
                    if not same(got, peer):
                        raise AssertionError(f"task_aligned_assign {backend} seed {seed} {kw}: differs from ultralytics")
    # ATSS: mmdetection's rules; the kernel's top-k (the lowest index among distance ties) and
    # summation order are the spec's, so gt_inds / labels / max_overlaps equal the reference's
    if backend in _backend.preference("atss_assign")[device] and dtype in (torch.float32, torch.float64):
        for imgsz, per_image in ((96, False), (200, True)):  # levels of 144 / 36 / 9 (96 px) and 625 / 169 / 49 (200 px) points
            pri, levels = [], []
            for s in (8, 16, 32):
                n = -(-imgsz // s)
                ys, xs = torch.meshgrid(torch.arange(n, device=device) * s + s / 2, torch.arange(n, device=device) * s + s / 2, indexing="ij")
                c = torch.stack([xs.flatten(), ys.flatten()], -1).to(dtype)
                pri.append(torch.cat([c - 4 * s, c + 4 * s], -1))
                levels.append(n * n)
            priors = torch.cat(pri)
            if per_image:
                priors = priors[None].repeat(3, 1, 1) + torch.randn(3, *priors.shape, device=device, dtype=dtype)
            xy = torch.rand(3, 37, 2, device=device, dtype=dtype) * imgsz
            boxes = torch.cat([xy, xy + 4 + torch.rand(3, 37, 2, device=device, dtype=dtype) * imgsz / 2], -1)
            boxes[:, :5] = ((boxes[:, :5] / 16).round() * 16)  # grid-aligned: distance ties
            valid = torch.rand(3, 37, device=device) > 0.2
            valid[2] = False  # an image without gts
            labels = torch.randint(0, 9, (3, 37), device=device)
            ign = torch.cat([xy[:, :3], xy[:, :3] + 30], -1)
            for kw in (dict(topk=9), dict(topk=4, ignore_bboxes=ign, ignore_iof_thr=0.3)):
                got = fastloss.atss_assign(priors, levels, boxes, labels, valid, backend=backend, **kw)
                ref = fastloss.atss_assign(priors, levels, boxes, labels, valid, backend="reference", **kw)
                if not all(torch.equal(a, b) for a, b in zip(got, ref)):
                    raise AssertionError(f"atss_assign {backend} {dtype} {imgsz} px {sorted(kw)}: differs from the reference in "
                                         f"{int((got[0] != ref[0]).sum())} gt_inds")
                cases += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script (backends cpu / triton under TRITON_INTERPRET=1)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("cuda_smoke: no CUDA device")
    for backend in args.backends:
        if backend not in fastloss.available_backends(args.device):
            sys.exit(f"cuda_smoke: backend {backend} unavailable: {fastloss.unavailable_backends(args.device).get(backend)}")
        for name in args.dtypes:
            t0 = time.perf_counter()
            n = run(backend, DTYPES[name], args.device)
            print(f"cuda_smoke: {backend} {name}: {n} calls ok ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
