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
    up = torch.rand(a.shape, dtype=a.dtype, generator=torch.Generator().manual_seed(1)) + 0.5
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
        calls.append(args[5])  # with_ce
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


# ------------------------------------------------------------------ errors for what fastloss cannot honour


def test_errors():
    x, t = _data()
    with pytest.raises(ValueError, match="soft_label"):
        FM.DiceLoss(soft_label=True)
    with pytest.raises(ValueError, match="soft_label"):
        FM.TverskyLoss(soft_label=True)
    with pytest.raises(ValueError, match="soft_label"):
        FM.GeneralizedDiceLoss(soft_label=True)
    FM.DiceLoss(soft_label=True, squared_pred=True)  # both forms are sum p g there
    with pytest.raises(ValueError, match="3-D boxes"):
        FM.BoxGIoULoss()(torch.zeros(2, 6), torch.ones(2, 6))
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
