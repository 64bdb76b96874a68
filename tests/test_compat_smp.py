"""fastloss.compat.smp against the installed segmentation_models_pytorch: values and gradients in
float64, signatures, the patch, and the errors for what fastloss cannot honour."""
import inspect
from functools import partial

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
@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("reduced_threshold", [None, 0.5, 0.3])
def test_focal(mode, reduction, normalized, reduced_threshold):
    """smp's focal loss, plain, normalised (each focal call divided by its focal terms' sum, per class in
    the multi-class modes) and reduced focal loss: values and gradients (random upstream) over
    modes x reductions x alpha x ignore_index x class_weights x gamma."""
    grid = (dict(), dict(alpha=0.25, gamma=1.5), dict(alpha=0.7), dict(ignore_index=IGNORE), dict(alpha=0.25, ignore_index=IGNORE),
            dict(class_weights=[1.0, 2.0, 0.5, 1.5]), dict(gamma=0.0), dict(from_logits=False))
    for kw in grid:
        if mode == "binary" and "class_weights" in kw:
            continue
        if mode == "multilabel" and "ignore_index" in kw:
            continue
        if mode != "binary" and "class_weights" in kw and reduction in ("none", "batchwise_mean"):
            continue
        args = dict(kw, reduction=reduction, normalized=normalized, reduced_threshold=reduced_threshold)
        for seed in (0, 1):
            x, t = _data(mode, "ignore_index" in kw, seed=seed, probs=kw.get("from_logits") is False)
            _compare(FS.FocalLoss(mode, **args), ORIGINAL["FocalLoss"](mode, **args), x, t)


def test_focal_normalized_edge_cases():
    """All pixels ignored: smp divides 0 by its eps floor (0) for "sum"; the normaliser's floor
    1e-6 is smp's (a tiny focal sum: confident correct logits); fp32 input gives fp32."""
    x, t = _data("binary", True)
    t_all = torch.full_like(t, IGNORE)
    for kw in (dict(reduction="sum"), dict(reduction="sum", reduced_threshold=0.5)):
        args = dict(kw, normalized=True, ignore_index=IGNORE)
        _compare(FS.FocalLoss("binary", **args), ORIGINAL["FocalLoss"]("binary", **args), x, t_all)
    xs = torch.where(t.unsqueeze(1) > 0, 12.0, -12.0).to(torch.float64)  # sum of (1 - p_t)^2 ~ 5e-9 < 1e-6
    ts = (t > 0).long()
    for mode, tt in (("binary", ts), ("multilabel", ts.unsqueeze(1).to(torch.float64))):
        for kw in (dict(), dict(reduced_threshold=0.5), dict(alpha=0.25, reduction="sum")):
            args = dict(kw, normalized=True)
            _compare(FS.FocalLoss(mode, **args), ORIGINAL["FocalLoss"](mode, **args), xs, tt)
    x, t = _data("multiclass")
    for kw in (dict(normalized=True), dict(normalized=True, reduced_threshold=0.4, alpha=0.25)):
        a = FS.FocalLoss("multiclass", **kw)(x.float(), t)
        b = ORIGINAL["FocalLoss"]("multiclass", **kw)(x, t)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-6)


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
    # a square (C, C) input: smp hands weight / pos_weight to torch, which broadcasts a (C,) one per column
    xs, ts = torch.randn(4, 4, generator=g, dtype=torch.float64) * 3, (torch.rand(4, 4, generator=g) > 0.5).to(torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    for kw in (dict(weight=w, ignore_index=None), dict(weight=w), dict(weight=w[:, None], ignore_index=None),
               dict(pos_weight=w, ignore_index=None, smooth_factor=0.1)):
        ours, peer = FS.SoftBCEWithLogitsLoss(reduction=reduction, **kw), ORIGINAL["SoftBCEWithLogitsLoss"](reduction=reduction, **kw)
        _compare(ours, peer, xs, ts)


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
    with pytest.raises(ValueError, match="targets >= 0"):
        FS.DiceLoss("multilabel")(x, t - 0.5)
    with pytest.raises(ValueError, match="targets >= 0"):
        FS.JaccardLoss("binary", ignore_index=IGNORE)(x[:, :1], torch.where(t[:, :1] > 0, -t[:, :1], IGNORE))
    with pytest.raises(ValueError, match="hard"):
        FS.FocalLoss("multilabel")(x, t * 0.5)
    with pytest.raises(ValueError, match="alpha"):
        FS.FocalLoss("binary", alpha=-0.5)
    for bad in (0.0, -0.5, float("inf")):
        with pytest.raises(ValueError, match="reduced_threshold"):
            FS.FocalLoss("binary", reduced_threshold=bad)
    with pytest.raises(ValueError, match="multilabel"):
        FS.FocalLoss("multilabel", ignore_index=IGNORE)
    with pytest.raises(ValueError, match="smooth_factor"):
        FS.SoftBCEWithLogitsLoss(smooth_factor=0.7)
    x5, t5 = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    for kw in (dict(weight=torch.rand(5)), dict(pos_weight=torch.rand(5))):  # (N,) of an (N, C) input: smp's torch call raises
        for ignore_index in (None, -100):
            with pytest.raises(ValueError, match="weight of shape"):
                FS.SoftBCEWithLogitsLoss(ignore_index=ignore_index, **kw)(x5, t5)
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


# ------------------------------------------------------------------ review fixes


@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
def test_hard_target_gradients_at_ties(name):
    """smp's intersection (sum p + sum g - ||p - g||_1) / 2 has derivative 1/2 where p == g and
    differs from sum p g outside [0, 1]: with from_logits=False fastloss adds the exact
    correction, so values AND gradients are smp's (the reviewer's repro and more)."""
    y = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]], dtype=torch.float64)
    for pv in ([1.0, 0.0, 1.0, 0.0], [0.9, 0.2, 0.5, 0.0], [1.2, -0.1, 1.0, 0.3]):
        p = torch.tensor([[[pv]]], dtype=torch.float64)
        _compare(getattr(FS, name)("binary", from_logits=False), ORIGINAL[name]("binary", from_logits=False), p, y)
    a = FS.DiceLoss("binary", from_logits=False)
    pa = y.clone().requires_grad_(True)
    g, = torch.autograd.grad(a(pa, y), pa)
    assert torch.equal(g, torch.zeros_like(g))  # smp: [0, 0, 0, 0] (the kernel alone: [-.25, .25, -.25, .25])
    # hard probabilities with ties in every mode, ignore_index and class weights included
    for mode in ("binary", "multiclass", "multilabel"):
        for ignore in (False, True):
            x, t = _data(mode, ignore, probs=True)
            x = torch.where(x > 0.5, torch.ones_like(x), torch.where(x < 0.2, torch.zeros_like(x), x))  # exact 0 / 1 entries
            kw = dict(from_logits=False, ignore_index=IGNORE if ignore else None, smooth=0.5)
            if mode != "binary":
                kw["class_weights"] = [0.5, 1.0, 2.0, 3.0]
            _compare(getattr(FS, name)(mode, **kw), ORIGINAL[name](mode, **kw), x, t)


def test_saturated_logits_gradient():
    """from_logits=True: where the probability rounds to exactly 1 = g (both smp's and the
    kernel's, fp64 sigmoid(40)), the kernel's soft-label mode has smp's derivative 1/2 of
    min(p, g): the gradients agree at the last bit's scale (the documented remaining difference is
    a logit where only one of the two roundings gives 1)."""
    x, t = _data("multilabel")
    x = x.clone()
    x[0, 0, 0, :3] = 40.0  # sigmoid(40) == 1 in fp64
    x[0, 1, 0, :3] = -40.0
    t = t.clone()
    t[0, 0, 0, :3] = 1.0
    t[0, 1, 0, :3] = 0.0
    for name in ("DiceLoss", "JaccardLoss", "TverskyLoss"):
        _compare(getattr(FS, name)("multilabel"), ORIGINAL[name]("multilabel"), x, t)
        # the saturated elements' own gradients (~1e-20, below _compare's atol): relative agreement
        grads = []
        for loss in (getattr(FS, name)("multilabel"), ORIGINAL[name]("multilabel")):
            xi = x.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(loss(xi, t), xi)[0][0, :2, 0, :3])
        assert (grads[1][0] != 0).all()
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=0)


# ------------------------------------------------------------------ soft (float) targets


def _soft_data(mode, seed=0, ignore=False, probs=False, ties=False, signs=False):
    """Logits (probabilities with ``probs``) and a soft target in [0, 1] for "binary" / "multilabel";
    ``ties``: p == g exactly at some elements (soft values, 0 and 1); ``signs``: negative values
    in both (``probs`` only: the exact from_logits=False path)."""
    g = torch.Generator().manual_seed(seed)
    C = 1 if mode == "binary" else 4
    x = torch.randn(3, C, 6, 5, generator=g, dtype=torch.float64) * 2
    t = torch.rand(3, C, 6, 5, generator=g, dtype=torch.float64)
    if mode == "multilabel":
        t[:, -1] = 0  # a class absent from the batch: smp zeroes its loss
    if probs:
        x = torch.sigmoid(x)
    if ties:
        x[..., 0] = t[..., 0]
        t[..., 1, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
        x[..., 1, :2] = t[..., 1, :2]
        x[..., 2, :2] = 0.0
    if signs:
        x[..., 3, :] = x[..., 3, :] * 2 - 0.6
        t[..., 4, :] = t[..., 4, :] * 2 - 0.7
    if ignore:
        t.view(-1)[::7] = IGNORE
    return (x, t[:, 0]) if mode == "binary" else (x, t)


@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("ignore", [False, True])
def test_soft_targets(name, mode, from_logits, ignore):
    """Soft float targets in [0, 1]: smp's sum min(p, g) -- the kernel's soft-label mode with
    from_logits=True, the plain sums + the exact torch term with from_logits=False."""
    extra = dict(alpha=0.3, beta=0.7, gamma=1.5) if name == "TverskyLoss" else {}
    grid = [dict(), dict(smooth=1.0), dict(log_loss=True), dict(eps=1e-3, smooth=0.5, log_loss=True)]
    if mode == "multilabel":
        grid += [dict(classes=[0, 2]), dict(class_weights=[0.5, 1.0, 2.0, 3.0])]
    for kw in grid:
        x, t = _soft_data(mode, ignore=ignore, probs=not from_logits)
        args = dict(kw, from_logits=from_logits, ignore_index=IGNORE if ignore else None, **extra)
        _compare(getattr(FS, name)(mode, **args), ORIGINAL[name](mode, **args), x, t)


@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_soft_targets_ties_and_signs(name, mode):
    """from_logits=False with soft targets: exact ties p == g (smp's derivative 1/2), p = 0, and
    negative inputs and targets (smp's sum g, no |.|) -- values and gradients are smp's."""
    for ignore in (False, True):
        x, t = _soft_data(mode, seed=3, ignore=ignore, probs=True, ties=True, signs=True)
        kw = dict(from_logits=False, ignore_index=IGNORE if ignore else None, smooth=0.25)
        _compare(getattr(FS, name)(mode, **kw), ORIGINAL[name](mode, **kw), x, t)


def test_soft_targets_from_logits_use_the_soft_kernel_mode(monkeypatch):
    """from_logits=True: one pass of the dice kernel in its soft-label mode (sigmoid inside, no
    PyTorch term); from_logits=False: the plain sums (+ the torch term)."""
    calls = []
    inner = FS._dice._sums

    def spy(x, t, activation, squared, soft, *rest):
        calls.append((activation, soft))
        return inner(x, t, activation, squared, soft, *rest)

    monkeypatch.setattr(FS._dice, "_sums", spy)
    x, t = _soft_data("multilabel")
    FS.DiceLoss("multilabel")(x, t)
    FS.DiceLoss("multilabel", from_logits=False)(torch.sigmoid(x), t)
    assert calls == [(1, True), (0, False)]


def _assert_same_state(ours, peer):
    sa, sb = ours.state_dict(), peer.state_dict()
    assert list(sa) == list(sb), (list(sa), list(sb))
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


STATE_GRID = [("DiceLoss", ("multiclass",), dict(class_weights=[1.0, 2.0, 3.0, 4.0])), ("JaccardLoss", ("multilabel",), {}),
              ("TverskyLoss", ("binary",), dict(alpha=0.3)), ("FocalLoss", ("multiclass",), dict(alpha=0.25)),
              ("SoftBCEWithLogitsLoss", (), dict(weight=torch.rand(3, 1, 1, dtype=torch.float64), pos_weight=torch.rand(4))),
              ("SoftBCEWithLogitsLoss", (), {}), ("SoftCrossEntropyLoss", (), dict(smooth_factor=0.1))]


@pytest.mark.parametrize("name,args,kw", STATE_GRID)
def test_state_dict_matches_smp(name, args, kw):
    """The same state_dict keys and values as smp's; a checkpoint saved unpatched loads patched
    (and back), strictly."""
    ours, peer = getattr(FS, name)(*args, **kw), ORIGINAL[name](*args, **kw)
    _assert_same_state(ours, peer)
    ours.load_state_dict(ORIGINAL[name](*args, **kw).state_dict())
    peer.load_state_dict(getattr(FS, name)(*args, **kw).state_dict())
    with fastloss.patch("smp"):
        patched = getattr(SL, name)(*args, **kw)
    patched.load_state_dict(peer.state_dict())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchwise_mean"])
def test_focal_loss_fn(reduction):
    """FocalLoss.focal_loss_fn is smp's attribute: the per-element focal function with the
    loss's alpha / gamma / reduction (smp's focal_loss_with_logits semantics)."""
    from segmentation_models_pytorch.losses._functional import focal_loss_with_logits

    assert inspect.signature(FS.focal_loss_with_logits) == inspect.signature(focal_loss_with_logits)
    x, t = _data("multilabel")
    for kw in (dict(), dict(alpha=0.25, gamma=1.5), dict(normalized=True), dict(reduced_threshold=0.5, alpha=0.25),
               dict(reduced_threshold=0.3, normalized=True, gamma=1.5)):
        ours, peer = FS.FocalLoss("multilabel", reduction=reduction, **kw), ORIGINAL["FocalLoss"]("multilabel", reduction=reduction, **kw)
        _compare(ours.focal_loss_fn, peer.focal_loss_fn, x, t)
    for kw in (dict(normalized=True, eps=1e-3), dict(normalized=True, reduced_threshold=0.5, alpha=None)):
        _compare(partial(FS.focal_loss_with_logits, reduction=reduction, **kw), partial(focal_loss_with_logits, reduction=reduction, **kw), x, t)


@pytest.mark.parametrize("name,mode,soft", [("FocalLoss", "multiclass", False), ("FocalLoss", "binary", False),
                                            ("FocalLossNormalizedReduced", "multiclass", False),
                                            ("FocalLossNormalizedReduced", "binary", False),
                                            ("DiceLoss", "multilabel", False), ("DiceLoss", "multiclass", False),
                                            ("JaccardLoss", "binary", False), ("SoftCrossEntropyLoss", None, False),
                                            ("DiceLoss", "multilabel", True), ("TverskyLoss", "binary", True)])
def test_compile_fullgraph(name, mode, soft):
    """The value checks (negative / soft targets, labels) read the host: skipped while
    torch.compile traces, so fullgraph=True compiles; same values and gradients as eager."""
    x, t = _soft_data(mode) if soft else _data(mode or "multiclass")
    if mode == "binary":
        t = t.to(torch.float64)
    if name == "FocalLossNormalizedReduced":
        loss = FS.FocalLoss(mode, normalized=True, reduced_threshold=0.5, alpha=0.25)
    else:
        loss = getattr(FS, name)(mode) if mode else getattr(FS, name)(smooth_factor=0.1)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    _compare(compiled, loss, x, t)


def test_targets_requiring_grad_raise():
    x, t = _data("multilabel")
    with pytest.raises(ValueError, match="target"):
        FS.DiceLoss("multilabel")(x, t.clone().requires_grad_(True))
    assert "require grad raise ValueError" in FS.__doc__.replace("\n  ", " ")


def _public_names(module):
    names = {k for k in vars(module) if not k.startswith("_") and k != "training"}
    return names | set(module._modules) | set(module._buffers) | set(module._parameters)


@pytest.mark.parametrize("name", NAMES)
def test_public_attribute_names(name):
    """Every attribute, submodule and buffer an smp loss object has, ours has too (focal_loss_fn included)."""
    args = () if name.startswith("Soft") else ("multiclass",)
    assert _public_names(ORIGINAL[name](*args)) <= _public_names(getattr(FS, name)(*args))
