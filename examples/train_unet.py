"""Train a small MONAI U-Net a few steps with and without ``fastloss.patch("monai", "smp")``.

A 2-D ``monai.networks.nets.UNet`` (a few channels, no downloaded weights) segments synthetic
images: discs and rectangles of a class-dependent intensity on noise, with their label maps
as targets.  The loss is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` plus
segmentation_models_pytorch's ``DiceLoss("multiclass")`` (``--loss`` picks one or both), built
through the peers' own entry points (``monai.losses.DiceCELoss``,
``segmentation_models_pytorch.losses.DiceLoss``), so the patched run uses fastloss's compat
classes without a change to the training code; the script checks that each loss object is
fastloss's compat class in the patched run and the peer's own in the plain one (RuntimeError
otherwise).  Both runs start from the same initial state
and see the same batches; the script checks that the loss trajectories agree (float64:
relative 1e-9) and prints the time of the loss step (forward + backward of the loss w.r.t.
the logits, isolated from the network) with and without the patch.

    python examples/train_unet.py                           # 8 steps, 8 x 64 x 64 images, 4 classes
    python examples/train_unet.py --steps 3 --size 32 --batch 2 --bench-reps 3   # CI size
    python examples/train_unet.py --device cuda --size 256 --batch 16 --dtype float32

Exit status 1 if the trajectories differ by more than ``--rtol``.
"""
import argparse
import copy
import statistics
import sys
import time

import torch

import fastloss

try:
    import monai
    import monai.losses
    from monai.networks.nets import UNet
except ImportError:  # pragma: no cover - the example needs its peer
    sys.exit("examples/train_unet.py needs MONAI (pip install monai)")
try:
    import segmentation_models_pytorch as smp
    import segmentation_models_pytorch.losses
except ImportError:  # pragma: no cover
    smp = None

LIBRARIES = ("monai", "smp")


def synthetic_batches(steps, batch, size, num_classes, dtype, device, seed):
    """``steps`` batches of (images (B, 1, H, W), labels (B, 1, H, W) int64): 1-4 discs or
    rectangles per image, each of its class's intensity plus noise; background is class 0."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.linspace(0.2, 1.0, num_classes, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    batches = []
    for _ in range(steps):
        images = torch.zeros(batch, 1, size, size, dtype=torch.float64)
        labels = torch.zeros(batch, 1, size, size, dtype=torch.int64)
        for b in range(batch):
            for _ in range(int(torch.randint(1, 5, (), generator=gen))):
                c = int(torch.randint(1, num_classes, (), generator=gen))
                cy, cx = torch.randint(0, size, (2,), generator=gen).tolist()
                r = int(torch.randint(size // 10 + 1, size // 4 + 2, (), generator=gen))
                if torch.rand((), generator=gen) < 0.5:
                    region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                else:
                    region = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r // 2 + 1)
                labels[b, 0][region] = c
            images[b, 0] = levels[labels[b, 0]]
        images += 0.15 * torch.randn(images.shape, generator=gen, dtype=torch.float64)
        batches.append((images.to(device, dtype), labels.to(device)))
    return batches


def build_criterion(which):
    """The loss, built through the peers' own classes (whatever the patch put there); the loss
    objects are kept on ``criterion.losses`` ({library: loss module}) for :func:`check_losses`."""
    parts, losses = [], {}
    if which in ("monai", "both"):
        losses["monai"] = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)
        parts.append(losses["monai"])
    if which in ("smp", "both"):
        dice = losses["smp"] = smp.losses.DiceLoss("multiclass")
        parts.append(lambda logits, labels: dice(logits, labels[:, 0]))

    def criterion(logits, labels):
        return sum(part(logits, labels) for part in parts)

    criterion.losses = losses
    return criterion


def check_losses(criterion, patched):
    """RuntimeError unless every loss object of ``criterion`` is fastloss's compat class
    (``patched``) or the peer's own (not ``patched``): a run that silently trained with the
    wrong losses would make the comparison meaningless.  A real check, not an ``assert``
    (``python -O`` drops those)."""
    for library, loss in criterion.losses.items():
        module = type(loss).__module__
        is_fastloss = module == f"fastloss.compat.{library}"
        if is_fastloss != patched:
            want = f"fastloss.compat.{library}" if patched else f"{library}'s own"
            raise RuntimeError(f"{'patched' if patched else 'unpatched'} run: the {library} loss is {module}.{type(loss).__name__}, "
                               f"expected {want} class -- fastloss.patch did not {'take effect' if patched else 'undo'}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_step(criterion, logits, labels, device):
    """Loss forward + backward w.r.t. detached logits; returns (loss, dL/dlogits, seconds)."""
    leaf = logits.detach().requires_grad_()
    _sync(device)
    t0 = time.perf_counter()
    loss = criterion(leaf, labels)
    loss.backward()
    _sync(device)
    return loss, leaf.grad, time.perf_counter() - t0


def train(model, init_state, batches, which, lr, device, patched):
    """Adam from ``init_state`` over ``batches``; returns (loss per step, loss-step seconds).
    Raises RuntimeError if the losses are not fastloss's (``patched``) / the peers' (not)."""
    model.load_state_dict(init_state)
    model.train()
    criterion = build_criterion(which)
    check_losses(criterion, patched)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    trajectory, times = [], []
    for images, labels in batches:
        logits = model(images)
        loss, grad, seconds = loss_step(criterion, logits, labels, device)
        opt.zero_grad(set_to_none=True)
        logits.backward(grad)
        opt.step()
        trajectory.append(loss.item())
        times.append(seconds)
    return trajectory, times


def bench_loss_step(which, logits, labels, reps, device):
    """Median loss-step times (peer, patched), A/B interleaved over ``reps`` rounds."""
    times = {False: [], True: []}
    for r in range(reps + 1):  # round 0 warms both paths up
        for patched in (False, True):
            if patched:
                with fastloss.patch(*LIBRARIES):
                    _, _, seconds = loss_step(build_criterion(which), logits, labels, device)
            else:
                _, _, seconds = loss_step(build_criterion(which), logits, labels, device)
            if r:
                times[patched].append(seconds)
    return statistics.median(times[False]), statistics.median(times[True])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="Adam steps per run")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (a multiple of 4)")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--classes", type=int, default=4, help="segmentation classes (background included)")
    p.add_argument("--channels", type=int, default=8, help="U-Net channels at the first level (x2, x4 below)")
    p.add_argument("--loss", choices=("monai", "smp", "both"), default="both" if smp is not None else "monai")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rtol", type=float, default=None, help="trajectory tolerance (default 1e-9 for float64, 1e-4 for float32)")
    p.add_argument("--bench-reps", type=int, default=10, help="repetitions of the isolated loss-step timing (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size % 4:
        p.error("--size must be a multiple of 4 (two stride-2 levels)")
    if args.loss != "monai" and smp is None:
        p.error("--loss smp/both needs segmentation_models_pytorch")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rtol = args.rtol if args.rtol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    libraries = LIBRARIES if smp is not None else ("monai",)

    torch.manual_seed(args.seed)
    ch = args.channels
    model = UNet(spatial_dims=2, in_channels=1, out_channels=args.classes, channels=(ch, 2 * ch, 4 * ch), strides=(2, 2),
                 num_res_units=1).to(device, dtype)
    init_state = copy.deepcopy(model.state_dict())
    batches = synthetic_batches(args.steps, args.batch, args.size, args.classes, dtype, device, args.seed)

    plain, plain_times = train(model, init_state, batches, args.loss, args.lr, device, patched=False)
    with fastloss.patch(*libraries):
        patched, patched_times = train(model, init_state, batches, args.loss, args.lr, device, patched=True)

    versions = f"torch {torch.__version__}, monai {monai.__version__}" + (f", smp {smp.__version__}" if smp is not None else "")
    print(f"losses checked: unpatched run on the peers' classes, patched run on fastloss.compat ({', '.join(libraries)})")
    print(f"MONAI UNet ({ch}, {2 * ch}, {4 * ch}), {args.batch} x {args.size} x {args.size} images, {args.classes} classes, "
          f"loss {args.loss}, {args.dtype} on {device} ({versions}, fastloss {fastloss.__version__})")
    worst = 0.0
    print(f"{'step':>4} {'peer loss':>22} {'fastloss loss':>22} {'rel. diff':>10}")
    for i, (a, b) in enumerate(zip(plain, patched)):
        rel = abs(a - b) / max(abs(a), 1e-300)
        worst = max(worst, rel)
        print(f"{i:>4} {a:>22.15g} {b:>22.15g} {rel:>10.3g}")
    print(f"loss step (forward + backward w.r.t. the logits) during training, median: peer {statistics.median(plain_times) * 1e3:.3f} ms, "
          f"fastloss {statistics.median(patched_times) * 1e3:.3f} ms")
    if args.bench_reps > 0:
        images, labels = batches[0]
        with torch.no_grad():
            model.load_state_dict(init_state)
            logits = model(images)
        t_peer, t_fast = bench_loss_step(args.loss, logits, labels, args.bench_reps, device)
        print(f"loss step in isolation, median of {args.bench_reps}: peer {t_peer * 1e3:.3f} ms, fastloss {t_fast * 1e3:.3f} ms "
              f"({t_peer / t_fast:.2f}x)")
    ok = worst <= rtol
    print(f"trajectories {'agree' if ok else 'DIFFER'}: max relative difference {worst:.3g} (tolerance {rtol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
