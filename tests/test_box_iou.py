"""fastloss.box_iou_loss (paired IoU-family losses) on every backend of every device here,
against the float64 pure-PyTorch reference (fastloss/reference/box_iou.py).

Matrix: (device, backend) x dtype x kind x fmt x shape/layout x reduction x weight.  The
Triton backend runs on CPU tensors under TRITON_INTERPRET=1 (conftest.py) with small sizes.
CUDA parameters carry the ``gpu`` mark (skipped without a GPU; FASTLOSS_REQUIRE_GPU=1 makes
that a failure).
"""
import math

import pytest
import torch

import fastloss
from fastloss.ops import box_iou as ops_box
from fastloss.reference import box_iou as R

import helpers
from helpers import assert_close, random_upstream

KINDS = R.KINDS
FMTS = R.FMTS
REDUCTIONS = ("none", "sum", "mean")
CODES = {"none": 0, "sum": 1, "mean": 2}
EPS32 = torch.finfo(torch.float32).eps


def xyxy_to(b, fmt):
    if fmt == "xyxy":
        return b
    x1, y1, x2, y2 = b.unbind(-1)
    if fmt == "xywh":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def make_pair(shape, fmt="xyxy", dtype=torch.float32, device="cpu", layout="contiguous", jitter=8.0, requires_grad=True, dims=2):
    """Random overlapping-ish box pairs of shape (*shape, 4) in ``fmt`` (``dims`` 3: 3-D boxes
    (*shape, 6), xyxy); ``layout`` "sliced" gives non-contiguous pred/target (every other box
    of a longer tensor)."""
    n_shape = tuple(shape)
    if layout == "sliced":
        n_shape = n_shape[:-1] + (2 * n_shape[-1],)
    xy = torch.rand(n_shape + (dims,), dtype=torch.float64) * 200
    wh = torch.rand(n_shape + (dims,), dtype=torch.float64) * 60 + 4
    t = torch.cat([xy, xy + wh], -1)
    # offsets relative to the box size (jitter 8 -> ~0.16 of the size per coordinate), bounded
    # smoothly (no ties at the kinks of |x| / min / max)
    # so that pairs overlap well: IoU-free regions (log(IoU) of a sliver) are tested separately
    p = t + 0.4 * torch.tanh(torch.randn(t.shape, dtype=torch.float64) * jitter / 20) * wh.repeat(*([1] * (wh.dim() - 1)), 2)
    p = torch.cat([torch.minimum(p[..., :dims], p[..., dims:]), torch.maximum(p[..., :dims], p[..., dims:])], -1)
    p, t = xyxy_to(p, fmt), xyxy_to(t, fmt)
    if layout == "sliced":
        p, t = p[..., ::2, :], t[..., ::2, :]
        assert not p.is_contiguous() or p.numel() <= 4
    p = p.to(dtype).to(device).requires_grad_(requires_grad)
    t = t.to(dtype).to(device)
    return p, t


def loss(p, t, *, backend, **kw):
    return fastloss.box_iou_loss(p, t, backend=backend, **kw)


def reference(p, t, **kw):
    p64 = p.detach().to(torch.float64).cpu().requires_grad_()
    t64 = t.detach().to(torch.float64).cpu()
    kw = dict(kw)
    if isinstance(kw.get("weight"), torch.Tensor):
        kw["weight"] = kw["weight"].detach().to(torch.float64).cpu()
    if isinstance(kw.get("avg_factor"), torch.Tensor):
        kw["avg_factor"] = kw["avg_factor"].cpu()
    return p64, R.box_iou_loss(p64, t64, **kw)


# Box geometry in fp32 is ill-conditioned relative to the tolerance table's fp32 row: 1 - IoU of
# a near match with coordinates ~200 and sizes ~2..60 loses ~log2(coord / size) bits to the
# subtractions (x2 - x1, cx - w/2), whichever implementation computes it.  fp32 results are
# compared with the table's fp32 tolerances times this condition factor (fp64/fp16/bf16 use
# the table as is: fp16/bf16 outputs are rounded far coarser than the fp32 compute error).
FP32_CONDITION = 30.0


def close(actual, expected, dtype, *, reduced=False, msg="", floor=0.0):
    """helpers.assert_close, with the fp32 condition factor above and an optional absolute
    ``floor`` (gradients that are mathematically 0 come out as rounding noise of the terms that
    cancel there, e.g. 1e-18 in fp64)."""
    if dtype != torch.float32 and not floor:
        return assert_close(actual, expected, dtype, reduced=reduced, msg=msg)
    t = helpers.tol(dtype)
    cond = FP32_CONDITION if dtype == torch.float32 else 1.0
    exp = expected.detach().to(actual.device).to(dtype).to(torch.float64)
    finite = exp[torch.isfinite(exp)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    rtol = (t.rtol_reduced if reduced else t.rtol) * cond
    torch.testing.assert_close(actual.detach().to(torch.float64), exp, rtol=rtol, atol=t.atol * cond * scale + t.floor(dtype) + floor,
                               equal_nan=True, msg=lambda m: f"{msg}\n{m}")


def check(p, t, backend, msg="", **kw):
    out = loss(p, t, backend=backend, **kw)
    p64, ref = reference(p, t, **kw)
    reduced = kw.get("reduction", "mean") != "none"
    assert out.device == p.device and out.dtype == p.dtype
    close(out, ref, p.dtype, reduced=reduced, msg=f"forward {msg} {kw}")
    up = random_upstream(out)
    (g,) = torch.autograd.grad(out, p, up)
    (gr,) = torch.autograd.grad(ref, p64, up.to(torch.float64).cpu())
    assert g.shape == p.shape and g.dtype == p.dtype
    floor = 0.0
    if kw.get("kind") == "bounded_iou" and p.dtype != torch.float64:
        # its smooth-L1 branch's derivative l / beta amplifies the rounding of the extents
        # (x2 - x1 of coordinates ~200, FP32_CONDITION) by 1 / beta, and its size term's
        # min(w_t / w_p, w_p / w_t) switches branch at equal widths, where the low-precision
        # tie decision may differ from fp64's: an absolute floor of 1e-3 per box
        floor = 1e-3 / (max(p.numel() // 4, 1) if kw.get("reduction", "mean") == "mean" else 1)
    close(g, gr, p.dtype, msg=f"gradient {msg} {kw}", floor=floor)
    return out, g


def shapes_for(device, backend):
    if helpers.is_interpreted(device, backend):
        return [((1,), "contiguous"), ((7,), "contiguous"), ((2, 5), "contiguous"), ((300,), "contiguous"), ((9,), "sliced")]
    return [((1,), "contiguous"), ((7,), "contiguous"), ((4099,), "contiguous"), ((3, 37), "contiguous"), ((2, 3, 5), "contiguous"),
            ((0,), "contiguous"), ((33,), "sliced")]


# ======================================================================================
# values and gradients vs the float64 reference
# ======================================================================================


def combos_for(device, backend):
    """(fmt, shape, layout, reductions): everything on the compiled/reference backends, a
    covering subset under the (slow) Triton interpreter."""
    if helpers.is_interpreted(device, backend):
        return [("xyxy", (7,), "contiguous", ("none",)), ("xywh", (2, 5), "contiguous", ("mean",)), ("cxcywh", (9,), "sliced", ("sum",)),
                ("xyxy", (300,), "contiguous", ("mean",))]
    out = []
    for fmt in FMTS:
        for shape, layout in shapes_for(device, backend):
            out.append((fmt, shape, layout, REDUCTIONS if shape in ((7,), (3, 37)) else ("none", "mean")))
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_forward_backward_vs_reference(grad_mode, device, backend, dtype, kind):
    helpers.require_backend(device, backend)
    for fmt, shape, layout, reductions in combos_for(device, backend):
        p, t = make_pair(shape, fmt, dtype, device, layout)
        for reduction in reductions:
            out, _ = check(p, t, backend, msg=f"{backend} {kind} {fmt} {shape} {layout}", kind=kind, fmt=fmt, reduction=reduction)
            assert out.shape == (p.shape[:-1] if reduction == "none" else ())


# kinds with the alpha-IoU exponent (extended_iou has none: power must be 1)
POWER_KINDS = [k for k in KINDS if k not in ("extended_iou", "bounded_iou")]


def powers_of(kind, powers):
    return powers if kind in POWER_KINDS else (1.0,)


@pytest.mark.parametrize("power", [2.0, 3.0, 0.7])
@pytest.mark.parametrize("kind", POWER_KINDS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32)))
def test_power_and_gamma_vs_reference(device, backend, dtype, kind, power):
    """alpha-IoU exponents (and Focal-EIoU's gamma)."""
    helpers.require_backend(device, backend)
    if helpers.is_interpreted(device, backend) and (power != 0.7 or dtype != torch.float32):
        pytest.skip("Triton interpreter: one power (0.7, fp32) per kind keeps the suite fast; fp64 and the other powers run on cpu/reference")
    # jitter 3: no nested pairs, so (C - U) never cancels to ~0 (where x^0.7 amplifies rounding)
    p, t = make_pair((57,), "xyxy", dtype, device, jitter=3.0)
    for gamma in ((0.5, 0.0, 1.0, 2.0) if kind == "focal_eiou" else (0.5,)):
        for reduction in ("none", "mean"):
            check(p, t, backend, msg=f"{kind} p={power} g={gamma}", kind=kind, power=power, gamma=gamma, reduction=reduction)


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_weight_and_avg_factor(grad_mode, device, backend, dtype):
    helpers.require_backend(device, backend)
    p, t = make_pair((3, 17), "xyxy", dtype, device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w_box = torch.rand(3, 17, dtype=acc, device=device)
    w_coord = torch.rand(3, 17, 4, dtype=acc, device=device)
    w_bcast = torch.rand(17, dtype=acc, device=device)
    for w in (w_box, w_coord, w_bcast, w_box.t().contiguous().t()):
        for kw in (dict(reduction="none"), dict(reduction="sum"), dict(reduction="mean"), dict(reduction="mean", avg_factor=7.0),
                   dict(reduction="mean", avg_factor=torch.tensor(7.0, device=device)), dict(reduction="none", avg_factor=3.0)):
            check(p, t, backend, msg="weight", kind="ciou", weight=w, **kw)


# ======================================================================================
# peers: torchvision's formulas, inline (always) and torchvision itself (if installed)
# ======================================================================================


def _tv_inter_union(b1, b2):
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    inter = torch.zeros_like(x1)
    mask = (yk2 > yk1) & (xk2 > xk1)
    inter[mask] = (xk2[mask] - xk1[mask]) * (yk2[mask] - yk1[mask])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def tv_giou_loss(b1, b2, eps=1e-7):
    """torchvision.ops.generalized_box_iou_loss (reduction none), written from its semantics."""
    inter, union = _tv_inter_union(b1, b2)
    iou = inter / (union + eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (area_c - union) / (area_c + eps))


def tv_diou_loss(b1, b2, eps=1e-7):
    inter, union = _tv_inter_union(b1, b2)
    iou = inter / (union + eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    diag = (torch.max(x2, x2g) - torch.min(x1, x1g)) ** 2 + (torch.max(y2, y2g) - torch.min(y1, y1g)) ** 2 + eps
    cd = ((x1 + x2) / 2 - (x1g + x2g) / 2) ** 2 + ((y1 + y2) / 2 - (y1g + y2g) / 2) ** 2
    return 1 - iou + cd / diag, iou


def tv_ciou_loss(b1, b2, eps=1e-7):
    d, iou = tv_diou_loss(b1, b2, eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    v = (4 / math.pi ** 2) * (torch.atan((x2g - x1g) / (y2g - y1g)) - torch.atan((x2 - x1) / (y2 - y1))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return d + alpha * v


TV = {"giou": tv_giou_loss, "diou": lambda a, b: tv_diou_loss(a, b)[0], "ciou": tv_ciou_loss}


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_torchvision_formula_inline(device, backend, kind):
    helpers.require_backend(device, backend)
    p, t = make_pair((203,), "xyxy", torch.float64 if device == "cpu" else torch.float32, device, jitter=20.0)
    # disjoint pairs too
    with torch.no_grad():
        p[:20] += 500
    ours = loss(p, t, backend=backend, kind=kind, reduction="none")
    theirs = TV[kind](p, t)
    tol = dict(rtol=1e-10, atol=1e-12) if p.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, theirs, **tol)
    up = torch.randn_like(ours)
    g1, = torch.autograd.grad(ours, p, up)
    g2, = torch.autograd.grad(theirs, p, up)
    torch.testing.assert_close(g1, g2, **tol)


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
def test_matches_torchvision(kind):
    tvops = pytest.importorskip("torchvision.ops", reason="torchvision is not installed (the inline formula test covers its semantics)")
    fn = {"giou": tvops.generalized_box_iou_loss, "diou": tvops.distance_box_iou_loss, "ciou": tvops.complete_box_iou_loss}[kind]
    p, t = make_pair((500,), "xyxy", torch.float64, "cpu", jitter=20.0)
    for reduction in REDUCTIONS:
        ours = fastloss.box_iou_loss(p, t, kind, reduction)
        theirs = fn(p, t, reduction=reduction, eps=1e-7)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        g1, = torch.autograd.grad(ours.sum(), p)
        g2, = torch.autograd.grad(theirs.sum(), p)
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


# ======================================================================================
# numerical policy: degenerate boxes
# ======================================================================================

DEGENERATE = {
    "identical": ([10.0, 20.0, 50.0, 80.0], [10.0, 20.0, 50.0, 80.0]),
    "zero_width": ([10.0, 20.0, 10.0, 80.0], [12.0, 25.0, 40.0, 70.0]),
    "zero_height": ([10.0, 20.0, 50.0, 20.0], [12.0, 25.0, 40.0, 70.0]),
    "both_zero_width": ([10.0, 20.0, 10.0, 80.0], [10.0, 20.0, 10.0, 80.0]),
    "point_boxes": ([5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]),
    "distinct_points": ([5.0, 5.0, 5.0, 5.0], [9.0, 7.0, 9.0, 7.0]),
    "far_apart": ([0.0, 0.0, 10.0, 10.0], [1e4, 1e4, 1e4 + 20.0, 1e4 + 5.0]),
    "nested": ([20.0, 20.0, 30.0, 40.0], [10.0, 10.0, 60.0, 60.0]),
    "padded_zero": ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),
    "zero_vs_box": ([0.0, 0.0, 0.0, 0.0], [10.0, 10.0, 30.0, 30.0]),
    "same_centre": ([10.0, 10.0, 30.0, 30.0], [15.0, 5.0, 25.0, 35.0]),
    "inverted": ([50.0, 80.0, 10.0, 20.0], [10.0, 20.0, 50.0, 80.0]),
    "inverted_both": ([50.0, 80.0, 10.0, 20.0], [50.0, 80.0, 10.0, 20.0]),
}


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_degenerate_boxes_finite(grad_mode, device, backend, dtype):
    helpers.require_backend(device, backend)
    names = list(DEGENERATE)
    p = torch.tensor([DEGENERATE[n][0] for n in names], dtype=torch.float64)
    t = torch.tensor([DEGENERATE[n][1] for n in names], dtype=torch.float64)
    p = p.to(dtype).to(device).requires_grad_()
    t = t.to(dtype).to(device)
    for kind in KINDS:
        for power in powers_of(kind, (1.0, 0.5, 3.0)):
            out = loss(p, t, backend=backend, kind=kind, reduction="none", power=power)
            (g,) = torch.autograd.grad(out, p, torch.ones_like(out))
            bad = [n for n, ok in zip(names, torch.isfinite(out).tolist()) if not ok]
            assert not bad, f"{kind} p={power}: non-finite loss for {bad}"
            # finite wherever the float64 value is representable in the dtype: identical zero-width
            # boxes get GIoU gradients of order 1 / eps (3e8, as torchvision's), beyond fp16's range
            p64, ref = reference(p, t, kind=kind, reduction="none", power=power)
            (g64,) = torch.autograd.grad(ref, p64, torch.ones_like(ref))
            representable = (g64.abs() <= torch.finfo(dtype).max).to(g.device)
            bad = [n for n, ok in zip(names, (torch.isfinite(g) | ~representable).all(-1).tolist()) if not ok]
            assert not bad, f"{kind} p={power}: non-finite gradient for {bad}"
            if dtype == torch.float64:
                _, ref = reference(p, t, kind=kind, reduction="none", power=power)
                torch.testing.assert_close(out, ref.to(out.device), rtol=1e-9, atol=1e-9)
            i = names.index("inverted")
            if kind in ("iou", "giou", "diou", "ciou"):
                assert out[i].item() >= 0.99, f"{kind}: an inverted box must not be a match (loss {out[i].item()})"
            j = names.index("identical")
            if kind != "log_iou":
                assert abs(out[j].item()) < 1e-3 * (1 if dtype in (torch.float64, torch.float32) else 10)


def test_ciou_point_boxes_finite_where_torchvision_is_nan():
    p = torch.tensor([[5.0, 5.0, 5.0, 5.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    assert torch.isnan(tv_ciou_loss(p, t)).all()  # the peer's semantics
    for backend in fastloss.available_backends("cpu"):
        out = fastloss.box_iou_loss(p, t, "ciou", "sum", backend=backend)
        assert out.item() == pytest.approx(1.0)  # IoU = 0 / eps = 0, rho = 0, v = 0
        g, = torch.autograd.grad(out, p)
        assert torch.isfinite(g).all()


def make_nan_pair(device, dims=2):
    """fp32 pairs of 2 * (2 dims) + 1 boxes: box k of pred has a NaN in coordinate k, box
    2 dims + k of target in coordinate k (k < 2 dims); the last pair is clean."""
    c = 2 * dims
    p, t = make_pair((2 * c + 1,), "xyxy", torch.float32, device, dims=dims)
    with torch.no_grad():
        for k in range(c):
            p[k, k] = float("nan")
            t[c + k, k] = float("nan")
    return p, t


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_nan_propagates(grad_mode, device, backend):
    """A NaN coordinate (of pred or target, any of the 4) makes its box's loss and all 4
    gradient components NaN, and touches nothing else."""
    helpers.require_backend(device, backend)
    p, t = make_nan_pair(device)
    for kind in KINDS:
        for power in powers_of(kind, (1.0, 0.5)):
            out = loss(p, t, backend=backend, kind=kind, reduction="none", power=power)
            assert torch.isnan(out[:8]).all() and torch.isfinite(out[8]), f"{kind} p={power}: {out}"
            (g,) = torch.autograd.grad(out, p, torch.ones_like(out))
            assert torch.isnan(g[:8]).all() and torch.isfinite(g[8]).all(), f"{kind} p={power}: {g}"
            assert torch.isnan(loss(p, t, backend=backend, kind=kind, reduction="sum"))
    # the example: NaN in x1 of an IoU loss, every component NaN (the C++ kernel gave [0, nan, 0, nan])
    q = torch.tensor([[float("nan"), 0.0, 10.0, 10.0]], device=device, requires_grad=True)
    (g,) = torch.autograd.grad(loss(q, torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device), backend=backend, kind="iou",
                                    reduction="none").sum(), q)
    assert torch.isnan(g).all(), g


# Degenerate predictions and the gradient torchvision's autograd gives them (computed with
# torchvision 0.29 in float64; NaN where torchvision's CIoU divides by a zero height -- there
# fastloss gives the finite limit).  A collapsed box must get the direction that grows it back.
TARGET = [0.0, 0.0, 20.0, 30.0]
DEGENERATE_TV = {  # pred: {kind: gradient}
    "collapsed_width": ([10.0, 10.0, 10.0, 20.0], {"giou": [1 / 60, 0, -1 / 60, 0], "diou": [0, 0, 0, 0],
                                                    "ciou": [0.005857810856332817, 0, -0.005857810856332817, 0]}),
    "collapsed_height": ([10.0, 10.0, 20.0, 10.0], {"giou": [0, 1 / 60, 0.025, -1 / 60],
                                                     "diou": [0.003846153845857988, -0.003846153845857988, 0.00325443786961766,
                                                              -0.003846153845857988]}),
    "point": ([5.0, 5.0, 5.0, 5.0], {"giou": [0, 0, 0, 0], "diou": [-0.003846153845857988, -0.007692307691715976, -0.003846153845857988,
                                                                     -0.007692307691715976]}),
    "collapsed_off_centre": ([12.0, 3.0, 12.0, 20.0], {"giou": [0.028333333328611113, 0, -0.028333333328611113, 0],
                                                        "diou": [0.0015384615383431952, -0.002692307692100592, 0.0015384615383431952,
                                                                 -0.002692307692100592],
                                                        "ciou": [0.0049842326303036755, -0.002692307692100592, -0.0019073095536172855,
                                                                 -0.002692307692100592]}),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(DEGENERATE_TV))
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_degenerate_prediction_gets_torchvisions_gradient(grad_mode, device, backend, case, dtype):
    helpers.require_backend(device, backend)
    if dtype == torch.float64 and device == "cuda":
        dtype = torch.float32
    pred, grads = DEGENERATE_TV[case]
    t = torch.tensor([TARGET], dtype=dtype, device=device)
    for kind, expected in grads.items():
        p = torch.tensor([pred], dtype=dtype, device=device, requires_grad=True)
        (g,) = torch.autograd.grad(loss(p, t, backend=backend, kind=kind, reduction="sum"), p)
        torch.testing.assert_close(g.double().cpu(), torch.tensor([expected], dtype=torch.float64), rtol=1e-5, atol=1e-7,
                                   msg=lambda m: f"{case} {kind}: {m}")


def test_degenerate_gradients_match_torchvision_live():
    """The table above against the installed torchvision (and the zero-height CIoU, where
    torchvision is NaN and fastloss finite)."""
    tvops = pytest.importorskip("torchvision.ops", reason="torchvision is not installed (the table above holds its values)")
    fns = {"giou": tvops.generalized_box_iou_loss, "diou": tvops.distance_box_iou_loss, "ciou": tvops.complete_box_iou_loss}
    t = torch.tensor([TARGET], dtype=torch.float64)
    for case, (pred, grads) in DEGENERATE_TV.items():
        for kind, expected in grads.items():
            p = torch.tensor([pred], dtype=torch.float64, requires_grad=True)
            (g,) = torch.autograd.grad(fns[kind](p, t, reduction="sum"), p)
            torch.testing.assert_close(g, torch.tensor([expected], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    p = torch.tensor([DEGENERATE_TV["collapsed_height"][0]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fns["ciou"](p, t, reduction="sum"), p)
    assert torch.isnan(g).all()
    (g,) = torch.autograd.grad(fastloss.box_iou_loss(p, t, "ciou", "sum"), p)
    assert torch.isfinite(g).all() and g[0, 1] > 0 and g[0, 3] < 0  # the height grows back


# ======================================================================================
# gradcheck, opcheck, torch.compile, the eager fast path
# ======================================================================================


# CIoU's backward treats alpha as a constant (torchvision, ultralytics): by design not the
# derivative of the forward, so it is checked against the reference's autograd instead (above).
GRADCHECK_KINDS = [k for k in KINDS if k != "ciou"]


@pytest.mark.parametrize("kind", GRADCHECK_KINDS)
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_gradcheck_fp64(backend, kind):
    helpers.require_backend("cpu", backend)
    for fmt in ("xyxy", "cxcywh"):
        p, t = make_pair((4,), fmt, torch.float64, "cpu", jitter=4.0)
        w = torch.rand(4, dtype=torch.float64)
        for power, reduction in ((1.0, "mean"), (powers_of(kind, (2.0,))[0], "none")):
            def fn(x):
                return fastloss.box_iou_loss(x, t, kind, reduction, w, fmt=fmt, power=power, backend=backend)

            assert helpers.gradcheck(fn, (p,), backend, eps=1e-6, atol=1e-7, rtol=1e-5)


ALL_OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck(op, args):
    result = torch.library.opcheck(op, args, test_utils=ALL_OPCHECK_UTILS)
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_opcheck(backend):
    helpers.require_backend("cpu", backend)
    small = helpers.is_interpreted("cpu", backend)  # the Triton interpreter is slow: a covering subset
    for dtype in ((torch.float32,) if small else (torch.float32, torch.float64)):
        p, t = make_pair((6,), "xyxy", dtype, "cpu", requires_grad=True)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for kind in ((4,) if small else (4, 7)):
            for code in ((0, 2) if small else (0, 1, 2)):
                for w in ((torch.rand(6, dtype=acc),) if small else (None, torch.rand(6, dtype=acc)) if kind == 4 else (None,)):
                    for store in (True, False):
                        _opcheck(torch.ops.fastloss.box_iou_loss.default, (p, t, w, kind, 0, 0, 1e-7, 1.0, 0.5, code, store, backend))
                pd = p.detach()
                grad = torch.randn(6, dtype=dtype) if code == 0 else torch.randn((), dtype=acc)
                _, cache = torch.ops.fastloss.box_iou_loss(pd, t, None, kind, 0, 0, 1e-7, 1.0, 0.5, code, True, backend)
                for c in (cache, torch.empty(0, dtype=acc)):
                    _opcheck(torch.ops.fastloss.box_iou_loss_backward.default, (grad, pd, t, None, c, kind, 0, 0, 1e-7, 1.0, 0.5, code, backend))


def _loss_and_grad(fn, x, *args):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args)
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_compile_fullgraph_aot_eager(dynamo_reset, backend):
    helpers.require_backend("cpu", backend)
    p, t = make_pair((2, 9), "cxcywh", torch.float32, "cpu")
    w = torch.rand(2, 9)
    avg = torch.tensor(5.0)

    def fn(x, target, weight, avg_factor):
        a = fastloss.box_iou_loss(x, target, "ciou", "mean", weight, avg_factor, fmt="cxcywh", backend=backend)
        b = fastloss.box_iou_loss(x, target, "giou", "none", fmt="cxcywh", power=2.0, backend=backend)
        return a + (b * b).sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, p, t, w, avg)
    out_c, g_c = _loss_and_grad(compiled, p, t, w, avg)
    assert torch.equal(out_e, out_c)
    assert torch.equal(g_e, g_c)


def test_compile_fullgraph_inductor(dynamo_reset):
    p, t = make_pair((40,), "xyxy", torch.float32, "cpu")

    def fn(x, target):
        return fastloss.box_iou_loss(x, target, "diou", "mean", avg_factor=3.0) * 2.0 + x.sum() * 0.0

    compiled = torch.compile(fn, fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, p, t)
    out_c, g_c = _loss_and_grad(compiled, p, t)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_c, g_e, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("store", [True, False], ids=["store", "recompute"])
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float32, torch.float16)))
def test_eager_fast_path_equals_custom_op(device, backend, dtype, store):
    helpers.require_backend(device, backend)
    p, t = make_pair((17,), "xyxy", dtype, device)
    w = torch.rand(17, device=device)
    for code in (0, 1, 2):
        args = (t, w, 4, 0, 0, 1e-7, 1.0, 0.5, code, store, backend)
        out_f, cache_f = fastloss.BoxIoULossFunction.apply(p, *args)
        out_o, cache_o = torch.ops.fastloss.box_iou_loss(p, *args)
        assert torch.equal(out_f, out_o) and torch.equal(cache_f, cache_o)
        assert cache_f.shape == ((17, 4) if store else (0,))
        up = random_upstream(out_f)
        (g_f,) = torch.autograd.grad(out_f, p, up)
        (g_o,) = torch.autograd.grad(out_o, p, up)
        assert torch.equal(g_f, g_o)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_retain_graph_second_backward(grad_mode, device, backend):
    """The eager fast path scales the gradient its forward stored in place only when the
    graph is freed after the backward: through a retained graph every backward gives the
    same bits, and gradients accumulate."""
    helpers.require_backend(device, backend)
    p, t = make_pair((33,), "cxcywh", torch.float32, device)
    w = torch.rand(33, device=device)
    for reduction in REDUCTIONS:
        out = loss(p, t, backend=backend, kind="ciou", reduction=reduction, weight=w, fmt="cxcywh")
        up = random_upstream(out)
        (g1,) = torch.autograd.grad(out, p, up, retain_graph=True)
        (g2,) = torch.autograd.grad(out, p, up)
        assert torch.equal(g2, g1), reduction
        p.grad = None
        out = loss(p, t, backend=backend, kind="giou", reduction=reduction)
        out.backward(up, retain_graph=True)
        g_once = p.grad.clone()
        out.backward(up)
        torch.testing.assert_close(p.grad, 2 * g_once, rtol=1e-5, atol=1e-7, msg=reduction)
        p.grad = None


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_deterministic(grad_mode, device, backend):
    helpers.require_backend(device, backend)
    n = 200_000 if helpers.splits_work(device, backend) else 2000
    p, t = make_pair((n,), "xyxy", torch.float32, device)
    w = torch.rand(n, device=device)
    for reduction in REDUCTIONS:
        up = None
        results = []
        for _ in range(2):
            out = loss(p, t, backend=backend, kind="ciou", reduction=reduction, weight=w)
            up = random_upstream(out) if up is None else up
            (g,) = torch.autograd.grad(out, p, up)
            results.append((out, g))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1]), reduction


def test_cpu_reduction_independent_of_thread_count():
    helpers.require_backend("cpu", "cpu")
    p, t = make_pair((100_000,), "xyxy", torch.float32, "cpu", requires_grad=False)
    threads = torch.get_num_threads()
    res = []
    try:
        for k in (1, 2, 3):
            torch.set_num_threads(k)
            res.append(fastloss.box_iou_loss(p, t, "giou", "sum", backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(res[0], r) for r in res[1:])


@pytest.mark.parametrize("device,backend", [p for p in helpers.device_backend_params() if p.values[1] != "cpu"])
def test_every_output_written_poisoned(nan_poison, grad_mode, device, backend):
    helpers.require_backend(device, backend)
    for n in (1, 7, 255, 256, 257, 1000):
        p, t = make_pair((n,), "xyxy", torch.float32, device)
        for reduction in REDUCTIONS:
            out, g = check(p, t, backend, msg=f"poisoned {n}", kind="siou", reduction=reduction)
            assert not torch.isnan(out).any() and not torch.isnan(g).any()


# ======================================================================================
# API: module, bad inputs
# ======================================================================================


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_nn_module(device, backend):
    helpers.require_backend(device, backend)
    m = fastloss.nn.BoxIoULoss(kind="ciou", reduction="mean", fmt="xywh", power=2.0)
    assert "ciou" in repr(m) and "xywh" in repr(m)
    p, t = make_pair((12,), "xywh", torch.float32, device)
    w = torch.rand(12, device=device)
    with fastloss.use_backend(backend):
        a = m(p, t, weight=w, avg_factor=3.0)
        b = loss(p, t, backend=backend, kind="ciou", reduction="mean", weight=w, avg_factor=3.0, fmt="xywh", power=2.0)
    assert torch.equal(a, b)
    assert list(m.parameters()) == []


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_bad_inputs(backend):
    helpers.require_backend("cpu", backend)
    p, t = make_pair((6,), "xyxy", torch.float32, "cpu")

    def call(*a, **k):
        return fastloss.box_iou_loss(*a, backend=backend, **k)

    with pytest.raises(ValueError, match=r"pred must have shape \(\.\.\., 4\)"):
        call(p[:, :3], t[:, :3])
    with pytest.raises(ValueError, match="target must have pred's shape"):
        call(p, t[:5])
    with pytest.raises(ValueError, match="kind must be one of"):
        call(p, t, kind="wiou")
    with pytest.raises(ValueError, match="fmt must be one of"):
        call(p, t, fmt="yxyx")
    with pytest.raises(ValueError, match="reduction must be one of"):
        call(p, t, reduction="avg")
    with pytest.raises(ValueError, match="avg_factor can not be used"):
        call(p, t, reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="pred must be a floating-point"):
        call(p.detach().long(), t)
    with pytest.raises(TypeError, match="pred must be a torch.Tensor"):
        call([[0.0] * 4], t)
    with pytest.raises(ValueError, match="does not differentiate with respect to target"):
        call(p, t.clone().requires_grad_())
    with pytest.raises(ValueError, match="does not differentiate with respect to weight"):
        call(p, t, weight=torch.rand(6, requires_grad=True))
    with pytest.raises(ValueError, match="weight of shape"):
        call(p, t, weight=torch.rand(5))
    with pytest.raises(ValueError, match="power must be > 0"):
        call(p, t, power=0.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        call(p, t, kind="focal_eiou", gamma=-1.0)
    for eps in (-1.0, 0.0):  # eps = 0 would make two point boxes 0 / 0
        with pytest.raises(ValueError, match="eps must be > 0"):
            call(p, t, eps=eps)


# ======================================================================================
# pairwise / batched matrices and the fused max
# ======================================================================================

METRICS = R.METRICS


def make_sets(lead, N, M, fmt="xyxy", dtype=torch.float32, device="cpu", requires_grad=True, aligned=False):
    """boxes1 (*lead, N, 4), boxes2 (*lead, M, 4): boxes2 are jittered copies of random boxes1
    plus random boxes, so the matrix has overlaps and non-overlaps."""
    def rand_boxes(n):
        xy = torch.rand(tuple(lead) + (n, 2), dtype=torch.float64) * 100
        wh = torch.rand(tuple(lead) + (n, 2), dtype=torch.float64) * 40 + 4
        return torch.cat([xy, xy + wh], -1)
    a = rand_boxes(N)
    b = rand_boxes(M)
    k = min(N, M)
    if k:
        b[..., :k, :] = a[..., :k, :] + torch.randn(a[..., :k, :].shape, dtype=torch.float64) * 3
        b = torch.cat([torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])], -1)
    a, b = xyxy_to(a, fmt), xyxy_to(b, fmt)
    a = a.to(dtype).to(device).requires_grad_(requires_grad)
    b = b.to(dtype).to(device).requires_grad_(requires_grad)
    return a, b


def check_matrix(a, b, backend, kind, fmt, aligned, msg=""):
    out = fastloss.box_iou(a, b, kind, fmt, aligned, backend=backend)
    a64 = a.detach().double().cpu().requires_grad_()
    b64 = b.detach().double().cpu().requires_grad_()
    ref = R.box_iou(a64, b64, kind, fmt, aligned)
    assert out.shape == ref.shape and out.dtype == a.dtype and out.device == a.device
    close(out, ref, a.dtype, msg=f"matrix {msg}")
    up = random_upstream(out)
    g1, g2 = torch.autograd.grad(out, (a, b), up)
    r1, r2 = torch.autograd.grad(ref, (a64, b64), up.double().cpu())
    floor = 1e-15 if a.dtype == torch.float64 else 1e-9  # ~ compute eps / box size (fp32 compute below fp64)
    close(g1, r1, a.dtype, msg=f"grad boxes1 {msg}", floor=floor)
    close(g2, r2, a.dtype, msg=f"grad boxes2 {msg}", floor=floor)
    return out


def matrix_cases(device, backend):
    if helpers.is_interpreted(device, backend):
        return [((), 3, 5, "xyxy"), ((2,), 4, 3, "cxcywh"), ((), 1, 1, "xywh")]
    return [((), 7, 13, "xyxy"), ((), 1, 1, "xywh"), ((2, 3), 5, 9, "cxcywh"), ((3,), 37, 150, "xyxy"), ((), 0, 4, "xyxy"), ((2,), 3, 0, "xywh")]


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_matrix_vs_reference(device, backend, dtype, kind):
    helpers.require_backend(device, backend)
    for lead, N, M, fmt in matrix_cases(device, backend):
        a, b = make_sets(lead, N, M, fmt, dtype, device)
        out = check_matrix(a, b, backend, kind, fmt, False, msg=f"{backend} {kind} {lead} {N}x{M} {fmt}")
        assert out.shape == tuple(lead) + (N, M)
        a, b = make_sets(lead, N, N, fmt, dtype, device)
        out = check_matrix(a, b, backend, kind, fmt, True, msg=f"aligned {backend} {kind} {lead} {N} {fmt}")
        assert out.shape == tuple(lead) + (N,)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_matrix_noncontiguous_and_single_aligned_box(device, backend):
    helpers.require_backend(device, backend)
    a, b = make_sets((4,), 6, 10, "xyxy", torch.float32, device, requires_grad=False)
    a_nc = a.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not a_nc.is_contiguous()
    check_matrix(a_nc, b.requires_grad_(), backend, "giou", "xyxy", False, msg="non-contiguous")
    x = torch.tensor([1.0, 2.0, 5.0, 7.0], device=device, requires_grad=True)
    y = torch.tensor([2.0, 2.0, 6.0, 8.0], device=device, requires_grad=True)
    out = check_matrix(x, y, backend, "iou", "xyxy", True, msg="single aligned box")
    assert out.shape == ()


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32, torch.float16)))
def test_matrix_padded_and_degenerate_boxes(device, backend, dtype):
    """YOLO-style padded all-zero ground truth rows, point / zero-width / inverted / far boxes:
    finite values and gradients for every kind."""
    helpers.require_backend(device, backend)
    if helpers.is_interpreted(device, backend) and dtype != torch.float32:
        pytest.skip("Triton interpreter: fp32 only here (slow); the other dtypes run on cpu/reference")
    rows = [v[0] for v in DEGENERATE.values()] + [[0.0, 0.0, 0.0, 0.0]] * 3
    cols = [v[1] for v in DEGENERATE.values()] + [[0.0, 0.0, 0.0, 0.0]] * 2
    a = torch.tensor(rows, dtype=dtype, device=device).requires_grad_()
    b = torch.tensor(cols, dtype=dtype, device=device).requires_grad_()
    for kind in METRICS:
        for aligned in (False, True):
            bb = b if not aligned else torch.tensor(rows, dtype=dtype, device=device).flip(0).requires_grad_()
            out = fastloss.box_iou(a, bb, kind, aligned=aligned, backend=backend)
            assert torch.isfinite(out).all(), kind
            g1, g2 = torch.autograd.grad(out, (a, bb), torch.ones_like(out))
            # finite wherever the float64 gradient is representable (GIoU of identical zero-width
            # boxes: order 1 / eps, as torchvision's, beyond fp16's range)
            a64, b64 = a.detach().double().cpu().requires_grad_(), bb.detach().double().cpu().requires_grad_()
            r1, r2 = torch.autograd.grad(R.box_iou(a64, b64, kind, aligned=aligned).sum(), (a64, b64))
            top = torch.finfo(dtype).max
            assert (torch.isfinite(g1).cpu() | (r1.abs() > top)).all() and (torch.isfinite(g2).cpu() | (r2.abs() > top)).all(), kind
            if dtype == torch.float64:
                ref = R.box_iou(a.detach().cpu(), bb.detach().cpu(), kind, aligned=aligned)
                torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)
    # padded zero boxes have IoU 0 with everything, including each other
    z = torch.zeros(2, 4, dtype=dtype, device=device)
    assert (fastloss.box_iou(z, z, "iou", backend=backend) == 0).all()


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_matrix_gradcheck_fp64(backend):
    helpers.require_backend("cpu", backend)
    a, b = make_sets((2,), 3, 4, "cxcywh", torch.float64, "cpu")
    for kind in [k for k in METRICS if k != "ciou"]:  # ciou: alpha is a constant in the backward (see GRADCHECK_KINDS)
        assert helpers.gradcheck(lambda x, y: fastloss.box_iou(x, y, kind, "cxcywh", backend=backend), (a, b), backend, eps=1e-6, atol=1e-7,
                                 rtol=1e-5)
        c, d = make_sets((), 3, 3, "xyxy", torch.float64, "cpu")
        assert helpers.gradcheck(lambda x, y: fastloss.box_iou(x, y, kind, aligned=True, backend=backend), (c, d), backend, eps=1e-6,
                                 atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_matrix_opcheck(backend):
    helpers.require_backend("cpu", backend)
    small = helpers.is_interpreted("cpu", backend)
    for dtype in ((torch.float32,) if small else (torch.float32, torch.float64)):
        a, b = make_sets((2,), 3, 5, "xyxy", dtype, "cpu")
        for kind in ((4,) if small else (0, 2, 4)):
            _opcheck(torch.ops.fastloss.box_iou.default, (a, b, kind, 0, 0, 1e-7, False, backend))
            c, d = make_sets((2,), 4, 4, "xyxy", dtype, "cpu")
            _opcheck(torch.ops.fastloss.box_iou.default, (c, d, kind, 1, 0, 1e-7, True, backend))
            g = torch.randn(2, 3, 5, dtype=dtype)
            _opcheck(torch.ops.fastloss.box_iou_backward.default, (g, a.detach(), b.detach(), kind, 0, 0, 1e-7, False, backend))
            for dim in (0, 1):
                _opcheck(torch.ops.fastloss.box_iou_max.default, (a.detach(), b.detach(), kind, 0, 0, 1e-7, dim, backend))


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_matrix_compile_fullgraph_detr_diagonal(dynamo_reset, backend):
    """DETR's GIoU loss: the diagonal of a pairwise GIoU, through torch.compile(fullgraph=True)."""
    helpers.require_backend("cpu", backend)
    a, b = make_sets((), 6, 6, "cxcywh", torch.float32, "cpu", requires_grad=False)

    def fn(x, y):
        return (1 - torch.diag(fastloss.box_iou(x, y, "giou", "cxcywh", backend=backend))).sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, a, b)
    out_c, g_c = _loss_and_grad(compiled, a, b)
    assert torch.equal(out_e, out_c) and torch.equal(g_e, g_c)
    # and it equals the aligned form
    x = a.detach().clone().requires_grad_()
    al = (1 - fastloss.box_iou(x, b, "giou", "cxcywh", aligned=True, backend=backend)).sum()
    torch.testing.assert_close(al, out_e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_matrix_deterministic(device, backend):
    helpers.require_backend(device, backend)
    N, M = (5, 300) if helpers.is_interpreted(device, backend) else (60, 3000)
    a, b = make_sets((2,), N, M, "xyxy", torch.float32, device)
    up = None
    res = []
    for _ in range(2):
        out = fastloss.box_iou(a, b, "ciou", backend=backend)
        up = random_upstream(out) if up is None else up
        res.append((out,) + torch.autograd.grad(out, (a, b), up))
    assert all(torch.equal(x, y) for x, y in zip(*res))


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32, torch.bfloat16)))
def test_max_vs_matrix(device, backend, dtype, kind):
    helpers.require_backend(device, backend)
    cases = [((), 3, 7), ((2,), 4, 5)] if helpers.is_interpreted(device, backend) else [((), 7, 130), ((3,), 20, 300), ((2, 2), 1, 9)]
    for lead, N, M in cases:
        a, b = make_sets(lead, N, M, "xyxy", dtype, device, requires_grad=False)
        m = fastloss.box_iou(a, b, kind, backend=backend)
        for dim in (-1, -2, len(lead), len(lead) + 1):
            v, i = fastloss.box_iou_max(a, b, kind, dim=dim, backend=backend)
            ev, ei = m.max(dim=dim)
            assert v.shape == ev.shape and i.dtype == torch.int64
            assert torch.equal(v, ev), (kind, lead, dim)  # same per-pair math, so the same bits
            # the fused max compares the fp32 values before rounding to the output dtype: with
            # bf16 outputs, pairs that round to the same value may pick another (equal) index
            assert torch.equal(m.gather(dim, i.unsqueeze(dim)).squeeze(dim), ev), (kind, lead, dim)
            if dtype != torch.bfloat16:
                assert torch.equal(i, ei), (kind, lead, dim)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_max_ties_padding_nan(device, backend):
    helpers.require_backend(device, backend)
    gt = torch.tensor([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], device=device)
    anchors = torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0], [10.0, 10.0, 20.0, 20.0], [50.0, 50.0, 60.0, 60.0]], device=device)
    v, i = fastloss.box_iou_max(gt, anchors, "iou", dim=-1, backend=backend)
    assert i.tolist() == [1, 0, 0]  # ties: the first index; padded rows: IoU 0 everywhere -> index 0
    assert v[0].item() == pytest.approx(1.0, abs=1e-6) and v[1:].tolist() == [0.0, 0.0]
    v, i = fastloss.box_iou_max(gt, anchors, "iou", dim=-2, backend=backend)
    assert i.tolist() == [0, 0, 0, 0] and v[3].item() == 0.0
    anchors[2, 0] = float("nan")
    v, i = fastloss.box_iou_max(gt, anchors, "iou", dim=-1, backend=backend)
    assert torch.isnan(v[0]) and i[0].item() == 2  # NaN is the maximum, as in torch.max


def test_max_index_past_fp32_integers():
    """The CPU kernel carries the argmax in float lanes as (block, offset): an index past 2^24
    (not an fp32 integer) must come back exact, in both directions."""
    helpers.require_backend("cpu", "cpu")
    L = 2 ** 24 + 7
    win = 2 ** 24 + 5  # odd: rounds away in fp32
    gt = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    anchors = torch.tensor([100.0, 100.0, 110.0, 110.0]).repeat(L, 1)
    anchors[win] = gt[0]
    anchors[3] = torch.tensor([12.0, 12.0, 20.0, 20.0])  # an earlier, smaller overlap
    v, i = fastloss.box_iou_max(gt, anchors, "iou", dim=-1, backend="cpu")
    assert i.tolist() == [win] and v.item() == pytest.approx(1.0, abs=1e-6)
    v, i = fastloss.box_iou_max(anchors, gt, "iou", dim=-2, backend="cpu")
    assert i.tolist() == [win]


def test_box_iou_bad_inputs():
    a = torch.rand(2, 3, 4)
    b = torch.rand(2, 5, 4)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(\.\.\., 4\)"):
        fastloss.box_iou(a[..., :3], b)
    with pytest.raises(ValueError, match="same leading"):
        fastloss.box_iou(a, torch.rand(3, 5, 4))
    with pytest.raises(ValueError, match="aligned=True needs"):
        fastloss.box_iou(a, b, aligned=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        fastloss.box_iou(a, b, kind="siou")
    with pytest.raises(ValueError, match="fmt must be one of"):
        fastloss.box_iou(a, b, fmt="xyxy2")
    assert fastloss.box_iou(a, b.double()).dtype == torch.float64  # torch's type promotion (tests/test_rules.py)
    with pytest.raises(ValueError, match="eps must be > 0"):
        fastloss.box_iou(a, b, eps=0.0)
    with pytest.raises(ValueError, match="dim must be"):
        fastloss.box_iou_max(a, b, dim=0)
    with pytest.raises(ValueError, match="empty"):
        fastloss.box_iou_max(a, torch.rand(2, 0, 4), dim=-1)
    with pytest.raises(ValueError, match=r"\(\.\.\., N, 4\)"):
        fastloss.box_iou(torch.rand(4), torch.rand(4))


# ======================================================================================
# conventions: the peers' eps placements, against the peers themselves (float64)
# ======================================================================================

D = torch.float64
ULTRA_FLAGS = {"iou": {}, "giou": dict(GIoU=True), "diou": dict(DIoU=True), "ciou": dict(CIoU=True)}


def conv_boxes(n, seed):
    """(pred, target) float64 xyxy pairs (n >= 4): mostly overlapping (IoU on both sides of
    mmdetection's 0.5 gate), plus a disjoint pair, an identical pair and tiny boxes whose
    union is below eps = 0.5 (mmdetection's max(U, eps) branch)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=D) * 20
    wh = torch.rand(n, 2, generator=g, dtype=D) * 8 + 0.5
    t = torch.cat([xy, xy + wh], -1)
    p = t + (torch.rand(n, 4, generator=g, dtype=D) - 0.5) * wh.repeat(1, 2) * 0.6
    p = torch.cat([torch.minimum(p[:, :2], p[:, 2:]), torch.maximum(p[:, :2], p[:, 2:])], -1)
    p[0] = t[0] + 40.0  # disjoint
    p[1] = t[1]  # identical
    t[2] = torch.tensor([3.0, 4.0, 3.3, 4.2], dtype=D)  # tiny: union < 0.5
    p[2] = torch.tensor([3.1, 4.05, 3.45, 4.3], dtype=D)
    return p, t


def close64(ours, theirs, msg):
    scale = max(theirs.detach().abs().max().item(), 1.0) if theirs.numel() else 1.0
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-12, atol=1e-13 * scale, msg=lambda m: f"{msg}\n{m}")


def _peers():
    ultra = pytest.importorskip("ultralytics.utils.metrics")
    tvops = pytest.importorskip("torchvision.ops")
    losses, overlaps = helpers.import_mmdet_losses()
    from mmdet.models.losses.iou_loss import ciou_loss, diou_loss, giou_loss, iou_loss

    def ultra_metric(kind, eps):
        return lambda a, b: ultra.bbox_iou(a, b, xywh=False, eps=eps, **ULTRA_FLAGS[kind]).squeeze(-1)

    def mmdet_metric(kind, eps):  # aligned rows
        if kind in ("iou", "iof", "giou"):
            return lambda a, b: overlaps(a, b, kind, is_aligned=True, eps=eps)
        fn = {"diou": diou_loss, "ciou": ciou_loss}[kind]
        return lambda a, b: 1 - fn(a, b, eps=eps, reduction="none")

    def mmdet_loss(kind, eps):
        if kind == "log_iou":  # iou_loss's union eps is bbox_overlaps' default 1e-6 whatever its eps
            assert eps == 1e-6
            return lambda a, b: iou_loss(a, b, mode="log", eps=eps, reduction="none")
        if kind == "iou":
            return lambda a, b: 1 - overlaps(a, b, "iou", is_aligned=True, eps=eps)
        fn = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}[kind]
        return lambda a, b: fn(a, b, eps=eps, reduction="none")

    tv_matrix = {"iou": lambda eps: tvops.box_iou, "giou": lambda eps: tvops.generalized_box_iou,
                 "diou": lambda eps: (lambda a, b: tvops.distance_box_iou(a, b, eps=eps)),
                 "ciou": lambda eps: (lambda a, b: tvops.complete_box_iou(a, b, eps=eps))}
    return ultra_metric, mmdet_metric, mmdet_loss, tv_matrix


# (convention, kind, eps values): eps 0.5 makes every placement visible at box sizes ~1..10
CONV_LOSSES = ([("ultralytics", k, (1e-7, 0.5)) for k in ULTRA_FLAGS] + [("mmdet", "log_iou", (1e-6,))]
               + [("mmdet", k, (1e-6, 0.5)) for k in ("iou", "giou", "diou", "ciou")])
CONV_METRICS = ([("ultralytics", k, (1e-7, 0.5)) for k in ULTRA_FLAGS] + [("mmdet", k, (1e-6, 0.5)) for k in R.METRICS]
                + [("torchvision_matrix", k, (1e-7, 0.5)) for k in ("iou", "giou", "diou", "ciou")])


def _small(backend):
    return helpers.is_interpreted("cpu", backend)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_convention_losses_match_peers(backend):
    helpers.require_backend("cpu", backend)
    ultra_metric, _, mmdet_loss, _ = _peers()
    p, t = conv_boxes(6 if _small(backend) else 40, seed=1)
    for conv, kind, epss in CONV_LOSSES:
        for eps in epss:
            peer = mmdet_loss(kind, eps) if conv == "mmdet" else (lambda a, b: 1 - ultra_metric(kind, eps)(a, b))
            x, y = p.clone().requires_grad_(), p.clone().requires_grad_()
            ours = fastloss.box_iou_loss(x, t, kind, "none", eps=eps, convention=conv, backend=backend)
            theirs = peer(y, t)
            msg = f"{backend} {conv} {kind} eps={eps}"
            close64(ours, theirs, msg)
            up = torch.randn(ours.shape, dtype=D, generator=torch.Generator().manual_seed(2))
            (g,) = torch.autograd.grad(ours, x, up)
            (gr,) = torch.autograd.grad(theirs, y, up)
            close64(g, gr, "gradient " + msg)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_convention_metrics_match_peers(backend):
    helpers.require_backend("cpu", backend)
    ultra_metric, mmdet_metric, _, tv_matrix = _peers()
    p, t = conv_boxes(5 if _small(backend) else 24, seed=3)
    N = 3 if _small(backend) else 9
    for conv, kind, epss in CONV_METRICS:
        for eps in epss:
            msg = f"{backend} {conv} {kind} eps={eps}"
            if conv == "torchvision_matrix":
                matrix = tv_matrix[kind](eps)

                def aligned(a, b):
                    return torch.diagonal(matrix(a, b))
            else:
                aligned = ultra_metric(kind, eps) if conv == "ultralytics" else mmdet_metric(kind, eps)

                def matrix(a, b):  # every (i, j) pair as aligned rows
                    n, m = a.shape[0], b.shape[0]
                    return aligned(a[:, None].expand(n, m, 4).reshape(-1, 4), b[None].expand(n, m, 4).reshape(-1, 4)).reshape(n, m)
            for is_aligned, (a, b) in ((True, (p, t)), (False, (p[:N], t))):
                xs = [a.clone().requires_grad_(), b.clone().requires_grad_()]
                ys = [a.clone().requires_grad_(), b.clone().requires_grad_()]
                ours = fastloss.box_iou(*xs, kind, aligned=is_aligned, eps=eps, convention=conv, backend=backend)
                theirs = (aligned if is_aligned else matrix)(*ys)
                close64(ours, theirs, f"{msg} aligned={is_aligned}")
                up = torch.randn(ours.shape, dtype=D, generator=torch.Generator().manual_seed(4))
                for g, gr in zip(torch.autograd.grad(ours, xs, up), torch.autograd.grad(theirs, ys, up)):
                    close64(g, gr, f"gradient {msg} aligned={is_aligned}")
                if not is_aligned and not _small(backend):
                    v, i = fastloss.box_iou_max(a, b, kind, eps=eps, convention=conv, backend=backend)
                    assert torch.equal(v, ours.detach().max(-1).values) and torch.equal(i, ours.detach().max(-1).indices), msg


def test_ultralytics_centre_form_is_fastloss_cxcywh():
    """ultralytics' bbox_iou(xywh=True) has no eps in the heights: convention "fastloss" with
    fmt cxcywh (equal up to the rounding of the corners)."""
    ultra = pytest.importorskip("ultralytics.utils.metrics")
    p, t = conv_boxes(30, seed=5)
    p, t = xyxy_to(p, "cxcywh"), xyxy_to(t, "cxcywh")
    for kind, flags in ULTRA_FLAGS.items():
        x, y = p.clone().requires_grad_(), p.clone().requires_grad_()
        ours = fastloss.box_iou(x, t, kind, "cxcywh", aligned=True, eps=0.5)
        theirs = ultra.bbox_iou(y, t, xywh=True, eps=0.5, **flags).squeeze(-1)
        close64(ours, theirs, kind)
        up = torch.randn(ours.shape, dtype=D)
        close64(torch.autograd.grad(ours, x, up)[0], torch.autograd.grad(theirs, y, up)[0], "gradient " + kind)


CONV_GRADCHECK = [("ultralytics", "giou"), ("ultralytics", "diou"), ("mmdet", "iou"), ("mmdet", "log_iou"), ("mmdet", "giou")]


@pytest.mark.parametrize("backend", ("cpu", "reference"))
def test_convention_gradcheck_fp64(backend):
    """Every convention's gradient is the derivative of its forward (CIoU aside: its alpha is
    a constant in the backward by design, checked against the peers above)."""
    helpers.require_backend("cpu", backend)
    p, t = conv_boxes(5, seed=6)
    p[2] = p[2] + 0.01  # off the kinks of the tiny pair
    for conv, kind in CONV_GRADCHECK:
        for eps in (1e-6, 0.5) if kind != "log_iou" else (1e-6,):
            assert helpers.gradcheck(lambda x: fastloss.box_iou_loss(x, t, kind, "none", eps=eps, convention=conv, backend=backend),
                                     (p.clone().requires_grad_(),), backend, eps=1e-7, atol=1e-7, rtol=1e-5)
    for conv, kind in (("mmdet", "iof"), ("mmdet", "giou"), ("torchvision_matrix", "giou"), ("torchvision_matrix", "diou"),
                       ("ultralytics", "iou")):
        assert helpers.gradcheck(lambda a, b: fastloss.box_iou(a, b, kind, eps=0.5, convention=conv, backend=backend),
                                 (p[:3].clone().requires_grad_(), t.clone().requires_grad_()), backend, eps=1e-7, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", ("cpu", "reference"))
def test_convention_opcheck(backend):
    helpers.require_backend("cpu", backend)
    p, t = conv_boxes(6, seed=7)
    p = p.float().requires_grad_()
    t = t.float()
    for kind, conv in ((4, 1), (4, 2), (2, 2)):
        _opcheck(torch.ops.fastloss.box_iou_loss.default, (p, t, None, kind, 0, conv, 0.5, 1.0, 0.5, 0, True, backend))
    a = p[None, :4].detach().requires_grad_()
    b = t[None].requires_grad_()
    for kind, conv in ((2, 3), (4, 2), (1, 2)):
        _opcheck(torch.ops.fastloss.box_iou.default, (a, b, kind, 0, conv, 0.5, False, backend))
        _opcheck(torch.ops.fastloss.box_iou_max.default, (a.detach(), b.detach(), kind, 0, conv, 0.5, 1, backend))


def test_convention_fastloss_is_the_default():
    p, t = conv_boxes(12, seed=8)
    for kind in KINDS:
        assert torch.equal(fastloss.box_iou_loss(p, t, kind, "none"), fastloss.box_iou_loss(p, t, kind, "none", convention="fastloss"))
    for kind in METRICS:
        assert torch.equal(fastloss.box_iou(p, t, kind), fastloss.box_iou(p, t, kind, convention="fastloss"))
    m = fastloss.nn.BoxIoULoss("ciou", convention="mmdet", eps=1e-6)
    assert "convention='mmdet'" in repr(m)
    assert torch.equal(m(p, t), fastloss.box_iou_loss(p, t, "ciou", eps=1e-6, convention="mmdet"))
    m = fastloss.nn.BoxIoULoss("siou", convention="mmdet", eps=1e-6, neg_gamma=True)
    assert "neg_gamma=True" in repr(m)
    assert torch.equal(m(p, t), fastloss.box_iou_loss(p, t, "siou", eps=1e-6, convention="mmdet", neg_gamma=True))
    m = fastloss.nn.BoxIoULoss("extended_iou", smooth_point=0.3)
    assert torch.equal(m(p, t), fastloss.box_iou_loss(p, t, "extended_iou", smooth_point=0.3))
    with pytest.raises(ValueError, match="neg_gamma"):  # the kind-specific arguments fail at construction
        fastloss.nn.BoxIoULoss("giou", neg_gamma=True)
    with pytest.raises(ValueError, match="smooth_point"):
        fastloss.nn.BoxIoULoss("extended_iou", smooth_point=0.0)


def test_convention_bad_inputs():
    p, t = conv_boxes(4, seed=9)
    with pytest.raises(ValueError, match="convention must be one of"):
        fastloss.box_iou_loss(p, t, convention="yolo")
    with pytest.raises(ValueError, match="convention 'ultralytics' defines the kinds"):
        fastloss.box_iou_loss(p, t, "eiou", convention="ultralytics")
    with pytest.raises(ValueError, match="convention 'torchvision_matrix' defines the kinds"):
        fastloss.box_iou_loss(p, t, "giou", convention="torchvision_matrix")
    with pytest.raises(ValueError, match="convention 'ultralytics' defines the metrics"):
        fastloss.box_iou(p, t, "iof", convention="ultralytics")
    with pytest.raises(ValueError, match="convention 'torchvision_matrix' defines the metrics"):
        fastloss.box_iou_max(p, t, "iof", convention="torchvision_matrix")
    with pytest.raises(ValueError, match="convention must be one of"):
        fastloss.nn.BoxIoULoss(convention="torchvision")
    with pytest.raises(ValueError, match="convention 'mmdet' defines the kinds"):
        fastloss.nn.BoxIoULoss("eiou", convention="mmdet")
    with pytest.raises(ValueError, match="neg_gamma is a parameter of kind 'siou' under convention 'mmdet'"):
        fastloss.box_iou_loss(p, t, "siou", neg_gamma=True)
    with pytest.raises(ValueError, match="power must be 1 for kind 'siou'"):
        fastloss.box_iou_loss(p, t, "siou", power=2.0, convention="mmdet")
    with pytest.raises(ValueError, match="power must be 1 for kind 'extended_iou'"):
        fastloss.box_iou_loss(p, t, "extended_iou", power=0.5)
    with pytest.raises(ValueError, match="smooth_point"):
        fastloss.box_iou_loss(p, t, "extended_iou", smooth_point=0.0)


# mmdetection's siou_loss (neg_gamma False / True) and eiou_loss (Extended-IoU, smooth_point)
MMDET_EXTRA = [("siou", dict(neg_gamma=False)), ("siou", dict(neg_gamma=True)), ("extended_iou", dict(smooth_point=0.1)),
               ("extended_iou", dict(smooth_point=0.7)), ("bounded_iou", dict(smooth_point=0.2)), ("bounded_iou", dict(smooth_point=0.05))]


def _mmdet_extra_peer(kind, eps, kw):
    helpers.import_mmdet_losses()
    from mmdet.models.losses.iou_loss import bounded_iou_loss, eiou_loss, siou_loss

    if kind == "siou":
        return lambda a, b: siou_loss(a, b, eps=eps, reduction="none", **kw)
    if kind == "bounded_iou":  # the per-box sum of its (N, 4) terms
        return lambda a, b: bounded_iou_loss(a, b, eps=eps, beta=kw["smooth_point"], reduction="none").sum(-1)
    return lambda a, b: eiou_loss(a, b, eps=eps, reduction="none", **kw)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_mmdet_siou_and_extended_iou_match_peers(backend):
    """Kinds siou (convention mmdet), extended_iou and bounded_iou (summed over coordinates) against mmdetection's own functions in
    float64: values and gradients (random upstream gradient), eps 1e-6 / 1e-7 and 0.5."""
    helpers.require_backend("cpu", backend)
    p, t = conv_boxes(6 if _small(backend) else 40, seed=11)
    for kind, kw in MMDET_EXTRA:
        for eps in (1e-6, 1e-7, 0.5):
            peer = _mmdet_extra_peer(kind, eps, kw)
            x, y = p.clone().requires_grad_(), p.clone().requires_grad_()
            ours = fastloss.box_iou_loss(x, t, kind, "none", eps=eps, convention="mmdet", backend=backend, **kw)
            theirs = peer(y, t)
            msg = f"{backend} mmdet {kind} {kw} eps={eps}"
            close64(ours, theirs, msg)
            up = torch.randn(ours.shape, dtype=D, generator=torch.Generator().manual_seed(12))
            (g,) = torch.autograd.grad(ours, x, up)
            (gr,) = torch.autograd.grad(theirs, y, up)
            close64(g, gr, "gradient " + msg)
    for kind in ("extended_iou", "bounded_iou"):  # the same losses under convention fastloss
        assert torch.equal(fastloss.box_iou_loss(p, t, kind, "none", backend=backend),
                           fastloss.box_iou_loss(p, t, kind, "none", convention="mmdet", backend=backend))


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_mmdet_siou_and_extended_iou_kernels_vs_reference(backend):
    """Both kinds (and every neg_gamma / smooth_point) against the float64 reference in fp32
    and fp64, all formats, with weights; the clamp of mmdetection's SIoU binding (far-apart
    boxes under neg_gamma=False: SIoU < -1)."""
    helpers.require_backend("cpu", backend)
    for dtype in (torch.float64, torch.float32):
        for fmt in FMTS:
            p, t = make_pair((7,) if _small(backend) else (300,), fmt, dtype, "cpu")
            with torch.no_grad():
                p[0] = t[0] + torch.tensor([200.0, 150.0, 200.0, 150.0], dtype=dtype) if fmt == "xyxy" else t[0]
            for kind, kw in MMDET_EXTRA:
                for reduction in ("none", "sum"):
                    check(p, t, backend, msg=f"{kind} {kw} {fmt}", kind=kind, fmt=fmt, reduction=reduction, convention="mmdet",
                          eps=1e-6, **kw)


@pytest.mark.parametrize("backend", ("cpu", "reference", "triton"))
def test_mmdet_siou_and_extended_iou_gradcheck_fp64(backend):
    helpers.require_backend("cpu", backend)
    p, t = conv_boxes(5, seed=13)
    p = p + torch.tensor([0.01, 0.02, 0.037, 0.051], dtype=D)  # off the kinks of equal extents (min / max ties)
    for kind, kw in MMDET_EXTRA:
        assert helpers.gradcheck(lambda x: fastloss.box_iou_loss(x, t, kind, "none", eps=1e-6, convention="mmdet", backend=backend, **kw),
                                 (p.clone().requires_grad_(),), backend, eps=1e-7, atol=1e-7, rtol=1e-5)


def test_mmdet_siou_finite_where_mmdet_is_nan():
    """The eps-shifted centre offset at (0, 0) (angle cost 0 / 0) and two zero-width boxes
    (shape cost 0 / 0): mmdetection gives NaN, fastloss the finite limits."""
    eps = 2.0 ** -20  # exact offsets: the prediction's centre is the target's + eps
    t = torch.tensor([[0.0, 0.0, 0.0, 10.0], [0.0, 0.0, 4.0, 10.0]], dtype=D)
    p = torch.tensor([[0.0, 0.0, 0.0, 10.0], [eps, eps, 4.0 + eps, 10.0 + eps]], dtype=D, requires_grad=True)
    peer = _mmdet_extra_peer("siou", eps, {})(p, t)
    assert torch.isnan(peer).all()
    for backend in fastloss.available_backends("cpu"):
        out = fastloss.box_iou_loss(p, t, "siou", "none", eps=eps, convention="mmdet", backend=backend)
        (g,) = torch.autograd.grad(out.sum(), p)
        assert torch.isfinite(out).all() and torch.isfinite(g).all(), (backend, out, g)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_peer_kinds_opcheck_and_compile(dynamo_reset, backend):
    """The kinds and conventions added for the peers (mmdetection's CIoU / SIoU / Extended-IoU /
    Bounded IoU, ultralytics' CIoU): opcheck of the paired op (stored and recomputed gradient)
    and torch.compile(fullgraph=True) parity."""
    helpers.require_backend("cpu", backend)
    p, t = conv_boxes(6, seed=21)
    p = p.float().requires_grad_()
    t = t.float()
    cases = (("ciou", "mmdet", 1e-6, 0.5), ("siou", "mmdet", 1e-6, 1.0), ("extended_iou", "mmdet", 1e-6, 0.1),
             ("bounded_iou", "fastloss", 1e-3, 0.2), ("ciou", "ultralytics", 1e-7, 0.5))
    for kind, conv, eps, gamma in cases:  # gamma: the slot carrying neg_gamma / smooth_point / beta
        for store in (False, True):
            _opcheck(torch.ops.fastloss.box_iou_loss.default,
                     (p, t, None, ops_box.KINDS[kind], 0, ops_box.CONVENTIONS[conv], eps, 1.0, gamma, 2, store, backend))

    def fn(p, t):
        return (fastloss.box_iou_loss(p, t, "siou", eps=1e-6, convention="mmdet", neg_gamma=True, backend=backend)
                + fastloss.box_iou_loss(p, t, "extended_iou", eps=1e-6, smooth_point=0.2, backend=backend)
                + fastloss.box_iou_loss(p, t, "ciou", convention="ultralytics", reduction="sum", backend=backend))

    helpers.assert_compiled_matches_eager(fn, (p, t), p)


# ======================================================================================
# 3-D boxes (..., 6) = (x1, y1, z1, x2, y2, z2): kinds iou / giou / diou, xyxy, convention
# fastloss (csrc/kernels/box_iou.h PairND).  Pairwise matrices stay 2-D.
# ======================================================================================

KINDS_3D = R.KINDS_3D


def make_pair_3d(shape, dtype=torch.float32, device="cpu", layout="contiguous", requires_grad=True):
    """Random overlapping 3-D box pairs (*shape, 6) (make_pair's, xyxy)."""
    return make_pair(shape, "xyxy", dtype, device, layout, requires_grad=requires_grad, dims=3)


def _volume_formula(p, t, kind):
    """The 3-D losses written out independently of the reference (inline, float64)."""
    def vol(lo, hi):
        return (hi - lo).clamp(min=0).prod(-1)

    lo_p, hi_p, lo_t, hi_t = p[..., :3], p[..., 3:], t[..., :3], t[..., 3:]
    inter = vol(torch.maximum(lo_p, lo_t), torch.minimum(hi_p, hi_t))
    union = vol(lo_p, hi_p) + vol(lo_t, hi_t) - inter
    iou = inter / (union + 1e-7)
    enc_lo, enc_hi = torch.minimum(lo_p, lo_t), torch.maximum(hi_p, hi_t)
    if kind == "iou":
        return 1 - iou
    if kind == "giou":
        c = vol(enc_lo, enc_hi)
        return 1 - iou + (c - union) / (c + 1e-7)
    rho2 = (((lo_p + hi_p) - (lo_t + hi_t)) / 2).pow(2).sum(-1)
    return 1 - iou + rho2 / ((enc_hi - enc_lo).pow(2).sum(-1) + 1e-7)


def test_3d_reference_matches_the_formulas():
    p, t = make_pair_3d((50,), torch.float64, requires_grad=False)
    for kind in KINDS_3D:
        torch.testing.assert_close(R.box_iou_loss(p, t, kind, "none"), _volume_formula(p, t, kind), rtol=1e-12, atol=1e-12)
    # a 3-D box with depth 1 from z = 0 behaves as its 2-D footprint (areas = volumes); DIoU's
    # enclosing diagonal gains the depth's 1
    p2, t2 = make_pair((20,), "xyxy", torch.float64, requires_grad=False)
    z0, z1 = torch.zeros(20, 1, dtype=torch.float64), torch.ones(20, 1, dtype=torch.float64)

    def lift(b):
        return torch.cat([b[:, :2], z0, b[:, 2:], z1], 1)

    for kind in ("iou", "giou"):
        torch.testing.assert_close(R.box_iou_loss(lift(p2), lift(t2), kind, "none"), R.box_iou_loss(p2, t2, kind, "none"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS_3D)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_3d_forward_backward_vs_reference(grad_mode, device, backend, dtype, kind):
    helpers.require_backend(device, backend)
    small = helpers.is_interpreted(device, backend)
    cases = [((7,), "contiguous"), ((2, 5), "contiguous"), ((9,), "sliced"), ((0,), "contiguous")]
    if not small:
        cases += [((1,), "contiguous"), ((4099,), "contiguous"), ((3, 37), "contiguous")]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for shape, layout in cases:
        p, t = make_pair_3d(shape, dtype, device, layout)
        for reduction in REDUCTIONS:
            for power in ((1.0, 0.7) if dtype in (torch.float64, torch.float32) else (1.0,)):
                out, _ = check(p, t, backend, msg=f"3-D {backend} {kind} {shape} {layout}", kind=kind, reduction=reduction, power=power)
                assert out.shape == (p.shape[:-1] if reduction == "none" else ())
        w = torch.rand(shape, dtype=acc, device=device)
        w6 = torch.rand(shape + (6,), dtype=acc, device=device)  # per coordinate: averaged (mmdetection)
        for kw in (dict(weight=w, reduction="none"), dict(weight=w6, reduction="sum"), dict(weight=w, reduction="mean", avg_factor=3.0)):
            check(p, t, backend, msg=f"3-D weight {backend} {kind} {shape}", kind=kind, **kw)


DEGENERATE_3D = {
    "identical": ([1.0, 2.0, 3.0, 11.0, 12.0, 13.0], [1.0, 2.0, 3.0, 11.0, 12.0, 13.0]),
    "disjoint": ([0.0, 0.0, 0.0, 5.0, 5.0, 5.0], [50.0, 60.0, 70.0, 55.0, 65.0, 75.0]),
    "point_pred": ([4.0, 4.0, 4.0, 4.0, 4.0, 4.0], [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]),
    "point_both": ([4.0, 4.0, 4.0, 4.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0, 4.0, 4.0]),
    "flat_pred": ([2.0, 2.0, 5.0, 8.0, 8.0, 5.0], [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]),
    "nested": ([2.0, 2.0, 2.0, 4.0, 4.0, 4.0], [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]),
    "inverted": ([10.0, 10.0, 10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]),
    "inverted_z": ([0.0, 0.0, 10.0, 10.0, 10.0, 0.0], [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]),
    "zeros": ([0.0] * 6, [0.0] * 6),
}


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_3d_degenerate_boxes(grad_mode, device, backend, dtype):
    """Finite values and gradients, the reference's numbers in float64, inverted boxes never a
    match, a flat (zero-depth) prediction gets the gradient that grows it back."""
    helpers.require_backend(device, backend)
    names = list(DEGENERATE_3D)
    p = torch.tensor([DEGENERATE_3D[n][0] for n in names], dtype=torch.float64).to(dtype).to(device).requires_grad_()
    t = torch.tensor([DEGENERATE_3D[n][1] for n in names], dtype=torch.float64).to(dtype).to(device)
    for kind in KINDS_3D:
        for power in (1.0, 0.5, 3.0):
            out = loss(p, t, backend=backend, kind=kind, reduction="none", power=power)
            (g,) = torch.autograd.grad(out, p, torch.ones_like(out))
            assert torch.isfinite(out).all(), f"{kind} p={power}: {out}"
            p64, ref = reference(p, t, kind=kind, reduction="none", power=power)
            (g64,) = torch.autograd.grad(ref, p64, torch.ones_like(ref))
            representable = (g64.abs() <= torch.finfo(dtype).max).to(g.device)
            assert (torch.isfinite(g) | ~representable).all(), f"{kind} p={power}: {g}"
            if dtype == torch.float64:
                torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(g, g64, rtol=1e-9, atol=1e-9)
            for name in ("inverted", "inverted_z", "disjoint"):
                assert out[names.index(name)].item() >= 0.99, f"{kind}: {name} must not be a match"
            assert abs(out[names.index("identical")].item()) < 1e-3 * (1 if dtype in (torch.float64, torch.float32) else 10)
    # the flat prediction (z1 == z2) inside the target: GIoU's union term opens it in z (the
    # extents' clamp'(0) = 1, as in 2-D): dL/dz2 = -(w h) / (C + eps) = -36 / 1000, dL/dz1 the opposite
    out = loss(p, t, backend=backend, kind="giou", reduction="none")
    (g,) = torch.autograd.grad(out, p, torch.ones_like(out))
    i = names.index("flat_pred")
    expected = torch.tensor([0.0, 0.0, 0.036, 0.0, 0.0, -0.036], dtype=torch.float64)
    torch.testing.assert_close(g[i].double().cpu(), expected, rtol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5, atol=1e-7)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_3d_nan_propagates(grad_mode, device, backend):
    helpers.require_backend(device, backend)
    p, t = make_nan_pair(device, dims=3)
    for kind in KINDS_3D:
        out = loss(p, t, backend=backend, kind=kind, reduction="none")
        assert torch.isnan(out[:12]).all() and torch.isfinite(out[12]), (kind, out)
        (g,) = torch.autograd.grad(out, p, torch.ones_like(out))
        assert torch.isnan(g[:12]).all() and torch.isfinite(g[12]).all(), (kind, g)


@pytest.mark.parametrize("kind", KINDS_3D)
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_3d_gradcheck_fp64(backend, kind):
    helpers.require_backend("cpu", backend)
    p, t = make_pair_3d((4,), torch.float64)
    w = torch.rand(4, dtype=torch.float64)
    for power, reduction in ((1.0, "mean"), (2.0, "none")):
        def fn(x):
            return fastloss.box_iou_loss(x, t, kind, reduction, w, power=power, backend=backend)

        assert helpers.gradcheck(fn, (p,), backend, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_3d_opcheck_and_compile(dynamo_reset, backend):
    helpers.require_backend("cpu", backend)
    p, t = make_pair_3d((6,), torch.float32)
    for kind in (ops_box.KINDS["giou"], ops_box.KINDS["diou"]):
        for code in (0, 2):
            for store in (True, False):
                _opcheck(torch.ops.fastloss.box_iou_loss.default, (p, t, torch.rand(6), kind, 0, 0, 1e-7, 1.0, 0.5, code, store, backend))
        pd = p.detach()
        _, cache = torch.ops.fastloss.box_iou_loss(pd, t, None, kind, 0, 0, 1e-7, 1.0, 0.5, 2, True, backend)
        for c in (cache, torch.empty(0)):
            _opcheck(torch.ops.fastloss.box_iou_loss_backward.default, (torch.randn(()), pd, t, None, c, kind, 0, 0, 1e-7, 1.0, 0.5, 2, backend))

    def fn(p, t):
        return fastloss.box_iou_loss(p, t, "giou", backend=backend) + fastloss.box_iou_loss(p, t, "diou", "sum", power=2.0, backend=backend)

    helpers.assert_compiled_matches_eager(fn, (p, t), p)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_3d_deterministic_and_module(grad_mode, device, backend):
    helpers.require_backend(device, backend)
    n = 600 if helpers.is_interpreted(device, backend) else 100_000
    p, t = make_pair_3d((n,), torch.float32, device)
    results = []
    for _ in range(2):
        out = loss(p, t, backend=backend, kind="diou", reduction="mean")
        (g,) = torch.autograd.grad(out, p)
        results.append((out, g))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    m = fastloss.nn.BoxIoULoss(kind="giou", loss_weight=2.0, backend=backend)
    torch.testing.assert_close(m(p, t), 2 * loss(p, t, backend=backend, kind="giou"), rtol=1e-6, atol=0)


def test_3d_bad_inputs():
    p, t = make_pair_3d((3,), torch.float32)
    for kind in (k for k in KINDS if k not in KINDS_3D):
        with pytest.raises(ValueError, match="3-D boxes"):
            fastloss.box_iou_loss(p, t, kind)
    with pytest.raises(ValueError, match="3-D boxes"):
        fastloss.box_iou_loss(p, t, "giou", fmt="cxcywh")
    with pytest.raises(ValueError, match="3-D boxes"):
        fastloss.box_iou_loss(p, t, "giou", convention="ultralytics")
    with pytest.raises(ValueError, match="3-D boxes"):
        fastloss.nn.BoxIoULoss("ciou")(p, t)
    with pytest.raises(ValueError, match="pred's shape"):
        fastloss.box_iou_loss(p, t[:, :4], "giou")
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        fastloss.box_iou_loss(p[:, :5], t[:, :5], "giou")
    # pairwise / aligned matrices and the fused max are 2-D only
    with pytest.raises(ValueError, match="box_iou_loss only"):
        fastloss.box_iou(p, t)
    with pytest.raises(ValueError, match="box_iou_loss only"):
        fastloss.box_iou_max(p, t)
    if "cpu" in fastloss.available_backends("cpu"):  # the kernel's own check, past the Python layer
        with pytest.raises(RuntimeError, match="3-D boxes"):
            torch.ops.fastloss.box_iou_loss_forward_native(p.detach(), t, None, ops_box.KINDS["ciou"], 0, 0, 1e-7, 1.0, 0.5, 2, False)


# ======================================================================================
# Bounded IoU's per-coordinate mode (per_coordinate=True): the kernels' 4 terms per box,
# loss (n, 4) and an (n, 4) upstream gradient (reduction code ops_box.TERMS)
# ======================================================================================


def _terms_reference(p, t, fmt, eps, beta, weight=None, reduction="none", avg_factor=None):
    p64 = p.detach().to(torch.float64).cpu().requires_grad_()
    terms = R.bounded_iou_terms(p64, t.detach().to(torch.float64).cpu(), fmt, eps, beta)
    if weight is not None:
        w = weight.detach().to(torch.float64).cpu()
        terms = terms * (w if w.shape == terms.shape else w[..., None])
    if reduction == "none":
        return p64, terms
    if reduction == "sum":
        return p64, terms.sum()
    return p64, (terms.sum() / (avg_factor + EPS32) if avg_factor is not None else terms.sum() / max(terms.numel(), 1))


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_bounded_iou_per_coordinate_vs_reference(device, backend, dtype):
    helpers.require_backend(device, backend)
    small = helpers.is_interpreted(device, backend)
    cases = [("xyxy", (7,), "contiguous"), ("cxcywh", (2, 5), "contiguous"), ("xywh", (9,), "sliced"), ("xyxy", (0,), "contiguous")]
    if not small:
        cases += [("xyxy", (1,), "contiguous"), ("xyxy", (4099,), "contiguous"), ("xywh", (3, 37), "contiguous")]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for fmt, shape, layout in cases:
        p, t = make_pair(shape, fmt, dtype, device, layout)
        for beta, eps in ((0.2, 1e-3), (1.0, 0.5)):
            w_terms = torch.rand(shape + (4,), dtype=acc, device=device)
            w_box = torch.rand(shape, dtype=acc, device=device)
            for kw in (dict(reduction="none"), dict(reduction="sum"), dict(reduction="mean"), dict(reduction="none", weight=w_terms),
                       dict(reduction="none", weight=w_box), dict(reduction="mean", weight=w_box), dict(reduction="mean", weight=w_terms, avg_factor=5.0)):
                out = fastloss.box_iou_loss(p, t, "bounded_iou", fmt=fmt, eps=eps, smooth_point=beta, per_coordinate=True, backend=backend, **kw)
                p64, ref = _terms_reference(p, t, fmt, eps, beta, **kw)
                assert out.shape == (p.shape if kw["reduction"] == "none" else ()) and out.dtype == p.dtype
                close(out, ref, dtype, reduced=kw["reduction"] != "none", msg=f"terms {backend} {fmt} {shape} {kw}")
                up = random_upstream(out)
                (g,) = torch.autograd.grad(out, p, up)
                (gr,) = torch.autograd.grad(ref, p64, up.to(torch.float64).cpu())
                # the smooth-L1 derivative l / beta and the size term's min switch amplify the rounding (test_* of bounded_iou above)
                floor = 0.0 if dtype == torch.float64 else 1e-3
                close(g, gr, dtype, msg=f"terms gradient {backend} {fmt} {shape} {kw}", floor=floor)
        # the terms sum to the kind's paired loss
        if dtype == torch.float64:
            terms = fastloss.box_iou_loss(p, t, "bounded_iou", "none", fmt=fmt, smooth_point=0.2, per_coordinate=True, backend=backend)
            total = fastloss.box_iou_loss(p, t, "bounded_iou", "none", fmt=fmt, smooth_point=0.2, backend=backend)
            torch.testing.assert_close(terms.sum(-1), total, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_bounded_iou_per_coordinate_nan_and_deterministic(device, backend):
    helpers.require_backend(device, backend)
    p, t = make_nan_pair(device)
    out = fastloss.box_iou_loss(p, t, "bounded_iou", "none", per_coordinate=True, backend=backend)
    assert torch.isnan(out[:8]).any(-1).all() and torch.isfinite(out[8]).all(), out
    up = random_upstream(out)
    (g,) = torch.autograd.grad(out, p, up)
    assert torch.isnan(g[:8]).all() and torch.isfinite(g[8]).all(), g
    p, t = make_pair((300,), "xyxy", torch.float32, device)
    runs = []
    for _ in range(2):
        out = fastloss.box_iou_loss(p, t, "bounded_iou", "none", per_coordinate=True, backend=backend)
        runs.append((out, torch.autograd.grad(out, p, up[:1].expand(300, 4).contiguous())[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_bounded_iou_per_coordinate_gradcheck_opcheck_compile(dynamo_reset, backend):
    helpers.require_backend("cpu", backend)
    p, t = make_pair((5,), "cxcywh", torch.float64, "cpu", jitter=4.0)
    w = torch.rand(5, 4, dtype=torch.float64)

    def fn(x):
        return fastloss.box_iou_loss(x, t, "bounded_iou", "none", w, fmt="cxcywh", smooth_point=0.3, per_coordinate=True, backend=backend)

    assert helpers.gradcheck(fn, (p,), backend, eps=1e-6, atol=1e-7, rtol=1e-5)
    kind = ops_box.KINDS["bounded_iou"]
    for dtype in (torch.float32, torch.float64):
        q, s = make_pair((6,), "xyxy", dtype, "cpu")
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for weight in (None, torch.rand(6, dtype=acc)):
            _opcheck(torch.ops.fastloss.box_iou_loss.default, (q, s, weight, kind, 0, 2, 1e-3, 1.0, 0.2, ops_box.TERMS, False, backend))
            _opcheck(torch.ops.fastloss.box_iou_loss_backward.default,
                     (torch.randn(6, 4, dtype=dtype), q.detach(), s, weight, torch.empty(0, dtype=acc), kind, 0, 2, 1e-3, 1.0, 0.2, ops_box.TERMS,
                      backend))
    q, s = make_pair((6,), "xyxy", torch.float32, "cpu")
    wq = torch.rand(6, 4)

    def terms(x, target):
        return (fastloss.box_iou_loss(x, target, "bounded_iou", "none", wq, eps=1e-3, smooth_point=0.2, per_coordinate=True, backend=backend) ** 2).sum()

    helpers.assert_compiled_matches_eager(terms, (q, s), q)


def test_bounded_iou_per_coordinate_bad_inputs():
    p, t = make_pair((3,), "xyxy", torch.float32)
    with pytest.raises(ValueError, match="per_coordinate"):
        fastloss.box_iou_loss(p, t, "giou", per_coordinate=True)
    p3, t3 = make_pair_3d((3,), torch.float32)
    with pytest.raises(ValueError, match="3-D boxes|per_coordinate"):
        fastloss.box_iou_loss(p3, t3, "bounded_iou", per_coordinate=True)
    with pytest.raises(ValueError, match="per_coordinate"):
        fastloss.box_iou_loss(p, t, "bounded_iou", per_coordinate="yes")
    with pytest.raises(ValueError, match="per term"):
        fastloss.box_iou_loss(p, t, "bounded_iou", weight=torch.rand(3, 2), per_coordinate=True)
    with pytest.raises(ValueError, match="power"):
        fastloss.box_iou_loss(p, t, "bounded_iou", power=2.0, per_coordinate=True)
    with pytest.raises(ValueError, match="avg_factor"):
        fastloss.box_iou_loss(p, t, "bounded_iou", "sum", avg_factor=2.0, per_coordinate=True)
    m = fastloss.nn.BoxIoULoss("bounded_iou", reduction="none", smooth_point=0.2, per_coordinate=True)
    assert "per_coordinate=True" in repr(m) and m(p, t).shape == (3, 4)
    with pytest.raises(ValueError, match="per_coordinate"):
        fastloss.nn.BoxIoULoss("ciou", per_coordinate=True)
    if "cpu" in fastloss.available_backends("cpu"):  # the kernel's own checks
        with pytest.raises(RuntimeError, match="per-term"):
            torch.ops.fastloss.box_iou_loss_forward_native(p.detach(), t, None, ops_box.KINDS["giou"], 0, 0, 1e-7, 1.0, 0.5, ops_box.TERMS, False)
        with pytest.raises(RuntimeError, match="stores no gradient"):
            torch.ops.fastloss.box_iou_loss_forward_native(p.detach(), t, None, ops_box.KINDS["bounded_iou"], 0, 0, 1e-3, 1.0, 0.2, ops_box.TERMS, True)
