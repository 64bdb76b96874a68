"""Train torchvision's FCOS a few steps with and without ``fastloss.patch("torchvision")``.

A small detector (a 5-layer CNN under torchvision's FeaturePyramidNetwork, 3 levels, no
downloaded weights) on synthetic images: bright rectangles of a class-dependent colour on
noise, with their boxes as targets.  Both runs start from the same initial state and see the
same batches; the script checks that the loss trajectories agree (float64: relative 1e-9)
and prints the time of FCOS's loss step (``FCOSHead.compute_loss``: target assignment, then
torchvision's sigmoid focal loss, GIoU loss and centerness BCE) with and without the patch:
per training step (forward), and in isolation (forward + backward w.r.t. the head outputs).

    python examples/train_fcos.py                      # 6 steps, 4 x 128 x 128 images
    python examples/train_fcos.py --steps 3 --size 64 --batch 2 --bench-reps 3   # CI size
    python examples/train_fcos.py --device cuda --size 512 --batch 8 --classes 80

Exit status 1 if the trajectories differ by more than ``--rtol``.
"""
import argparse
import copy
import statistics
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

import fastloss

try:
    import torchvision
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import FeaturePyramidNetwork
except ImportError:  # pragma: no cover - the example needs its peer
    sys.exit("examples/train_fcos.py needs torchvision (pip install torchvision)")


class TinyBackbone(nn.Module):
    """Strided 3x3 convolutions (strides 8, 16, 32 at the outputs) under an FPN; FCOS reads
    ``out_channels``.  No normalisation layers: nothing but the weights carries state."""

    def __init__(self, out_channels=32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(block(3, 16), block(16, 24))  # stride 4
        self.c3, self.c4, self.c5 = block(24, 32), block(32, 48), block(48, 64)
        self.fpn = FeaturePyramidNetwork([32, 48, 64], out_channels)
        self.out_channels = out_channels

    def forward(self, x):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return self.fpn(OrderedDict(p3=c3, p4=c4, p5=c5))


def build_model(num_classes, size):
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,)), aspect_ratios=((1.0,),) * 3)  # one anchor per location
    return FCOS(TinyBackbone(), num_classes=num_classes, min_size=size, max_size=size, image_mean=[0.5] * 3, image_std=[0.25] * 3,
                anchor_generator=anchors)


def synthetic_batches(steps, batch, size, num_classes, dtype, device, seed):
    """``steps`` batches of (images, targets): 1-4 rectangles per image, each filled with its
    class's colour over uniform noise; boxes xyxy in pixels, labels in [1, num_classes)."""
    gen = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, generator=gen, dtype=torch.float64)
    batches = []
    for _ in range(steps):
        images, targets = [], []
        for _ in range(batch):
            img = torch.rand(3, size, size, generator=gen, dtype=torch.float64) * 0.3
            n = int(torch.randint(1, 5, (), generator=gen))
            wh = torch.randint(size // 8, size // 2, (n, 2), generator=gen)
            xy = (torch.rand(n, 2, generator=gen) * (size - wh)).long()
            boxes = torch.cat([xy, xy + wh], 1)
            labels = torch.randint(1, num_classes, (n,), generator=gen)
            for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist()):
                img[:, y1:y2, x1:x2] = colours[c][:, None, None]
            images.append(img.to(device, dtype))
            targets.append({"boxes": boxes.to(device, dtype), "labels": labels.to(device)})
        batches.append((images, targets))
    return batches


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LossTimer:
    """Wraps a model's ``head.compute_loss``: times each call (device-synchronised) and keeps
    the first call's arguments (head outputs detached) for the isolated benchmark."""

    def __init__(self, model, device):
        self.head, self.device, self.times, self.first = model.head, device, [], None
        self.inner = model.head.compute_loss
        model.head.compute_loss = self

    def __call__(self, targets, head_outputs, anchors, matched_idxs):
        if self.first is None:
            self.first = (targets, {k: v.detach().clone() for k, v in head_outputs.items()}, anchors, matched_idxs)
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.inner(targets, head_outputs, anchors, matched_idxs)
        _sync(self.device)
        self.times.append(time.perf_counter() - t0)
        return out


def bench_loss_step(head, args, reps, device):
    """(median, min) times of compute_loss forward + backward w.r.t. the head outputs, for
    torchvision and patched, over ``reps`` rounds that alternate the two (A/B interleaved: a busy machine slows
    both alike)."""
    targets, outputs, anchors, matched = args
    times = {False: [], True: []}

    def once():
        outs = {k: v.clone().requires_grad_() for k, v in outputs.items()}
        _sync(device)
        t0 = time.perf_counter()
        losses = head.compute_loss(targets, outs, anchors, matched)
        sum(losses.values()).backward()
        _sync(device)
        return time.perf_counter() - t0

    once()  # warm-up of both paths (first calls pay one-time costs)
    with fastloss.patch("torchvision"):
        once()
    for _ in range(reps):
        times[False].append(once())
        with fastloss.patch("torchvision"):
            times[True].append(once())
    return (statistics.median(times[False]), min(times[False])), (statistics.median(times[True]), min(times[True]))


def train(model, init_state, batches, lr, device):
    """SGD from ``init_state`` over ``batches``; returns (per-step [total, *components],
    compute_loss forward times, the first compute_loss call's arguments)."""
    model.load_state_dict(init_state)
    model.train()
    timer = LossTimer(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trajectory = []
    try:
        for images, targets in batches:
            losses = model(images, targets)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            trajectory.append([total.item()] + [v.item() for v in losses.values()])
    finally:
        del model.head.compute_loss  # back to the class's method
    return trajectory, timer.times, timer.first


def check_patched():
    """The losses FCOS's head calls (looked up in its module at call time) are fastloss's while
    patched: otherwise the comparison below would compare torchvision with itself."""
    from torchvision.models.detection import fcos

    from fastloss.compat import torchvision as compat

    for name in ("sigmoid_focal_loss", "generalized_box_iou_loss"):
        if getattr(fcos, name) is not getattr(compat, name):
            raise RuntimeError(f"fastloss.patch('torchvision') did not replace torchvision.models.detection.fcos.{name}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="SGD steps per run")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (a multiple of 32)")
    p.add_argument("--batch", type=int, default=4, help="images per step")
    p.add_argument("--classes", type=int, default=8, help="FCOS num_classes (labels 1..classes-1)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rtol", type=float, default=None, help="trajectory tolerance (default 1e-9 for float64, 1e-4 for float32)")
    p.add_argument("--bench-reps", type=int, default=10, help="repetitions of the isolated loss-step timing (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size % 32:
        p.error("--size must be a multiple of 32")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rtol = args.rtol if args.rtol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False

    torch.manual_seed(args.seed)
    model = build_model(args.classes, args.size).to(device, dtype)
    init_state = copy.deepcopy(model.state_dict())
    batches = synthetic_batches(args.steps, args.batch, args.size, args.classes, dtype, device, args.seed)

    plain, plain_times, first_call = train(model, init_state, batches, args.lr, device)
    with fastloss.patch("torchvision"):
        check_patched()
        patched, patched_times, _ = train(model, init_state, batches, args.lr, device)

    print(f"FCOS, tiny CNN + FPN, {args.batch} x {args.size} x {args.size} images, {args.classes} classes, {args.dtype} on {device} "
          f"(torch {torch.__version__}, torchvision {torchvision.__version__}, fastloss {fastloss.__version__})")
    names = ["total", "classification", "bbox_regression", "bbox_ctrness"]
    worst = 0.0
    print(f"{'step':>4} {'torchvision total':>22} {'fastloss total':>22} {'max rel. diff':>14}")
    for i, (a, b) in enumerate(zip(plain, patched)):
        rel = max(abs(x - y) / max(abs(x), 1e-300) for x, y in zip(a, b))
        worst = max(worst, rel)
        print(f"{i:>4} {a[0]:>22.15g} {b[0]:>22.15g} {rel:>14.3g}")
    print(f"components compared per step: {', '.join(names)}")
    skip = 1 if len(plain_times) > 1 else 0  # the first call pays one-time costs (allocations, lazy loading)
    print(f"loss step (FCOSHead.compute_loss) forward, median over steps: torchvision {statistics.median(plain_times[skip:]) * 1e3:.2f} ms, "
          f"patched {statistics.median(patched_times[skip:]) * 1e3:.2f} ms")
    if args.bench_reps > 0:
        (plain_med, plain_min), (patched_med, patched_min) = bench_loss_step(model.head, first_call, args.bench_reps, device)
        print(f"loss step forward + backward (isolated, A/B interleaved, {args.bench_reps} rounds): "
              f"torchvision median {plain_med * 1e3:.2f} ms (min {plain_min * 1e3:.2f}), "
              f"patched median {patched_med * 1e3:.2f} ms (min {patched_min * 1e3:.2f}); {plain_med / patched_med:.2f}x")
    ok = worst <= rtol
    print(f"trajectories {'agree' if ok else 'DIFFER'}: max relative difference {worst:.3g} (tolerance {rtol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
