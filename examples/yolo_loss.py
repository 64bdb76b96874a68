"""ultralytics' YOLO detection loss with and without ``fastloss.patch("ultralytics")``.

Builds a YOLOv8 detection model from the yaml ultralytics ships (no weights are downloaded),
then its training criterion (``v8DetectionLoss``, what ``DetectionModel.init_criterion``
returns for a YOLOv8 head) twice -- unpatched, and inside ``fastloss.patch("ultralytics")`` --
and evaluates both on the same synthetic head outputs and targets:

1. in float64: the loss components (box, cls, dfl) and the gradients of both prediction
   tensors must agree to 1e-9 relative (components elementwise; each gradient in max norm),
   or the script exits with status 1;
2. the time of one loss step (criterion forward + backward) and of its ``BboxLoss`` call
   alone, median over ``--steps`` (the variants interleaved), in ``--dtype`` on ``--device``,
   patched and unpatched.

What the patch changes in this loss: ``BboxLoss`` (its DFL term runs on fastloss's row-wise
kernel; its CIoU term stays ultralytics' own, see :mod:`fastloss.compat.ultralytics`) and the
task-aligned assigner (``fastloss.task_aligned_assign``: the same assignments and scores bit
for bit on the CPU, without the (B, M, A) tensors).  The classification BCE is torch's in both
runs.

    python examples/yolo_loss.py --batch 8 --imgsz 640 --targets 20 --device cuda
"""
import argparse
import statistics
import sys
import time

import torch

import fastloss
from fastloss.compat import ultralytics as compat


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolov8n.yaml", help="a detection yaml shipped with ultralytics (default yolov8n.yaml)")
    p.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--imgsz", type=int, default=320, help="square image size in pixels, a multiple of 32 (default 320)")
    p.add_argument("--nc", type=int, default=80, help="number of classes (default 80)")
    p.add_argument("--targets", type=int, default=8, help="ground-truth boxes per image (default 8)")
    p.add_argument("--steps", type=int, default=5, help="timed loss steps per variant (default 5)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="dtype of the timed steps (default float32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.imgsz % 32 or args.imgsz <= 0:
        p.error("--imgsz must be a positive multiple of 32")
    for name in ("batch", "nc", "targets", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def build_model(args):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(args.model, nc=args.nc, verbose=False).to(args.device)
    model.args = get_cfg()  # the default hyperparameters: box / cls / dfl gains
    return model


def synthetic_inputs(model, args, dtype):
    """Head outputs as DetectionModel returns them in training mode, and a target batch."""
    g = torch.Generator().manual_seed(args.seed)
    head = model.model[-1]
    b, size = args.batch, args.imgsz
    levels = [(size // int(s), size // int(s)) for s in head.stride]
    anchors = sum(h * w for h, w in levels)
    preds = {
        "boxes": torch.randn(b, 4 * head.reg_max, anchors, generator=g, dtype=torch.float64),
        "scores": torch.randn(b, head.nc, anchors, generator=g, dtype=torch.float64) - 4.0,  # mostly background, as a fresh head
        # the loss reads only the shapes, dtype and device of the feature maps
        "feats": [torch.zeros(b, 1, h, w, dtype=torch.float64) for h, w in levels],
    }
    n = b * args.targets
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02
    batch = {
        "batch_idx": torch.arange(b, dtype=torch.float64).repeat_interleave(args.targets),
        "cls": torch.randint(0, head.nc, (n, 1), generator=g).to(torch.float64),
        "bboxes": torch.cat((centre, wh), 1),  # normalised (cx, cy, w, h), as ultralytics' dataloader gives
    }
    preds = {k: [f.to(args.device, dtype) for f in v] if k == "feats" else v.to(args.device, dtype) for k, v in preds.items()}
    batch = {k: v.to(args.device, dtype) for k, v in batch.items()}
    return preds, batch


def criterion(model, patched):
    from ultralytics.utils.loss import v8DetectionLoss

    if not patched:
        return v8DetectionLoss(model)
    with fastloss.patch("ultralytics"):  # the classes are taken when the criterion is built
        crit = v8DetectionLoss(model)
    if not (isinstance(crit.bbox_loss, compat.BboxLoss) and isinstance(crit.bbox_loss.dfl_loss, compat.DFLoss)):
        raise RuntimeError("the patched criterion does not use fastloss's BboxLoss / DFLoss")
    if type(crit.assigner) not in compat._SWAPPED.values():
        raise RuntimeError("the patched criterion does not use fastloss's task-aligned assigner")
    return crit


def loss_step(crit, preds, batch):
    """One loss step: the criterion and the backward into fresh leaf predictions."""
    leaves = {k: v.detach().requires_grad_() for k, v in preds.items() if k != "feats"}
    loss, items = crit({**leaves, "feats": preds["feats"]}, batch)
    loss.sum().backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


def compare(args, model):
    """Patched vs unpatched in float64; returns the list of failures (empty when equal)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the criterion's loss buffer and padded targets take the default dtype
    try:
        preds, batch = synthetic_inputs(model, args, torch.float64)
        ref_loss, ref_grads = loss_step(criterion(model, False), preds, batch)
        new_loss, new_grads = loss_step(criterion(model, True), preds, batch)
    finally:
        torch.set_default_dtype(default)
    failures = []
    if ref_loss.dtype != torch.float64 or new_loss.dtype != torch.float64:
        failures.append(f"loss dtypes {ref_loss.dtype} / {new_loss.dtype}, expected float64")
    if not ref_loss[0] > 0:
        failures.append("no foreground anchors (box loss 0): the comparison would be vacuous; use more or larger targets")
    for name, r, n in zip(("box", "cls", "dfl"), ref_loss.tolist(), new_loss.tolist()):
        rel = abs(n - r) / abs(r) if r else abs(n)
        print(f"  {name}_loss  unpatched {r:.15e}  patched {n:.15e}  rel diff {rel:.1e}")
        if not rel <= 1e-9:
            failures.append(f"{name}_loss differs by {rel:.1e} relative")
    for name in ("boxes", "scores"):
        r, n = ref_grads[name], new_grads[name]
        rel = ((n - r).abs().max() / r.abs().max()).item()
        print(f"  d loss / d {name:<6} max |diff| / max |grad| = {rel:.1e}")
        if not rel <= 1e-9:
            failures.append(f"gradient of {name} differs by {rel:.1e} relative")
    return failures


def _timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bbox_loss_step(crit, inputs):
    """The part the patch replaces: BboxLoss forward + backward on the inputs it got."""
    pred_dist, pred_bboxes, *rest = inputs
    leaves = pred_dist.detach().requires_grad_(), pred_bboxes.detach().requires_grad_()
    loss_iou, loss_dfl = crit.bbox_loss(*leaves, *rest)
    (loss_iou + loss_dfl).backward()


def time_steps(args, model):
    """Median times of each variant: the whole loss step, and its BboxLoss call alone (with
    the inputs the criterion gave it).  The variants run alternately (A/B interleaved) so
    that a load change on the machine hits both alike."""
    dtype = getattr(torch, args.dtype)
    preds, batch = synthetic_inputs(model, args, dtype)
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    crits = {patched: criterion(model, patched) for patched in (False, True)}
    bbox_inputs = {}
    for patched, crit in crits.items():  # warm-up (allocations, first-call dispatch); keep BboxLoss's inputs
        hook = crit.bbox_loss.register_forward_pre_hook(lambda module, inputs, key=patched: bbox_inputs.setdefault(key, inputs))
        loss_step(crit, preds, batch)
        hook.remove()
    times = {(part, patched): [] for part in ("step", "bbox") for patched in crits}
    for _ in range(args.steps):
        for patched, crit in crits.items():
            times["step", patched].append(_timed(lambda: loss_step(crit, preds, batch), sync))
            times["bbox", patched].append(_timed(lambda: bbox_loss_step(crit, bbox_inputs[patched]), sync))
    return {key: statistics.median(t) for key, t in times.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = build_model(args)
    head = model.model[-1]
    print(f"{args.model}: nc={head.nc} reg_max={head.reg_max} strides={[int(s) for s in head.stride]}; batch {args.batch} x "
          f"{args.imgsz}px, {args.targets} targets per image; device {args.device}, {torch.get_num_threads()} threads")
    print("float64, patched vs unpatched:")
    failures = compare(args, model)
    medians = time_steps(args, model)
    print(f"{args.dtype}, forward + backward, median of {args.steps} (variants interleaved):")
    for part, label in (("step", "loss step (whole criterion)"), ("bbox", "its BboxLoss (what the patch replaces)")):
        before, after = medians[part, False], medians[part, True]
        print(f"  {label:<40} unpatched {before * 1e3:8.2f} ms  patched {after * 1e3:8.2f} ms  ({before / after:.2f}x)")
    if failures:
        print("MISMATCH: " + "; ".join(failures))
        return 1
    print("OK: patched and unpatched agree to 1e-9 relative in float64")
    return 0


if __name__ == "__main__":
    sys.exit(main())
