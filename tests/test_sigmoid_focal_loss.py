"""fastloss.sigmoid_focal_loss on every backend of every device here, against the float64
pure-PyTorch reference (fastloss/reference/sigmoid_focal_loss.py).

Matrix: (device, backend) x dtype x shape/layout x target form (float targets of input's
shape / int64 class labels of input.shape[:-1] in [0, C], C = background) x reduction x
weight x avg_factor.  The Triton backend runs on CPU tensors under TRITON_INTERPRET=1
(set by conftest.py) with smaller shapes: the interpreter is slow.  CUDA parameters carry
the ``gpu`` mark (skipped without a GPU; FASTLOSS_REQUIRE_GPU=1 makes that a failure).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastloss
from fastloss.ops import pointwise as ops_sfl
from fastloss.reference import pointwise as R

import helpers
from helpers import Case, assert_close, make_logits, make_target, make_weight, random_upstream, reference_target, to64

REDUCTIONS = ("none", "sum", "mean")
CODES = {"none": 0, "sum": 1, "mean": 2}
FORMS = ("float", "labels")
EPS32 = torch.finfo(torch.float32).eps

LARGE = "large"  # (16, 1000, 80): RetinaNet-like logits where the work is split (helpers.splits_work), else (2, 300, 80)
CASES = [
    Case((1,)),
    Case((7,)),
    Case((4099,)),
    Case((37, 13)),
    Case((0, 5)),
    LARGE,
    Case((13, 37), "transposed"),
    Case((9, 13), "sliced"),
    Case((5, 6, 13), "permuted"),
]


def case_id(case):
    return case if isinstance(case, str) else case.id


def resolve_case(case, device, backend):
    if case == LARGE:
        return Case((16, 1000, 80)) if helpers.splits_work(device, backend) else Case((2, 300, 80))
    return case


def sfl(x, t, *, backend, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None):
    return fastloss.sigmoid_focal_loss(x, t, alpha, gamma, reduction, weight, avg_factor, backend=backend)


# The focal loss runs on the pointwise engine (fastloss/ops/pointwise.py): its custom op takes
# the engine's arguments.  These give them from the focal's (alpha, gamma, a per-row weight).
def op_args(x, t, w, alpha, gamma, code, store_grad, backend):
    layout = 0 if w is None else (ops_sfl.LAYOUTS["elem"] if w.shape == x.shape else ops_sfl.LAYOUTS["row"])
    return (x, t, None, w, layout, None, 0, ops_sfl._focal_params(alpha, gamma), code, store_grad, backend)


def op_backward_args(grad, x, t, w, cache, alpha, gamma, code, backend):
    _, _, _, w, layout, _, _, params, _, _, _ = op_args(x, t, w, alpha, gamma, code, False, backend)
    return (grad, x, t, None, w, layout, None, 0, cache, params, code, backend)


def focal_op(*args):
    return torch.ops.fastloss.sigmoid_focal_loss(*op_args(*args))


def reference_forward(x, t, w, alpha, gamma, code, with_grad):
    """The reference backend's forward in the focal's terms (kernel convention)."""
    return R.forward(x, t, None, w, 0 if w is None else 1, None, 0, 0, ops_sfl._focal_params(alpha, gamma), code, with_grad)


def reference_backward(grad, x, t, w, alpha, gamma, code):
    return R.backward(grad, x, t, None, w, 0 if w is None else 1, None, 0, 0, ops_sfl._focal_params(alpha, gamma), code)


def reference_loss(x, t, *, alpha=0.25, gamma=2.0, reduction="mean", weight=None, avg_factor=None):
    """The float64 autograd reference on x's values (x itself in fp64, requiring grad)."""
    x64 = x.detach().to(torch.float64).cpu().requires_grad_()
    t64 = reference_target(t, x.dtype).cpu()
    w64 = to64(weight).cpu() if weight is not None else None
    # a tensor avg_factor keeps its dtype: "avg_factor + eps" rounds in it (as in mmdetection)
    a64 = avg_factor.cpu() if isinstance(avg_factor, torch.Tensor) else avg_factor
    return x64, R.sigmoid_focal_loss(x64, t64, alpha, gamma, reduction, w64, a64)


def check_against_reference(x, t, backend, msg="", **kwargs):
    """Forward and gradient (random upstream) of fastloss vs the float64 reference."""
    reduction = kwargs.get("reduction", "mean")
    reduced = reduction != "none"
    out = sfl(x, t, backend=backend, **kwargs)
    x64, ref = reference_loss(x, t, **kwargs)
    assert out.device == x.device
    assert_close(out, ref, x.dtype, reduced=reduced, msg=f"forward {msg} {kwargs}")
    up = random_upstream(out)
    (grad,) = torch.autograd.grad(out, x, up)
    (grad_ref,) = torch.autograd.grad(ref, x64, up.to(torch.float64).cpu())
    assert grad.shape == x.shape and grad.dtype == x.dtype
    assert_close(grad, grad_ref, x.dtype, msg=f"gradient {msg} {kwargs}")
    return out, grad


# ======================================================================================
# forward / backward vs the float64 reference
# ======================================================================================


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_forward_backward_vs_reference(grad_mode, device, backend, dtype, case, form):
    helpers.require_backend(device, backend)
    case = resolve_case(case, device, backend)
    x = make_logits(case, dtype, device)
    t = make_target(case, form, dtype, device)
    for reduction in REDUCTIONS:
        out, _ = check_against_reference(x, t, backend, msg=f"{backend} {case.id} {form}", reduction=reduction)
        assert out.shape == (x.shape if reduction == "none" else ())
        assert out.dtype == dtype


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("weight_kind", ["elem", "row", "broadcast", "elem-noncontiguous"])
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_weight_and_avg_factor_vs_reference(grad_mode, device, backend, dtype, weight_kind, form):
    helpers.require_backend(device, backend)
    case = Case((3, 37, 13))
    x = make_logits(case, dtype, device)
    t = make_target(case, form, dtype, device)
    w = make_weight(case, weight_kind.split("-")[0], dtype, device)
    if weight_kind.endswith("noncontiguous"):
        w = w.transpose(0, -1).contiguous().transpose(0, -1)
        assert not w.is_contiguous()
    num_pos = 17.0
    variants = [dict(reduction=r) for r in REDUCTIONS] + [
        dict(reduction="mean", avg_factor=num_pos),
        dict(reduction="mean", avg_factor=torch.tensor(num_pos, device=device)),
        dict(reduction="none", avg_factor=num_pos),  # ignored with "none" (mmdetection)
    ]
    for kw in variants:
        check_against_reference(x, t, backend, msg=f"{backend} weight={weight_kind} {form}", weight=w, **kw)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.25, 0.0), (0.25, 1.0), (0.5, 0.5), (-1.0, 2.5), (0.9, 1.5), (0.0, 3.0), (1.0, 2.0)])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32)))
def test_alpha_gamma_vs_reference(grad_mode, device, backend, dtype, form, alpha, gamma):
    helpers.require_backend(device, backend)
    case = Case((11, 13))
    x = make_logits(case, dtype, device)
    t = make_target(case, form, dtype, device)
    for reduction in REDUCTIONS:
        check_against_reference(x, t, backend, alpha=alpha, gamma=gamma, reduction=reduction)


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_soft_targets(grad_mode, device, backend, dtype):
    helpers.require_backend(device, backend)
    case = Case((19, 13))
    x = make_logits(case, dtype, device)
    t = torch.rand(case.shape, device=device).to(dtype)
    t[0, :4] = torch.tensor([0.0, 1.0, 0.5, 1e-3])
    for reduction in REDUCTIONS:
        for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.25, 0.0)]:
            check_against_reference(x, t, backend, msg="soft targets", alpha=alpha, gamma=gamma, reduction=reduction)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_bool_targets_equal_float_targets(device, backend):
    helpers.require_backend(device, backend)
    x = torch.randn(9, 13, device=device)
    t = torch.rand(9, 13, device=device) < 0.3
    for reduction in REDUCTIONS:
        a = sfl(x, t, backend=backend, reduction=reduction)
        b = sfl(x, t.float(), backend=backend, reduction=reduction)
        assert torch.equal(a, b)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_labels_equal_one_hot_float_targets(device, backend):
    """Class labels are expanded in the kernel: the same numbers as the explicit one-hot
    (label C = background = an all-zero row)."""
    helpers.require_backend(device, backend)
    x = torch.randn(31, 13, device=device, requires_grad=True)
    labels = torch.randint(0, 14, (31,), device=device)
    labels[:3] = torch.tensor([0, 12, 13])
    one_hot = F.one_hot(labels, 14)[:, :13].float()
    for reduction in REDUCTIONS:
        a = sfl(x, labels, backend=backend, reduction=reduction)
        b = sfl(x, one_hot, backend=backend, reduction=reduction)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        up = random_upstream(a)
        ga, = torch.autograd.grad(a, x, up)
        gb, = torch.autograd.grad(b, x, up)
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_label_dtypes(device, backend):
    """Labels of any integer dtype mean the same classes as int64 labels."""
    helpers.require_backend(device, backend)
    x = torch.randn(31, 13, device=device)
    labels = torch.randint(0, 14, (31,), device=device)
    expected = sfl(x, labels, backend=backend, reduction="none")
    for dt in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(sfl(x, labels.to(dt), backend=backend, reduction="none"), expected), dt


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_scalar_and_ambiguous_weights(device, backend):
    helpers.require_backend(device, backend)
    for shape in ((7,), (5, 13)):
        x = torch.randn(shape, device=device)
        t = (torch.rand(shape, device=device) < 0.3).float()
        plain = sfl(x, t, backend=backend, reduction="none")
        scaled = sfl(x, t, backend=backend, reduction="none", weight=torch.tensor(0.5, device=device))
        torch.testing.assert_close(scaled, 0.5 * plain, rtol=1e-6, atol=1e-8)
    # N == C: a weight of shape (N,) is per row (mmdetection's per-anchor weight), documented
    # to win over broadcasting it along the classes
    x = torch.randn(13, 13, device=device)
    labels = torch.randint(0, 14, (13,), device=device)
    w = torch.rand(13, device=device)
    plain = sfl(x, labels, backend=backend, reduction="none")
    torch.testing.assert_close(sfl(x, labels, backend=backend, reduction="none", weight=w), plain * w[:, None])
    torch.testing.assert_close(sfl(x, labels, backend=backend, reduction="none", weight=w[None, :]), plain * w[None, :])


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_scalar_input(device, backend):
    helpers.require_backend(device, backend)
    for dtype in (torch.float32,) + ((torch.float64,) if device == "cpu" else ()):
        x = torch.tensor(1.5, dtype=dtype, device=device, requires_grad=True)
        t = torch.tensor(0.0, dtype=dtype, device=device)
        for reduction in REDUCTIONS:
            out, _ = check_against_reference(x, t, backend, msg="0-d input", reduction=reduction)
            assert out.shape == ()
    with pytest.raises(ValueError, match="class-label target"):
        sfl(torch.tensor(1.5, device=device), torch.tensor(0, device=device), backend=backend)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_zero_classes(grad_mode, device, backend, form):
    """C = 0 (an empty last dimension, rows present): an empty loss, like the reference."""
    helpers.require_backend(device, backend)
    x = torch.randn(4, 0, device=device, requires_grad=True)
    t = torch.zeros(4, 0, device=device) if form == "float" else torch.zeros(4, dtype=torch.int64, device=device)
    for reduction in REDUCTIONS:
        check_against_reference(x, t, backend, msg="C=0", reduction=reduction)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_no_grad_and_detached_input(device, backend):
    helpers.require_backend(device, backend)
    x = torch.randn(9, 13, device=device)
    t = torch.randint(0, 14, (9,), device=device)
    with torch.no_grad():
        a = sfl(x, t, backend=backend, reduction="none")
    b = sfl(x, t, backend=backend, reduction="none")
    assert a.grad_fn is None and b.grad_fn is None and not b.requires_grad
    assert torch.equal(a, b)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_noncontiguous_upstream_gradient(device, backend):
    """An expanded (stride-0) upstream gradient for reduction="none"."""
    helpers.require_backend(device, backend)
    x = make_logits(Case((9, 13)), torch.float32, device)
    t = torch.randint(0, 14, (9,), device=device)
    out = sfl(x, t, backend=backend, reduction="none")
    up = torch.randn(13, device=device).expand(9, 13)
    (g,) = torch.autograd.grad(out, x, up)
    x64, ref = reference_loss(x, t, reduction="none")
    (gref,) = torch.autograd.grad(ref, x64, up.double().cpu())
    assert_close(g, gref, torch.float32)


# ======================================================================================
# gradcheck, opcheck, torch.compile, the eager fast path
# ======================================================================================


@pytest.mark.parametrize("weight_kind", [None, "row", "elem"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_gradcheck_fp64(backend, form, reduction, weight_kind):
    helpers.require_backend("cpu", backend)
    case = Case((3, 5))
    x = make_logits(case, torch.float64, "cpu", scale=2.0)
    t = make_target(case, form, torch.float64, "cpu")
    w = make_weight(case, weight_kind, torch.float64, "cpu")
    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.5, 0.0)]:
        def fn(inp):
            return fastloss.sigmoid_focal_loss(inp, t, alpha, gamma, reduction, w, backend=backend)

        assert helpers.gradcheck(fn, (x,), backend, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_gradcheck_fp64_custom_op(backend):
    """Through torch.ops.fastloss.sigmoid_focal_loss (the op torch.compile sees)."""
    helpers.require_backend("cpu", backend)
    x = make_logits(Case((4, 6)), torch.float64, "cpu", scale=2.0)
    t = torch.randint(0, 7, (4,))
    w = torch.rand(4, dtype=torch.float64)
    for code in (0, 1, 2):
        for store_grad in (True, False):
            def fn(inp):
                loss, _cache = focal_op(inp, t, w, 0.25, 2.0, code, store_grad, backend)
                return loss

            assert helpers.gradcheck(fn, (x,), backend, eps=1e-6, atol=1e-8, rtol=1e-6)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_opcheck(backend, form):
    helpers.require_backend("cpu", backend)
    case = Case((4, 5))
    for dtype in (torch.float32, torch.float64):
        x = make_logits(case, dtype, "cpu")
        t = make_target(case, form, dtype, "cpu")
        if form == "float":
            t = t.contiguous()
        for code in (0, 1, 2):
            acc = ops_sfl._common.reduced_dtype(dtype)
            for w in (None, torch.rand(4, dtype=acc)):
                for store_grad in (True, False):
                    _opcheck(torch.ops.fastloss.sigmoid_focal_loss.default, op_args(x, t, w, 0.25, 2.0, code, store_grad, backend))
                xd = x.detach()
                grad = torch.randn_like(xd) if code == 0 else torch.randn((), dtype=acc)
                _, cache = focal_op(xd, t, w, 0.25, 1.5, code, True, backend)
                for c in (cache, torch.empty(0, dtype=acc)):  # stored gradient / recompute
                    _opcheck(torch.ops.fastloss.sigmoid_focal_loss_backward.default, op_backward_args(grad, xd, t, w, c, 0.25, 1.5, code,
                                                                                                      backend))


def _loss_and_grad(fn, x, *args):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args)
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_compile_fullgraph_aot_eager(dynamo_reset, backend, form):
    helpers.require_backend("cpu", backend)
    case = Case((6, 13))
    x = make_logits(case, torch.float32, "cpu")
    t = make_target(case, form, torch.float32, "cpu")
    w = torch.rand(6)
    avg = torch.tensor(5.0)

    def fn(inp, target, weight, avg_factor):
        a = fastloss.sigmoid_focal_loss(inp, target, 0.25, 2.0, "mean", weight, avg_factor, backend=backend)
        b = fastloss.sigmoid_focal_loss(inp, target, -1.0, 1.5, "none", backend=backend)
        return a + (b * b).sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, x, t, w, avg)
    out_c, g_c = _loss_and_grad(compiled, x, t, w, avg)
    # eager folds avg_factor into the weight (the stored gradient is the mean's); the compiled
    # graph divides the sum after the op: the same numbers up to a few ulp
    torch.testing.assert_close(out_e, out_c, rtol=4e-7, atol=0)
    torch.testing.assert_close(g_e, g_c, rtol=4e-7, atol=1e-12)


@pytest.mark.parametrize("backend", [None, "triton"], ids=["default", "triton"])
def test_compile_fullgraph_inductor(dynamo_reset, backend):
    if backend is not None:
        helpers.require_backend("cpu", backend)
    x = make_logits(Case((8, 20)), torch.float32, "cpu")
    t = torch.randint(0, 21, (8,))

    def fn(inp, target):
        loss = fastloss.sigmoid_focal_loss(inp, target, reduction="mean", avg_factor=3.0, backend=backend)
        return loss * 2.0 + inp.sigmoid().sum() * 0.0

    compiled = torch.compile(fn, fullgraph=True)  # inductor
    out_e, g_e = _loss_and_grad(fn, x, t)
    out_c, g_c = _loss_and_grad(compiled, x, t)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_c, g_e, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float32, torch.float16)))
@pytest.mark.parametrize("store_grad", [True, False], ids=["store", "recompute"])
def test_eager_fast_path_equals_custom_op(device, backend, dtype, form, reduction, store_grad):
    """PointwiseFunction (eager fast path) and torch.ops.fastloss.sigmoid_focal_loss
    (the custom op, with its registered autograd) agree bit for bit."""
    helpers.require_backend(device, backend)
    case = Case((17, 13))
    x = make_logits(case, dtype, device)
    t = make_target(case, form, dtype, device)
    w = torch.rand(17, device=device)
    code = CODES[reduction]
    args = op_args(x, t, w, 0.25, 2.0, code, store_grad, backend)

    out_f, cache_f = fastloss.PointwiseFunction.apply(*args[:7], 0, *args[7:])  # 0: the focal loss's code
    out_o, cache_o = torch.ops.fastloss.sigmoid_focal_loss(*args)
    assert out_f.dtype == out_o.dtype and torch.equal(out_f, out_o)
    assert torch.equal(cache_f, cache_o)
    assert cache_f.shape == (x.shape if store_grad else (0,))
    up = random_upstream(out_f)
    (g_f,) = torch.autograd.grad(out_f, x, up)
    (g_o,) = torch.autograd.grad(out_o, x, up)
    assert torch.equal(g_f, g_o)
    # and the public function is the fast path plus the cast to the input dtype
    out_p = sfl(x, t, backend=backend, reduction=reduction, weight=w)
    assert torch.equal(out_p, out_f.to(dtype))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_stored_gradient_cache(device, backend, dtype, form):
    """store_grad=True: the forward also returns dL/dx * weight of the unreduced loss in the
    accumulation dtype; False: an empty cache.  Both gradient paths give the same gradient."""
    helpers.require_backend(device, backend)
    case = Case((9, 13))
    x = make_logits(case, dtype, device, requires_grad=False)
    t = make_target(case, form, dtype, device)
    w = torch.rand(9, device=device, dtype=ops_sfl._common.reduced_dtype(dtype))
    acc = ops_sfl._common.reduced_dtype(dtype)
    expected = R.grad_elements(x.double().cpu(), R.float_targets(x.double().cpu(), reference_target(t, dtype).cpu()), 0.25, 2.0)
    expected = expected * w.double().cpu()[:, None]
    for code in (0, 1, 2):
        loss_s, cache = focal_op(x, t, w, 0.25, 2.0, code, True, backend)
        loss_r, empty = focal_op(x, t, w, 0.25, 2.0, code, False, backend)
        assert cache.shape == x.shape and cache.dtype == acc
        assert empty.shape == (0,) and empty.dtype == acc
        assert torch.equal(loss_s, loss_r), "storing the gradient must not change the loss"
        assert_close(cache, expected, acc, msg=f"cache code={code}")
    xr = x.clone().requires_grad_()
    grads = {}
    for mode in helpers.GRAD_MODES:
        with pytest.MonkeyPatch.context() as mp:
            helpers.set_grad_mode(mp, mode)
            for reduction in REDUCTIONS:
                out = sfl(xr, t, backend=backend, reduction=reduction, weight=w)
                up = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape).to(out)
                grads[mode, reduction] = torch.autograd.grad(out, xr, up)[0]
    for reduction in REDUCTIONS:
        assert_close(grads["store", reduction], grads["recompute", reduction].double(), dtype, msg=f"store vs recompute {reduction}")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_retain_graph_second_backward(grad_mode, device, backend):
    """The eager fast path scales the gradient its forward stored in place only when the
    graph is freed after the backward: through a retained graph every backward gives the
    same bits, and gradients accumulate."""
    helpers.require_backend(device, backend)
    case = Case((9, 13))
    x = make_logits(case, torch.float32, device)
    t = make_target(case, "labels", torch.float32, device)
    for reduction in REDUCTIONS:
        out = sfl(x, t, backend=backend, reduction=reduction)
        up = random_upstream(out)
        (g1,) = torch.autograd.grad(out, x, up, retain_graph=True)
        (g2,) = torch.autograd.grad(out, x, up)
        assert torch.equal(g2, g1), reduction
        x.grad = None
        out = sfl(x, t, backend=backend, reduction=reduction)
        out.backward(up, retain_graph=True)
        g_once = x.grad.clone()
        out.backward(up)
        torch.testing.assert_close(x.grad, 2 * g_once, rtol=1e-5, atol=1e-8, msg=reduction)
        x.grad = None


# ======================================================================================
# numerical edge cases
# ======================================================================================


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_saturated_logits(grad_mode, device, backend, dtype, gamma):
    """Logits of +-1e4 (and the fp32 sigmoid saturation range) with targets 0/1: finite loss
    and gradient, equal to the closed-form limits of the fp64 reference forward/backward."""
    helpers.require_backend(device, backend)
    vals = [1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 17.0, -17.0, 0.0]
    xs = torch.tensor([v for v in vals for _ in (0, 1)], dtype=torch.float64)
    ts = torch.tensor([tt for _ in vals for tt in (0.0, 1.0)], dtype=torch.float64)
    x = xs.to(dtype).to(device).requires_grad_()
    t = ts.to(dtype).to(device)
    # the same logits in label form: 2 classes per row, label 0 / 1 / 2 (background)
    xl = xs.reshape(-1, 2).to(dtype).to(device).requires_grad_()
    labels = torch.arange(xl.shape[0], device=device) % 3
    for alpha in (0.25, -1.0):
        for inp, tgt in ((x, t), (xl, labels)):
            out = sfl(inp, tgt, backend=backend, alpha=alpha, gamma=gamma, reduction="none")
            up = random_upstream(out)
            (g,) = torch.autograd.grad(out, inp, up)
            assert torch.isfinite(out).all() and torch.isfinite(g).all(), (out, g)
            x64 = inp.detach().double().cpu()
            t64 = reference_target(tgt, dtype).cpu()
            ref, _ = reference_forward(x64, t64, None, alpha, gamma, 0, False)
            gref = reference_backward(up.double().cpu(), x64, t64, None, alpha, gamma, 0)
            assert torch.isfinite(ref).all() and torch.isfinite(gref).all()
            assert_close(out, ref, dtype, msg=f"saturated loss gamma={gamma} alpha={alpha}")
            assert_close(g, gref, dtype, msg=f"saturated grad gamma={gamma} alpha={alpha}")
            for reduction in ("sum", "mean"):
                red = sfl(inp, tgt, backend=backend, alpha=alpha, gamma=gamma, reduction=reduction)
                (gr,) = torch.autograd.grad(red, inp)
                assert torch.isfinite(red) and torch.isfinite(gr).all()


def _focal64(x, t, alpha, gamma):
    """Loss, gradient and the magnitude of the gradient's terms, in float64 from the closed
    forms of the reference (x, t: the fp32 inputs, exactly representable in fp64)."""
    x, t = x.double(), t.double()
    loss = R.loss_elements(x, t, alpha, gamma)
    grad = R.grad_elements(x, t, alpha, gamma)
    s_pos, s_neg = torch.sigmoid(x), torch.sigmoid(-x)
    q = t * s_neg + (1 - t) * s_pos
    ce = R.bce_with_logits(x, t)
    a_t = (alpha * t + (1 - alpha) * (1 - t)) if alpha >= 0 else torch.ones_like(t)
    r = torch.where(q > 0, (1 - 2 * t) * s_pos * s_neg / q, torch.zeros_like(q))
    terms = a_t * q.pow(gamma) * ((1 - t) * s_pos + t * s_neg + gamma * (ce * r).abs())  # p - t = (1 - t) p - t (1 - p)
    return loss, grad, terms


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.99999, 0.0), (0.999, 0.0), (0.5, 0.5), (0.25, 1.5), (-1.0, 2.0)])
@pytest.mark.parametrize("target", ["zero", "one", "soft"])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_fp32_accuracy_against_float64(device, backend, target, alpha, gamma):
    """fp32 loss and gradient within 1e-6 (relative) of float64 over |x| <= 30, every backend,
    the reference included (it is the spec and the fallback): no cancellation in 1 - alpha
    (formed in double), in p - t of a confident positive, or in x - x t.  Soft targets: the
    gradient's two terms can cancel (it crosses zero at the loss's minimum), so there the
    bound is relative to the terms' magnitude.  Results in fp32's subnormal range have the
    absolute precision of that range."""
    helpers.require_backend(device, backend)
    x = torch.linspace(-30, 30, 1201)
    t = {"zero": torch.zeros_like(x), "one": torch.ones_like(x), "soft": torch.rand(x.shape)}[target]
    xd = x.to(device).requires_grad_()
    out = sfl(xd, t.to(device), backend=backend, alpha=alpha, gamma=gamma, reduction="none")
    (g,) = torch.autograd.grad(out, xd, torch.ones_like(out))
    loss64, grad64, terms = _focal64(x, t, alpha, gamma)
    tiny = torch.finfo(torch.float32).tiny
    err = (out.detach().cpu().double() - loss64).abs()
    assert (err <= 1e-6 * loss64.abs() + tiny * 1e-6).all(), f"loss: worst at x = {x[(err / loss64.abs().clamp_min(tiny)).argmax()]}"
    scale = grad64.abs() if target != "soft" else terms
    err = (g.cpu().double() - grad64).abs()
    assert (err <= 1e-6 * scale + tiny * 1e-6).all(), f"grad: worst at x = {x[(err / scale.clamp_min(tiny)).argmax()]}"


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_issue_cancellation_examples(device, backend):
    """Confident positives keep their tiny gradient; 1 - alpha near alpha = 1 is exact."""
    helpers.require_backend(device, backend)
    x = torch.tensor([20.0], device=device, requires_grad=True)
    one = torch.ones(1, device=device)
    for gamma, expected in ((0.0, -2.0611536e-09), (2.0, -2.6269533e-26)):
        (g,) = torch.autograd.grad(sfl(x, one, backend=backend, alpha=-1.0, gamma=gamma, reduction="sum"), x)
        assert g.item() == pytest.approx(expected, rel=1e-6), gamma
    # the mirror case (x = -20, t = 0) was right before
    (g,) = torch.autograd.grad(sfl(-x, torch.zeros(1, device=device), backend=backend, alpha=-1.0, gamma=0.0, reduction="sum"), x)
    assert g.item() == pytest.approx(-2.0611536e-09, rel=1e-6)
    xs = torch.randn(64, 5, device=device)
    ts = (torch.rand(64, 5, device=device) < 0.5).float()
    out = sfl(xs, ts, backend=backend, alpha=0.99999, gamma=0.0, reduction="none")
    ref = R.loss_elements(xs.double().cpu(), ts.double().cpu(), 0.99999, 0.0)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=2e-6, atol=0)


def test_reference_bce_with_logits_is_accurate():
    x = torch.tensor([10.0, 20.0, -7.0, 0.0, 30.0])
    t = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.75])
    got = R.bce_with_logits(x, t).double()
    x64, t64 = x.double(), t.double()
    exact = torch.clamp(x64, min=0) - x64 * t64 + torch.log1p(torch.exp(-x64.abs()))
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=0)
    assert got[0].item() == pytest.approx(4.5399e-05, rel=1e-4) and got[1].item() == pytest.approx(2.0612e-09, rel=1e-4)


def test_saturated_closed_forms_are_the_limits():
    """The oracle itself: at x = +-1e4 the closed forms give the analytic limits."""
    x = torch.tensor([1e4, 1e4, -1e4, -1e4], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    alpha = 0.25
    for gamma in (0.0, 0.5, 1.0, 2.0, 2.5):
        loss, cache = reference_forward(x, t, None, alpha, gamma, 0, True)
        grad = reference_backward(torch.ones_like(x), x, t, None, alpha, gamma, 0)
        torch.testing.assert_close(cache, grad)
        # confidently wrong: loss = a_t |x|, dL/dx = a_t sign; confidently right: 0, 0
        torch.testing.assert_close(loss, torch.tensor([0.75e4, 0.0, 0.0, 0.25e4], dtype=torch.float64))
        torch.testing.assert_close(grad, torch.tensor([0.75, 0.0, 0.0, -0.25], dtype=torch.float64))


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32)))
def test_gamma_zero_is_bce_with_logits(device, backend, dtype):
    helpers.require_backend(device, backend)
    x = make_logits(Case((23, 13)), dtype, device)
    t = make_target(Case((23, 13)), "float", dtype, device)
    for reduction in REDUCTIONS:
        out = sfl(x, t, backend=backend, alpha=-1.0, gamma=0.0, reduction=reduction)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction=reduction)
        assert_close(out, bce.double(), dtype, reduced=reduction != "none", msg="gamma=0 vs BCE")
        up = random_upstream(out)
        g, = torch.autograd.grad(out, x, up)
        gb, = torch.autograd.grad(bce, x, up)
        assert_close(g, gb.double(), dtype, msg="gamma=0 grad vs BCE")
    # with alpha >= 0: alpha_t * BCE
    alpha = 0.3
    out = sfl(x, t, backend=backend, alpha=alpha, gamma=0.0, reduction="none")
    expected = (alpha * t + (1 - alpha) * (1 - t)) * F.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert_close(out, expected.double(), dtype, msg="gamma=0, alpha=0.3 vs alpha_t * BCE")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_negative_alpha_disables_alpha(device, backend):
    helpers.require_backend(device, backend)
    x = make_logits(Case((23, 13)), torch.float32, device)
    t = torch.randint(0, 14, (23,), device=device)
    none_a = sfl(x, t, backend=backend, alpha=-1.0, reduction="none")
    assert torch.equal(none_a, sfl(x, t, backend=backend, alpha=-0.01, reduction="none"))
    # alpha = 0.5 weighs every element by exactly 0.5
    torch.testing.assert_close(sfl(x, t, backend=backend, alpha=0.5, reduction="none"), 0.5 * none_a, rtol=1e-6, atol=1e-8)
    x64, ref = reference_loss(x, t, alpha=-1.0, reduction="none")
    assert_close(none_a, ref, torch.float32)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 2.5])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float32, torch.float16)))
def test_nan_propagates(grad_mode, device, backend, dtype, form, gamma):
    helpers.require_backend(device, backend)
    case = Case((5, 13))
    x = make_logits(case, dtype, device, requires_grad=False)
    x[1, 3] = float("nan")
    x[4, 0] = float("nan")
    x.requires_grad_()
    t = make_target(case, form, dtype, device)
    nan_mask = torch.isnan(x.detach())
    out = sfl(x, t, backend=backend, gamma=gamma, reduction="none")
    assert torch.equal(torch.isnan(out), nan_mask), "NaN must appear exactly where the input is NaN"
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(torch.isnan(g), nan_mask)
    for reduction in ("sum", "mean"):
        red = sfl(x, t, backend=backend, gamma=gamma, reduction=reduction)
        assert torch.isnan(red), f"{reduction} of a NaN input must be NaN"
        (gr,) = torch.autograd.grad(red, x)
        assert torch.isnan(gr[nan_mask]).all()


# ======================================================================================
# semantics: torchvision, mmdetection, the nn module
# ======================================================================================


def _torchvision_formula(x, t, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss (reduction none), written out in plain Python."""
    p = 1.0 / (1.0 + math.exp(-x))
    ce = max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))  # BCE with logits
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


TV_X = [-3.0, -0.5, 0.0, 0.75, 2.5, 8.0]
TV_T = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
# computed once from _torchvision_formula in float64 Python
TV_EXPECTED = {
    (0.25, 2.0): [8.196249337274804e-05, 0.09435290021485244, 0.04332169878499658, 0.39331505270845846,
                  0.00011349202365712539, 5.996227859282769],
    (-1.0, 1.5): [0.0005018179943883697, 0.47836539418406254, 0.2450645358671368, 0.6363371462529492,
                  0.0016482539369751849, 7.996311373501578],
}


@pytest.mark.parametrize("alpha,gamma", list(TV_EXPECTED))
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32)))
def test_torchvision_formula_hardcoded(device, backend, dtype, alpha, gamma):
    helpers.require_backend(device, backend)
    expected = TV_EXPECTED[(alpha, gamma)]
    inline = [_torchvision_formula(x, t, alpha, gamma) for x, t in zip(TV_X, TV_T)]
    assert inline == pytest.approx(expected, rel=1e-12)
    x = torch.tensor(TV_X, dtype=dtype, device=device)
    t = torch.tensor(TV_T, dtype=dtype, device=device)
    exp = torch.tensor(expected, dtype=torch.float64)
    assert_close(sfl(x, t, backend=backend, alpha=alpha, gamma=gamma, reduction="none"), exp, dtype)
    assert_close(sfl(x, t, backend=backend, alpha=alpha, gamma=gamma, reduction="sum"), exp.sum(), dtype, reduced=True)
    assert_close(sfl(x, t, backend=backend, alpha=alpha, gamma=gamma, reduction="mean"), exp.mean(), dtype, reduced=True)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_matches_torchvision(device, backend):
    tvops = pytest.importorskip("torchvision.ops", reason="torchvision is not installed (formula checked inline instead)")
    helpers.require_backend(device, backend)
    x = make_logits(Case((37, 13)), torch.float32, device)
    t = make_target(Case((37, 13)), "float", torch.float32, device)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.5, 0.0)]:
        for reduction in REDUCTIONS:
            ours = sfl(x, t, backend=backend, alpha=alpha, gamma=gamma, reduction=reduction)
            theirs = tvops.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
            up = random_upstream(ours)
            g1, = torch.autograd.grad(ours, x, up)
            g2, = torch.autograd.grad(theirs, x, up)
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def _mmdet_py_sigmoid_focal_loss(pred, labels, weight, alpha, gamma, avg_factor):
    """mmdetection's py_sigmoid_focal_loss + weight_reduce_loss (reduction "mean"), inline."""
    num_classes = pred.shape[1]
    target = F.one_hot(labels, num_classes + 1)[:, :num_classes].type_as(pred)
    pred_sigmoid = pred.sigmoid()
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    if weight is not None:
        loss = loss * weight.view(-1, 1)
    eps = torch.finfo(torch.float32).eps
    return loss.sum() / (avg_factor + eps)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_mmdetection_semantics(device, backend):
    helpers.require_backend(device, backend)
    N, C = 50, 13
    x = make_logits(Case((N, C)), torch.float64 if device == "cpu" else torch.float32, device)
    labels = torch.randint(0, C + 1, (N,), device=device)
    w = torch.rand(N, dtype=x.dtype, device=device)
    avg = 7.0
    # labels + avg_factor: sum / (avg_factor + eps(float32))
    mean_avg = sfl(x, labels, backend=backend, reduction="mean", avg_factor=avg)
    total = sfl(x, labels, backend=backend, reduction="sum")
    torch.testing.assert_close(mean_avg, total / (avg + EPS32))
    # a 0-d tensor avg_factor is the same and stays on the device
    mean_avg_t = sfl(x, labels, backend=backend, reduction="mean", avg_factor=torch.tensor(avg, device=device))
    assert mean_avg_t.device == x.device
    torch.testing.assert_close(mean_avg_t, mean_avg)
    # per-row (per-anchor) weight of shape (N,) multiplies each row
    none_w = sfl(x, labels, backend=backend, reduction="none", weight=w)
    none = sfl(x, labels, backend=backend, reduction="none")
    torch.testing.assert_close(none_w, none * w.to(none.dtype)[:, None])
    # and the whole thing equals mmdetection's python implementation
    ours = sfl(x, labels, backend=backend, reduction="mean", weight=w, avg_factor=avg)
    theirs = _mmdet_py_sigmoid_focal_loss(x, labels, w, 0.25, 2.0, avg)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-5 if x.dtype == torch.float32 else 1e-10, atol=0)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(theirs, x)
    torch.testing.assert_close(g1, g2, rtol=1e-5 if x.dtype == torch.float32 else 1e-9, atol=1e-12)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_nn_module(device, backend):
    helpers.require_backend(device, backend)
    module = fastloss.nn.SigmoidFocalLoss(alpha=0.3, gamma=1.5, reduction="mean")
    assert "alpha=0.3" in repr(module) and "gamma=1.5" in repr(module) and "'mean'" in repr(module)
    x = make_logits(Case((12, 7)), torch.float32, device)
    labels = torch.randint(0, 8, (12,), device=device)
    w = torch.rand(12, device=device)
    with fastloss.use_backend(backend):
        for kwargs in (dict(), dict(weight=w), dict(weight=w, avg_factor=4.0)):
            out_m = module(x, labels, **kwargs)
            out_f = sfl(x, labels, backend=backend, alpha=0.3, gamma=1.5, reduction="mean", **kwargs)
            assert torch.equal(out_m, out_f)
            g_m, = torch.autograd.grad(out_m, x)
            g_f, = torch.autograd.grad(out_f, x)
            assert torch.equal(g_m, g_f)
    assert fastloss.nn.SigmoidFocalLoss(reduction="none")(x, labels).shape == x.shape
    assert list(module.parameters()) == []


# ======================================================================================
# bad inputs
# ======================================================================================


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_bad_inputs(backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(6, 5)
    labels = torch.randint(0, 6, (6,))
    t = torch.rand(6, 5)

    def call(*args, **kwargs):
        return fastloss.sigmoid_focal_loss(*args, backend=backend, **kwargs)

    with pytest.raises(ValueError, match=r"float target must have input's shape \(6, 5\)"):
        call(x, torch.rand(6, 4))
    with pytest.raises(ValueError, match=r"class-label target must have shape input.shape\[:-1\] = \(6,\)"):
        call(x, torch.randint(0, 6, (5,)))
    with pytest.raises(ValueError, match="class-label target"):
        call(x, torch.randint(0, 6, (6, 5)))  # one-hot given as integers
    with pytest.raises(ValueError, match="input must be a floating-point tensor"):
        call(torch.randint(0, 3, (6, 5)), labels)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        call([[0.0] * 5] * 6, labels)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        call(x, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        call(x, labels, gamma=-0.5)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        call(x, labels, gamma=float("nan"))
    with pytest.raises(ValueError, match="reduction must be one of"):
        call(x, labels, reduction="avg")
    with pytest.raises(ValueError, match='avg_factor can not be used with reduction="sum"'):
        call(x, labels, reduction="sum", avg_factor=3.0)
    with pytest.raises(ValueError, match="target is on meta but input is on cpu"):
        call(x, t.to("meta"))
    with pytest.raises(ValueError, match="weight is on meta"):
        call(x, labels, weight=torch.rand(6, device="meta"))
    with pytest.raises(ValueError, match="avg_factor is on meta"):
        call(x, labels, avg_factor=torch.tensor(3.0, device="meta"))
    for bad_w in (torch.rand(5, 5), torch.rand(6, 4), torch.rand(4), torch.rand(2, 6, 5)):
        with pytest.raises(ValueError, match=r"weight of shape .* matches neither input"):
            call(x, labels, weight=bad_w)
    with pytest.raises(ValueError, match="does not differentiate with respect to target"):
        call(x, t.requires_grad_())
    with pytest.raises(ValueError, match="does not differentiate with respect to weight"):
        call(x, labels, weight=torch.rand(6, requires_grad=True))
    with pytest.raises(ValueError, match="target must be float"):
        call(x, torch.zeros(6, 5, dtype=torch.complex64))


@pytest.mark.parametrize("bad", [-1, 7, 2**40, -(2**40)])
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_out_of_range_labels_raise_on_cpu(backend, bad):
    """Labels of CPU tensors are checked by the op before any backend runs (no device sync
    there): ValueError on every backend, the Triton one included."""
    helpers.require_backend("cpu", backend)
    C = 6
    x = torch.randn(4, C, requires_grad=True)
    labels = torch.tensor([0, C, 2, bad])
    for reduction in REDUCTIONS:
        with pytest.raises(ValueError, match=rf"\[0, {C}\]"):
            sfl(x, labels, backend=backend, reduction=reduction)


def _out_of_range_rule(device, backend):
    """GPU rule: an out-of-range label is background (an all-zero target row)."""
    C = 13
    x = make_logits(Case((8, C)), torch.float32, device)
    labels = torch.tensor([-1, C + 1, 2**40, -(2**40), 3, C, 0, C + 100], device=device)
    as_background = torch.where((labels < 0) | (labels > C), torch.full_like(labels, C), labels)
    for reduction in REDUCTIONS:
        out = sfl(x, labels, backend=backend, reduction=reduction)
        expected = sfl(x, as_background, backend=backend, reduction=reduction)
        assert torch.equal(out, expected)
        up = random_upstream(out)
        (g,) = torch.autograd.grad(out, x, up)
        (ge,) = torch.autograd.grad(expected, x, up)
        assert torch.equal(g, ge)
        x64, ref = reference_loss(x, as_background, reduction=reduction)
        assert_close(out, ref, torch.float32, reduced=reduction != "none")


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_out_of_range_labels_kernel_rule(monkeypatch, backend):
    """The kernels themselves never read past their inputs: with the op's check switched off
    (as for CUDA tensors outside checked mode) every backend applies the GPU rule."""
    helpers.require_backend("cpu", backend)
    monkeypatch.setattr(fastloss.ops._common, "labels_checked_on", lambda device: False)
    _out_of_range_rule("cpu", backend)


@helpers.gpu
@pytest.mark.parametrize("backend", helpers.CUDA_BACKENDS)
def test_out_of_range_labels_gpu_rule_cuda(backend):
    helpers.require_backend("cuda", backend)
    _out_of_range_rule("cuda", backend)


# ======================================================================================
# determinism
# ======================================================================================


def _run_twice(fn):
    return fn(), fn()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_deterministic(grad_mode, device, backend, form):
    helpers.require_backend(device, backend)
    if helpers.is_interpreted(device, backend):
        case = Case((640, 80))  # 51k elements: 50 Triton programs
    elif device == "cuda":
        case = Case((16, 1000, 80))
    else:
        case = Case((2500, 80))  # 200k elements: several CPU reduction blocks
    x = make_logits(case, torch.float32, device)
    t = make_target(case, form, torch.float32, device)
    w = torch.rand(case.shape[:-1], device=device)
    for reduction in REDUCTIONS:
        up = None

        def run():
            nonlocal up
            out = sfl(x, t, backend=backend, reduction=reduction, weight=w)
            if up is None:
                up = random_upstream(out)
            (g,) = torch.autograd.grad(out, x, up)
            return out, g

        (o1, g1), (o2, g2) = _run_twice(run)
        assert torch.equal(o1, o2), f"{reduction}: two runs differ"
        assert torch.equal(g1, g2), f"{reduction}: two gradients differ"


def test_cpu_reduction_independent_of_thread_count():
    """The C++ reduction uses fixed blocks: the same bits for any number of threads."""
    helpers.require_backend("cpu", "cpu")
    x = torch.randn(4000, 80)
    t = torch.randint(0, 81, (4000,))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(sfl(x, t, backend="cpu", reduction="sum"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:]), results


# ======================================================================================
# unwritten outputs: NaN poisoning (Python launchers) / finiteness (C++ kernels)
# ======================================================================================

POISON_CASES = [Case((1,)), Case((7,)), Case((1024,)), Case((1025,)), Case((4099,)), Case((37, 13)), Case((3, 1, 13)),
                Case((0, 5))]


def test_nan_poison_fixture_is_effective(nan_poison):
    assert torch.isnan(torch.empty(5)).all()
    assert torch.isnan(torch.empty_like(torch.zeros(3, 2))).all()
    assert torch.isnan(torch.empty_strided((2, 2), (2, 1))).all()
    assert torch.empty(4, dtype=torch.int64).dtype == torch.int64  # integer buffers are left alone


@pytest.mark.parametrize("case", POISON_CASES, ids=case_id)
@pytest.mark.parametrize("device,backend", [p for p in helpers.device_backend_params() if p.values[1] != "cpu"])
def test_every_output_element_written_poisoned(nan_poison, grad_mode, device, backend, case):
    """Outputs allocated by Python launchers start as NaN: every element must be written."""
    helpers.require_backend(device, backend)
    for form in FORMS:
        for weight_kind in (None, "row"):
            x = make_logits(case, torch.float32, device)
            t = make_target(case, form, torch.float32, device)
            w = make_weight(case, weight_kind, torch.float32, device)
            for reduction in REDUCTIONS:
                out, g = check_against_reference(x, t, backend, msg=f"poisoned {case.id}", reduction=reduction, weight=w)
                if reduction == "none" or x.numel():
                    assert not torch.isnan(out).any()
                assert not torch.isnan(g).any()


@pytest.mark.parametrize("case", POISON_CASES, ids=case_id)
@pytest.mark.parametrize("device,backend", [p for p in helpers.device_backend_params() if p.values[1] in ("cpu", "cuda")])
def test_every_output_element_written_native(grad_mode, device, backend, case):
    """at::empty in the C++ kernels cannot be poisoned from Python: check instead that, for
    finite inputs, every output/gradient element is finite and right, over sizes that are not
    multiples of the vector width."""
    helpers.require_backend(device, backend)
    for dtype in (helpers.CPU_DTYPES if device == "cpu" else helpers.CUDA_DTYPES):
        acc = ops_sfl._common.reduced_dtype(dtype)
        for form in FORMS:
            x = make_logits(case, dtype, device)
            t = make_target(case, form, dtype, device)
            x64, ref = reference_loss(x, t, reduction="none")
            helpers.prepoison_heap(x.numel(), dtype, acc, device=device)
            out = sfl(x, t, backend=backend, reduction="none")
            assert torch.isfinite(out).all()
            assert_close(out, ref, dtype, msg=f"native {case.id} {form}")
            up = random_upstream(out)
            (gref,) = torch.autograd.grad(ref, x64, up.double().cpu())
            helpers.prepoison_heap(x.numel(), dtype, device=device)
            (g,) = torch.autograd.grad(out, x, up)
            assert torch.isfinite(g).all()
            assert_close(g, gref, dtype, msg=f"native grad {case.id} {form}")
            red = sfl(x, t, backend=backend, reduction="sum")
            helpers.prepoison_heap(x.numel(), dtype, device=device)
            (g,) = torch.autograd.grad(red, x)
            assert torch.isfinite(g).all()


# ======================================================================================
# backend bookkeeping specific to this op
# ======================================================================================


@pytest.mark.parametrize("path", ["eager", "custom_op"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backward_runs_on_forward_backend(monkeypatch, backend, path):
    """The backward must run on the backend that ran the forward, also when the backend was
    chosen by a use_backend() block that has been left by the time .backward() runs (on CUDA
    the autograd engine runs the backward in its own thread, where the context never is)."""
    helpers.require_backend("cpu", backend)
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)
    helpers.set_grad_mode(monkeypatch, "recompute")  # the GPU default: the backward calls a kernel
    from fastloss import _backend

    if backend == "triton":
        import importlib

        importlib.import_module("fastloss.triton_kernels.pointwise")
    calls = []
    impls = _backend._IMPLEMENTATIONS["sigmoid_focal_loss"]
    for name, (fwd, bwd) in list(impls.items()):
        def wrap_b(fn, tag):
            def wrapped(*args, **kwargs):
                calls.append(tag)
                return fn(*args, **kwargs)
            return wrapped
        monkeypatch.setitem(impls, name, (fwd, wrap_b(bwd, name)))
    if _backend.resolve("sigmoid_focal_loss", "cpu") == backend:
        pytest.skip(f"{backend} is the default here: the check needs a non-default backend")
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.randint(0, 4, (4,))
    with fastloss.use_backend(backend):
        if path == "eager":
            loss = fastloss.sigmoid_focal_loss(x, t)
        else:
            loss, _ = focal_op(x, t, None, 0.25, 2.0, 2, False, None)
    loss.backward()
    assert calls == [backend], f"forward ran on {backend!r}, backward on {calls}"


@helpers.gpu
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_backward_inside_use_backend_on_cuda(monkeypatch, backend):
    """On CUDA tensors the autograd engine runs backward in a device thread: a use_backend()
    block around both forward and backward must still choose the backward's backend."""
    helpers.require_backend("cuda", backend)
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)
    helpers.set_grad_mode(monkeypatch, "recompute")
    from fastloss import _backend

    if _backend.resolve("sigmoid_focal_loss", "cuda") == backend:
        pytest.skip(f"{backend} is the default on cuda here: the check needs a non-default backend")
    import importlib

    importlib.import_module("fastloss.triton_kernels.pointwise")
    calls = []
    impls = _backend._IMPLEMENTATIONS["sigmoid_focal_loss"]
    for name, (fwd, bwd) in list(impls.items()):
        def wrap_b(fn, tag):
            def wrapped(*args, **kwargs):
                calls.append(tag)
                return fn(*args, **kwargs)
            return wrapped
        monkeypatch.setitem(impls, name, (fwd, wrap_b(bwd, name)))
    x = torch.randn(64, 13, device="cuda", requires_grad=True)
    t = torch.randint(0, 14, (64,), device="cuda")
    with fastloss.use_backend(backend):
        fastloss.sigmoid_focal_loss(x, t).backward()
    assert calls == [backend], f"forward ran on {backend!r}, backward on {calls}"


# ======================================================================================
# property test
# ======================================================================================


@pytest.fixture(params=["cpu", "reference"])
def property_backend(request):
    helpers.require_backend("cpu", request.param)
    return request.param


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(1, 17), min_size=1, max_size=3),
    gamma=st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 4.0)),
    alpha=st.one_of(st.just(-1.0), st.floats(0.0, 1.0)),
    reduction=st.sampled_from(REDUCTIONS),
    form=st.sampled_from(FORMS),
    weighted=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_vs_reference(property_backend, shape, gamma, alpha, reduction, form, weighted, dtype, seed):
    torch.manual_seed(seed)
    case = Case(tuple(shape))
    x = make_logits(case, dtype, "cpu")
    t = make_target(case, form, dtype, "cpu")
    w = make_weight(case, "row", dtype, "cpu") if weighted else None
    check_against_reference(x, t, property_backend, alpha=alpha, gamma=gamma, reduction=reduction, weight=w)
