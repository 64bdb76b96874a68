"""fastloss.compat.torchvision against the installed torchvision (values and gradients for
both box arguments, over its argument grid), its signatures, its errors, and
``fastloss.patch("torchvision")`` (torchvision.ops and the detection models' references)."""
import inspect
import math
import sys

import pytest
import torch

pytest.importorskip("torchvision", reason="torchvision is not installed (the compat module's peer)")
tvops = pytest.importorskip("torchvision.ops")

import fastloss  # noqa: E402
from fastloss.compat import torchvision as C  # noqa: E402

LOSSES = ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]
MATRICES = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]
NAMES = ["sigmoid_focal_loss"] + LOSSES + MATRICES
REDUCTIONS = ["none", "mean", "sum"]
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)
LOW = dict(rtol=1e-2, atol=1e-3)  # gradients that come back in fp16 / bf16


def make_boxes(n, scale=1.0, seed=0, dtype=torch.float64):
    """xyxy boxes of positive size around a common area, so pairs overlap and miss; ``scale``
    1: pixels, 0.01: normalised coordinates (where the placement of eps shows)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 1
    return (torch.cat([xy, xy + wh], -1) * scale).to(dtype)


def run_both(name, a, b, up_seed=1, **kw):
    """(ours, theirs, our grads, their grads) of ``name`` with a random upstream gradient;
    grads for every floating argument that requires grad."""
    results = []
    for fn in (getattr(C, name), getattr(tvops, name)):
        x, y = a.clone().requires_grad_(a.is_floating_point()), b.clone().requires_grad_(b.is_floating_point())
        out = fn(x, y, **kw)
        wrt = [t for t in (x, y) if t.requires_grad]
        grads = ()
        if wrt:
            up = torch.randn(out.shape, generator=torch.Generator().manual_seed(up_seed), dtype=torch.float64).to(out.dtype)
            grads = torch.autograd.grad(out, wrt, up)
        results.append((out, grads))
    (o, g), (t, h) = results
    return o, t, g, h


def assert_same(o, t, g, h, tol=F64, gtol=None):
    assert o.dtype == t.dtype and o.shape == t.shape
    torch.testing.assert_close(o, t, **tol)
    assert len(g) == len(h)
    for gg, hh in zip(g, h):
        assert gg.dtype == hh.dtype
        torch.testing.assert_close(gg, hh, **(gtol or tol))


# ======================================================================================
# signatures
# ======================================================================================


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_torchvision(name):
    assert inspect.signature(getattr(C, name)) == inspect.signature(getattr(tvops, name))


# ======================================================================================
# paired losses
# ======================================================================================


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [1e-7, 1e-4, 0.5])
@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_paired_losses_match(name, reduction, eps, scale):
    """float64, values and gradients for both box sets; normalised coordinates (scale 0.01)
    make the eps placement visible (CIoU: eps only in alpha)."""
    a, b = make_boxes(64, scale, seed=1), make_boxes(64, scale, seed=2)
    assert_same(*run_both(name, a, b, reduction=reduction, eps=eps))


def test_eps_placement_is_visible():
    """The grid above would not notice a misplaced eps if eps did not change the numbers."""
    a, b = make_boxes(16, 0.01, seed=1), make_boxes(16, 0.01, seed=2)
    for name in LOSSES:
        assert (getattr(tvops, name)(a, b, eps=1e-4) - getattr(tvops, name)(a, b, eps=1e-7)).abs().max() > 1e-6
    # torchvision's CIoU loss: eps in alpha only, not in its IoU / DIoU terms
    ciou = tvops.complete_box_iou_loss(a, b, eps=0.5)
    assert not torch.allclose(ciou, fastloss.box_iou_loss(a, b, "ciou", "none", eps=0.5), rtol=1e-6, atol=0)
    torch.testing.assert_close(C.complete_box_iou_loss(a, b, eps=0.5), ciou, **F64)
    # torchvision's matrices: no eps in I / U; eps in the diagonal term and alpha only
    for name, kind in (("distance_box_iou", "diou"), ("complete_box_iou", "ciou")):
        theirs = getattr(tvops, name)(a, b, eps=0.5)
        assert not torch.allclose(theirs, fastloss.box_iou(a, b, kind, eps=0.5), rtol=1e-6, atol=0)
        torch.testing.assert_close(getattr(C, name)(a, b, eps=0.5), theirs, **F64)


@pytest.mark.parametrize("name", LOSSES)
def test_paired_losses_symmetric(name):
    """The premise of boxes2's gradient: torchvision's losses are symmetric in their arguments
    (CIoU included: v is a squared difference, its no-grad alpha uses the symmetric IoU)."""
    a, b = make_boxes(64, seed=3), make_boxes(64, seed=4)
    fn = getattr(tvops, name)
    torch.testing.assert_close(fn(a, b), fn(b, a), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_paired_losses_low_precision(name, dtype):
    """fp16 / bf16 are upcast to an fp32 result (torchvision's _upcast_non_float); the gradient
    comes back in the input dtype."""
    a, b = make_boxes(64, seed=5, dtype=dtype), make_boxes(64, seed=6, dtype=dtype)
    o, t, g, h = run_both(name, a, b, reduction="none")
    assert o.dtype == torch.float32
    assert all(x.dtype == dtype for x in g)
    assert_same(o, t, g, h, tol=F32, gtol=F32 if dtype == torch.float32 else LOW)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_paired_losses_integer_boxes(name, dtype):
    a, b = make_boxes(32, seed=7).round().to(dtype), make_boxes(32, seed=8).round().to(dtype)
    assert_same(*run_both(name, a, b, reduction="sum"), tol=F32)


@pytest.mark.parametrize("name", LOSSES + MATRICES)
def test_mixed_dtypes_promote(name):
    """fp32 with fp64 boxes computes in fp64.  torchvision's matrices do too; its losses raise
    (an index_put of fp64 into fp32), so they are compared on the fp32 boxes cast up."""
    a, b = make_boxes(16, seed=9, dtype=torch.float32), make_boxes(16, seed=10)
    if name in LOSSES:
        with pytest.raises(RuntimeError):
            getattr(tvops, name)(a, b)
        x = a.clone().requires_grad_()
        ours = getattr(C, name)(x, b)
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, getattr(tvops, name)(a.double(), b), **F64)
        assert torch.autograd.grad(ours.sum(), x)[0].dtype == torch.float32
        return
    o, t, g, h = run_both(name, a, b)
    assert o.dtype == t.dtype == torch.float64
    assert g[0].dtype == torch.float32
    assert_same(o, t, g, h, tol=F32)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shapes", [((4,), (4,)), ((5, 4), (4,)), ((2, 3, 4), (3, 4)), ((3, 4), (1, 4))])
def test_paired_losses_broadcast(name, shapes):
    s1, s2 = shapes
    a = make_boxes(math.prod(s1[:-1]), seed=11).reshape(s1)
    b = make_boxes(math.prod(s2[:-1]), seed=12).reshape(s2)
    for reduction in REDUCTIONS:
        assert_same(*run_both(name, a, b, reduction=reduction))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_paired_losses_empty(name, reduction):
    """No boxes: "mean" is 0 and graph-connected, as torchvision's."""
    a, b = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64)
    o, t, g, h = run_both(name, a, b, reduction=reduction)
    assert_same(o, t, g, h)
    assert all(x.shape == (0, 4) for x in g)


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
    "touching": ([0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]),
    "inverted": ([50.0, 80.0, 10.0, 20.0], [10.0, 20.0, 50.0, 80.0]),
}
# documented difference (module docstring): inverted boxes have zero area in fastloss
DIFFERS = {"inverted"}


def _degenerate_check(name, case, ours, theirs, ours_grads, their_grads):
    assert torch.isfinite(ours).all(), f"{name} {case}: non-finite value"
    assert all(torch.isfinite(x).all() for x in ours_grads), f"{name} {case}: non-finite gradient"
    if case in DIFFERS:
        return
    if torch.isfinite(theirs).all():
        torch.testing.assert_close(ours, theirs, **F64)
    for x, y in zip(ours_grads, their_grads):
        if torch.isfinite(y).all():
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_paired_losses_degenerate(name, case):
    """Finite everywhere; torchvision's numbers where they are finite (CIoU of a zero-height or
    point box is NaN there)."""
    a, b = (torch.tensor([v], dtype=torch.float64) for v in DEGENERATE[case])
    _degenerate_check(name, case, *run_both(name, a, b))


# ======================================================================================
# matrices
# ======================================================================================


MATRIX_GRID = [(name, eps) for name in MATRICES for eps in ((None,) if name in ("box_iou", "generalized_box_iou") else (1e-7, 1e-3, 0.5))]


@pytest.mark.parametrize("name,eps", MATRIX_GRID)
@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_matrices_match(name, eps, scale):
    """float64, (N, 4) x (M, 4) -> (N, M): values and gradients for both sets; normalised
    coordinates show torchvision's eps placement (none in box_iou / generalized_box_iou; the
    diagonal term and alpha only in distance / complete)."""
    a, b = make_boxes(13, scale, seed=13), make_boxes(17, scale, seed=14)
    assert_same(*run_both(name, a, b, **({} if eps is None else {"eps": eps})))


@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("shapes", [((2, 5, 4), (2, 3, 4)), ((5, 4), (2, 3, 4)), ((2, 1, 5, 4), (3, 4, 4))])
def test_matrices_batched(name, shapes):
    s1, s2 = shapes
    a = make_boxes(math.prod(s1[:-1]), seed=15).reshape(s1)
    b = make_boxes(math.prod(s2[:-1]), seed=16).reshape(s2)
    assert_same(*run_both(name, a, b))


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iou_formats(fmt):
    """xywh / cxcywh: fastloss forms the areas from the converted corners (torchvision: w * h),
    equal up to rounding."""
    a, b = make_boxes(9, seed=17), make_boxes(11, seed=18)
    if fmt != "xyxy":  # (x, y, w, h) / (cx, cy, w, h) of the same boxes
        a, b = (tvops.box_convert(x, "xyxy", fmt) for x in (a, b))
    assert_same(*run_both("box_iou", a, b, fmt=fmt), tol=dict(rtol=1e-12, atol=1e-14))


def test_box_iou_rotated_formats_use_torchvisions_op():
    a = torch.tensor([[10.0, 10.0, 8.0, 4.0, 30.0], [5.0, 5.0, 2.0, 2.0, 0.0]])
    b = torch.tensor([[11.0, 9.0, 6.0, 6.0, 0.0]])
    torch.testing.assert_close(C.box_iou(a, b, fmt="cxcywhr"), tvops.box_iou(a, b, fmt="cxcywhr"))


@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_matrices_low_precision(name, dtype):
    """fp16 / bf16 give fp32, computed from the coordinates upcast first.  torchvision's
    box_iou / generalized_box_iou subtract the corners in fp16 / bf16 before upcasting (an
    extra rounding fastloss does not make), so the reference is torchvision on the upcast
    boxes; gradients come back in the input dtype."""
    a, b = make_boxes(7, seed=19, dtype=dtype), make_boxes(9, seed=20, dtype=dtype)
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = getattr(C, name)(x, y)
    assert ours.dtype == getattr(tvops, name)(a, b).dtype == torch.float32
    up = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    g = torch.autograd.grad(ours, (x, y), up)
    assert all(t.dtype == dtype for t in g)
    x32, y32 = a.float().requires_grad_(), b.float().requires_grad_()
    theirs = getattr(tvops, name)(x32, y32)
    h = torch.autograd.grad(theirs, (x32, y32), up)
    torch.testing.assert_close(ours, theirs, **F32)
    for gg, hh in zip(g, h):
        torch.testing.assert_close(gg, hh.to(dtype), **(F32 if dtype == torch.float32 else LOW))


@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8])
def test_matrices_integer_boxes(name, dtype):
    """Integer boxes give fp32.  torchvision subtracts uint8 coordinates in uint8 (wrapping
    around for pairs apart), so uint8 is compared with torchvision on the same boxes in int64."""
    a, b = make_boxes(7, seed=21).round().to(dtype), make_boxes(9, seed=22).round().to(dtype)
    ours = getattr(C, name)(a, b)
    theirs = getattr(tvops, name)(a.long(), b.long())
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, **F32)


@pytest.mark.parametrize("name", MATRICES)
def test_matrices_empty(name):
    a, b = make_boxes(3, seed=23), torch.zeros(0, 4, dtype=torch.float64)
    for x, y in ((a, b), (b, a), (b, b)):
        o, t, g, h = run_both(name, x, y)
        assert_same(o, t, g, h)


@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_matrices_degenerate(name, case):
    """One pair at a time (a NaN pair in a matrix would reach the other pairs' gradients):
    finite everywhere, torchvision's numbers where they are finite (a pair with zero union or
    enclosing area is NaN there)."""
    a, b = (torch.tensor([v], dtype=torch.float64) for v in DEGENERATE[case])
    _degenerate_check(name, case, *run_both(name, a, b))


# ======================================================================================
# sigmoid focal loss
# ======================================================================================


@pytest.mark.parametrize("alpha", [0.25, 0.0, 1.0, -1])
@pytest.mark.parametrize("gamma", [2, 0.0, 0.5, 3.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_matches(alpha, gamma, reduction):
    g = torch.Generator().manual_seed(24)
    x = torch.randn(6, 7, 5, generator=g, dtype=torch.float64) * 4
    t = (torch.rand(6, 7, 5, generator=g, dtype=torch.float64) < 0.3).double()
    t[0] = torch.rand(7, 5, generator=g, dtype=torch.float64)  # soft targets
    o, th, gr, hr = run_both_focal(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    assert_same(o, th, gr, hr)


def run_both_focal(x, t, **kw):
    results = []
    for fn in (C.sigmoid_focal_loss, tvops.sigmoid_focal_loss):
        xx = x.clone().requires_grad_()
        out = fn(xx, t, **kw)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(25), dtype=torch.float64).to(out.dtype)
        results.append((out, torch.autograd.grad(out, (xx,), up)))
    (o, g), (th, h) = results
    return o, th, g, h


@pytest.mark.parametrize("shape", [(), (9,), (3, 4, 5, 2)])
def test_focal_shapes(shape):
    g = torch.Generator().manual_seed(26)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    for reduction in REDUCTIONS:
        assert_same(*run_both_focal(x, t, reduction=reduction))


@pytest.mark.parametrize("dtype,target_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                                (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_focal_dtypes(dtype, target_dtype):
    """torch's promotion, no upcast (fp16 in, fp16 out); fastloss rounds once from fp32, so
    fp16 / bf16 are compared at their own precision."""
    g = torch.Generator().manual_seed(27)
    x = (torch.randn(8, 5, generator=g) * 3).to(dtype)
    t = (torch.rand(8, 5, generator=g) < 0.4).to(target_dtype)
    o, th, gr, hr = run_both_focal(x, t, reduction="none")
    tol = F32 if dtype == target_dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    assert_same(o, th, gr, hr, tol=tol)


def test_focal_empty():
    """torchvision's mean of nothing is NaN; fastloss's is 0 (documented difference)."""
    x, t = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64)
    for reduction in ("none", "sum"):
        assert_same(*run_both_focal(x, t, reduction=reduction))
    assert torch.isnan(tvops.sigmoid_focal_loss(x, t, reduction="mean"))
    xx = x.clone().requires_grad_()
    out = C.sigmoid_focal_loss(xx, t, reduction="mean")
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, xx)
    assert g.shape == (0, 4)


# ======================================================================================
# errors
# ======================================================================================


def test_focal_errors():
    x, t = torch.randn(3, 4), torch.rand(3, 4)
    for alpha in (-0.5, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            C.sigmoid_focal_loss(x, t, alpha=alpha)
        with pytest.raises(ValueError, match="alpha"):
            tvops.sigmoid_focal_loss(x, t, alpha=alpha)
    with pytest.raises(ValueError, match="reduction"):
        C.sigmoid_focal_loss(x, t, reduction="batchmean")
    with pytest.raises(ValueError, match="gamma"):  # torchvision accepts it; fastloss's kernel needs gamma >= 0
        C.sigmoid_focal_loss(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match="targets"):
        C.sigmoid_focal_loss(x, t.long())
    with pytest.raises(ValueError, match="targets"):
        C.sigmoid_focal_loss(x, t[0])
    with pytest.raises(ValueError, match="target"):  # torchvision would differentiate soft targets
        C.sigmoid_focal_loss(x, t.clone().requires_grad_())


@pytest.mark.parametrize("name", LOSSES)
def test_paired_loss_errors(name):
    a, b = make_boxes(4), make_boxes(4, seed=1)
    fn = getattr(C, name)
    with pytest.raises(ValueError, match="reduction"):
        fn(a, b, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        getattr(tvops, name)(a, b, reduction="avg")
    for eps in (0.0, -1e-7, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            fn(a, b, eps=eps)
    with pytest.raises(ValueError, match="4"):
        fn(a[:, :3], b[:, :3])
    with pytest.raises(ValueError, match="broadcast"):
        fn(a, make_boxes(3))


def test_matrix_errors():
    a, b = make_boxes(4), make_boxes(5)
    with pytest.raises(ValueError, match="format"):
        C.box_iou(a, b, fmt="yxyx")
    with pytest.raises(ValueError):
        tvops.box_iou(a, b, fmt="yxyx")
    with pytest.raises(ValueError, match="N, 4"):
        C.generalized_box_iou(a, b[0])  # a 1-D boxes2 (torchvision: IndexError)
    with pytest.raises(ValueError, match="broadcast"):
        C.box_iou(a.expand(2, 4, 4), b.expand(3, 5, 4))
    for name in ("distance_box_iou", "complete_box_iou"):
        with pytest.raises(ValueError, match="eps"):
            getattr(C, name)(a, b, eps=0.0)


def test_no_double_backward():
    a = make_boxes(4).requires_grad_()
    out = C.generalized_box_iou_loss(a, make_boxes(4, seed=1), reduction="sum")
    (g,) = torch.autograd.grad(out, a, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), a)


# ======================================================================================
# torch.compile
# ======================================================================================


def test_compile_fullgraph():
    """The paired losses (the two-sided autograd.Function over the custom ops) and a composed
    matrix under torch.compile(fullgraph=True): the eager numbers (a single kernel: bit for bit)."""
    torch._dynamo.reset()
    a, b = make_boxes(32, seed=28), make_boxes(32, seed=29)

    def step(fn, x, y):
        x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = fn(x, y)
        return (out,) + torch.autograd.grad(out, (x, y))

    loss = lambda x, y: C.generalized_box_iou_loss(x, y, reduction="sum")  # noqa: E731
    eager = step(loss, a, b)
    compiled = step(torch.compile(loss, fullgraph=True), a, b)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)
    matrix = lambda x, y: C.complete_box_iou(x, y, eps=1e-3).sum()  # noqa: E731
    for e, c in zip(step(matrix, a[:7], b), step(torch.compile(matrix, fullgraph=True), a[:7], b)):
        torch.testing.assert_close(e, c, **F64)


# ======================================================================================
# fastloss.patch("torchvision")
# ======================================================================================


def _references():
    """Every (module, name) in torchvision.ops / torchvision.models.detection that holds one of
    the eight functions, with what it holds."""
    out = {}
    for key, module in list(sys.modules.items()):
        if module is None or not key.startswith(("torchvision.ops", "torchvision.models.detection")):
            continue
        for name in NAMES:
            if name in module.__dict__:
                out[(key, name)] = module.__dict__[name]
    return out


def test_patch_replaces_and_undo_restores():
    import torchvision.models.detection._utils as det_utils
    import torchvision.models.detection.fcos as fcos
    import torchvision.models.detection.retinanet as retinanet
    import torchvision.ops.boxes as box_ops

    before = _references()
    assert all(fn.__module__.startswith("torchvision") for fn in before.values())
    with fastloss.patch("torchvision") as handle:
        after = _references()
        assert after.keys() == before.keys()
        # the losses are fastloss's, the matrices (the matchers' decisions) torchvision's own
        assert all(fn is (getattr(C, name) if name not in MATRICES else before[key]) for key, fn in after.items()
                   for name in [key[1]])
        # what FCOS / RetinaNet call
        assert fcos.sigmoid_focal_loss is C.sigmoid_focal_loss and fcos.generalized_box_iou_loss is C.generalized_box_iou_loss
        assert retinanet.sigmoid_focal_loss is C.sigmoid_focal_loss
        assert det_utils.complete_box_iou_loss is C.complete_box_iou_loss
        second = fastloss.patch("torchvision")  # harmless: nothing left to change
        assert not second.active
        second.undo()
        assert _references() == after
        assert handle.active
    assert _references() == before


def test_patched_entry_points_run_fastloss_with_the_same_numbers():
    import torchvision.models.detection._utils as det_utils

    a, b = make_boxes(24, seed=30), make_boxes(24, seed=31)
    anchors = make_boxes(24, seed=32)
    deltas = torch.randn(24, 4, generator=torch.Generator().manual_seed(33), dtype=torch.float64) * 0.1
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    x = torch.randn(24, 5, generator=torch.Generator().manual_seed(34), dtype=torch.float64)
    t = (x > 0.5).double()

    def calls():
        out = {}
        for name in LOSSES:
            p = a.clone().requires_grad_()
            v = getattr(tvops, name)(p, b, reduction="sum")
            out[name] = (v, torch.autograd.grad(v, p)[0], type(v.grad_fn).__name__)
        for name in MATRICES:
            v = getattr(tvops, name)(a, b)
            out[name] = (v, None, None)
        xx = x.clone().requires_grad_()
        v = tvops.sigmoid_focal_loss(xx, t, reduction="sum")
        out["sigmoid_focal_loss"] = (v, torch.autograd.grad(v, xx)[0], type(v.grad_fn).__name__)
        for kind in ("giou", "diou", "ciou"):  # RetinaNet's bbox_reg_loss_type
            d = deltas.clone().requires_grad_()
            v = det_utils._box_loss(kind, coder, anchors, b, d)
            out["_box_loss " + kind] = (v, torch.autograd.grad(v, d)[0], None)
        return out

    plain = calls()
    with fastloss.patch("torchvision"):
        patched = calls()
    assert patched["generalized_box_iou_loss"][2] == "_SymmetricBoxLossBackward"
    assert plain["generalized_box_iou_loss"][2] != "_SymmetricBoxLossBackward"
    for key, (v, g, _) in plain.items():
        torch.testing.assert_close(patched[key][0], v, **F64, msg=key)
        if g is not None:
            torch.testing.assert_close(patched[key][1], g, rtol=1e-9, atol=1e-12, msg=key)


def test_documented_differences():
    """The module docstring's differences, pinned: torchvision scores an inverted box against
    its proper twin as a perfect match and is NaN on zero-area pairs; fastloss is not."""
    inverted, proper = torch.tensor([[50.0, 80.0, 10.0, 20.0]]), torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert tvops.generalized_box_iou_loss(inverted, proper).item() < 1e-6
    assert C.generalized_box_iou_loss(inverted, proper).item() == pytest.approx(1.0)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert torch.isnan(tvops.complete_box_iou_loss(point, point)).all()
    assert C.complete_box_iou_loss(point, point).item() == pytest.approx(1.0)
    assert torch.isnan(tvops.box_iou(point, point)).all() and C.box_iou(point, point).item() == 0.0


def test_patch_leaves_the_matchers_box_matrices_alone():
    """The functions the matchers use for their decisions stay torchvision's own while
    patched (module globals, and what RPN / RoIHeads bind at construction inside the patch)."""
    import torchvision.models.detection.retinanet as retinanet
    import torchvision.models.detection.ssd as ssd
    import torchvision.ops.boxes as box_ops
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    originals = {name: getattr(box_ops, name) for name in MATRICES}
    assert all(fn.__module__ == "torchvision.ops.boxes" for fn in originals.values())
    with fastloss.patch("torchvision"):
        for name, fn in originals.items():
            assert getattr(box_ops, name) is fn and getattr(tvops, name) is fn
        assert retinanet.box_ops.box_iou is originals["box_iou"] and ssd.box_ops.box_iou is originals["box_iou"]
        rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=10, testing=10), dict(training=10, testing=10), 0.7)
        roi = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    assert rpn.box_similarity is originals["box_iou"] and roi.box_similarity is originals["box_iou"]


# a reviewer's pair: torchvision's fp32 IoU 0.49999994 (fastloss's C++ CPU kernel gave 0.50000006 while
# it was compiled with FMA contraction)
_GT = [41.940834045410156, 55.290706634521484, 77.38052368164062, 88.90644073486328]
_ANCHOR = [41.940834045410156, 55.290706634521484, 112.82019805908203, 88.90642547607422]


def _near_threshold_scene(n=64, seed=40):
    """fp32 gt boxes, and per gt the box itself (IoU 1, so allow_low_quality_matches does not
    mask a flip) and an anchor widened to IoU ~ 0.5 (a near-tie at the Matcher's 0.5)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 5
    gt = torch.cat([xy, xy + wh], -1)
    wide = gt.clone()
    wide[:, 2] = gt[:, 0] + 2 * wh[:, 0] * (1 + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 1e-6)
    gt = torch.cat([torch.tensor([_GT], dtype=torch.float64), gt]).float()
    wide = torch.cat([torch.tensor([_ANCHOR], dtype=torch.float64), wide]).float()
    return gt, torch.cat([wide, gt])


def test_patched_retinanet_and_fcos_matching_bitwise_unchanged():
    """RetinaNet's and FCOS's own compute_loss matching (the real methods, a stub self whose
    head records the matches) on near-threshold fp32 boxes: the same matched_idxs patched and
    unpatched -- and they would differ were box_ops.box_iou a few ulp off."""
    import types

    import torchvision.models.detection._utils as det_utils
    import torchvision.models.detection.retinanet as retinanet
    from torchvision.models.detection.fcos import FCOS

    gt, anchors = _near_threshold_scene()
    assert 0.5 - 2 ** -22 < tvops.box_iou(gt[:1], anchors[:1]).item() < 0.5  # a few ulp below the threshold
    targets = [dict(boxes=gt, labels=torch.ones(len(gt), dtype=torch.int64))]

    def matches(method, **attrs):
        seen = []
        head = types.SimpleNamespace(compute_loss=lambda targets, outputs, anchors, matched: seen.append(matched))
        stub = types.SimpleNamespace(head=head, **attrs)
        if method is FCOS.compute_loss:
            method(stub, targets, {}, [anchors], [len(anchors)])
        else:
            method(stub, targets, {}, [anchors])
        return seen[0][0]

    retina = dict(proposal_matcher=det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True))
    plain = (matches(retinanet.RetinaNet.compute_loss, **retina), matches(FCOS.compute_loss, center_sampling_radius=1.5))
    with fastloss.patch("torchvision"):
        patched = (matches(retinanet.RetinaNet.compute_loss, **retina), matches(FCOS.compute_loss, center_sampling_radius=1.5))
    for p, q in zip(plain, patched):
        assert torch.equal(p, q)
    assert plain[0][0].item() == det_utils.Matcher.BETWEEN_THRESHOLDS  # torchvision's 0.49999994
    # the sensitivity of this test: a matrix a few ulp (2^-22) larger in box_ops would flip the repro anchor
    original = retinanet.box_ops.box_iou
    retinanet.box_ops.box_iou = lambda *a: original(*a) + 2 ** -22
    try:
        flipped = matches(retinanet.RetinaNet.compute_loss, **retina)
    finally:
        retinanet.box_ops.box_iou = original
    assert not torch.equal(flipped, plain[0])


@pytest.mark.parametrize("name", MATRICES)
def test_matrices_one_dim_boxes1(name):
    """torchvision reads a 1-D boxes1 (4,) as one box: (1, M), or (1, 1, M) against (1, M, 4);
    a 1-D boxes2 fails there (IndexError) and here (ValueError)."""
    a, b = make_boxes(1, seed=41)[0], make_boxes(5, seed=42)
    for other in (b, b[None]):
        o, t, g, h = run_both(name, a, other)
        assert o.shape == t.shape == (1,) * (other.dim() - 2) + (1, 5)
        assert_same(o, t, g, h)
    with pytest.raises(IndexError):
        getattr(tvops, name)(b, a)
    with pytest.raises(ValueError, match="boxes1 and boxes2"):
        getattr(C, name)(b, a)


def test_focal_tensor_alpha():
    """A 0-dim tensor alpha is accepted, as torchvision's arithmetic accepts it."""
    g = torch.Generator().manual_seed(43)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(6, 5, generator=g) > 0.5).double()
    for alpha in (torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64)):
        outs = []
        for fn in (C.sigmoid_focal_loss, tvops.sigmoid_focal_loss):
            xx = x.clone().requires_grad_()
            v = fn(xx, t, alpha=alpha, reduction="sum")
            outs.append((v,) + torch.autograd.grad(v, xx))
        for o, tt in zip(*outs):
            assert o.dtype == tt.dtype
            torch.testing.assert_close(o, tt, **F64)
    with pytest.raises(ValueError, match="alpha"):
        C.sigmoid_focal_loss(x, t, alpha=torch.tensor([0.3, 0.4]))
    with pytest.raises(ValueError, match="alpha"):
        C.sigmoid_focal_loss(x, t, alpha=torch.tensor(0.3, requires_grad=True))


def test_box_iou_matrix_bit_equal_on_cpu():
    """Since the CPU build keeps products rounded (-ffp-contract=off), fastloss's IoU matrix is
    torchvision's bit for bit (and mmdetection's bbox_overlaps is tests/test_compat_mmdet.py's)."""
    g = torch.Generator().manual_seed(77)
    for scale in (1.0, 640.0, 4000.0):
        xy = torch.rand(257, 2, generator=g) * scale
        b1 = torch.cat([xy, xy + torch.rand(257, 2, generator=g) * scale / 5], -1)
        xy = torch.rand(1031, 2, generator=g) * scale
        b2 = torch.cat([xy, xy + torch.rand(1031, 2, generator=g) * scale / 5], -1)
        assert torch.equal(C.box_iou(b1, b2), tvops.box_iou(b1, b2))
