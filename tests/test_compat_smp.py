"""fastloss.compat.smp against the installed segmentation_models_pytorch: values and gradients in
float64, signatures, the patch, and the errors for what fastloss cannot honour."""
import inspect

import pytest
import torch

smp = pytest.importorskip("segmentation_models_pytorch")
import segmentation_models_pytorch.losses as SL  # noqa: E402

import fastloss  # noqa: E402
from fastloss.compat import smp as FS  # noqa: E402

NAMES = ["DiceLoss", "JaccardLoss", "TverskyLoss", "FocalLoss", "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss"]
ORIGINAL = {name: getattr(SL, name) for name in NAMES}
IGNORE = 255


def _compare(ours, peer, x, t, rtol=1e-10, atol=1e-12):
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    a = ours(xa, t)
    b = peer(xb, t)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    up = torch.rand(a.shape, dtype=a.dtype, generator=torch.Generator().manual_seed(1)) + 0.5
    ga, = torch.autograd.grad(a, xa, up)
    gb, = torch.autograd.grad(b, xb, up)
    torch.testing.assert_close(ga, gb, rtol=rtol * 10, atol=atol * 10)


def _data(mode, ignore=False, C=4, seed=0, probs=False):
    """Logits (or probabilities) and a target for smp's mode; class C-1 absent from the batch."""
    g = torch.Generator().manual_seed(seed)
    if mode == "binary":
        x = torch.randn(3, 1, 6, 5, generator=g, dtype=torch.float64) * 2
        t = (torch.rand(3, 6, 5, generator=g) > 0.6).long()
    elif mode == "multiclass":
        x = torch.randn(3, C, 6, 5, generator=g, dtype=torch.float64) * 2
        t = torch.randint(0, C - 1, (3, 6, 5), generator=g)
    else:
        x = torch.randn(3, C, 6, 5, generator=g, dtype=torch.float64) * 2
        t = (torch.rand(3, C, 6, 5, generator=g) > 0.6).to(torch.float64)
        t[:, -1] = 0
    if ignore:
        t = t.clone()
        t.view(-1)[::7] = IGNORE
    if probs:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    return x, t


GRID = [dict(), dict(smooth=1.0), dict(log_loss=True), dict(from_logits=False), dict(eps=1e-3, smooth=0.5, log_loss=True)]


@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("ignore", [False, True])
def test_scores(name, mode, ignore):
    extra = dict(alpha=0.3, beta=0.7, gamma=1.5) if name == "TverskyLoss" else {}
    for kw in GRID + ([] if mode == "binary" else [dict(classes=[0, 2]), dict(class_weights=[0.5, 1.0, 2.0, 3.0]),
                                                   dict(classes=[1, 3], class_weights=[1.0, 2.0, 3.0, 4.0])]):
        x, t = _data(mode, ignore, probs=kw.get("from_logits") is False)
        args = dict(kw, ignore_index=IGNORE if ignore else None, **extra)
        _compare(getattr(FS, name)(mode, **args), ORIGINAL[name](mode, **args), x, t)


def test_class_weights_as_fastloss_weights():
    """smp's weighted class mean sum(w l) / sum(w) is fastloss's class_weights C w / sum(w) (the issue's claim)."""
    x, t = _data("multiclass")
    w = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    ours = FS.DiceLoss("multiclass", class_weights=w.tolist(), smooth=1.0)(x, t)
    # smooth s enters smp's Dice as (2 I + 2 s) / (P' + G' + 2 s); smp zeroes classes absent from the target
    direct = fastloss.dice_loss(x, t, smooth_nr=2.0, smooth_dr=2.0, class_weights=4 * w / w.sum(), zero_empty=True)
    torch.testing.assert_close(ours, direct, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchwise_mean"])
def test_focal(mode, reduction):
    grid = (dict(), dict(alpha=0.25, gamma=1.5), dict(from_logits=False), dict(ignore_index=IGNORE),
            dict(class_weights=[1.0, 2.0, 0.5, 1.5]))
    for kw in grid:
        if mode == "binary" and "class_weights" in kw:
            continue
        if mode == "multilabel" and "ignore_index" in kw:
            continue
        if mode != "binary" and "class_weights" in kw and reduction in ("none", "batchwise_mean"):
            continue
        x, t = _data(mode, "ignore_index" in kw, probs=kw.get("from_logits") is False)
        _compare(FS.FocalLoss(mode, reduction=reduction, **kw), ORIGINAL["FocalLoss"](mode, reduction=reduction, **kw), x, t)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_soft_bce(reduction):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(2, 3, 5, 4, generator=g) > 0.5).to(torch.float64)
    t[0, 0, 0] = -100  # smp's default ignore_index
    for kw in (dict(), dict(smooth_factor=0.1), dict(weight=torch.rand(3, 1, 1, generator=g, dtype=torch.float64)),
               dict(pos_weight=torch.rand(4, generator=g, dtype=torch.float64) * 3, smooth_factor=0.2), dict(ignore_index=None)):
        target = t.clamp(min=0) if kw.get("ignore_index", -100) is None else t
        ours, peer = FS.SoftBCEWithLogitsLoss(reduction=reduction, **kw), ORIGINAL["SoftBCEWithLogitsLoss"](reduction=reduction, **kw)
        _compare(ours, peer, x, target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_soft_ce(reduction):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 5, (2, 4, 3), generator=g)
    t[0, 0] = -100
    grid = (dict(smooth_factor=0.0), dict(smooth_factor=0.1), dict(smooth_factor=0.2, ignore_index=None),
            dict(smooth_factor=0.1, ignore_index=3))
    for kw in grid:
        target = t if kw.get("ignore_index", -100) == -100 else t.clamp(min=0)
        _compare(FS.SoftCrossEntropyLoss(reduction=reduction, **kw), ORIGINAL["SoftCrossEntropyLoss"](reduction=reduction, **kw), x, target)
    xl = x.movedim(1, -1).contiguous()  # classes on the last axis
    _compare(FS.SoftCrossEntropyLoss(reduction=reduction, smooth_factor=0.1, dim=-1),
             ORIGINAL["SoftCrossEntropyLoss"](reduction=reduction, smooth_factor=0.1, dim=-1), xl, t)


def test_soft_ce_default_smoothing():
    """smp's default smooth_factor=None raises TypeError inside smp; fastloss treats it as no smoothing."""
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4))
    torch.testing.assert_close(FS.SoftCrossEntropyLoss()(x, t), ORIGINAL["SoftCrossEntropyLoss"](smooth_factor=0.0)(x, t))


def test_errors():
    x, t = _data("multilabel")
    with pytest.raises(ValueError, match="hard"):
        FS.DiceLoss("multilabel")(x, t * 0.5)
    with pytest.raises(ValueError, match="hard"):
        FS.FocalLoss("multilabel")(x, t * 0.5)
    with pytest.raises(ValueError, match="normalized"):
        FS.FocalLoss("binary", normalized=True)
    with pytest.raises(ValueError, match="alpha"):
        FS.FocalLoss("binary", alpha=-0.5)
    with pytest.raises(ValueError, match="reduced_threshold"):
        FS.FocalLoss("binary", reduced_threshold=0.5)
    with pytest.raises(ValueError, match="multilabel"):
        FS.FocalLoss("multilabel", ignore_index=IGNORE)
    with pytest.raises(ValueError, match="smooth_factor"):
        FS.SoftBCEWithLogitsLoss(smooth_factor=0.7)
    with pytest.raises(ValueError, match="mode"):
        FS.DiceLoss("multi")
    with pytest.raises(ValueError, match="binary"):
        FS.JaccardLoss("binary", class_weights=[1.0])
    xm, tm = _data("multiclass")
    with pytest.raises(ValueError, match="out of range"):
        FS.DiceLoss("multiclass")(xm, tm + 4)


@pytest.mark.parametrize("name", NAMES)
def test_signatures(name):
    ours, peer = getattr(FS, name), ORIGINAL[name]
    assert inspect.signature(ours.__init__) == inspect.signature(peer.__init__)
    assert inspect.signature(ours.forward) == inspect.signature(peer.forward)


def test_patch():
    import segmentation_models_pytorch.losses.dice as sdice

    x, t = _data("multiclass", ignore=True)
    ref = ORIGINAL["DiceLoss"]("multiclass", ignore_index=IGNORE)(x, t)
    with fastloss.patch("smp") as handle:
        assert handle.active
        for name in NAMES:
            assert getattr(SL, name) is getattr(FS, name)
        assert sdice.DiceLoss is FS.DiceLoss and SL.tversky.TverskyLoss is FS.TverskyLoss
        loss_fn = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)  # smp's own entry point now builds fastloss's class
        assert type(loss_fn).__module__ == "fastloss.compat.smp"
        torch.testing.assert_close(loss_fn(x, t), ref, rtol=1e-12, atol=0)
        assert not fastloss.patch("segmentation_models_pytorch").active  # patching twice is harmless
    for name in NAMES:
        assert getattr(SL, name) is ORIGINAL[name]
    assert sdice.DiceLoss is ORIGINAL["DiceLoss"]
    handle = fastloss.patch("smp")
    assert SL.soft_ce.SoftCrossEntropyLoss is FS.SoftCrossEntropyLoss
    handle.undo()
    assert SL.soft_ce.SoftCrossEntropyLoss is ORIGINAL["SoftCrossEntropyLoss"]
