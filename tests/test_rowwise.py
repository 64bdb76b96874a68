"""The row-wise (softmax) engine: cross entropy, NLL, softmax focal (+ Poly-1), Poly-1 cross
entropy, distribution focal, distillation KL -- against torch's own functions and the peers'
formulas (mmcv, mmdetection, ultralytics, PolyLoss), on every backend, plus the hardening rules,
gradcheck, opcheck, torch.compile, determinism and bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastloss
import helpers
from fastloss.ops import rowwise as ops_rw

# (shape, layout): contiguous, channels_last (4-D), "t" (a transposed (N, C): class stride N),
# "sliced" (every other class: not dense), unbatched (C,), one class, a long class axis
CASES = [((7, 5), "c"), ((6, 1), "c"), ((3, 4, 6), "c"), ((2, 3, 4, 5), "c"), ((2, 3, 4, 5), "cl"), ((2, 3, 2, 2, 3), "c"),
         ((13, 6), "t"), ((4, 9), "sliced"), ((5,), "c"), ((3, 1030), "c")]
CASE_IDS = ["x".join(map(str, s)) + ("" if lay == "c" else "-" + lay) for s, lay in CASES]
OPTIONS = [{}, {"weight": True}, {"label_smoothing": 0.2}, {"weight": True, "label_smoothing": 0.3}]


def _make_logits(shape, layout, dtype, device, scale=3.0):
    base = torch.randn(shape, dtype=torch.float64) * scale
    if layout == "cl":
        x = base.to(memory_format=torch.channels_last)
    elif layout == "t":
        x = base.t().contiguous().t()
    elif layout == "sliced":
        x = torch.stack([base, base], -1).flatten(-2)[..., ::2]
    else:
        x = base
    return x.to(dtype).to(device).requires_grad_()


def _labels(shape, device, ignore=True):
    C = shape[1] if len(shape) > 1 else shape[0]
    rows = shape[:1] + shape[2:] if len(shape) > 1 else ()
    y = torch.randint(0, C, rows)
    if ignore and y.dim():
        y.view(-1)[::4] = -100
    return y.to(device)


def _probs(shape, device):
    dim = 1 if len(shape) > 1 else 0
    return torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, dim).to(device)


def _kwargs(opt, C, dtype, device):
    kw = {}
    if opt.get("weight"):
        kw["weight"] = (torch.rand(C, dtype=torch.float64) + 0.1).to(device)
    if "label_smoothing" in opt:
        kw["label_smoothing"] = opt["label_smoothing"]
    return kw


def _grid_dtypes(device, backend):
    if helpers.is_interpreted(device, backend):
        return (torch.float32, torch.bfloat16)
    return helpers.CPU_DTYPES if device == "cpu" else helpers.CUDA_DTYPES


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
@pytest.mark.parametrize("shape,layout", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_cross_entropy_matches_torch(grad_mode, device, backend, shape, layout, target_kind):
    """fastloss.cross_entropy == F.cross_entropy (float64) for every option x reduction, with a
    random upstream gradient; the gradient keeps input's strides (no permuted copy)."""
    helpers.require_backend(device, backend)
    if target_kind == "probs" and len(shape) == 1:
        pytest.skip("torch's unbatched probabilities are (C,): covered by the labels form")
    C = shape[1] if len(shape) > 1 else shape[0]
    for dtype in _grid_dtypes(device, backend):
        torch.manual_seed(1)
        x = _make_logits(shape, layout, dtype, device)
        t = _labels(shape, device) if target_kind == "labels" else _probs(shape, device).to(dtype)
        x64 = x.detach().double().requires_grad_()
        t64 = t if target_kind == "labels" else t.double()
        for opt in OPTIONS:
            kw = _kwargs(opt, C, dtype, device)
            for reduction in ("mean", "sum", "none"):
                msg = f"{dtype} {opt} {reduction}"
                out = fastloss.cross_entropy(x, t, reduction=reduction, backend=backend, **kw)
                exp = F.cross_entropy(x64, t64, reduction=reduction, **kw)
                helpers.assert_close(out, exp, dtype, reduced=reduction != "none", msg=msg)
                up = helpers.random_upstream(exp)
                (g,) = torch.autograd.grad(out, x, up.to(out.dtype))
                (g64,) = torch.autograd.grad(exp, x64, up.double())
                helpers.assert_close(g, g64, dtype, msg=msg + " grad")
                if layout != "sliced":  # a dense input's gradient has its strides (not dense: contiguous)
                    assert g.stride() == x.stride(), (g.stride(), x.stride())


@pytest.mark.parametrize("C", [1, 7, 8, 9, 16, 17, 81, 2048, 2049, 4097])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_row_major_rows_edge_cases(grad_mode, device, backend, C):
    """(N, C) rows -- the CPU kernel's class-lane path up to C = 256 V (2048 with AVX2's 8 fp32
    lanes, 4096 with AVX-512's 16), the tiled sweeps past it -- against float64 torch, with a
    random upstream gradient: C around the vector widths, 29 rows (a partial last block of
    rows), a NaN logit (also at the label, which the class-lane path's sum leaves out), a +inf
    logit (off and at the label: NaN loss and gradient, as torch), rows all / partly -inf, a tie
    for the max, a confident row, ignored rows, and logits just above and below where
    exp(x - max) leaves fp32's normal range
    (the CPU exponential's clamp: 0 at or below -87.68, a subnormal up to ln(FLT_MIN) = -87.34)."""
    helpers.require_backend(device, backend)
    torch.manual_seed(3)
    x = torch.randn(29, C) * 3
    t = torch.randint(0, C, (29,))
    t[::6] = -100
    if C > 2:
        x[1, 2] = float("nan")
        x[2, :] = float("-inf")
        x[3, 1] = float("-inf")
        x[4, :] = 5.0  # every class ties for the max
        x[5, :] = 0.0
        x[5, t[5]] = 30.0  # confident: 1 - p ~ 1e-11, kept without cancellation
    if C > 6:
        x[6, :] = 0.0
        x[6, 1:6] = torch.tensor([-87.0, -87.5, -87.7, -88.5, -100.0])
        x[7, t[7]] = float("nan")
        x[8, (t[8] + 1) % C] = float("inf")
        x[9, t[9]] = float("inf")
    w = torch.rand(C) + 0.5
    x, t, w = x.to(device), t.to(device), w.to(device)
    for dtype in _grid_dtypes(device, backend):
        xd = x.to(dtype).requires_grad_()
        x64 = x.to(dtype).double().requires_grad_()
        for kw in ({}, {"weight": w.to(dtype)}):
            kw64 = {k: v.double() for k, v in kw.items()}
            out = fastloss.cross_entropy(xd, t, reduction="none", backend=backend, **kw)
            exp = F.cross_entropy(x64, t, reduction="none", **kw64)
            helpers.assert_close(out, exp, dtype, msg=f"C={C} {dtype} {list(kw)}")
            up = helpers.random_upstream(exp)
            (g,) = torch.autograd.grad(out, xd, up.to(out.dtype))
            (g64,) = torch.autograd.grad(exp, x64, up, retain_graph=True)
            helpers.assert_close(g, g64, dtype, msg=f"C={C} {dtype} {list(kw)} grad")


@pytest.mark.parametrize("C", [1, 2, 17, 33])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_row_major_rows_strided_and_tail_classes(grad_mode, device, backend, C):
    """Rows further apart than C (a slice of wider logits: the CPU kernel's class-lane path also
    for C = 1 and 2, which contiguous (N, 1) / (N, 2) logits do not take) with NaN, +inf and -inf
    in the last class (the class-lane path's tail vector past the full ones for C = 17 and 33),
    and a confident row whose label is that class -- against float64 torch, with a random
    upstream gradient."""
    helpers.require_backend(device, backend)
    torch.manual_seed(5)
    wide = torch.randn(21, C + 3) * 3
    t = torch.randint(0, C, (21,))
    t[::5] = -100
    wide[1, C - 1] = float("nan")
    wide[2, C - 1] = float("inf")
    wide[3, :C] = 0.0
    wide[3, C - 1], t[3] = 30.0, C - 1
    wide[4, C - 1] = float("-inf")
    wide[6, 0] = 40.0  # confident in the first class while the label may be the last
    for dtype in _grid_dtypes(device, backend):
        xd = wide.to(device=device, dtype=dtype)[:, :C].requires_grad_()
        assert xd.stride() == (C + 3, 1)
        x64 = wide[:, :C].to(dtype).double().requires_grad_()
        out = fastloss.cross_entropy(xd, t.to(device), reduction="none", backend=backend)
        exp = F.cross_entropy(x64, t, reduction="none")
        helpers.assert_close(out, exp, dtype, msg=f"C={C} {dtype}")
        up = helpers.random_upstream(exp)
        (g,) = torch.autograd.grad(out, xd, up.to(device=device, dtype=out.dtype))
        (g64,) = torch.autograd.grad(exp, x64, up)
        helpers.assert_close(g, g64, dtype, msg=f"C={C} {dtype} grad")


@pytest.mark.parametrize("shape,layout", [((7, 5), "c"), ((2, 3, 4, 5), "cl"), ((2, 3, 2, 2, 3), "c"), ((5,), "c")], ids=str)
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32, torch.float16)))
def test_nll_loss_matches_torch(device, backend, dtype, shape, layout):
    helpers.require_backend(device, backend)
    C = shape[1] if len(shape) > 1 else shape[0]
    x = _make_logits(shape, layout, torch.float64, "cpu")
    lp = torch.log_softmax(x.detach(), 1 if len(shape) > 1 else 0).to(dtype).to(device).requires_grad_()
    lp64 = lp.detach().double().requires_grad_()
    y = _labels(shape, device)
    for weight in (None, (torch.rand(C, dtype=torch.float64) + 0.1).to(device)):
        for reduction in ("mean", "sum", "none"):
            out = fastloss.nll_loss(lp, y, weight=weight, reduction=reduction, backend=backend)
            exp = F.nll_loss(lp64, y, weight=weight, reduction=reduction)
            helpers.assert_close(out, exp, dtype, reduced=reduction != "none", msg=f"{reduction}")
            up = helpers.random_upstream(exp)
            (g,) = torch.autograd.grad(out, lp, up.to(out.dtype))
            (g64,) = torch.autograd.grad(exp, lp64, up.double())
            helpers.assert_close(g, g64, dtype, msg=f"{reduction} grad")


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_label_dtypes_and_ignore_255(device, backend, label_dtype):
    """Segmentation label maps: uint8 / int32 / int64 with ignore_index 255, read as they are."""
    helpers.require_backend(device, backend)
    x = _make_logits((2, 5, 3, 4), "c", torch.float32, device)
    y = torch.randint(0, 5, (2, 3, 4))
    y[0, 0] = 255
    x64 = x.detach().double().cpu().requires_grad_()  # torch's value on CPU, with y and w
    w = torch.rand(5) + 0.1
    for kw in ({"ignore_index": 255, "label_smoothing": 0.1}, {"ignore_index": 255, "weight": w}, {"ignore_index": -100, "weight": w}):
        if kw["ignore_index"] == -100:  # -100 is no uint8 / int32 value here: every label counts (255 rows made valid)
            y = y.clamp(max=4)
        exp = F.cross_entropy(x64, y, **{k: v.double() if k == "weight" else v for k, v in kw.items()})
        out = fastloss.cross_entropy(x, y.to(label_dtype).to(device), backend=backend, **{k: v.to(device) if k == "weight" else v for k, v in kw.items()})
        helpers.assert_close(out, exp, torch.float32, reduced=True, msg=str(kw))
        (g,) = torch.autograd.grad(out, x)  # the mean's normaliser is in the stored gradient (CPU) or the upstream one
        (g64,) = torch.autograd.grad(exp, x64)
        helpers.assert_close(g, g64, torch.float32, msg=f"grad {kw}")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_mmdetection_normalisers(device, backend):
    """avg_non_ignore (mmdetection: mean over the non-ignored rows / over all rows), avg_factor,
    and a per-row sample weight multiplying the row losses."""
    helpers.require_backend(device, backend)
    x = _make_logits((20, 6), "c", torch.float32, device)
    y = _labels((20, 6), device)
    w = (torch.rand(6) + 0.1).to(device)
    sw = torch.rand(20, device=device)
    x64 = x.detach().double().requires_grad_()
    rows = F.cross_entropy(x64, y, weight=w.double(), reduction="none") * sw.double()
    valid = (y != -100).sum()
    eps = torch.finfo(torch.float32).eps
    cases = [({"avg_non_ignore": True}, rows.sum() / valid), ({"avg_non_ignore": False}, rows.sum() / 20),
             ({"avg_factor": 7.0}, rows.sum() / (7.0 + eps)), ({"avg_factor": torch.tensor(7.0, device=device)}, rows.sum() / (7.0 + eps)),
             ({"avg_factor": torch.tensor(7)}, rows.sum() / (7.0 + eps)), ({}, rows.sum() / w.double()[y[y != -100]].sum())]
    for kw, exp in cases:
        out = fastloss.cross_entropy(x, y, weight=w, sample_weight=sw, backend=backend, **kw)
        helpers.assert_close(out, exp, torch.float32, reduced=True, msg=str(kw))
        up = torch.rand((), dtype=torch.float64) + 0.5
        (g,) = torch.autograd.grad(out, x, up.to(out.dtype))
        (g64,) = torch.autograd.grad(exp, x64, up, retain_graph=True)
        helpers.assert_close(g, g64, torch.float32, msg=f"grad {kw}")
    a = torch.tensor(7.0, requires_grad=True)  # an avg_factor in the graph gets its gradient, -sum / a^2
    fastloss.cross_entropy(x, y, weight=w, sample_weight=sw, avg_factor=a, backend=backend).backward()
    helpers.assert_close(a.grad, -(rows.sum() / (7.0 + eps) ** 2).detach(), torch.float32, reduced=True)


# ====================================================================== the peers' formulas


def _mmcv_softmax_focal(x, y, alpha, gamma, weight):
    """mmcv.ops.softmax_focal_loss's formula (its CUDA kernel), reduction "none"."""
    p = torch.softmax(x, 1)
    yy = y.clamp(min=0)
    py = p.gather(1, yy[:, None])[:, 0]
    a = alpha[yy] if isinstance(alpha, torch.Tensor) else alpha
    loss = -a * (1 - py) ** gamma * torch.log(py.clamp_min(torch.finfo(torch.float32).tiny))
    if weight is not None:
        loss = loss * weight[yy]
    return torch.where(y >= 0, loss, torch.zeros_like(loss))


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_softmax_focal_matches_mmcv(grad_mode, device, backend):
    helpers.require_backend(device, backend)
    torch.manual_seed(5)
    x = _make_logits((40, 7), "c", torch.float32, device)
    y = torch.randint(-1, 7, (40,), device=device)
    x64 = x.detach().double().requires_grad_()
    for alpha in (0.25, torch.rand(7, dtype=torch.float64).to(device)):
        for gamma in (0.0, 0.5, 2.0):
            for weight in (None, torch.rand(7, dtype=torch.float64).to(device)):
                exp = _mmcv_softmax_focal(x64, y, alpha, gamma, weight)
                for reduction in ("none", "sum", "mean"):
                    out = fastloss.softmax_focal_loss(x, y, alpha=alpha, gamma=gamma, weight=weight, reduction=reduction, backend=backend)
                    e = {"none": exp, "sum": exp.sum(), "mean": exp.sum() / 40}[reduction]  # mmcv's mean: over the rows
                    helpers.assert_close(out, e, torch.float32, reduced=reduction != "none", msg=f"{gamma} {reduction}")
                up = helpers.random_upstream(exp)
                out = fastloss.softmax_focal_loss(x, y, alpha=alpha, gamma=gamma, weight=weight, reduction="none", backend=backend)
                (g,) = torch.autograd.grad(out, x, up.float())
                (g64,) = torch.autograd.grad(exp, x64, up, retain_graph=True)
                helpers.assert_close(g, g64, torch.float32, msg=f"{gamma} grad")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_poly1_forms_match_polyloss(device, backend):
    """Poly-1 CE: CE + eps (1 - sum_c t_c p_c) (the PolyLoss paper's code, smoothed one-hot);
    Poly-1 softmax focal: FL + eps (1 - p_y)^(gamma + 1)."""
    helpers.require_backend(device, backend)
    x = _make_logits((30, 6), "c", torch.float32, device)
    y = torch.randint(0, 6, (30,), device=device)
    x64 = x.detach().double().requires_grad_()
    for s in (0.0, 0.1):
        p = torch.softmax(x64, 1)
        onehot = F.one_hot(y, 6).double() * (1 - s) + s / 6
        exp = F.cross_entropy(x64, y, label_smoothing=s, reduction="none") + 0.7 * (1 - (onehot * p).sum(1))
        out = fastloss.poly1_cross_entropy(x, y, epsilon=0.7, label_smoothing=s, reduction="none", backend=backend)
        helpers.assert_close(out, exp, torch.float32)
        up = helpers.random_upstream(exp)
        (g,) = torch.autograd.grad(out, x, up.float())
        (g64,) = torch.autograd.grad(exp, x64, up, retain_graph=True)
        helpers.assert_close(g, g64, torch.float32)
    probs = _probs((30, 6), device)
    p = torch.softmax(x64, 1)
    exp = F.cross_entropy(x64, probs, reduction="none") - 0.4 * (1 - (probs * p).sum(1))
    helpers.assert_close(fastloss.poly1_cross_entropy(x, probs.float(), epsilon=-0.4, reduction="none", backend=backend), exp, torch.float32)
    py = p.gather(1, y[:, None])[:, 0]
    exp = _mmcv_softmax_focal(x64, y, 0.25, 2.0, None) + 1.5 * (1 - py) ** 3
    out = fastloss.poly1_softmax_focal_loss(x, y, alpha=0.25, gamma=2.0, epsilon=1.5, reduction="none", backend=backend)
    helpers.assert_close(out, exp, torch.float32)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g64,) = torch.autograd.grad(exp.sum(), x64)
    helpers.assert_close(g, g64, torch.float32)
    # per-class alpha weighs the focal term only, as a scalar alpha does
    alpha = torch.rand(6, dtype=torch.float64)
    py = torch.softmax(x64, 1).gather(1, y[:, None])[:, 0]
    exp = _mmcv_softmax_focal(x64, y, alpha, 2.0, None) + 1.5 * (1 - py) ** 3
    out = fastloss.poly1_softmax_focal_loss(x, y, alpha=alpha.float().to(device), gamma=2.0, epsilon=1.5, reduction="none", backend=backend)
    helpers.assert_close(out, exp, torch.float32)
    helpers.assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(exp.sum(), x64)[0], torch.float32)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_poly1_cross_entropy_class_weights(device, backend):
    """Class weights in Poly-1 CE follow torch's weighted cross entropy: a row's whole loss,
    CE and the Poly-1 term alike, is weighted by w_y (the smoothed target a = (1 - s) w_y e_y
    + s w / C), and "mean" divides by the summed w_y of the counted rows.  (Common PyTorch
    PolyLoss snippets add an unweighted eps (1 - p_y) to F.cross_entropy(weight=w,
    reduction="none") and take a plain row mean: a different loss.)"""
    helpers.require_backend(device, backend)
    torch.manual_seed(3)
    x = _make_logits((30, 6), "c", torch.float32, device)
    y = _labels((30, 6), device)
    w = torch.rand(6, dtype=torch.float64) + 0.1
    x64 = x.detach().double().requires_grad_()
    yc = y.clamp(min=0)
    counted = (y != -100).double()
    for s in (0.0, 0.1):
        p = torch.softmax(x64, 1)
        a = (F.one_hot(yc, 6).double() * (1 - s) + s / 6) * w  # the smoothed, weighted target of a row
        poly = F.cross_entropy(x64, y, weight=w, label_smoothing=s, reduction="none") + 0.7 * ((a * (1 - p)).sum(1)) * counted
        for reduction, exp in (("none", poly), ("sum", poly.sum()), ("mean", poly.sum() / (w[yc] * counted).sum())):
            out = fastloss.poly1_cross_entropy(x, y, epsilon=0.7, weight=w.float().to(device), label_smoothing=s, reduction=reduction,
                                               backend=backend)
            helpers.assert_close(out, exp, torch.float32, reduced=reduction != "none", msg=f"{s} {reduction}")
            up = helpers.random_upstream(exp)
            helpers.assert_close(torch.autograd.grad(out, x, up.float())[0], torch.autograd.grad(exp, x64, up, retain_graph=True)[0],
                                 torch.float32, msg=f"{s} {reduction} grad")


def _mmdet_dfl(pred, label):
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.double() - label
    weight_right = label - dis_left.double()
    return (F.cross_entropy(pred, dis_left, reduction="none") * weight_left
            + F.cross_entropy(pred, dis_right.clamp(max=pred.shape[-1] - 1), reduction="none") * weight_right)


def _ultralytics_dfl(pred_dist, target, reg_max):
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl_ = target.long()
    tr = tl_ + 1
    wl = tr - target
    wr = 1 - wl
    return (F.cross_entropy(pred_dist, tl_.view(-1), reduction="none").view(tl_.shape) * wl
            + F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl_.shape) * wr).mean(-1, keepdim=True)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_distribution_focal_matches_mmdet_and_ultralytics(grad_mode, device, backend):
    helpers.require_backend(device, backend)
    torch.manual_seed(2)
    n_bins = 17  # reg_max 16 (mmdetection), 17 bins
    pred = _make_logits((24, n_bins), "c", torch.float32, device)
    v = (torch.rand(24, dtype=torch.float64) * 16).to(device)
    v[0], v[1], v[2] = 16.0, 0.0, 3.0  # the last bin exactly, the first, an integer
    p64 = pred.detach().double().requires_grad_()
    exp = _mmdet_dfl(p64, v)
    w = torch.rand(24, device=device)
    for reduction in ("none", "sum", "mean"):
        out = fastloss.distribution_focal_loss(pred, v.float(), weight=w, reduction=reduction, backend=backend)
        e = exp * w.double()
        e = {"none": e, "sum": e.sum(), "mean": e.mean()}[reduction]
        helpers.assert_close(out, e, torch.float32, reduced=reduction != "none", msg=reduction)
    out = fastloss.distribution_focal_loss(pred, v.float(), reduction="none", backend=backend)
    up = helpers.random_upstream(exp)
    (g,) = torch.autograd.grad(out, pred, up.float())
    (g64,) = torch.autograd.grad(exp, p64, up)
    helpers.assert_close(g, g64, torch.float32)
    # ultralytics: (n, 4) sides, reg_max bins, targets clamped to reg_max - 1.01, mean over the sides
    reg_max = 16
    pd = _make_logits((6 * 4, reg_max), "c", torch.float32, device)
    tgt = (torch.rand(6, 4, dtype=torch.float64) * 17 - 0.5).to(device)
    exp = _ultralytics_dfl(pd.detach().double(), tgt, reg_max)
    out = fastloss.distribution_focal_loss(pd.view(6, 4, reg_max), tgt.float(), reduction="none", max_target=reg_max - 1.01,
                                           backend=backend).mean(-1, keepdim=True)
    helpers.assert_close(out, exp, torch.float32)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_distillation_kl_matches_mmdet(device, backend):
    """mmdetection's knowledge_distillation_kl_div_loss: KL(softmax(t / T) || softmax(x / T))
    averaged over the classes, times T^2 -- fastloss sums over the classes (the KL divergence)."""
    helpers.require_backend(device, backend)
    x = _make_logits((12, 9), "c", torch.float32, device)
    z = (torch.randn(12, 9, dtype=torch.float64) * 2).to(device)
    x64 = x.detach().double().requires_grad_()
    for T in (1.0, 4.0):
        mmdet = F.kl_div(F.log_softmax(x64 / T, 1), F.softmax(z / T, 1), reduction="none").mean(1) * (T * T)
        for logits in (True, False):
            teacher = z if logits else F.softmax(z / T, 1)
            out = fastloss.distillation_kl_div(x, teacher.float(), temperature=T, target_logits=logits, reduction="none", backend=backend)
            helpers.assert_close(out / 9, mmdet, torch.float32, msg=f"T={T} logits={logits}")
            (g,) = torch.autograd.grad(out.sum(), x)
            (g64,) = torch.autograd.grad(mmdet.sum() * 9, x64, retain_graph=True)
            helpers.assert_close(g, g64, torch.float32, msg=f"T={T} grad")
    out = fastloss.distillation_kl_div(x, z.float(), temperature=2.0, t_squared=False, backend=backend)
    exp = F.kl_div(F.log_softmax(x64 / 2, 1), F.softmax(z / 2, 1), reduction="batchmean")
    helpers.assert_close(out, exp, torch.float32, reduced=True)


# ====================================================================== hardening rules


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_empty_and_all_ignored_means_are_zero(device, backend):
    helpers.require_backend(device, backend)
    x = torch.randn(0, 4, device=device, requires_grad=True)
    for fn in (lambda: fastloss.cross_entropy(x, torch.zeros(0, dtype=torch.long, device=device), backend=backend),
               lambda: fastloss.softmax_focal_loss(x, torch.zeros(0, dtype=torch.long, device=device), backend=backend),
               lambda: fastloss.distribution_focal_loss(x, torch.zeros(0, device=device), backend=backend)):
        out = fn()
        assert out.item() == 0
        (g,) = torch.autograd.grad(out, x)
        assert g.shape == x.shape
    x = torch.randn(5, 3, 2, device=device, requires_grad=True)
    y = torch.full((5, 2), -100, device=device)
    out = fastloss.cross_entropy(x, y, label_smoothing=0.1, backend=backend)
    assert out.item() == 0  # torch: NaN
    (g,) = torch.autograd.grad(out, x)
    assert (g == 0).all()
    assert fastloss.cross_entropy(x, y, reduction="none", backend=backend).shape == (5, 2)


@pytest.mark.parametrize("device,backend,layout", [pytest.param(*p.values, lay, marks=p.marks, id=f"{p.id}-{lay}")
                                                   for p in helpers.device_backend_params() for lay in ("contiguous", "strided")
                                                   if not (p.values == ("cpu", "triton") and lay == "strided")])
def test_long_class_axis_fp32_accuracy(device, backend, layout):
    """fp32 over a long class axis (C = 1e5, a vocabulary-sized head), with the classes
    contiguous ((N, C)) or strided (a transposed (C, N): the CUDA kernel's one thread per row):
    every backend sums a row in blocks (CPU: kSumBlock classes per partial, CUDA: kSumBlock
    classes of a lane per merged state, Triton: a tree per chunk), so the loss stays within a
    few ulp of the float64 value (a plain sequential sum per row was off by ~1e-5 relative),
    for labels, smoothed labels and probabilities.  (Triton's strided case runs on a GPU only:
    the interpreter takes two minutes over its 1e5 / BLOCK_C chunks.)"""
    helpers.require_backend(device, backend)
    g = torch.Generator().manual_seed(5)
    N, C = (2 if helpers.is_interpreted(device, backend) else 16), 100_000
    x = torch.randn(N, C, generator=g) * 3
    y = torch.randint(0, C, (N,), generator=g)
    p = torch.softmax(torch.randn(N, C, generator=g), -1)
    if layout == "strided":
        x, p = x.t().contiguous().t(), p.t().contiguous().t()
    for target, kw in ((y, {}), (y, {"label_smoothing": 0.1}), (p, {})):
        ours = fastloss.cross_entropy(x.to(device), target.to(device), reduction="none", backend=backend, **kw).double().cpu()
        exact = F.cross_entropy(x.double(), target if target is y else target.double(), reduction="none", **kw)
        assert ((ours - exact).abs() / exact).max() < 1e-6


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_confident_rows_without_cancellation(device, backend):
    """-log p of a confident correct row is log1p(rest), not log(1 + tiny) - 0 = 0: x = (30, 0)
    costs 9.3576e-14 with gradient (-9.3576e-14, 9.3576e-14), in fp32 on every backend."""
    helpers.require_backend(device, backend)
    x = torch.tensor([[30.0, 0.0], [0.0, -1e4], [1e4, -1e4]], device=device, requires_grad=True)
    y = torch.tensor([0, 0, 0], device=device)
    out = fastloss.cross_entropy(x, y, reduction="none", backend=backend)
    e30 = math.exp(-30.0)
    torch.testing.assert_close(out[0].double().cpu(), torch.tensor(math.log1p(e30), dtype=torch.float64), rtol=1e-6, atol=0)
    assert out[1].item() == 0 and out[2].item() == 0
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g[0].double().cpu(), torch.tensor([-e30 / (1 + e30), e30 / (1 + e30)], dtype=torch.float64), rtol=1e-6, atol=0)
    assert torch.isfinite(g).all()
    out = fastloss.softmax_focal_loss(x, y, gamma=0.5, reduction="none", backend=backend)
    assert torch.isfinite(out).all() and out[0] > 0
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and g[0, 0] < 0


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_masked_logits_and_nan(device, backend):
    """A masked -inf logit costs nothing and gets gradient 0 (soft targets with no mass there
    too: torch gives NaN); NaN in a counted row reaches its loss and its whole gradient row;
    an ignored row contributes exactly 0."""
    helpers.require_backend(device, backend)
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[-inf, 1.0, 2.0], [0.5, nan, 0.1], [nan, 0.0, 0.0]], device=device, requires_grad=True)
    y = torch.tensor([2, 0, -100], device=device)
    out = fastloss.cross_entropy(x, y, reduction="none", backend=backend)
    assert torch.isfinite(out[0]) and torch.isnan(out[1]) and out[2] == 0
    (g,) = torch.autograd.grad(out.nansum(), x)
    assert g[0, 0] == 0 and torch.isfinite(g[0]).all() and torch.isnan(g[1]).all() and (g[2] == 0).all()
    t = torch.tensor([[0.0, 0.5, 0.5]], device=device)
    out = fastloss.cross_entropy(x[:1], t, reduction="none", backend=backend)
    assert torch.isfinite(out).all()


def test_autocast_computes_in_fp32():
    x = torch.randn(64, 10).half().requires_grad_()
    y = torch.randint(0, 10, (64,))
    with torch.autocast("cpu", dtype=torch.float16):
        out = fastloss.cross_entropy(x, y, reduction="sum")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.cross_entropy(x.float(), y, reduction="sum"), rtol=1e-5, atol=1e-5)


# ====================================================================== bad inputs


def test_bad_inputs():
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match="out of range"):
        fastloss.cross_entropy(x, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="out of range"):
        fastloss.cross_entropy(x, torch.tensor([0, -1, 2, 1]))
    fastloss.cross_entropy(x, torch.tensor([0, -1, 2, 1]), ignore_index=-1)
    with pytest.raises(ValueError, match="shape"):
        fastloss.cross_entropy(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="probabilities"):
        fastloss.cross_entropy(x, torch.rand(4, 2))
    with pytest.raises(ValueError, match="weight"):
        fastloss.cross_entropy(x, y, weight=torch.ones(2))
    for bad in (torch.tensor([1.0, -1.0, 1.0]), torch.tensor([1.0, float("nan"), 1.0]),
                torch.tensor([1e39, 1.0, 1.0], dtype=torch.float64)):  # 1e39: inf in the fp32 the kernels read
        with pytest.raises(ValueError, match="weight must be finite and >= 0"):
            fastloss.cross_entropy(x, y, weight=bad)
        with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
            fastloss.softmax_focal_loss(x, y, alpha=bad)
    assert fastloss.cross_entropy(x.double(), y, weight=torch.tensor([1e39, 1.0, 1.0], dtype=torch.float64)).isfinite()  # fp64: fine
    with pytest.raises(ValueError, match="floating"):
        fastloss.cross_entropy(torch.ones(4, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="label_smoothing"):
        fastloss.cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        fastloss.cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="sum"):
        fastloss.cross_entropy(x, y, reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="at least one class"):
        fastloss.cross_entropy(torch.randn(4, 0), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class labels"):
        fastloss.nll_loss(x, torch.rand(4, 3))
    with pytest.raises(ValueError, match="out of range"):
        fastloss.softmax_focal_loss(x, torch.tensor([0, 3, -1, 1]))
    fastloss.softmax_focal_loss(x, torch.tensor([0, 2, -1, 1]))  # negative labels: ignored rows (mmcv)
    with pytest.raises(ValueError, match="gamma"):
        fastloss.softmax_focal_loss(x, y, gamma=-1.0)
    with pytest.raises(ValueError, match="target"):
        fastloss.distribution_focal_loss(x, torch.tensor([0.5, 2.5, 1.0, 0.0]))  # > n = 2
    with pytest.raises(ValueError, match="temperature"):
        fastloss.distillation_kl_div(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="detach"):
        fastloss.cross_entropy(x, torch.rand(4, 3, requires_grad=True).softmax(1))


# ====================================================================== machinery


_W = torch.tensor([0.3, 1.2, 0.7, 2.0], dtype=torch.float64)
GRADCHECK = {
    "ce": lambda x, y, p, v, z: fastloss.cross_entropy(x, y, weight=_W, label_smoothing=0.2),
    "ce_probs": lambda x, y, p, v, z: fastloss.cross_entropy(x, p, label_smoothing=0.1),
    "nll": lambda x, y, p, v, z: fastloss.nll_loss(x, y, reduction="sum"),
    "focal": lambda x, y, p, v, z: fastloss.softmax_focal_loss(x, y, gamma=1.5, reduction="sum"),
    "poly1_focal": lambda x, y, p, v, z: fastloss.poly1_softmax_focal_loss(x, y, gamma=0.5, epsilon=0.5),
    "poly1": lambda x, y, p, v, z: fastloss.poly1_cross_entropy(x, y, label_smoothing=0.1, epsilon=2.0),
    "dfl": lambda x, y, p, v, z: fastloss.distribution_focal_loss(x, v, reduction="sum"),
    "kd": lambda x, y, p, v, z: fastloss.distillation_kl_div(x, z, temperature=2.0),
    "kd_probs": lambda x, y, p, v, z: fastloss.distillation_kl_div(x, p, target_logits=False),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_fp64(backend, name):
    helpers.require_backend("cpu", backend)
    torch.manual_seed(3)
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True) if name not in ("dfl",) else torch.randn(6, 4, dtype=torch.float64,
                                                                                                            requires_grad=True)
    y = torch.randint(0, 4, (5, 3))
    p = torch.softmax(torch.randn(5, 4, 3, dtype=torch.float64), 1)
    v = torch.rand(6, dtype=torch.float64) * 2.8 + 0.1
    z = torch.randn(5, 4, 3, dtype=torch.float64)
    fn = GRADCHECK[name]
    with fastloss.use_backend(backend):
        assert helpers.gradcheck(lambda inp: fn(inp, y, p, v, z), (x,), backend, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_opcheck(backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(3, 5, 4, requires_grad=True)
    y = torch.randint(0, 5, (3, 4))
    params = ops_rw._params(keep=0.9, uniform=0.02)
    for store in (False, True):
        for reduction in (0, 1):
            torch.library.opcheck(torch.ops.fastloss.cross_entropy.default,
                                  (x, y, torch.rand(5), None, torch.rand(12), 0, params, -100, reduction, store, backend))
    torch.library.opcheck(torch.ops.fastloss.distillation_kl_div.default,
                          (x, torch.randn(3, 5, 4), None, None, None, 3, ops_rw._params(in_scale=0.5, out_scale=4.0), None, 1, False, backend))
    # every other loss's op once (one schema: the engine's arguments; the losses' own parameters)
    torch.library.opcheck(torch.ops.fastloss.nll_loss.default, (x, y, torch.rand(5), None, None, 0, ops_rw._params(), -100, 1, False, backend))
    torch.library.opcheck(torch.ops.fastloss.softmax_focal_loss.default,
                          (x, y, None, torch.rand(5), None, 0, ops_rw._params(gamma=2.0), None, 0, True, backend))
    torch.library.opcheck(torch.ops.fastloss.poly1_cross_entropy.default,
                          (x, y, torch.rand(5), None, None, 0, ops_rw._params(epsilon=1.0), -100, 1, True, backend))
    bins = torch.randn(12, 17, 1, requires_grad=True)
    torch.library.opcheck(torch.ops.fastloss.distribution_focal_loss.default,
                          (bins, torch.rand(12, 1) * 16, None, None, torch.rand(12, 1), 2, ops_rw._params(bins_hi=15.99), None, 1, False, backend))


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_compile_fullgraph(dynamo_reset, backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(2, 5, 3, 3, requires_grad=True)
    y = torch.randint(0, 5, (2, 3, 3))
    y[0, 0, 0] = 255
    w = torch.rand(5)

    def fn(x, y, w):
        return (fastloss.cross_entropy(x, y, weight=w, ignore_index=255, label_smoothing=0.1, backend=backend)
                + fastloss.softmax_focal_loss(x, y.clamp(max=4), backend=backend)
                + fastloss.distribution_focal_loss(x.flatten(1), torch.rand(2) * 40, backend=backend) * 0
                + fastloss.distillation_kl_div(x, x.detach() * 0.5, temperature=2.0, backend=backend)
                + fastloss.nll_loss(x, y.clamp(max=4), reduction="sum", backend=backend)
                + fastloss.poly1_cross_entropy(x, y, weight=w, ignore_index=255, backend=backend))

    torch.manual_seed(0)
    helpers.assert_compiled_matches_eager(fn, (x, y, w), x)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_avg_factor_every_loss(device, backend):
    """mmdetection's avg_factor is the engine's, for every loss on it: "mean" = sum / (avg_factor
    + fp32 eps), a float or a tensor, with its gradient."""
    helpers.require_backend(device, backend)
    torch.manual_seed(2)
    x = _make_logits((12, 5), "c", torch.float32, device)
    y = torch.randint(0, 5, (12,), device=device)
    eps = torch.finfo(torch.float32).eps
    losses = {"cross_entropy": lambda **kw: fastloss.cross_entropy(x, y, label_smoothing=0.1, **kw),
              "nll_loss": lambda **kw: fastloss.nll_loss(x, y, **kw),
              "softmax_focal_loss": lambda **kw: fastloss.softmax_focal_loss(x, y, alpha=torch.rand(5, device=device), **kw),
              "poly1_cross_entropy": lambda **kw: fastloss.poly1_cross_entropy(x, y, **kw),
              "distribution_focal_loss": lambda **kw: fastloss.distribution_focal_loss(x, torch.rand(12, device=device) * 4, **kw),
              "distillation_kl_div": lambda **kw: fastloss.distillation_kl_div(x, x.detach() * 0.5, **kw)}
    for name, f in losses.items():
        torch.manual_seed(4)  # the same random arguments in each call
        total = f(reduction="sum", backend=backend)
        (g_sum,) = torch.autograd.grad(total, x)
        for avg_factor in (7.0, torch.tensor(7.0, device=device)):
            torch.manual_seed(4)
            out = f(reduction="mean", avg_factor=avg_factor, backend=backend)
            helpers.assert_close(out, total / (7.0 + eps), torch.float32, reduced=True, msg=name)
            helpers.assert_close(torch.autograd.grad(out, x)[0], g_sum / (7.0 + eps), torch.float32, msg=name + " grad")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_unchecked_out_of_range_labels_rule(monkeypatch, device, backend):
    """Documented rule for unchecked labels (CUDA tensors outside checked mode: no host sync to
    check them): a label outside [0, C) that is not ignore_index is an ignored row -- loss 0,
    gradient 0, not counted in "mean" -- for every label dtype.  On CPU tensors the op raises
    first; with its check switched off every kernel shows the same rule."""
    helpers.require_backend(device, backend)
    monkeypatch.setattr(fastloss.ops._common, "labels_checked_on", lambda device: False)
    x = _make_logits((2, 5, 3, 4), "cl", torch.float32, device)
    for dtype in (torch.int64, torch.int32, torch.uint8):
        y = torch.randint(0, 5, (2, 3, 4)).to(dtype)
        bad = torch.zeros(2, 3, 4, dtype=torch.bool)
        bad[0, 0, :2] = bad[1, 2, 3] = True
        y[0, 0, :2] = 5
        y[1, 2, 3] = 200 if dtype == torch.uint8 else -7
        y = y.to(device)
        kept = torch.where(bad.to(device), torch.full_like(y, 255), y).long()
        w = torch.rand(5, device=device)
        for reduction in ("none", "mean"):
            out = fastloss.cross_entropy(x, y, weight=w, label_smoothing=0.1, reduction=reduction, backend=backend)
            exp = fastloss.cross_entropy(x, kept, weight=w, label_smoothing=0.1, ignore_index=255, reduction=reduction, backend=backend)
            helpers.assert_close(out, exp, torch.float32, msg=f"{dtype} {reduction}")
            up = helpers.random_upstream(exp)
            g, = torch.autograd.grad(out, x, up)
            helpers.assert_close(g, torch.autograd.grad(exp, x, up)[0], torch.float32, msg=f"{dtype} {reduction} grad")
            assert (g.permute(0, 2, 3, 1)[bad.to(device)] == 0).all()


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_deterministic(device, backend):
    helpers.require_backend(device, backend)
    n = 3000 if helpers.is_interpreted(device, backend) else 40000
    x = torch.randn(n, 19, device=device, requires_grad=True)
    y = torch.randint(0, 19, (n,), device=device)

    def run():
        loss = fastloss.cross_entropy(x, y, label_smoothing=0.1, backend=backend)
        (g,) = torch.autograd.grad(loss, x)
        return loss, g

    (a, ga), (b, gb) = run(), run()
    assert torch.equal(a, b) and torch.equal(ga, gb)
    # the engine's other target kinds: probabilities, bins (distribution focal), teacher logits
    p = torch.softmax(torch.randn(n, 19, device=device), 1)
    v = torch.rand(n, device=device) * 17
    for loss in (lambda: fastloss.cross_entropy(x, p, backend=backend), lambda: fastloss.distribution_focal_loss(x, v, backend=backend),
                 lambda: fastloss.distillation_kl_div(x, p * 3, temperature=2.0, backend=backend)):
        runs = [(out, *torch.autograd.grad(out, x)) for out in (loss(), loss())]
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("device,backend", [p for p in helpers.device_backend_params() if p.values[1] != "cpu"])
def test_every_output_written_poisoned(nan_poison, grad_mode, device, backend):
    """torch.empty & co return NaN (the Python-side launchers' buffers: Triton's outputs,
    partial sums and stored gradients; the reference's): every element must be written --
    rows past a tile, classes past a chunk, ignored rows, one class, one row."""
    helpers.require_backend(device, backend)
    for shape, layout in (((1, 1), "c"), ((7, 5), "c"), ((3, 1030), "c"), ((13, 6), "t"), ((2, 3, 4, 5), "cl"), ((2, 19, 3), "c")):
        torch.manual_seed(0)
        x = _make_logits(shape, layout, torch.float32, device)
        x64 = x.detach().double().requires_grad_()
        rows = math.prod(shape) // shape[1]
        for t in (_labels(shape, device, ignore=rows > 1), _probs(shape, device).float()):  # an all-ignored mean is 0, torch's NaN
            t64 = t if not t.is_floating_point() else t.double()
            for reduction in ("none", "sum", "mean"):
                msg = f"poisoned {shape} {layout} {t.dtype} {reduction}"
                out = fastloss.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1, backend=backend)
                exp = F.cross_entropy(x64, t64, reduction=reduction, label_smoothing=0.1)
                helpers.assert_close(out, exp, torch.float32, reduced=reduction != "none", msg=msg)
                up = helpers.random_upstream(exp)
                (g,) = torch.autograd.grad(out, x, up.float())
                helpers.assert_close(g, torch.autograd.grad(exp, x64, up)[0], torch.float32, msg=msg + " grad")


@pytest.mark.parametrize("store", [True, False], ids=["store", "recompute"])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_eager_fast_path_equals_custom_op(device, backend, store):
    helpers.require_backend(device, backend)
    x = torch.randn(4, 6, 5, device=device, requires_grad=True)
    y = torch.randint(0, 6, (4, 5), device=device)
    args = (x, y, torch.rand(6, device=device), None, None)
    params = ops_rw._params(keep=0.9, uniform=0.1 / 6)
    out_f, cache_f = ops_rw.RowwiseFunction.apply(*args, "cross_entropy", 0, params, -100, 1, store, backend)
    out_o, cache_o = torch.ops.fastloss.cross_entropy(*args, 0, params, -100, 1, store, backend)
    assert torch.equal(out_f, out_o) and torch.equal(cache_f, cache_o)
    g_f, = torch.autograd.grad(out_f[0], x)
    g_o, = torch.autograd.grad(out_o[0], x)
    assert torch.equal(g_f, g_o)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_nn_modules(device, backend):
    helpers.require_backend(device, backend)
    x = _make_logits((6, 4, 3), "c", torch.float32, device)
    y = torch.randint(0, 4, (6, 3), device=device)
    w = torch.rand(4, device=device)
    mods = [(fastloss.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1, loss_weight=2.0, backend=backend),
             lambda: 2 * fastloss.cross_entropy(x, y, weight=w, label_smoothing=0.1)),
            (fastloss.nn.NLLLoss(backend=backend), lambda: fastloss.nll_loss(x, y)),
            (fastloss.nn.SoftmaxFocalLoss(gamma=1.0, backend=backend), lambda: fastloss.softmax_focal_loss(x, y, gamma=1.0)),
            (fastloss.nn.Poly1CrossEntropyLoss(epsilon=0.5, backend=backend), lambda: fastloss.poly1_cross_entropy(x, y, epsilon=0.5)),
            (fastloss.nn.DistillationKLDivLoss(temperature=2.0, backend=backend),
             lambda: fastloss.distillation_kl_div(x, x.detach() * 0.3, temperature=2.0))]
    for m, expected in mods:
        t = x.detach() * 0.3 if isinstance(m, fastloss.nn.DistillationKLDivLoss) else y
        torch.testing.assert_close(m(x, t), expected())
        assert "loss_weight" in repr(m)
    v = torch.rand(6, 3, device=device) * 3
    torch.testing.assert_close(fastloss.nn.DistributionFocalLoss(backend=backend)(x.transpose(1, 2), v),
                               fastloss.distribution_focal_loss(x.transpose(1, 2), v))
    with pytest.raises(TypeError):
        fastloss.nn.CrossEntropyLoss(use_sigmoid=True)
    with pytest.raises(ValueError, match="label_smoothing"):
        fastloss.nn.CrossEntropyLoss(label_smoothing=-0.1)


def test_nn_modules_accept_class_vectors_on_any_device():
    """``nn.CrossEntropyLoss(weight=w.cuda())`` is torch's usual pattern: a module checks its
    arguments on its class vectors' device, not on a CPU input (the meta device stands for
    CUDA here: the same path, on a machine without a GPU).  Vectors on two devices still raise."""
    w = torch.rand(4, device="meta")
    for module in (fastloss.nn.CrossEntropyLoss(weight=w), fastloss.nn.Poly1CrossEntropyLoss(weight=w), fastloss.nn.NLLLoss(weight=w),
                   fastloss.nn.SoftmaxFocalLoss(alpha=w), fastloss.nn.SoftmaxFocalLoss(weight=w, alpha=w)):
        buffers = dict(module.named_buffers())
        assert buffers and all(b.device.type == "meta" for b in buffers.values()), (type(module).__name__, buffers)
    with pytest.raises(ValueError, match="one device"):
        fastloss.nn.SoftmaxFocalLoss(weight=w, alpha=torch.rand(4))
    with pytest.raises(ValueError, match="finite and >= 0"):
        fastloss.nn.CrossEntropyLoss(weight=torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_masked_teacher_class(device, backend):
    """A teacher logit of -inf (a masked class) is a finite KL: 0 * -inf must not turn it NaN."""
    helpers.require_backend(device, backend)
    s = torch.tensor([[0.5, 1.0, -0.3], [2.0, -1.0, 0.0]], device=device, requires_grad=True)
    te = torch.tensor([[1.0, float("-inf"), 0.0], [0.0, 0.5, float("-inf")]], device=device)
    got = fastloss.distillation_kl_div(s, te, backend=backend)
    want = F.kl_div(F.log_softmax(s, 1), F.softmax(te, 1), reduction="batchmean")
    helpers.assert_close(got, want, torch.float32)
    helpers.assert_close(torch.autograd.grad(got, s)[0], torch.autograd.grad(want, s)[0], torch.float32)


@pytest.mark.parametrize("smoothing", [0.0, 1e-3])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_poly1_confident_rows_fp32(device, backend, smoothing):
    """Poly-1's gradient at the label of a confident row: eps (P - a_y) p_y with P - a_y formed
    from q_y, not by cancelling U - (E + F) a_y (which lost it all in fp32: half the value)."""
    helpers.require_backend(device, backend)
    torch.manual_seed(0)
    x64 = torch.cat([torch.tensor([[20.0, 0.0, 0.0], [0.0, 25.0, -3.0]]), torch.randn(30, 3) * 12], 0).double()
    y = torch.cat([torch.tensor([0, 1]), torch.randint(0, 3, (30,))])
    y[2:] = x64[2:].argmax(1)  # mostly confident rows
    grads = []
    for dt in (torch.float32, torch.float64):
        x = x64.to(dt).to(device).requires_grad_()
        loss = fastloss.poly1_cross_entropy(x, y.to(device), epsilon=1.0, label_smoothing=smoothing,
                                            backend=backend if dt == torch.float32 else "reference")
        grads.append(torch.autograd.grad(loss, x)[0].double().cpu())
    g32, g64 = grads
    at_label = g64.gather(1, y[:, None])
    torch.testing.assert_close(g32.gather(1, y[:, None]), at_label, rtol=1e-4, atol=0)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_infinite_logit_gives_nan_not_inf(device, backend):
    """A +inf logit makes the softmax and log Z NaN; every backend says so, in the loss too (as
    torch's log_softmax: not +inf where the sums leave the +inf class out) and without a silent
    +inf gradient -- for class labels (fp16 takes the CPU kernel's sweeps, fp32 / fp64 its
    class-lane rows), probabilities and the focal loss."""
    helpers.require_backend(device, backend)
    y = torch.tensor([0, 2], device=device)
    for dt in (torch.float16, torch.float32, torch.float64):
        x = torch.tensor([[0.3, 0.1, float("inf")], [0.2, -1.0, 0.5]], dtype=dt, device=device, requires_grad=True)
        for loss in (lambda: fastloss.cross_entropy(x, y, reduction="none", backend=backend),
                     lambda: fastloss.cross_entropy(x, torch.softmax(x.detach().nan_to_num(posinf=9.0).float(), 1).to(dt), reduction="none",
                                                    backend=backend),
                     lambda: fastloss.softmax_focal_loss(x, y, reduction="none", backend=backend)):
            out = loss()
            g, = torch.autograd.grad(out.sum(), x)
            assert torch.isnan(out[0]) and torch.isfinite(out[1]), out
            assert not torch.isinf(g).any(), g
            assert torch.isnan(g[0]).all(), g
            assert torch.isfinite(g[1]).all(), g


def test_reference_bins_clamp_matches_kernel():
    """An out-of-range bins target (an unchecked CUDA call) is clamped to the last bin by every
    backend, the reference included: its gradient then sums to 0 like the loss's."""
    from fastloss.reference import rowwise as R
    x = torch.randn(1, 4, 1, dtype=torch.float64)
    v = torch.tensor([[3.3]], dtype=torch.float64)
    params = ops_rw._params(bins_hi=3.5)  # the op's "checked range" sentinel C - 1/2
    _, g = R.forward(x, v, None, None, None, ops_rw.LOSSES["distribution_focal_loss"], ops_rw.TARGETS["bins"], params, None, 0, True)
    assert abs(float(g.sum())) < 1e-12
    if "cpu" in fastloss.available_backends("cpu"):
        _, gn = torch.ops.fastloss.rowwise_forward_native(x, v, None, None, None, ops_rw.LOSSES["distribution_focal_loss"],
                                                          ops_rw.TARGETS["bins"], params, None, 0, True)
        torch.testing.assert_close(g, gn)


def test_review_api_regressions():
    # alpha / gamma are keyword-only (mmcv's positional order is (gamma, alpha))
    x, y = torch.randn(4, 5), torch.randint(0, 5, (4,))
    with pytest.raises(TypeError):
        fastloss.softmax_focal_loss(x, y, 2.0, 0.25)
    with pytest.raises(TypeError):
        fastloss.nn.SoftmaxFocalLoss(2.0, 0.25)
    # per-class alpha as a list, like weight
    m = fastloss.nn.SoftmaxFocalLoss(alpha=[0.1, 0.2, 0.3, 0.4, 0.5])
    helpers.assert_close(m(x, y), fastloss.softmax_focal_loss(x, y, alpha=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])), torch.float32)
    # the DFL module takes any max_target its input's bins allow (reg_max > 17 included)
    pred, t = torch.randn(6, 32), torch.rand(6) * 40
    m = fastloss.nn.DistributionFocalLoss(max_target=30.99)
    helpers.assert_close(m(pred, t), fastloss.distribution_focal_loss(pred, t, max_target=30.99), torch.float32)


def test_dfl_dtype_promotion_and_module_checks():
    # the float target takes part in the dtype promotion (mmdetection: fp16 pred, fp32 target -> fp32)
    p = torch.randn(5, 4, 17).half().requires_grad_()
    loss = fastloss.distribution_focal_loss(p, torch.rand(5, 4) * 16)
    assert loss.dtype == torch.float32
    loss.backward()
    assert p.grad.dtype == torch.float16
    assert fastloss.distribution_focal_loss(torch.randn(5, 17), torch.rand(5, dtype=torch.float64) * 16).dtype == torch.float64
    # module arguments fail at construction: an unknown backend, a class vector that is not 1-D
    for make in (lambda: fastloss.nn.CrossEntropyLoss(backend="gpu"), lambda: fastloss.nn.L1Loss(backend="gpu"),
                 lambda: fastloss.nn.DiceLoss(backend="gpu"), lambda: fastloss.nn.CrossEntropyLoss(weight=torch.ones(2, 5))):
        with pytest.raises(ValueError):
            make()


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_masked_student_and_teacher_classes(device, backend):
    """A masked student class (x = -inf) whose teacher mass underflows to 0 only against a max
    that comes later (an online rescale of exp(-200) = 0 in fp32, after the term was +inf) is
    finite, as the fp32 spec; an all-masked teacher row is NaN."""
    helpers.require_backend(device, backend)
    x = torch.randn(3, 1030, device=device)
    x[:, 0] = float("-inf")
    z = torch.randn(3, 1030, device=device)
    z[:, 0] = 0.0
    z[:, 1000] = 200.0  # a later chunk (Triton: 512 classes per chunk) / lane
    got = fastloss.distillation_kl_div(x, z, backend=backend)
    want = fastloss.distillation_kl_div(x.cpu(), z.cpu(), backend="reference")
    assert torch.isfinite(got)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    z_all = torch.full((2, 5), float("-inf"), device=device)
    assert torch.isnan(fastloss.distillation_kl_div(torch.randn(2, 5, device=device), z_all, reduction="none", backend=backend)).all()


def test_class_axis_limit():
    x = torch.zeros(1).expand(1, 2**24 + 1)  # stride 0: no memory
    with pytest.raises(ValueError, match="2\\^24"):
        fastloss.cross_entropy(x, torch.zeros(1, dtype=torch.long))


def test_host_mean_normaliser_not_for_device_labels():
    """The normaliser's pass over the labels is a CPU kernel: device labels (the GPU path that
    stores the gradient in the forward) leave the division in the graph instead of calling it."""
    labels = torch.zeros(2, 3, dtype=torch.int64, device="meta")
    assert ops_rw._host_mean_normaliser(ops_rw.TARGETS["labels"], labels, None, None, "weight", None, False, 6, 4) is None


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
def test_mean_normaliser_native(label_dtype):
    """The eager CPU path's mean normalisers [class weight of the counted rows, counted rows]
    (one pass over the labels before the forward), against torch: ignore_index in and out of
    the labels' range, no ignore_index, class weights fp32 / fp64 or none, labels outside
    [0, C) left out (as the kernels' rows), blocks of every size (2^15 labels each)."""
    helpers.require_backend("cpu", "cpu")
    C = 7
    for n in (0, 1, 5, 2**15, 2**15 + 3, 100003):
        lab = torch.randint(0, C + 2, (n,))  # C and C + 1: out of range
        lab[torch.rand(n) < 0.1] = 255 if label_dtype == torch.uint8 else -100
        lab = lab.to(label_dtype)
        for ignore_index in (None, 255 if label_dtype == torch.uint8 else -100, 3):
            for w in (None, torch.rand(C), torch.rand(C, dtype=torch.float64)):
                ll = lab.long()
                counted = (ll >= 0) & (ll < C) & ((ll != ignore_index) if ignore_index is not None else True)
                wsum = (w.double()[ll[counted]].sum() if w is not None else counted.sum().double()).item()
                got = torch.ops.fastloss.rowwise_mean_normaliser_native(lab, w, ignore_index, C)
                assert got.dtype == torch.float64 and got.shape == (2,)
                assert got[1].item() == counted.sum().item(), (n, ignore_index)
                assert got[0].item() == pytest.approx(wsum, rel=1e-12, abs=1e-12), (n, ignore_index, w is not None)


def test_folded_mean_matches_unfolded_edges():
    """The eager CPU fold of the mean (the stored gradient is the mean's) gives the same result
    shape and value as the graph's division where it cannot fold: a (1,) / (k,) avg_factor
    broadcasts, an avg_factor of -eps gives inf, not ZeroDivisionError; a bad num_classes of
    the normaliser op raises."""
    helpers.require_backend("cpu", "cpu")
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    for a in (torch.tensor([37.0]), torch.tensor([3.0, 4.0]), torch.tensor(-torch.finfo(torch.float32).eps)):
        with torch.no_grad():
            exp = fastloss.cross_entropy(x, y, avg_factor=a)
        out = fastloss.cross_entropy(x.clone().requires_grad_(), y, avg_factor=a)
        assert out.shape == exp.shape
        torch.testing.assert_close(out.detach(), exp, equal_nan=True)
    with pytest.raises(RuntimeError, match="num_classes"):
        torch.ops.fastloss.rowwise_mean_normaliser_native(y, None, None, -1)
