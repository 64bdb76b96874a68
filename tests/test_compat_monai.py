"""fastloss.compat.monai against the installed MONAI: values and gradients (float64 where MONAI
computes in the input dtype; fp32 tolerances where MONAI casts to fp32: FocalLoss, BoxGIoULoss),
signatures, the patch, and the errors for what fastloss cannot honour."""
import inspect
import warnings

import pytest
import torch

monai = pytest.importorskip("monai")
import monai.losses as ML  # noqa: E402

import fastloss  # noqa: E402
from fastloss.compat import monai as FM  # noqa: E402

import helpers  # noqa: E402

NAMES = ["DiceLoss", "MaskedDiceLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss", "TverskyLoss", "FocalLoss", "BoxGIoULoss"]
ORIGINAL = {name: getattr(ML, name) for name in NAMES}


def _data(C=3, B=2, spatial=(5, 4), seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *spatial, generator=g, dtype=torch.float64) * 2
    lab = torch.randint(0, C, (B, 1, *spatial), generator=g)
    if labels:
        return x, lab
    return x, torch.nn.functional.one_hot(lab[:, 0], C).movedim(-1, 1).to(torch.float64)


def _compare(ours, peer, x, t, *extra, rtol=1e-10, atol=1e-12):
    """Value, dtype, shape and the gradient under a random upstream gradient."""
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours(xa, t, *extra)
        b = peer(xb, t, *extra)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    up = (torch.rand(a.shape, dtype=a.dtype, generator=torch.Generator().manual_seed(1)) + 0.5).to(a.device)
    ga, = torch.autograd.grad(a, xa, up)
    gb, = torch.autograd.grad(b, xb, up)
    torch.testing.assert_close(ga, gb, rtol=rtol * 10, atol=atol * 10)


ACTS = [dict(softmax=True), dict(sigmoid=True), dict(), dict(other_act=torch.tanh)]


@pytest.mark.parametrize("act", ACTS, ids=["softmax", "sigmoid", "none", "other_act"])
@pytest.mark.parametrize("onehot,include_background,batch,reduction", [
    (True, True, False, "mean"), (True, False, True, "none"), (False, True, True, "sum"), (False, False, False, "none"),
    (True, True, True, "sum"), (False, True, False, "mean")])
def test_dice_loss(act, onehot, include_background, batch, reduction):
    x, t = _data(labels=onehot)
    for extra in (dict(), dict(squared_pred=True, jaccard=True, smooth_nr=0.0, smooth_dr=1e-3), dict(jaccard=True)):
        kw = dict(act, include_background=include_background, to_onehot_y=onehot, batch=batch, reduction=reduction, **extra)
        # squared_pred: MONAI forms ||g||_2^2 of its fp32 one-hot in fp32 (a relative error ~1e-7)
        tol = dict(rtol=1e-6, atol=1e-8) if onehot and "squared_pred" in extra else {}
        _compare(FM.DiceLoss(**kw), ORIGINAL["DiceLoss"](**kw), x, t, **tol)


@pytest.mark.parametrize("weight", [0.5, [0.2, 1.0, 3.0], torch.tensor([1.0, 2.0])])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_loss_weight(weight, include_background):
    x, t = _data()
    kw = dict(softmax=True, to_onehot_y=True, include_background=include_background, weight=weight)
    n_w = 1 if isinstance(weight, float) else len(weight)
    if isinstance(weight, float) or n_w == (3 if include_background else 2):
        _compare(FM.DiceLoss(**kw), ORIGINAL["DiceLoss"](**kw), x, t)
    else:
        with pytest.raises(ValueError, match="weight"):
            FM.DiceLoss(**kw)(x, t)


@pytest.mark.parametrize("ignore_index", [0, 2, -1, 7])
@pytest.mark.parametrize("onehot", [True, False])
def test_dice_tversky_ignore_index(ignore_index, onehot):
    x, lab = _data()
    lab = lab.clone()
    lab[0, 0, :2] = ignore_index  # some pixels carry the ignore label
    if onehot:
        t = lab
    else:  # a one-hot target: MONAI masks the ignored class's pixels (or, for a sentinel, all-zero pixels)
        ok = (lab >= 0) & (lab < 3)
        t = torch.nn.functional.one_hot(lab.clamp(0, 2)[:, 0], 3).movedim(-1, 1).to(torch.float64) * ok
    for act in (dict(softmax=True), dict(sigmoid=True)):
        kw = dict(act, to_onehot_y=onehot, ignore_index=ignore_index)
        _compare(FM.DiceLoss(**kw), ORIGINAL["DiceLoss"](**kw), x, t)
        _compare(FM.TverskyLoss(alpha=0.3, beta=0.7, **kw), ORIGINAL["TverskyLoss"](alpha=0.3, beta=0.7, **kw), x, t)


def test_single_channel():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 6, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 1, 6, 5, generator=g) > 0.5).to(torch.float64)
    t_ign = t.clone()
    t_ign[0, 0, 0] = 255
    for kw in (dict(sigmoid=True), dict(softmax=True, to_onehot_y=True, include_background=False), dict(sigmoid=True, ignore_index=255)):
        target = t_ign if "ignore_index" in kw else t
        _compare(FM.DiceLoss(**kw), ORIGINAL["DiceLoss"](**kw), x, target)
    for kw in (dict(sigmoid=True), dict(sigmoid=True, weight=torch.tensor([2.0], dtype=torch.float64)), dict()):
        _compare(FM.DiceCELoss(**kw), ORIGINAL["DiceCELoss"](**kw), x, t)


@pytest.mark.parametrize("kw", [
    dict(alpha=0.3, beta=0.7), dict(alpha=0.7, beta=0.3, softmax=True, to_onehot_y=True, batch=True, reduction="none"),
    dict(sigmoid=True, include_background=False, reduction="sum", smooth_nr=0.0), dict(other_act=torch.sigmoid, reduction="none")])
def test_tversky(kw):
    x, t = _data(labels=kw.get("to_onehot_y", False))
    _compare(FM.TverskyLoss(**kw), ORIGINAL["TverskyLoss"](**kw), x, t)


@pytest.mark.parametrize("w_type,batch,reduction,include_background", [
    ("square", False, "mean", True), ("simple", True, "none", False), ("uniform", False, "none", True), ("square", True, "sum", False)])
def test_generalized_dice(w_type, batch, reduction, include_background):
    x, t = _data()
    t = t.clone()
    t[1] = 0  # image 1 has only background: an empty class's weight (inf -> max) is exercised
    kw = dict(softmax=True, to_onehot_y=True, w_type=w_type, batch=batch, reduction=reduction, include_background=include_background)
    _compare(FM.GeneralizedDiceLoss(**kw), ORIGINAL["GeneralizedDiceLoss"](**kw), x, t)


def test_masked_dice():
    x, t = _data()
    mask = (torch.rand(2, 1, 5, 4, generator=torch.Generator().manual_seed(5)) > 0.3).to(torch.float64)
    for kw in (dict(softmax=True, to_onehot_y=True), dict(sigmoid=True, to_onehot_y=True, reduction="none", batch=True)):
        _compare(FM.MaskedDiceLoss(**kw), ORIGINAL["MaskedDiceLoss"](**kw), x, t, mask)
    x1, t1 = _data(labels=False)
    _compare(FM.MaskedDiceLoss(sigmoid=True), ORIGINAL["MaskedDiceLoss"](sigmoid=True), x1, t1, mask[:1])


@pytest.mark.parametrize("kw", [
    dict(softmax=True, to_onehot_y=True), dict(softmax=True, to_onehot_y=True, include_background=False, batch=True, reduction="sum"),
    dict(softmax=True, to_onehot_y=True, weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), include_background=False),
    dict(softmax=True, to_onehot_y=True, label_smoothing=0.1, lambda_dice=0.3, lambda_ce=2.0),
    dict(), dict(sigmoid=True, to_onehot_y=True, jaccard=True), dict(softmax=True, squared_pred=True),
    dict(softmax=True, weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), reduction="sum")])
def test_dice_ce(kw):
    x, t = _data(labels=kw.get("to_onehot_y", False))
    _compare(FM.DiceCELoss(**kw), ORIGINAL["DiceCELoss"](**kw), x, t)


@pytest.mark.parametrize("kw", [
    dict(), dict(alpha=0.25, reduction="sum"), dict(gamma=0.0, reduction="none", include_background=False),
    dict(alpha=[0.2, 0.5, 0.9], weight=[1.0, 2.0, 0.5]), dict(weight=2.0, reduction="sum", to_onehot_y=True),
    dict(to_onehot_y=True, ignore_index=1, reduction="sum"), dict(to_onehot_y=True, ignore_index=-1),
    dict(ignore_index=1, reduction="sum"), dict(ignore_index=2, alpha=0.4),
    dict(use_softmax=True, to_onehot_y=True), dict(use_softmax=True, to_onehot_y=True, alpha=0.25, reduction="sum"),
    dict(use_softmax=True, to_onehot_y=True, include_background=False, alpha=[0.3, 0.7], reduction="none", weight=[1.0, 3.0]),
    dict(use_softmax=True, to_onehot_y=True, ignore_index=2, weight=0.5), dict(use_softmax=True, to_onehot_y=True, ignore_index=-1,
                                                                              reduction="sum")])
def test_focal(kw):
    x, lab = _data()
    if kw.get("ignore_index") is not None:
        lab = lab.clone()
        lab[0, 0, :2] = kw["ignore_index"]
    t = lab if kw.get("to_onehot_y") else torch.nn.functional.one_hot(lab[:, 0], 3).movedim(-1, 1).to(torch.float64)
    # MONAI computes the focal loss in fp32 (input.float()): fp32 tolerances
    _compare(FM.FocalLoss(**kw), ORIGINAL["FocalLoss"](**kw), x, t, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kw", [
    dict(softmax=True, to_onehot_y=True), dict(sigmoid=True, to_onehot_y=True, reduction="none", gamma=1.5, alpha=0.3),
    dict(softmax=True, to_onehot_y=True, include_background=False, weight=[1.0, 2.0], reduction="sum", lambda_focal=0.5)])
def test_dice_focal(kw):
    x, t = _data()
    _compare(FM.DiceFocalLoss(**kw), ORIGINAL["DiceFocalLoss"](**kw), x, t, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_box_giou(reduction):
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(9, 2, generator=g, dtype=torch.float64) * 10
    a = torch.cat([xy, xy + torch.rand(9, 2, generator=g, dtype=torch.float64) * 5 + 0.1], 1)
    xy = torch.rand(9, 2, generator=g, dtype=torch.float64) * 10
    b = torch.cat([xy, xy + torch.rand(9, 2, generator=g, dtype=torch.float64) * 5 + 0.1], 1)
    b[0] = a[0]  # identical pair
    _compare(FM.BoxGIoULoss(reduction), ORIGINAL["BoxGIoULoss"](reduction), a, b, rtol=1e-5, atol=1e-6)
    # MONAI differentiates the target boxes too
    pa, ta, pb, tb = (v.clone().requires_grad_(True) for v in (a, b, a, b))
    la, lb = FM.BoxGIoULoss(reduction)(pa, ta), ORIGINAL["BoxGIoULoss"](reduction)(pb, tb)
    assert la.dtype == lb.dtype == torch.float64
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    up = torch.rand(la.shape, dtype=la.dtype, generator=g) + 0.5
    for ga, gb in zip(torch.autograd.grad(la, (pa, ta), up), torch.autograd.grad(lb, (pb, tb), up)):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def _boxes_3d(n, g, dtype):
    lo = torch.rand(n, 3, generator=g, dtype=torch.float64) * 10
    return torch.cat([lo, lo + torch.rand(n, 3, generator=g, dtype=torch.float64) * 5 + 0.1], 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_box_giou_3d(reduction, dtype, device, backend):
    """3-D boxes (N, 6) on every backend: values and prediction gradients against MONAI's
    box_pair_giou (which computes in fp32, hence fp32 tolerances for fp64 too)."""
    helpers.require_backend(device, backend)
    g = torch.Generator().manual_seed(3)
    a, b = _boxes_3d(11, g, dtype), _boxes_3d(11, g, dtype)
    b[0] = a[0]  # identical pair
    b[1] = a[1] + 20  # disjoint
    b[2, :3] = a[2, :3] + 0.5  # nested-ish, shared upper corner
    b[2, 3:] = a[2, 3:]
    a, b = a.to(device), b.to(device)
    with fastloss.use_backend(backend):
        _compare(FM.BoxGIoULoss(reduction), ORIGINAL["BoxGIoULoss"](reduction), a, b, rtol=1e-5, atol=1e-6)


def test_box_giou_inverted_and_point_boxes():
    """fastloss's finite answers where MONAI raises: an inverted box has zero area; point boxes."""
    inv = torch.tensor([[2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    tgt = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    loss = FM.BoxGIoULoss("none")(inv, tgt)
    torch.testing.assert_close(loss.detach(), torch.ones(2))  # no overlap, enclosure = union: GIoU 0
    grad, = torch.autograd.grad(loss.sum(), inv)
    assert torch.isfinite(grad).all()
    with pytest.raises(ValueError):
        ORIGINAL["BoxGIoULoss"]("none")(inv, tgt)


@pytest.mark.parametrize("name,kw", [
    ("DiceLoss", dict(softmax=True, to_onehot_y=True, reduction="none")), ("DiceCELoss", dict(softmax=True, to_onehot_y=True)),
    ("GeneralizedDiceLoss", dict(softmax=True, to_onehot_y=True, reduction="none")),
    ("TverskyLoss", dict(sigmoid=True, to_onehot_y=True, reduction="none", batch=True)),
    ("FocalLoss", dict(to_onehot_y=True, reduction="none")), ("DiceFocalLoss", dict(sigmoid=True, to_onehot_y=True, reduction="none"))])
def test_float32_volumes(name, kw):
    """fp32 3-D volumes (B, N, D, H, W): MONAI's dtypes and "none" shapes."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 4, 5, 3, generator=g)
    t = torch.randint(0, 3, (2, 1, 4, 5, 3), generator=g)
    _compare(getattr(FM, name)(**kw), ORIGINAL[name](**kw), x, t, rtol=2e-5, atol=1e-6)


def test_dice_ce_single_pass(monkeypatch):
    """softmax=True without weight / label_smoothing / jaccard: Dice and CE from ONE kernel pass
    (no separate cross_entropy call)."""
    calls = []
    inner = FM._dice._sums

    def spy(*args):
        calls.append(args[6])  # with_ce
        return inner(*args)

    def no_ce(*args, **kwargs):
        raise AssertionError("the fused pass should give the cross entropy")

    monkeypatch.setattr(FM._dice, "_sums", spy)
    monkeypatch.setattr(FM, "cross_entropy", no_ce)
    monkeypatch.setattr(FM, "binary_cross_entropy_with_logits", no_ce)
    x, t = _data()
    FM.DiceCELoss(softmax=True, to_onehot_y=True, include_background=False)(x, t)
    x1 = x[:, :1]
    FM.DiceCELoss(sigmoid=True)(x1, (t > 0).double())
    assert calls == [True, True]


# ------------------------------------------------------------------ soft_label=True (the kernel's soft-label sums)


def _soft_target(x, seed=5):
    """Random soft targets in [0, 1] shaped like x (float64)."""
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SOFT_NAMES = ["DiceLoss", "TverskyLoss", "GeneralizedDiceLoss", "MaskedDiceLoss"]


@pytest.mark.parametrize("name", SOFT_NAMES)
@pytest.mark.parametrize("act", ACTS, ids=["softmax", "sigmoid", "none", "other_act"])
@pytest.mark.parametrize("batch,reduction", [(False, "mean"), (True, "none"), (False, "sum"), (True, "mean")])
def test_soft_label(name, act, batch, reduction):
    """soft_label=True against MONAI (float64): random soft targets in [0, 1], and hard ones (a
    label map / one-hot, where the soft-label norms still differ from soft_label=False at p == g);
    jaccard, include_background, squared_pred (MONAI's ord 2 soft form)."""
    x, lab = _data()
    t = _soft_target(x)
    extras = [dict(), dict(include_background=False)]
    if name in ("DiceLoss", "MaskedDiceLoss"):
        extras += [dict(jaccard=True), dict(squared_pred=True)]
    if name == "TverskyLoss":
        extras += [dict(alpha=0.2, beta=0.9)]
    if name == "GeneralizedDiceLoss":
        extras += [dict(w_type="simple")]
    for extra in extras:
        kw = dict(act, soft_label=True, batch=batch, reduction=reduction, **extra)
        for target, onehot in ((t, False), (lab, True)):
            # squared_pred: MONAI forms ||g||_2^2 of its fp32 one-hot in fp32 (a relative error ~1e-7)
            tol = dict(rtol=1e-6, atol=1e-8) if onehot and "squared_pred" in extra else {}
            _compare(getattr(FM, name)(to_onehot_y=onehot, **kw), ORIGINAL[name](to_onehot_y=onehot, **kw), x, target, **tol)


@pytest.mark.parametrize("name", SOFT_NAMES)
def test_soft_label_ties_and_signs(name):
    """From probabilities (no activation) with exact ties p == g (soft values, 1 and 0), zeros on
    either side and negative values in both input and target (MONAI's |.| norms): the values and
    the gradients torch's autograd gives MONAI's formula (1/2 at a tie, 0 for d|p|/dp at 0)."""
    g = torch.Generator().manual_seed(2)
    t = torch.rand(2, 3, 6, 5, generator=g, dtype=torch.float64)
    x = torch.rand(2, 3, 6, 5, generator=g, dtype=torch.float64)
    x[..., 0] = t[..., 0]                                  # ties 0 < p == g < 1
    t[..., 1, :] = (t[..., 1, :] > 0.5).double()
    x[..., 1, :2] = t[..., 1, :2]                          # ties at 0 and 1
    x[..., 2, :2] = 0.0                                    # p = 0
    for target, x_in in ((t, x), (t, x * 2 - 0.5), (t * 2 - 1, x)):  # negative inputs / targets
        for kw in (dict(), dict(batch=True, reduction="none"), dict(include_background=False, reduction="sum")):
            if name == "GeneralizedDiceLoss" and (target < 0).any():
                continue  # documented: MONAI weights by 1 / (sum g)^2, fastloss by its G' = sum |g|
            _compare(getattr(FM, name)(soft_label=True, **kw), ORIGINAL[name](soft_label=True, **kw), x_in, target)


def test_soft_label_gdl_nonneg_documented():
    """GeneralizedDiceLoss(soft_label=True) with negative targets: fastloss's class weights come from
    the kernel's G' = sum |g| (documented); with |target| the two agree."""
    assert "GeneralizedDiceLoss(soft_label=True)" in " ".join(FM.__doc__.split())
    x, _ = _data()
    t = _soft_target(x) * 2 - 1
    ours = FM.GeneralizedDiceLoss(soft_label=True, sigmoid=True)(x, t)
    # the target's sign enters MONAI's tp / fp / fn through |g| and |p - g| only; its weights through sum g
    peer_abs_weights = ORIGINAL["GeneralizedDiceLoss"](soft_label=True, sigmoid=True)
    peer_abs_weights.w_func = lambda grnd, w=peer_abs_weights.w_func: w(t.abs().sum((2, 3)).float())
    torch.testing.assert_close(ours, peer_abs_weights(x, t), rtol=1e-6, atol=1e-8)


def test_soft_label_without_spatial_dims():
    """(B, N) input: MONAI's norms over dim=[] run over every axis, as its sums do (one score)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.rand(4, 3, generator=g, dtype=torch.float64)
    for name, kw in (("DiceLoss", dict(sigmoid=True)), ("TverskyLoss", dict(softmax=True, alpha=0.3, beta=0.7)),
                     ("GeneralizedDiceLoss", dict(sigmoid=True, batch=True))):
        _compare(getattr(FM, name)(soft_label=True, **kw), ORIGINAL[name](soft_label=True, **kw), x, t)


@pytest.mark.parametrize("ignore_index", [0, 2, -1])
def test_soft_label_ignore_index(ignore_index):
    """soft_label with ignore_index: a label map (the kernel's mask) and a one-hot target (MONAI's
    whole-pixel mask in PyTorch)."""
    x, lab = _data()
    lab = lab.clone()
    lab[0, 0, :2] = ignore_index
    ok = (lab >= 0) & (lab < 3)
    oh = torch.nn.functional.one_hot(lab.clamp(0, 2)[:, 0], 3).movedim(-1, 1).to(torch.float64) * ok
    for t, onehot in ((lab, True), (oh, False)):
        for act in (dict(softmax=True), dict(sigmoid=True)):
            kw = dict(act, to_onehot_y=onehot, ignore_index=ignore_index, soft_label=True)
            _compare(FM.DiceLoss(**kw), ORIGINAL["DiceLoss"](**kw), x, t)
            _compare(FM.TverskyLoss(alpha=0.3, beta=0.7, **kw), ORIGINAL["TverskyLoss"](alpha=0.3, beta=0.7, **kw), x, t)


def test_soft_label_runs_on_the_kernel(monkeypatch):
    """soft_label=True is the dice kernel's soft-label mode (one fused pass, softmax inside), not
    a PyTorch fallback; with squared_pred the squared sums (MONAI's ord 2 soft form)."""
    calls = []
    inner = FM._dice._sums

    def spy(x, t, activation, squared, soft, *rest):
        calls.append((activation, squared, soft))
        return inner(x, t, activation, squared, soft, *rest)

    monkeypatch.setattr(FM._dice, "_sums", spy)
    x, _ = _data()
    t = _soft_target(x)
    FM.DiceLoss(softmax=True, soft_label=True)(x, t)
    FM.DiceLoss(softmax=True, soft_label=True, squared_pred=True)(x, t)
    FM.TverskyLoss(sigmoid=True, soft_label=True)(x, t)
    assert calls == [(2, False, True), (2, True, False), (1, False, True)]


# ------------------------------------------------------------------ errors for what fastloss cannot honour


def test_errors():
    x, t = _data()
    with pytest.raises(ValueError, match="requires grad"):
        FM.BoxGIoULoss()(torch.zeros(2, 6), torch.ones(2, 6, requires_grad=True))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        FM.BoxGIoULoss()(torch.zeros(2, 5), torch.ones(2, 5))
    with pytest.raises(ValueError, match="use_softmax"):
        FM.FocalLoss(use_softmax=True)(x, torch.nn.functional.one_hot(t[:, 0], 3).movedim(-1, 1).double())
    soft = torch.full_like(x, 0.3)
    with pytest.raises(ValueError, match="hard"):
        FM.FocalLoss()(x, soft)
    with pytest.raises(ValueError, match="reduction"):
        FM.DiceCELoss(reduction="none")
    with pytest.raises(ValueError, match="alpha"):
        FM.FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="Incompatible"):
        FM.DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="different shape"):
        FM.DiceLoss(softmax=True)(x, t)  # a label map without to_onehot_y
    with pytest.raises(ValueError, match="out of range"):
        FM.DiceLoss(softmax=True, to_onehot_y=True)(x, t + 5)


# ------------------------------------------------------------------ signatures and the patch


@pytest.mark.parametrize("name", NAMES)
def test_signatures(name):
    ours, peer = getattr(FM, name), ORIGINAL[name]
    assert inspect.signature(ours.__init__) == inspect.signature(peer.__init__)
    assert inspect.signature(ours.forward) == inspect.signature(peer.forward)


def test_patch():
    import monai.losses.dice as mdice

    x, t = _data()
    ref = ORIGINAL["DiceCELoss"](softmax=True, to_onehot_y=True)(x, t)
    with fastloss.patch("monai") as handle:
        assert handle.active
        for name in NAMES:
            assert getattr(ML, name) is getattr(FM, name)
        assert mdice.DiceLoss is FM.DiceLoss and mdice.Dice is FM.DiceLoss and ML.dice_ce is FM.DiceCELoss
        assert monai.losses.tversky.TverskyLoss is FM.TverskyLoss and monai.losses.giou_loss.giou is FM.BoxGIoULoss
        loss_fn = ML.DiceCELoss(softmax=True, to_onehot_y=True)  # MONAI's own entry point now builds fastloss's class
        assert type(loss_fn).__module__ == "fastloss.compat.monai"
        torch.testing.assert_close(loss_fn(x, t), ref, rtol=1e-12, atol=0)
        second = fastloss.patch("monai")  # patching twice is harmless
        assert not second.active
        second.undo()
        assert ML.DiceLoss is FM.DiceLoss
    for name in NAMES:
        assert getattr(ML, name) is ORIGINAL[name]
    assert mdice.DiceLoss is ORIGINAL["DiceLoss"] and mdice.Dice is ORIGINAL["DiceLoss"] and ML.dice_ce is ORIGINAL["DiceCELoss"]
    handle = fastloss.patch("monai")
    assert ML.FocalLoss is FM.FocalLoss
    handle.undo()
    assert ML.FocalLoss is ORIGINAL["FocalLoss"]


# ------------------------------------------------------------------ review fixes


@pytest.mark.parametrize("name,kw", [
    ("FocalLoss", dict(to_onehot_y=True)), ("FocalLoss", dict(to_onehot_y=True, reduction="sum")),
    ("FocalLoss", dict(to_onehot_y=True, use_softmax=True)), ("FocalLoss", dict(to_onehot_y=True, use_softmax=True, reduction="sum")),
    ("FocalLoss", dict(ignore_index=1, reduction="sum")), ("FocalLoss", dict()),
    ("DiceFocalLoss", dict(to_onehot_y=True, sigmoid=True)), ("DiceFocalLoss", dict(to_onehot_y=True, softmax=True, reduction="sum"))])
def test_empty_spatial_is_zero(name, kw):
    """An empty image: 0, graph-connected, a gradient of the input's shape (DESIGN: a mean over
    nothing is 0); MONAI gives NaN (a documented difference)."""
    x = torch.randn(2, 3, 0, 6, requires_grad=True)
    t = torch.zeros(2, 1, 0, 6, dtype=torch.long) if kw.get("to_onehot_y") else torch.zeros(2, 3, 0, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = getattr(FM, name)(**kw)(x, t)
        peer = ORIGINAL[name](**kw)(x.detach(), t)
    assert loss.shape == () and loss.item() == 0.0
    grad, = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape
    if "ignore_index" in kw:  # MONAI clamps its mask count: 0 as well
        assert peer.item() == 0.0
    else:
        assert torch.isnan(peer)


NO_SPATIAL = [
    ("DiceLoss", dict(sigmoid=True), 1, False), ("DiceLoss", dict(softmax=True, reduction="none"), 3, False),
    ("DiceLoss", dict(softmax=True, weight=[1.0, 2.0, 3.0], reduction="none"), 3, False),
    ("DiceLoss", dict(softmax=True, batch=True, reduction="none"), 3, False),
    ("DiceLoss", dict(softmax=True, to_onehot_y=True, include_background=False, reduction="sum"), 3, True),
    ("DiceLoss", dict(sigmoid=True, jaccard=True, squared_pred=True), 3, False),
    ("TverskyLoss", dict(sigmoid=True, reduction="none"), 1, False), ("TverskyLoss", dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7), 3, True),
    ("GeneralizedDiceLoss", dict(softmax=True, batch=True), 3, False),
    ("DiceCELoss", dict(sigmoid=True), 1, False), ("DiceCELoss", dict(softmax=True, to_onehot_y=True), 3, True),
    ("DiceCELoss", dict(softmax=True, reduction="sum"), 3, False),
    ("DiceFocalLoss", dict(sigmoid=True), 1, False), ("DiceFocalLoss", dict(sigmoid=True, reduction="none"), 3, False),
    ("DiceFocalLoss", dict(softmax=True, to_onehot_y=True, reduction="sum"), 3, True),
    ("FocalLoss", dict(reduction="sum"), 3, False), ("FocalLoss", dict(to_onehot_y=True, use_softmax=True, reduction="sum"), 3, True),
    ("FocalLoss", dict(to_onehot_y=True, ignore_index=2, reduction="sum"), 3, True)]


@pytest.mark.parametrize("name,kw,C,labels", NO_SPATIAL)
def test_no_spatial_dims(name, kw, C, labels):
    """(B, N) input: MONAI's sums over the empty list of spatial axes sum over EVERYTHING (one
    score over all images and classes; FocalLoss "sum" averages over everything) -- matched."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, C, generator=g, dtype=torch.float64)
    lab = torch.randint(0, C, (4, 1), generator=g)
    if C == 1:
        t = (torch.rand(4, 1, generator=g) > 0.5).double()
    elif labels:
        t = lab
    else:
        t = torch.nn.functional.one_hot(lab[:, 0], C).double()
    tol = dict(rtol=2e-6, atol=1e-7) if "Focal" in name else {}
    _compare(getattr(FM, name)(**kw), ORIGINAL[name](**kw), x, t, **tol)


def test_no_spatial_dims_masked_and_gdl():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.nn.functional.one_hot(torch.randint(0, 3, (4,), generator=g), 3).double()
    mask = torch.tensor([[1.0], [0.0], [1.0], [1.0]], dtype=torch.float64)
    _compare(FM.MaskedDiceLoss(sigmoid=True), ORIGINAL["MaskedDiceLoss"](sigmoid=True), x, t, mask)
    with pytest.raises(IndexError):
        ORIGINAL["GeneralizedDiceLoss"](softmax=True)(x, t)  # MONAI fails there
    with pytest.raises(ValueError, match="batch=True"):
        FM.GeneralizedDiceLoss(softmax=True)(x, t)


DTYPE_CASES = {"DiceLoss": [dict(softmax=True), dict(sigmoid=True), dict()], "GeneralizedDiceLoss": [dict(softmax=True)],
               "TverskyLoss": [dict(softmax=True)], "MaskedDiceLoss": [dict(softmax=True)],
               "DiceCELoss": [dict(softmax=True), dict(sigmoid=True), dict(), dict(softmax=True, weight="w")],
               "DiceFocalLoss": [dict(sigmoid=True)], "FocalLoss": [dict(), dict(use_softmax=True)]}


@pytest.mark.parametrize("name", list(DTYPE_CASES))
def test_return_dtypes(name):
    """MONAI's return dtype for every input dtype x target kind (a label map -- MONAI's one-hot is
    fp32 --, a one-hot of input's dtype, of fp32, of int64); values within half-precision tolerance."""
    g = torch.Generator().manual_seed(6)
    lab = torch.randint(0, 3, (2, 1, 4, 5), generator=g)
    oh = torch.nn.functional.one_hot(lab[:, 0], 3).movedim(-1, 1)
    x64 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    checked = 0
    for kw in DTYPE_CASES[name]:
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            x = x64.to(dt)
            for kind in ("labels", "onehot_same", "onehot_f32", "onehot_int"):
                if kind == "labels":
                    t, k = lab, dict(kw, to_onehot_y=True)
                else:
                    if kw.get("use_softmax"):
                        continue  # fastloss's softmax focal takes labels (documented)
                    t, k = oh.to({"onehot_same": dt, "onehot_f32": torch.float32, "onehot_int": torch.int64}[kind]), dict(kw)
                if k.get("weight") == "w":
                    if kind == "labels" and dt == torch.float16:
                        continue  # MONAI fails: torch's CE wants an fp16 weight there
                    k["weight"] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32 if dt == torch.float16 else dt)
                extra = (torch.ones(2, 1, 4, 5, dtype=dt),) if name == "MaskedDiceLoss" else ()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    a = getattr(FM, name)(**k)(x, t, *extra)
                    b = ORIGINAL[name](**k)(x, t, *extra)
                assert a.dtype == b.dtype, (kw, dt, kind, a.dtype, b.dtype)
                # values: against MONAI in fp64 on the same (rounded) numbers -- MONAI's own half-precision
                # sums are far less accurate than fastloss's fp32 accumulation
                k64 = dict(k, weight=k["weight"].double()) if torch.is_tensor(k.get("weight")) else k
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref = ORIGINAL[name](**k64)(x.double(), t.double() if t.is_floating_point() else t, *(e.double() for e in extra))
                tol = {torch.float16: 1e-2, torch.bfloat16: 3e-2}.get(dt, 1e-5)
                torch.testing.assert_close(a.double(), ref.double(), rtol=tol, atol=tol)
                checked += 1
    assert checked >= 4 * len(DTYPE_CASES[name])


STATE_GRID = [
    ("DiceLoss", dict()), ("DiceLoss", dict(weight=[1.0, 2.0, 3.0])), ("DiceLoss", dict(weight=0.5, to_onehot_y=True, softmax=True)),
    ("MaskedDiceLoss", dict(weight=torch.tensor([1.0, 2.0, 3.0]))), ("GeneralizedDiceLoss", dict()), ("TverskyLoss", dict()),
    ("DiceCELoss", dict()), ("DiceCELoss", dict(weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), to_onehot_y=True, softmax=True)),
    ("DiceCELoss", dict(weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), include_background=False, to_onehot_y=True)),
    ("DiceFocalLoss", dict(weight=[1.0, 2.0, 3.0], to_onehot_y=True)), ("DiceFocalLoss", dict(weight=2.0, to_onehot_y=True, sigmoid=True)),
    ("FocalLoss", dict(weight=[1.0, 2.0, 3.0], to_onehot_y=True)), ("FocalLoss", dict(weight=0.5, alpha=0.25, to_onehot_y=True)),
    ("BoxGIoULoss", dict())]


def _assert_same_state(ours, peer):
    sa, sb = ours.state_dict(), peer.state_dict()
    assert list(sa) == list(sb), (list(sa), list(sb))
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name,kw", STATE_GRID)
def test_state_dict_matches_monai(name, kw):
    """state_dict keys and values as MONAI's, at construction and after a forward (MONAI expands a
    scalar Dice weight in place); checkpoints load unpatched -> patched and back, strictly, and a
    loaded weight takes effect."""
    ours, peer = getattr(FM, name)(**kw), ORIGINAL[name](**kw)
    _assert_same_state(ours, peer)
    saved = peer.state_dict()
    with fastloss.patch("monai"):
        patched = getattr(ML, name)(**kw)
    assert type(patched) is getattr(FM, name)
    patched.load_state_dict(saved)
    ORIGINAL[name](**kw).load_state_dict(ours.state_dict())
    if name != "BoxGIoULoss":
        x, t = _data(labels=kw.get("to_onehot_y", False))
        extra = (torch.ones(2, 1, 5, 4, dtype=torch.float64),) if name == "MaskedDiceLoss" else ()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours(x, t, *extra)
            peer(x, t, *extra)
        _assert_same_state(ours, peer)
        # a checkpoint of a trained loss (MONAI's expanded weight) loads into a trained one, both ways
        ours.load_state_dict(peer.state_dict())
        peer.load_state_dict(ours.state_dict())


def test_loaded_dice_ce_weight_takes_effect():
    x, t = _data()
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    peer = ORIGINAL["DiceCELoss"](weight=w, to_onehot_y=True, softmax=True)
    ours = FM.DiceCELoss(weight=torch.ones(3, dtype=torch.float64), to_onehot_y=True, softmax=True)
    ours.load_state_dict(peer.state_dict())
    _compare(ours, peer, x, t)


def test_public_attributes():
    """The attributes users touch, as MONAI's."""
    x, t = _data(labels=False)
    mask = (torch.rand(2, 1, 5, 4, generator=torch.Generator().manual_seed(9)) > 0.3).double()
    ours, peer = FM.MaskedDiceLoss(sigmoid=True), ORIGINAL["MaskedDiceLoss"](sigmoid=True)
    assert isinstance(ours.spatial_weighted, torch.nn.Module)
    # spatial_weighted: the mask then DiceLoss, without the activation (MONAI's MaskedLoss)
    _compare(ours.spatial_weighted, peer.spatial_weighted, x.sigmoid(), t, mask)
    ce, pce = FM.DiceCELoss(label_smoothing=0.1, reduction="sum"), ORIGINAL["DiceCELoss"](label_smoothing=0.1, reduction="sum")
    for attr in ("cross_entropy", "binary_cross_entropy"):
        assert type(getattr(ce, attr)) is type(getattr(pce, attr))
    assert ce.cross_entropy.label_smoothing == pce.cross_entropy.label_smoothing == 0.1
    assert ce.cross_entropy.reduction == pce.cross_entropy.reduction == "sum" and ce.reduction == pce.reduction


@pytest.mark.parametrize("weight", [0.5, [0.5, 1.0, 2.0]])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_ce_weight_type_error(weight, include_background):
    """MONAI's DiceCELoss takes a tensor weight only (TypeError otherwise): the same here."""
    with pytest.raises(TypeError):
        ORIGINAL["DiceCELoss"](weight=weight, include_background=include_background)
    with pytest.raises(TypeError):
        FM.DiceCELoss(weight=weight, include_background=include_background)


@pytest.mark.parametrize("name,kw,labels", [
    ("FocalLoss", dict(), False), ("FocalLoss", dict(to_onehot_y=True), True),
    ("FocalLoss", dict(to_onehot_y=True, use_softmax=True, weight=[1.0, 2.0, 3.0]), True),
    ("FocalLoss", dict(to_onehot_y=True, ignore_index=2, reduction="sum"), True),
    ("DiceFocalLoss", dict(to_onehot_y=True, softmax=True), True), ("DiceFocalLoss", dict(sigmoid=True), False),
    ("DiceCELoss", dict(to_onehot_y=True, softmax=True), True), ("DiceLoss", dict(to_onehot_y=True, softmax=True, weight=[1.0, 2.0, 3.0]), True),
    ("DiceLoss", dict(sigmoid=True, soft_label=True), False), ("TverskyLoss", dict(softmax=True, soft_label=True, alpha=0.2), False)])
def test_compile_fullgraph(name, kw, labels):
    """The value checks (soft targets, labels, weights) read the host: skipped while torch.compile
    traces, so fullgraph=True compiles; same values and gradients as eager."""
    x, t = _data(labels=labels)
    loss = getattr(FM, name)(**kw)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    _compare(compiled, loss, x, t)


def test_targets_requiring_grad_raise():
    x, t = _data(labels=False)
    with pytest.raises(ValueError, match="target"):
        FM.DiceLoss(softmax=True)(x, t.clone().requires_grad_(True))
    assert "require grad raise ValueError" in " ".join(FM.__doc__.split())


def _public_names(module):
    names = {k for k in vars(module) if not k.startswith("_") and k != "training"}
    return names | set(module._modules) | set(module._buffers) | set(module._parameters)


@pytest.mark.parametrize("name", NAMES)
def test_public_attribute_names(name):
    """Every attribute, submodule and buffer a MONAI loss object has, ours has too."""
    assert _public_names(ORIGINAL[name]()) <= _public_names(getattr(FM, name)())
