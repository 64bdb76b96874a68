"""Tests of the Dice / Tversky / Jaccard family (+ Dice + cross entropy), every backend
present: values and gradients against the float64 reference (random upstream gradient),
gradcheck, opcheck, torch.compile, the eager fast path, edge cases, bad inputs, determinism,
and the peers' formulas (MONAI / smp themselves when installed)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import fastloss
import helpers
from fastloss.reference import dice as R

MODE_FORMS = [("multiclass", "labels"), ("multiclass", "float"), ("binary", "labels"), ("binary", "float"),
              ("multilabel", "float")]
FNS = {"dice": (fastloss.dice_loss, R.dice_loss), "tversky": (fastloss.tversky_loss, R.tversky_loss),
       "jaccard": (fastloss.jaccard_loss, R.jaccard_loss), "dice_ce": (fastloss.dice_ce_loss, R.dice_ce_loss)}

OPTION_SETS = [
    ("dice", dict()),
    ("dice", dict(per_image=True, squared=True, smooth_nr=1e-5, reduction="none")),
    ("dice", dict(include_background=False, class_weights="rand", reduction="sum", ignore_index=255)),
    ("tversky", dict(alpha=0.3, beta=0.7, gamma=1.5, log=False, per_image=True)),
    ("tversky", dict(alpha=0.7, beta=0.3, gamma=0.75, smooth_nr=1.0, smooth_dr=1.0, ignore_index=255)),
    ("jaccard", dict(log=True, smooth_nr=1e-3, smooth_dr=1e-3, reduction="none")),
    ("jaccard", dict(squared=True, per_image=True, ignore_index=255, reduction="sum")),
    ("dice_ce", dict(ignore_index=255)),
    ("dice_ce", dict(per_image=True, lambda_dice=0.3, lambda_ce=2.0, reduction="sum")),
    ("dice", dict(zero_empty=True, per_image=True, reduction="none")),
    ("dice", dict(soft_label=True, per_image=True, ignore_index=255)),
    ("tversky", dict(soft_label=True, alpha=0.3, beta=0.7, gamma=1.5, reduction="none")),
    ("jaccard", dict(soft_label=True, log=True, include_background=False, reduction="sum")),
    ("dice_ce", dict(soft_label=True, ignore_index=255, per_image=True)),
]


def make_case(mode, form, spatial, C, dtype, device, ignore_index=None, scale=2.0, layout="contiguous"):
    N = 2
    if mode == "binary":
        C = 1
    shape = (N, C) + tuple(spatial)
    if layout == "permuted":  # channel-last storage viewed as channel-first
        x = (torch.randn((N,) + tuple(spatial) + (C,), dtype=torch.float64) * scale).movedim(-1, 1)
    else:
        x = torch.randn(shape, dtype=torch.float64) * scale
    x = x.to(dtype).to(device).requires_grad_(True)
    lab_shape = (N,) + tuple(spatial)
    if mode == "multiclass":
        labels = torch.randint(0, C, lab_shape)
        if form == "labels":
            t = labels
            if ignore_index is not None:
                t[0].view(-1)[:5] = ignore_index
        else:
            t = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dtype)
    elif mode == "binary":
        t = torch.randint(0, 2, lab_shape)
        if ignore_index is not None:
            t[0].view(-1)[:5] = ignore_index
        if form == "float":
            t = t.to(dtype)
    else:
        t = (torch.rand(shape) < 0.4).to(dtype)
        if ignore_index is not None:
            t[0, 0].view(-1)[:5] = ignore_index
    return x, t.to(device)


def resolve_opts(name, opts, mode, form, C, device):
    opts = dict(opts)
    if opts.get("class_weights") == "rand":
        opts["class_weights"] = torch.rand(1 if mode == "binary" else C, dtype=torch.float64).to(device)
    if "ignore_index" in opts and mode == "multiclass" and form == "float":
        opts.pop("ignore_index")  # ignore_index needs labels in multiclass mode (tested in bad inputs)
    return opts


def reference_of(name, x, t, opts):
    """float64 oracle on the values the kernel sees (input rounded to its dtype)."""
    x64 = x.detach().to(torch.float64).cpu().requires_grad_(True)
    t64 = t.detach().cpu()
    t64 = t64.to(torch.float64) if t64.is_floating_point() else t64
    o = {k: (v.detach().cpu().double() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    return x64, FNS[name][1](x64, t64, **o)


def check_vs_reference(name, x, t, backend, opts, msg=""):
    fn = FNS[name][0]
    out = fn(x, t, backend=backend, **opts)
    assert out.dtype == x.dtype
    x64, ref = reference_of(name, x, t, opts)
    # loss = 1 - score: an absolute error of a few ulp of 1 is cancellation, not a kernel error
    eps = torch.finfo(x.dtype).eps
    t = helpers.tol(x.dtype)
    torch.testing.assert_close(out.detach().double().cpu(), ref.detach().to(x.dtype).double(), rtol=t.rtol_reduced,
                               atol=8 * eps * max(1.0, ref.detach().abs().max().item() if ref.numel() else 1.0),
                               msg=lambda m: f"{msg} value\n{m}")
    up = helpers.random_upstream(out)
    (g,) = torch.autograd.grad(out, x, up)
    (gref,) = torch.autograd.grad(ref, x64, up.double().cpu())
    assert torch.isfinite(g).all()
    helpers.assert_close(g, gref, x.dtype, reduced=True, msg=f"{msg} grad")
    return out, g


# ======================================================================================
# values and gradients
# ======================================================================================


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_sanity_value(device, backend):
    """The issue's sanity value: one binary 3x3 image, sigmoid Dice with smooth 1e-5 / 1e-5."""
    helpers.require_backend(device, backend)
    x = torch.tensor([[1.9072, 1.1079, 1.4906], [-0.6584, -0.0512, 0.7608], [-0.0614, 0.6583, 0.1095]], device=device)[None]
    t = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 0]], device=device)[None]
    for target in (t, t.float(), t.to(torch.uint8)):
        loss = fastloss.dice_loss(x, target, mode="binary", smooth_nr=1e-5, smooth_dr=1e-5, backend=backend)
        assert abs(loss.item() - 0.4203514) < 2e-7, loss.item()
        assert abs(1 - loss.item() - 0.5796486) < 2e-7


@pytest.mark.parametrize("spatial", [(7, 37), (3, 5, 11)], ids=["2d", "3d"])
@pytest.mark.parametrize("mode,form", MODE_FORMS, ids=[f"{m}-{f}" for m, f in MODE_FORMS])
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_vs_reference(device, backend, dtype, mode, form, spatial):
    helpers.require_backend(device, backend)
    C = 5
    sets = OPTION_SETS
    if helpers.is_interpreted(device, backend):  # every third set, a different third per mode / form / rank: all sets run
        sets = OPTION_SETS[(MODE_FORMS.index((mode, form)) + len(spatial)) % 3::3]
    for name, opts in sets:
        opts = dict(opts, mode=mode)
        x, t = make_case(mode, form, spatial, C, dtype, device, ignore_index=opts.get("ignore_index"))
        opts = resolve_opts(name, opts, mode, form, C, device)
        check_vs_reference(name, x, t, backend, opts, msg=f"{backend} {mode}-{form} {name} {opts}")


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float64, torch.float32)))
def test_large_and_noncontiguous(device, backend, dtype):
    """Several reduction blocks (S > 4096 on CPU), a ragged tail, channel-last storage."""
    helpers.require_backend(device, backend)
    spatial = (5, 19) if helpers.is_interpreted(device, backend) else (67, 131)
    for layout in ("contiguous", "permuted"):
        x, t = make_case("multiclass", "labels", spatial, 7, dtype, device, ignore_index=255, layout=layout)
        assert x.is_contiguous() == (layout == "contiguous")
        for name in ("dice", "dice_ce"):
            check_vs_reference(name, x, t, backend, dict(ignore_index=255, per_image=True), msg=f"{layout} {name}")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_from_logits_false(device, backend):
    helpers.require_backend(device, backend)
    x = torch.softmax(torch.randn(2, 4, 6, 9, dtype=torch.float64), 1).to(device).requires_grad_(True)
    t = torch.randint(0, 4, (2, 6, 9), device=device)
    for name in ("dice", "tversky", "jaccard"):
        check_vs_reference(name, x, t, backend, dict(from_logits=False))
    xb = torch.rand(2, 1, 6, 9, dtype=torch.float64, device=device, requires_grad=True)
    check_vs_reference("dice", xb, t.clamp(max=1), backend, dict(mode="binary", from_logits=False, squared=True))


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_label_dtypes_bitwise(device, backend):
    helpers.require_backend(device, backend)
    x = torch.randn(2, 6, 5, 13, device=device)
    t = torch.randint(0, 6, (2, 5, 13), device=device)
    t[0, 0, :3] = 255
    ref = fastloss.dice_ce_loss(x, t, ignore_index=255, backend=backend)
    for dt in (torch.uint8, torch.int32, torch.int16):
        assert torch.equal(fastloss.dice_ce_loss(x, t.to(dt), ignore_index=255, backend=backend), ref), dt


def _assert_labels_match_one_hot(x, t, oh, fns, backend):
    """Each loss of a label map t equals (loss and gradient) that of the float target oh, with
    plain and squared sums."""
    for fn, squared in itertools.product(fns, (False, True)):
        a = fn(x, t, per_image=True, squared=squared, backend=backend)
        b = fn(x, oh, per_image=True, squared=squared, backend=backend)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        ga, = torch.autograd.grad(a, x)
        gb, = torch.autograd.grad(b, x)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_labels_equal_one_hot(device, backend):
    """Labels are expanded in the kernel: the same numbers as the explicit one-hot target (on
    the CPU a label map takes its own kernel: the label class's terms per pixel)."""
    helpers.require_backend(device, backend)
    x = torch.randn(2, 5, 4, 7, 3, device=device, requires_grad=True)
    t = torch.randint(0, 5, (2, 4, 7, 3), device=device)
    oh = F.one_hot(t, 5).movedim(-1, 1).float()
    _assert_labels_match_one_hot(x, t, oh, (fastloss.dice_loss, fastloss.jaccard_loss, fastloss.dice_ce_loss), backend)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_one_class_multiclass_labels_name_class_zero(device, backend):
    """A multiclass label map of a one-class input names class 0 by label 0 with and without
    the softmax (smp's one-hot of it), though the kernels read a one-class map without a
    softmax as binary mode's 0 / 1 mask: the same numbers as the one-hot float target, ignored
    pixels (ignore_index 1 -- out of range -- or 255) left out, and label 1 out of range."""
    helpers.require_backend(device, backend)
    p = torch.tensor([[[0.9, 0.8, 0.7, 0.6, 0.2]]], dtype=torch.float64, device=device)  # (N, C = 1, S) probabilities
    lab = torch.tensor([[0, 0, 0, 255, 1]], device=device)
    for ign in (None, 255, 1):
        t = torch.where((lab == 0) | (lab == ign), lab, 0)  # label 0, and the ignored label (1: out of range but ignored)
        keep = t[0] != ign if ign is not None else torch.ones_like(t[0], dtype=torch.bool)
        x = (p[..., keep] if ign is not None else p).clone().requires_grad_(True)
        xl = p.clone().requires_grad_(True)
        for fn in (fastloss.dice_loss, fastloss.jaccard_loss, fastloss.tversky_loss):
            got = fn(xl, t, mode="multiclass", from_logits=False, ignore_index=ign, backend=backend)
            want = fn(x, (t[..., keep] == 0).to(x.dtype)[:, None] if ign is not None else torch.ones_like(x), mode="multiclass",
                      from_logits=False, backend=backend)  # the one-hot target of the counted pixels
            helpers.assert_close(got, want.detach(), torch.float64, msg=f"{fn.__name__} ignore_index={ign}")
            (g_got,) = torch.autograd.grad(got, xl)
            (g_want,) = torch.autograd.grad(want, x)
            helpers.assert_close(g_got[..., keep], g_want, torch.float64, msg=f"{fn.__name__} grad ignore_index={ign}")
            assert not g_got[..., ~keep].any()
    if device == "cpu":
        with pytest.raises(ValueError, match="out of range"):
            fastloss.dice_loss(p, torch.ones(1, 5, dtype=torch.long), mode="multiclass", from_logits=False, backend=backend)
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    from fastloss.compat import smp as compat_smp

    t = torch.tensor([[0, 0, 0, 0, 0]])
    for name in ("DiceLoss", "JaccardLoss", "TverskyLoss"):
        ref = getattr(smp_losses, name)("multiclass", from_logits=False)(p.cpu(), t)
        torch.testing.assert_close(getattr(compat_smp, name)("multiclass", from_logits=False)(p.cpu(), t), ref)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_binary_input_forms(device, backend):
    """Binary input (N, 1, *) or (N, *); targets (N, *) or like input: one loss."""
    helpers.require_backend(device, backend)
    x = torch.randn(3, 6, 7, device=device)
    t = torch.randint(0, 2, (3, 6, 7), device=device)
    ref = fastloss.dice_loss(x, t, mode="binary", backend=backend)
    for xi, ti in ((x[:, None], t), (x[:, None], t[:, None]), (x[:, None], t[:, None].float()), (x, t.float()), (x, t.bool())):
        torch.testing.assert_close(fastloss.dice_loss(xi, ti, mode="binary", backend=backend), ref, rtol=1e-6, atol=1e-7)


# ======================================================================================
# edge cases
# ======================================================================================


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_edge_cases(device, backend):
    helpers.require_backend(device, backend)
    # a class absent from prediction and target: the smooth terms decide (score s_nr / s_dr)
    x = torch.full((1, 3, 4, 4), -30.0, device=device)
    x[:, 0] = 30.0
    t = torch.zeros(1, 4, 4, dtype=torch.long, device=device)
    per_class = fastloss.dice_loss(x, t, reduction="none", backend=backend)
    torch.testing.assert_close(per_class, torch.tensor([0.0, 1.0, 1.0], device=device), rtol=0, atol=1e-6)
    per_class = fastloss.dice_loss(x, t, smooth_nr=1e-5, smooth_dr=1e-5, reduction="none", backend=backend)
    torch.testing.assert_close(per_class, torch.zeros(3, device=device), rtol=0, atol=1e-6)
    # smooth_dr = 0 and nothing anywhere: the finite limit score 1 (loss 0, no NaN)
    xp = torch.zeros(1, 2, 3, 3, device=device, requires_grad=True)
    tp = torch.zeros(1, 2, 3, 3, device=device)
    out = fastloss.dice_loss(xp, tp, mode="multilabel", from_logits=False, smooth_dr=0.0, backend=backend)
    (g,) = torch.autograd.grad(out, xp)
    assert out.item() == 0.0 and torch.isfinite(g).all()
    # all pixels ignored: every sum is zero
    for name in ("dice", "dice_ce"):
        xi = torch.randn(2, 4, 3, 5, device=device, requires_grad=True)
        ti = torch.full((2, 3, 5), 7, dtype=torch.long, device=device)
        out, g = check_vs_reference(name, xi, ti, backend, dict(ignore_index=7), msg="all ignored")
        assert torch.isfinite(out).all() and (g == 0).all()
    # one pixel, 3-D and 2-D
    for spatial in ((1, 1), (1, 1, 1)):
        x1, t1 = make_case("multiclass", "labels", spatial, 3, torch.float32, device)
        check_vs_reference("dice_ce", x1, t1, backend, dict(per_image=True), msg="one pixel")
    # extreme logits: finite values and gradients
    xe = (torch.randint(0, 2, (2, 4, 5, 6), device=device).float() * 2 - 1) * 1e4
    xe.requires_grad_(True)
    te = torch.randint(0, 4, (2, 5, 6), device=device)
    for name in ("dice", "tversky", "jaccard", "dice_ce"):
        check_vs_reference(name, xe, te, backend, dict(), msg=f"extreme {name}")
        xb = xe[:, :1].detach().clone().requires_grad_(True)
        check_vs_reference(name, xb, (te > 1).float().unsqueeze(1), backend, dict(mode="binary"), msg=f"extreme binary {name}")
    # C = 1 in multiclass mode (softmax of one channel is 1)
    x1c = torch.randn(2, 1, 4, 5, device=device, requires_grad=True)
    check_vs_reference("dice", x1c, torch.zeros(2, 4, 5, dtype=torch.long, device=device), backend, dict(), msg="C=1")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_many_classes(device, backend):
    helpers.require_backend(device, backend)
    spatial = (3, 4) if helpers.is_interpreted(device, backend) else (9, 21)
    x, t = make_case("multiclass", "labels", spatial, 150, torch.float32, device, ignore_index=255)
    for name in ("dice", "dice_ce"):
        check_vs_reference(name, x, t, backend, dict(ignore_index=255, include_background=False), msg="C=150")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_nan_propagates(device, backend):
    helpers.require_backend(device, backend)
    x = torch.randn(2, 3, 4, 5, device=device)
    x[0, 1, 2, 3] = float("nan")
    t = torch.randint(0, 3, (2, 4, 5), device=device)
    assert torch.isnan(fastloss.dice_loss(x, t, backend=backend))


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_confident_pixels_keep_their_ce_gradient(device, backend):
    """The CE terms of dice_ce_loss at confident, correct pixels: dL/dx = e ((sum g) p - g) has
    p - 1 = -(sum of the other classes' p) for the target class, -sigmoid(-x) for a sigmoid
    positive -- tiny but not 0 (fp32 p - 1 rounds to 0 there)."""
    helpers.require_backend(device, backend)
    x = torch.full((1, 3, 2, 2), -9.0, device=device)
    x[:, 0] = 9.0  # p(class 0) = 1 - 2 e^-18
    t = torch.zeros(1, 2, 2, dtype=torch.long, device=device)
    x.requires_grad_()
    (g,) = torch.autograd.grad(fastloss.dice_ce_loss(x, t, lambda_dice=0.0, reduction="sum", backend=backend), x)
    expected = -2 * math.exp(-18) / (1 + 2 * math.exp(-18))
    torch.testing.assert_close(g[0, 0].double().cpu(), torch.full((2, 2), expected, dtype=torch.float64), rtol=1e-5, atol=0)
    xb = torch.full((1, 1, 2, 2), 20.0, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(fastloss.dice_ce_loss(xb, torch.ones(1, 1, 2, 2, device=device), mode="binary", lambda_dice=0.0,
                                                     reduction="sum", backend=backend), xb)
    torch.testing.assert_close(g.double().cpu(), torch.full((1, 1, 2, 2), -math.exp(-20) / (1 + math.exp(-20)), dtype=torch.float64),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_no_grad_and_modules(device, backend):
    helpers.require_backend(device, backend)
    x = torch.randn(2, 3, 4, 5, device=device)
    t = torch.randint(0, 3, (2, 4, 5), device=device)
    with torch.no_grad():
        a = fastloss.tversky_loss(x, t, alpha=0.2, beta=0.8, backend=backend)
    with fastloss.use_backend(backend):
        b = fastloss.nn.TverskyLoss(alpha=0.2, beta=0.8)(x, t)
        assert torch.equal(fastloss.nn.DiceLoss(per_image=True)(x, t), fastloss.dice_loss(x, t, per_image=True))
        assert torch.equal(fastloss.nn.JaccardLoss()(x, t), fastloss.jaccard_loss(x, t))
        assert torch.equal(fastloss.nn.DiceCELoss(lambda_ce=0.5)(x, t), fastloss.dice_ce_loss(x, t, lambda_ce=0.5))
        soft = torch.softmax(torch.randn(2, 3, 4, 5, device=device), dim=1)  # soft targets: the modules' soft_label
        assert torch.equal(fastloss.nn.DiceLoss(soft_label=True)(x, soft), fastloss.dice_loss(x, soft, soft_label=True))
        assert torch.equal(fastloss.nn.TverskyLoss(alpha=0.3, soft_label=True)(x, soft),
                           fastloss.tversky_loss(x, soft, alpha=0.3, soft_label=True))
        assert torch.equal(fastloss.nn.DiceCELoss(soft_label=True)(x, t), fastloss.dice_ce_loss(x, t, soft_label=True))
        assert "soft_label=True" in repr(fastloss.nn.JaccardLoss(soft_label=True))
    assert torch.equal(a, b) and a.grad_fn is None


# ======================================================================================
# bad inputs
# ======================================================================================


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    t = torch.randint(0, 3, (2, 4, 5))
    cases = [
        (dict(target=t[:, :3]), "label map must have shape"),
        (dict(target=t.float()), "float multiclass target"),
        (dict(mode="softmax"), "mode must be one of"),
        (dict(target=t + 3), "out of range|must be in"),
        (dict(target=torch.rand(2, 3, 4, 5, requires_grad=True)), "does not differentiate"),
        (dict(target=torch.rand(2, 3, 4, 5), ignore_index=0), "ignore_index needs an integer label map"),
        (dict(gamma=0.0), "gamma must be > 0"),
        (dict(alpha=-1.0), "alpha must be >= 0"),
        (dict(class_weights=[1.0, 2.0]), "class_weights must have one value per class"),
        (dict(reduction="avg"), "reduction must be one of"),
        (dict(mode="multilabel", target=t), "multilabel target must have input's shape"),
        (dict(mode="binary"), "binary target must have input's shape"),
    ]
    for kw, match in cases:
        kw = dict(kw)
        target = kw.pop("target", t)
        for backend in ("cpu", "reference"):
            if backend not in fastloss.available_backends("cpu"):
                continue
            with pytest.raises(ValueError, match=match):
                fastloss.tversky_loss(x, target, backend=backend, **kw)
    with pytest.raises(ValueError, match="floating-point"):
        fastloss.dice_loss(t, t)
    with pytest.raises(ValueError, match="out of range|must be in"):
        fastloss.dice_loss(x[:, :1], t, mode="binary")  # binary labels must be 0/1
    with pytest.raises(ValueError, match="must be"):
        fastloss.dice_ce_loss(x, t, reduction="none")


# ======================================================================================
# peers: formulas written inline from their documented semantics (+ the packages if present)
# ======================================================================================


def _monai_dice_inline(x, y_onehot, smooth_nr=1e-5, smooth_dr=1e-5, batch=False, squared=False, include_background=True):
    p = torch.softmax(x, 1)
    if not include_background:
        p, y_onehot = p[:, 1:], y_onehot[:, 1:]
    dims = [0] + list(range(2, x.dim())) if batch else list(range(2, x.dim()))
    inter = (p * y_onehot).sum(dims)
    den = (p * p).sum(dims) + (y_onehot * y_onehot).sum(dims) if squared else p.sum(dims) + y_onehot.sum(dims)
    return (1.0 - (2.0 * inter + smooth_nr) / (den + smooth_dr)).mean()


def _smp_dice_inline(x, y, smooth=0.0, eps=1e-7, log=False):
    # smp >= 0.4 DiceLoss(mode="multiclass", from_logits=True) (smp PR #927: Dice is the Tversky
    # score with alpha = beta = 1/2, intersection (|p|_1 + |g|_1 - |p - g|_1) / 2): sums over
    # batch and space per class, classes absent from the target get loss 0, mean over classes
    N, C = x.shape[:2]
    p = x.log_softmax(1).exp().view(N, C, -1)
    g = F.one_hot(y.view(N, -1), C).permute(0, 2, 1).to(p.dtype)
    ps, gs = p.sum((0, 2)), g.sum((0, 2))
    inter = (ps + gs - (p - g).abs().sum((0, 2))) / 2
    score = (inter + smooth) / (inter + 0.5 * (ps - inter) + 0.5 * (gs - inter) + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log else 1.0 - score
    return (loss * (gs > 0).to(loss.dtype)).mean()


def test_matches_peer_formulas():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 7, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 6, 7, 3))
    oh = F.one_hot(y, 4).movedim(-1, 1).double()
    for backend in fastloss.available_backends("cpu"):
        if backend == "triton":
            continue
        for batch in (False, True):
            for squared in (False, True):
                for bg in (True, False):
                    ours = fastloss.dice_loss(x, y, smooth_nr=1e-5, smooth_dr=1e-5, per_image=not batch, squared=squared,
                                              include_background=bg, backend=backend)
                    torch.testing.assert_close(ours, _monai_dice_inline(x, oh, batch=batch, squared=squared, include_background=bg))
        # smp, every class present in the target: smooth = s in numerator and denominator
        for smooth in (0.0, 1.0):  # smp's smooth s enters (2 I + 2 s) / (P' + G' + 2 s)
            ours = fastloss.dice_loss(x, y, smooth_nr=2 * smooth, smooth_dr=max(2 * smooth, 1e-30), backend=backend)
            torch.testing.assert_close(ours, _smp_dice_inline(x, y, smooth=smooth))
            # a class absent from the batch: smp zeroes its loss (zero_empty=True)
            y3 = y.clamp_max(2)
            ours = fastloss.dice_loss(x, y3, smooth_nr=2 * smooth, smooth_dr=max(2 * smooth, 1e-30), zero_empty=True, backend=backend)
            torch.testing.assert_close(ours, _smp_dice_inline(x, y3, smooth=smooth))
        # MONAI DiceCE = Dice + torch cross entropy (mean); ignore_index honoured in both terms
        yi = y.clone()
        yi[0, 0] = 255
        ce = F.cross_entropy(x, yi, ignore_index=255)
        d = fastloss.dice_loss(x, yi, smooth_nr=1e-5, smooth_dr=1e-5, ignore_index=255, per_image=True, backend=backend)
        ours = fastloss.dice_ce_loss(x, yi, smooth_nr=1e-5, smooth_dr=1e-5, ignore_index=255, per_image=True, backend=backend)
        torch.testing.assert_close(ours, d + ce)
        # sigmoid modes: BCE-with-logits mean
        tb = (torch.rand(2, 4, 6, 7, 3) < 0.3).double()
        ours = fastloss.dice_ce_loss(x, tb, mode="multilabel", lambda_dice=0.0, backend=backend)
        torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, tb))


def test_monai_if_installed():
    monai_losses = pytest.importorskip("monai.losses", reason="MONAI not installed; test_matches_peer_formulas checks its formula")
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 1, 6, 7))
    for batch in (False, True):
        ref = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, batch=batch)(x, y)
        torch.testing.assert_close(fastloss.dice_loss(x, y[:, 0], smooth_nr=1e-5, smooth_dr=1e-5, per_image=not batch), ref)
        ref = monai_losses.TverskyLoss(to_onehot_y=True, softmax=True, alpha=0.3, beta=0.7, batch=batch)(x, y)
        torch.testing.assert_close(fastloss.tversky_loss(x, y[:, 0], 0.3, 0.7, smooth_nr=1e-5, smooth_dr=1e-5, per_image=not batch), ref)
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True)(x, y)
    torch.testing.assert_close(fastloss.dice_ce_loss(x, y[:, 0], smooth_nr=1e-5, smooth_dr=1e-5, per_image=True), ref)


def test_smp_if_installed():
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses",
                                     reason="segmentation_models_pytorch not installed; test_matches_peer_formulas checks its formula")
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 6, 7))
    for labels in (y, y.clamp_max(2)):  # every class present / class 3 absent (smp zeroes its loss)
        ref = smp_losses.DiceLoss("multiclass", smooth=1.0)(x, labels)
        torch.testing.assert_close(fastloss.dice_loss(x, labels, smooth_nr=2.0, smooth_dr=2.0, zero_empty=True), ref)  # smp >= 0.4
        ref = smp_losses.JaccardLoss("multiclass", smooth=1.0)(x, labels)
        torch.testing.assert_close(fastloss.jaccard_loss(x, labels, smooth_nr=1.0, smooth_dr=1.0, zero_empty=True), ref)
        ref = smp_losses.TverskyLoss("multiclass", smooth=1.0, alpha=0.3, beta=0.7)(x, labels)
        torch.testing.assert_close(fastloss.tversky_loss(x, labels, 0.3, 0.7, smooth_nr=1.0, smooth_dr=1.0, zero_empty=True), ref)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_zero_empty(device, backend):
    """zero_empty: a class with no target pixels gets loss 0 per image (per_image) or over the
    batch, and no gradient through its score; the other classes are unchanged."""
    helpers.require_backend(device, backend)
    torch.manual_seed(3)
    x = torch.randn(2, 4, 5, 6, device=device, requires_grad=True)
    y = torch.randint(0, 3, (2, 5, 6), device=device)
    y[1] = y[1].clamp_max(1)  # image 1 lacks class 2; no image has class 3
    per = fastloss.dice_loss(x, y, per_image=True, reduction="none", backend=backend)
    zeroed = fastloss.dice_loss(x, y, per_image=True, reduction="none", zero_empty=True, backend=backend)
    present = torch.tensor([[True, True, True, False], [True, True, False, False]], device=device)
    assert torch.equal(zeroed[present], per[present]) and (zeroed[~present] == 0).all()
    batch = fastloss.dice_loss(x, y, reduction="none", zero_empty=True, backend=backend)
    assert batch[3].item() == 0 and batch[2].item() > 0
    check_vs_reference("jaccard", x.detach().requires_grad_(), y, backend, dict(zero_empty=True, log=True), msg="zero_empty")


# ======================================================================================
# gradcheck, opcheck, torch.compile, eager fast path, determinism
# ======================================================================================


@pytest.mark.parametrize("mode,form", MODE_FORMS, ids=[f"{m}-{f}" for m, f in MODE_FORMS])
@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_gradcheck_fp64(backend, mode, form):
    helpers.require_backend("cpu", backend)
    ign = 255 if not (mode == "multiclass" and form == "float") else None
    x, t = make_case(mode, form, (3, 4), 3, torch.float64, "cpu", ignore_index=ign)
    sets = [("dice_ce", dict(ignore_index=ign)), ("tversky", dict(alpha=0.3, beta=0.7, gamma=1.5, squared=True, per_image=True, ignore_index=ign)),
            ("jaccard", dict(soft_label=True, per_image=True, ignore_index=ign))]
    for name, opts in sets:
        fn = FNS[name][0]

        def f(inp):
            return fn(inp, t, mode=mode, backend=backend, **opts)

        assert helpers.gradcheck(f, (x,), backend, eps=1e-6, atol=1e-8, rtol=1e-6)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_opcheck(backend):
    helpers.require_backend("cpu", backend)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 3, 10, dtype=dtype, requires_grad=True)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for t, act, ign in ((torch.randint(0, 3, (2, 10)), 2, None), (torch.randint(0, 3, (2, 10)).to(torch.uint8), 2, 1),
                            (torch.rand(2, 3, 10, dtype=dtype), 1, None)):
            for with_ce in (False, True):
                for squared, soft in ((False, False), (True, False), (False, True)):
                    _opcheck(torch.ops.fastloss.dice_sums.default, (x, t, act, squared, soft, ign, with_ce, backend))
            gs = torch.randn(2, 3, 3, dtype=acc)
            for gce in (torch.randn(2, 2, dtype=acc), torch.empty(0, dtype=acc)):
                for squared, soft in ((True, False), (False, True)):
                    _opcheck(torch.ops.fastloss.dice_sums_backward.default, (gs, gce, x.detach(), t, act, squared, soft, ign, backend))


def _loss_and_grad(fn, x, *args):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args)
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_compile_fullgraph_aot_eager(dynamo_reset, backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(2, 4, 5, 6)
    t = torch.randint(0, 4, (2, 5, 6))
    w = torch.rand(4)

    def fn(inp, target, cw):
        a = fastloss.dice_ce_loss(inp, target, ignore_index=3, class_weights=cw, backend=backend)
        b = fastloss.tversky_loss(inp, target, 0.3, 0.7, 1.5, per_image=True, reduction="none", backend=backend)
        c = fastloss.dice_loss(inp.sigmoid(), target.clamp_max(1).float().unsqueeze(1).expand_as(inp) * 0.7, mode="multilabel",
                               from_logits=False, soft_label=True, backend=backend)
        # one class, multiclass labels, no softmax: canonicalize's mapping of the map is traced too
        d = fastloss.jaccard_loss(inp[:, :1].sigmoid(), torch.where(target == 3, 255, 0), mode="multiclass", from_logits=False,
                                  ignore_index=255, backend=backend)
        return a + (b * b).sum() + c + d

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, x, t, w)
    out_c, g_c = _loss_and_grad(compiled, x, t, w)
    assert torch.equal(out_e, out_c) and torch.equal(g_e, g_c)


def test_compile_fullgraph_zero_empty(dynamo_reset):
    x = torch.randn(2, 4, 5, 6)
    t = torch.randint(0, 3, (2, 5, 6))  # class 3 absent

    def fn(inp, target):
        return fastloss.jaccard_loss(inp, target, zero_empty=True, log=True, per_image=True)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, x, t)
    out_c, g_c = _loss_and_grad(compiled, x, t)
    assert torch.equal(out_e, out_c) and torch.equal(g_e, g_c) and torch.isfinite(g_c).all()


def test_compile_fullgraph_inductor(dynamo_reset):
    x = torch.randn(2, 4, 5, 6)
    t = torch.randint(0, 4, (2, 5, 6))

    def fn(inp, target):
        return fastloss.dice_loss(inp, target, per_image=True) * 2.0 + inp.sigmoid().sum() * 0.0

    compiled = torch.compile(fn, fullgraph=True)
    out_e, g_e = _loss_and_grad(fn, x, t)
    out_c, g_c = _loss_and_grad(compiled, x, t)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_c, g_e, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float32, torch.float16)))
def test_eager_fast_path_equals_custom_op(device, backend, dtype):
    helpers.require_backend(device, backend)
    x = torch.randn(2, 3, 10, device=device).to(dtype).requires_grad_(True)
    t = torch.randint(0, 3, (2, 10), device=device)
    args = (t, 2, True, False, 1, True, backend)
    s_f, c_f = fastloss.DiceSumsFunction.apply(x, *args)
    s_o, c_o = torch.ops.fastloss.dice_sums(x, *args)
    assert torch.equal(s_f, s_o) and torch.equal(c_f, c_o)
    up_s, up_c = torch.randn_like(s_f), torch.randn_like(c_f)
    (g_f,) = torch.autograd.grad((s_f, c_f), x, (up_s, up_c))
    (g_o,) = torch.autograd.grad((s_o, c_o), x, (up_s, up_c))
    assert torch.equal(g_f, g_o)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("squared,with_ce,ignore_index", [(False, True, 255), (True, True, None), (False, False, None)])
def test_kept_softmax_statistics_equal_recomputing(monkeypatch, dtype, squared, with_ce, ignore_index):
    """The eager CPU path keeps each pixel's softmax statistics for the backward (a softmax over
    >= 8 classes and a label map, gradient wanted): the same bits as recomputing them (the custom
    op), a second backward (retain_graph) included; nothing kept without a gradient."""
    helpers.require_backend("cpu", "cpu")
    x = (4 * torch.randn(3, 11, 517)).to(dtype).requires_grad_(True)
    t = torch.randint(0, 12, (3, 517))
    t[t == 11] = 255 if ignore_index is not None else 0
    args = (t, 2, squared, False, ignore_index, with_ce, "cpu")
    s_f, c_f = fastloss.DiceSumsFunction.apply(x, *args, True)
    s_o, c_o = torch.ops.fastloss.dice_sums(x, *args)
    assert torch.equal(s_f, s_o) and torch.equal(c_f, c_o)
    up_s, up_c = torch.randn_like(s_f), torch.randn_like(c_f)
    (g_f,) = torch.autograd.grad((s_f, c_f), x, (up_s, up_c), retain_graph=True)
    (g_f2,) = torch.autograd.grad((s_f, c_f), x, (up_s, up_c))
    (g_o,) = torch.autograd.grad((s_o, c_o), x, (up_s, up_c))
    assert torch.equal(g_f, g_o) and torch.equal(g_f2, g_o)
    seen, orig = [], fastloss.ops.dice._keeps_stats
    monkeypatch.setattr(fastloss.ops.dice, "_keeps_stats", lambda grad_wanted, *a: seen.append(grad_wanted) or orig(grad_wanted, *a))
    with torch.no_grad():  # the public path asks for the statistics only when a backward can follow
        fastloss.dice_loss(x, t, ignore_index=ignore_index, backend="cpu")
    fastloss.dice_loss(x, t, ignore_index=ignore_index, backend="cpu")
    assert seen == [False, True]
    with pytest.raises(RuntimeError, match="label map"):
        torch.ops.fastloss.dice_sums_stats_native(x.detach(), torch.rand(3, 11, 517).to(dtype), squared, None, with_ce)
    _, _, stats = torch.ops.fastloss.dice_sums_stats_native(x.detach(), t, squared, ignore_index, with_ce)
    assert stats.shape == (3, 4 if with_ce else 3, 517)  # 1 - p_y only with the CE term
    with pytest.raises(RuntimeError, match="statistics"):
        torch.ops.fastloss.dice_grad_stats_native(up_s, c_f.new_empty(0), x.detach(), t, stats[:, :2], squared, ignore_index)
    if not with_ce:  # statistics without 1 - p_y cannot serve a CE gradient: an error, not a wrong gradient
        with pytest.raises(RuntimeError, match="CE gradient needs the 4 rows"):
            torch.ops.fastloss.dice_grad_stats_native(up_s, up_s.new_ones(3, 2), x.detach(), t, stats.contiguous(), squared,
                                                      ignore_index)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_deterministic(device, backend):
    helpers.require_backend(device, backend)
    spatial = (9, 13) if helpers.is_interpreted(device, backend) else (96, 160)
    x, t = make_case("multiclass", "labels", spatial, 6, torch.float32, device, ignore_index=255)
    runs = []
    for threads in (1, 2, 1):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            runs.append(_loss_and_grad(lambda a, b: fastloss.dice_ce_loss(a, b, ignore_index=255, backend=backend), x, t))
        finally:
            torch.set_num_threads(prev)
    for out, g in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(g, runs[0][1])


def test_nan_poisoned_python_buffers(nan_poison):
    """torch.empty & co return NaN: the Python-side launchers must write every output."""
    for backend in fastloss.available_backends("cpu"):
        x, t = make_case("multiclass", "labels", (5, 7), 3, torch.float32, "cpu", ignore_index=255)
        check_vs_reference("dice_ce", x, t, backend, dict(ignore_index=255), msg=f"poisoned {backend}")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_gpu_out_of_range_labels_match_no_class(monkeypatch, device, backend):
    """Documented rule for unchecked labels (CUDA tensors outside checked mode: no host sync to
    check them): an out-of-range label matches no class -- the pixel counts in P' only, like an
    all-zero one-hot row, and adds 0 to the CE.  On CPU tensors the op raises first; with its
    check switched off every kernel shows the same rule."""
    helpers.require_backend(device, backend)
    monkeypatch.setattr(fastloss.ops._common, "labels_checked_on", lambda device: False)
    for C in (4, 3):  # C = 3: label 3 falls on the class the kernels pad to a power of two
        x = torch.randn(2, C, 5, 6, device=device, requires_grad=True)
        t = torch.randint(0, C, (2, 5, 6), device=device)
        t[0, 0, :3] = 9
        t[1, 2, :2] = C
        oh = (t.unsqueeze(1) == torch.arange(C, device=device).view(1, C, 1, 1)).float()
        _assert_labels_match_one_hot(x, t, oh, (fastloss.dice_loss, fastloss.dice_ce_loss), backend)


def test_triton_batch_limit_is_a_clear_error():
    # one grid row per image: N > 65535 must be a clear error, never a failed launch
    from fastloss.triton_kernels import dice as triton_dice

    x = torch.empty(65536, 2, 1)
    t = torch.zeros(65536, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="65535"):
        triton_dice._meta(x, t, 2, False, False, None)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=helpers.gpu)])
def test_triton_class_chunks(monkeypatch, device):
    """Above MAX_TILE_C classes the Triton kernels walk the class axis in chunks (online
    softmax statistics, then one sweep per pass): C = 600 with the real chunks; then chunks of
    2 classes (odd C: a ragged last chunk) through the value, edge-case and confident-pixel
    tests, and the chunked kernels against the one-tile ones where the argmax sits in a later
    chunk, ties across chunks, and a whole chunk of -inf logits."""
    helpers.require_backend(device, "triton")
    from fastloss.triton_kernels import dice as triton_dice

    spatial = (5, 13) if device == "cpu" else (9, 21)  # several pixel blocks of 32, the last ragged
    for mode, form, name, dtype in (("multiclass", "labels", "dice_ce", torch.float32), ("multiclass", "labels", "dice_ce", torch.bfloat16),
                                    ("multiclass", "float", "dice", torch.float32), ("multilabel", "float", "dice_ce", torch.float32)):
        x, t = make_case(mode, form, spatial, 600, dtype, device, ignore_index=255 if form == "labels" else None)
        opts = dict(mode=mode, per_image=True, **(dict(ignore_index=255) if form == "labels" else {}))
        check_vs_reference(name, x, t, "triton", opts, msg=f"C=600 {mode}-{form} {name} {dtype}")

    x = torch.randn(2, 7, 2, 3, dtype=torch.float64).to(device)
    x[0, 1, 0, 0] = x[0, 5, 0, 0] = 9.0  # a tie across chunks: the first keeps the argmax
    x[0, :, 0, 1] = -9.0
    x[0, 6, 0, 1] = 30.0  # a confident pixel, its argmax in the last chunk
    x[1, :2, 1, :] = float("-inf")  # the first chunk all -inf
    t = torch.randint(0, 7, (2, 2, 3)).to(device)
    t[0, 0, :2] = torch.tensor([5, 6])

    def run(x, t, **opts):
        xx = x.detach().clone().requires_grad_(True)
        out = fastloss.dice_ce_loss(xx, t, backend="triton", reduction="sum", per_image=True, **opts)
        return (out, *torch.autograd.grad(out, xx))

    cases = [(x.float(), t, {}), (x, t, dict(squared=True)), (x.float(), t, dict(soft_label=True)),
             (x.float(), torch.softmax(torch.randn(2, 7, 2, 3, dtype=torch.float64).to(device), 1).float(), {}),
             (x.float().clamp_min(-50), (torch.rand(2, 7, 2, 3) < 0.4).float().to(device), dict(mode="multilabel"))]
    xn = x.float().clone()
    xn[0, 3, 1, 2] = float("inf")  # a +inf logit, and (x[1, :, 1, :2]) every logit -inf: NaN softmax for every class
    xn[1, :, 1, :2] = float("-inf")

    def per_class(x, t):  # per (image, class): a NaN pixel must reach every class's sums
        return fastloss.dice_loss(x, t, backend="triton", reduction="none", per_image=True)

    one_tile = [run(*case[:2], **case[2]) for case in cases]
    nan_one_tile = per_class(xn, t)
    monkeypatch.setattr(triton_dice, "MAX_TILE_C", 2)
    monkeypatch.setattr(triton_dice, "CHUNK", (2, 16))
    for (xc, tc, opts), (out1, g1) in zip(cases, one_tile):
        out, g = run(xc, tc, **opts)
        torch.testing.assert_close(out, out1, msg=lambda m: f"{opts} value\n{m}")
        torch.testing.assert_close(g, g1, msg=lambda m: f"{opts} grad\n{m}")
    torch.testing.assert_close(per_class(xn, t), nan_one_tile, equal_nan=True)
    assert torch.isnan(nan_one_tile).all()
    (_, g), (_, g1) = run(x.float(), t), one_tile[0]
    assert g1[0, 6, 0, 1] < 0  # -(the other classes' p): ~-6 e^-39, not 0
    torch.testing.assert_close(g[0, 6, 0, 1], g1[0, 6, 0, 1], rtol=1e-5, atol=0)

    for dtype in (torch.float64, torch.float32):
        for mode, form in MODE_FORMS:
            test_vs_reference(device, "triton", dtype, mode, form, (3, 5))
    test_edge_cases(device, "triton")
    test_confident_pixels_keep_their_ce_gradient(device, "triton")
    test_nan_propagates(device, "triton")
    test_soft_label_vs_formula_with_ties(device, "triton")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dice_ce_class_weights(device, backend, reduction):
    """ce_weight: the CE term is F.cross_entropy(weight=) (torch's weighted mean), the Dice term
    unchanged; labels with ignore_index, and soft targets."""
    helpers.require_backend(device, backend)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(0, 4, (2, 5, 6), device=device)
    y[0, 0] = 255
    w = torch.tensor([0.5, 2.0, 0.0, 1.5], dtype=torch.float64, device=device)
    soft = torch.softmax(torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device), 1)
    for target, kwargs in ((y, dict(ignore_index=255)), (soft, {})):
        got = fastloss.dice_ce_loss(x, target, ce_weight=w, lambda_ce=0.7, reduction=reduction, backend=backend, **kwargs)
        want = (fastloss.dice_loss(x, target, reduction=reduction, backend="reference", **kwargs)
                + 0.7 * F.cross_entropy(x, target, weight=w, ignore_index=kwargs.get("ignore_index", -100), reduction=reduction))
        helpers.assert_close(got, want, torch.float64)
        g, = torch.autograd.grad(got, x)
        gw, = torch.autograd.grad(want, x)
        helpers.assert_close(g, gw, torch.float64)
    # the module: same numbers, the weight moves with the module, other modes refused
    m = fastloss.nn.DiceCELoss(ce_weight=[0.5, 2.0, 0.0, 1.5], ignore_index=255, reduction=reduction, backend=backend).to(device)
    helpers.assert_close(m(x, y), fastloss.dice_ce_loss(x, y, ce_weight=w, ignore_index=255, reduction=reduction, backend=backend),
                         torch.float64)
    # a sequence keeps its Python floats (not rounded to fp32 before the fp64 cross entropy)
    seq = [0.1, 0.7, 0.0, 1.3]
    m = fastloss.nn.DiceCELoss(ce_weight=seq, ignore_index=255, reduction=reduction, backend=backend)
    assert torch.equal(m(x, y), fastloss.dice_ce_loss(x, y, ce_weight=seq, ignore_index=255, reduction=reduction, backend=backend))
    with pytest.raises(ValueError, match="ce_weight"):
        fastloss.dice_ce_loss(x, (soft > 0.3).double(), mode="multilabel", ce_weight=w, backend=backend)
    with pytest.raises(ValueError, match="ce_weight"):
        fastloss.nn.DiceCELoss(mode="multilabel", ce_weight=[1.0, 2.0])


# ======================================================================================
# soft-label sums: h(p, g) = (|p| + |g| - |p - g|) / 2, |p|, |g|
# ======================================================================================


def _soft_formula_loss(x, t, activation, ignore_index=None, per_image=True):
    """Dice (smooth 1e-5 / 1e-5) from the soft-label sums written literally (MONAI's
    compute_tp_fp_fn with ord 1, soft_label=True) in float64, differentiated by torch's autograd:
    the independent oracle of the kernels' values AND derivatives (ties and zeros included)."""
    p, g, m = R.probs_targets_mask(x, t, activation, ignore_index)
    p, g = p * m, g * m  # MONAI's mask_loss_inputs: masked elements are 0 in both
    dims = (2,) if per_image else (0, 2)
    pn, gn, dn = p.abs().sum(dims), g.abs().sum(dims), (p - g).abs().sum(dims)
    tp = (pn + gn - dn) / 2
    return (1 - (2 * tp + 1e-5) / (pn + gn + 1e-5)).mean()


def _soft_case(device, dtype=torch.float64, C=3, seed=0):
    """From-probabilities input with exact ties p == g (soft and hard values), zeros on either
    side, negative values in both (|.| matters), and a soft target."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(2, C, 40, generator=g, dtype=torch.float64)
    x = torch.rand(2, C, 40, generator=g, dtype=torch.float64)
    x[:, :, :6] = t[:, :, :6]                      # ties 0 < p == g < 1
    t[:, :, 6:9] = 1.0
    x[:, :, 6:8] = 1.0                             # ties at 1 (a hard target)
    t[:, :, 9:12] = 0.0
    x[:, :, 9:11] = 0.0                            # p == g == 0, and p > 0 = g
    x[:, :, 12:15] = 0.0                           # p = 0 < g
    x[:, :, 15:20] = -x[:, :, 15:20]               # p < 0 < g
    t[:, :, 20:25] = -t[:, :, 20:25]               # g < 0 < p
    x[:, :, 25:28] = -x[:, :, 25:28]
    t[:, :, 25:28] = -t[:, :, 25:28]               # both < 0
    x[:, :, 28:30] = t[:, :, 28:30] = -0.25        # a negative tie
    t[:, :, 30:33] = 7.0                           # g > 1 (the ignore_index of one variant below)
    return x.to(dtype).to(device), t.to(dtype).to(device)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_soft_label_vs_formula_with_ties(device, backend):
    """Every backend's soft-label value and gradient equal torch's autograd of the literal
    formula in float64: at ties p == g (1/2), at p = 0 (d|p|/dp = 0), for negative p and g."""
    helpers.require_backend(device, backend)
    x, t = _soft_case(device)
    for ign in (None, 7):  # float targets: elements equal to ignore_index leave every sum
        for per_image in (True, False):
            xa = x.clone().requires_grad_(True)
            out = fastloss.dice_loss(xa, t, mode="multilabel", from_logits=False, soft_label=True, smooth_nr=1e-5, smooth_dr=1e-5,
                                     per_image=per_image, ignore_index=ign, backend=backend)
            xb = x.detach().cpu().requires_grad_(True)
            ref = _soft_formula_loss(xb, t.cpu(), 0, ign, per_image)
            helpers.assert_close(out, ref.detach(), torch.float64, msg=f"{backend} value ign={ign} per_image={per_image}")
            (ga,) = torch.autograd.grad(out, xa)
            (gb,) = torch.autograd.grad(ref, xb)
            helpers.assert_close(ga, gb, torch.float64, msg=f"{backend} grad ign={ign} per_image={per_image}")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
@pytest.mark.parametrize("mode,form", MODE_FORMS, ids=[f"{m}-{f}" for m, f in MODE_FORMS])
def test_soft_label_from_logits_vs_formula(device, backend, mode, form):
    """Through softmax / sigmoid, labels expanded in the kernel and ignore_index: the literal
    formula's values and gradients (float64)."""
    helpers.require_backend(device, backend)
    ign = None if (mode == "multiclass" and form == "float") else 255
    x, t = make_case(mode, form, (4, 5), 3, torch.float64, device, ignore_index=ign)
    if form == "float" and mode != "multiclass":
        t = torch.where(t == 255, t, torch.rand(t.shape, dtype=t.dtype, device=device))  # soft values, ignored ones kept
    out = fastloss.dice_loss(x, t, mode=mode, soft_label=True, smooth_nr=1e-5, smooth_dr=1e-5, per_image=True, ignore_index=ign,
                             backend=backend)
    x64, t64, _ = R.canonicalize(x.detach().cpu().requires_grad_(True), t.cpu(), mode, 2 if mode == "multiclass" else 1, ign)
    xb = x64.detach().requires_grad_(True)
    ref = _soft_formula_loss(xb, t64, 2 if mode == "multiclass" else 1, ign)
    helpers.assert_close(out, ref.detach(), torch.float64, msg=f"{backend} value")
    (ga,) = torch.autograd.grad(out, x)
    (gb,) = torch.autograd.grad(ref, xb)
    helpers.assert_close(ga.reshape(gb.shape), gb, torch.float64, msg=f"{backend} grad")


@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params(dtypes=(torch.float32, torch.float64)))
def test_soft_label_hard_targets_equal_default(device, backend, dtype):
    """For hard targets and p in (0, 1) the soft-label sums are the plain ones: same values, same
    gradients (labels, one-hot, binary), Dice + CE included."""
    helpers.require_backend(device, backend)
    for mode, form in MODE_FORMS:
        x, t = make_case(mode, form, (5, 6), 4, dtype, device)
        if mode == "multiclass" and form == "float":
            t = F.one_hot(t.argmax(1), 4).movedim(-1, 1).to(dtype)
        for fn in (fastloss.dice_loss, fastloss.jaccard_loss, fastloss.dice_ce_loss):
            a = fn(x, t, mode=mode, per_image=True, backend=backend)
            b = fn(x, t, mode=mode, per_image=True, soft_label=True, backend=backend)
            helpers.assert_close(b, a.detach().double(), dtype, reduced=True, msg=f"{fn.__name__} {mode}-{form}")
            (ga,) = torch.autograd.grad(a, x)
            (gb,) = torch.autograd.grad(b, x)
            helpers.assert_close(gb, ga.double(), dtype, reduced=True, msg=f"{fn.__name__} {mode}-{form} grad")


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_soft_label_sums_without_cancellation(device, backend):
    """h(p, g) is min(|p|, |g|) for one sign, not (|p| + |g| - |p - g|) / 2 as written: fp32
    p = 1e-8 against g = 1 (and the reverse) adds 1e-8, where the literal formula gives 0."""
    helpers.require_backend(device, backend)
    x = torch.tensor([[[1e-8, 1.0, 3e-9, -2e-8]]], device=device)
    t = torch.tensor([[[1.0, 1e-8, 0.5, -1.0]]], device=device)
    sums, _ = torch.ops.fastloss.dice_sums(x, t, 0, False, True, None, False, backend)
    I, P, G = sums[0, 0].double().cpu().tolist()
    assert I == pytest.approx(1e-8 + 1e-8 + 3e-9 + 2e-8, rel=1e-6), I
    assert P == pytest.approx(1.0 + 1e-8 + 3e-9 + 2e-8, rel=1e-6) and G == pytest.approx(2.5 + 1e-8, rel=1e-6)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_soft_label_nan_propagates(device, backend):
    helpers.require_backend(device, backend)
    x = torch.rand(2, 3, 4, 5, device=device)
    t = torch.rand(2, 3, 4, 5, device=device)
    for xi, ti in ((x.clone().index_put_((torch.tensor(0),) * 4, torch.tensor(float("nan"))), t),
                   (x, t.clone().index_put_((torch.tensor(1),) * 4, torch.tensor(float("nan"))))):
        out = fastloss.dice_loss(xi, ti, mode="multilabel", from_logits=False, soft_label=True, per_image=True, reduction="none",
                                 backend=backend)
        assert torch.isnan(out).sum() == 1, out


def test_soft_label_and_squared():
    """Public API: soft_label with squared is the squared sums (the soft form of ord 2); the op
    refuses the pair on every backend."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    t = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    for backend in fastloss.available_backends("cpu"):
        a = fastloss.dice_loss(x, t, mode="multilabel", squared=True, backend=backend)
        assert torch.equal(fastloss.dice_loss(x, t, mode="multilabel", squared=True, soft_label=True, backend=backend), a)
        with pytest.raises(ValueError, match="exclude each other"):
            torch.ops.fastloss.dice_sums(x.view(2, 3, 20), t.view(2, 3, 20), 1, True, True, None, False, backend)
    if "cpu" in fastloss.available_backends("cpu"):
        with pytest.raises(RuntimeError, match="exclude each other"):
            torch.ops.fastloss.dice_sums_native(x.view(2, 3, 20), t.view(2, 3, 20), 1, True, True, None, False)
        with pytest.raises(RuntimeError, match="exclude each other"):
            torch.ops.fastloss.dice_grad_native(torch.zeros(2, 3, 3, dtype=torch.float64), torch.empty(0, dtype=torch.float64),
                                                x.view(2, 3, 20), t.view(2, 3, 20), 1, True, True, None)
