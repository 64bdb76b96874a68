"""fastloss.compat.mmdet against the installed mmdetection 3.x (mmdet 3.3.0 with mmcv-lite 2.1.0,
mmengine 0.10): values and gradients in float64 over each class's argument grid, signatures,
the patch, and the errors for arguments the compat layer cannot honour.

mmcv-lite has no compiled ops, and ``mmdet.models`` imports ``mmcv.ops``, which loads them at
import time; the test gives mmcv an empty ``mmcv._ext`` (each compiled op raises when called)
so that mmdetection's pure-PyTorch losses import.  mmcv's own ops: tests/test_compat_mmcv.py.
"""
import inspect
import sys
import warnings

import pytest
import torch

import helpers

# mmdetection's losses (with a stand-in for mmcv-lite's missing compiled ops: helpers.import_mmdet_losses)
L, peer_bbox_overlaps = helpers.import_mmdet_losses()
import mmcv.ops  # noqa: E402  (binds mmcv too)
from mmdet.registry import MODELS  # noqa: E402

import fastloss  # noqa: E402
from fastloss.compat import mmcv as CM  # noqa: E402
from fastloss.compat import mmdet as C  # noqa: E402

D = torch.float64
CLASSES = ["FocalLoss", "L1Loss", "SmoothL1Loss", "BalancedL1Loss", "MSELoss", "CrossEntropyLoss", "QualityFocalLoss", "VarifocalLoss",
           "DistributionFocalLoss", "GaussianFocalLoss", "DiceLoss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss",
           "EIoULoss", "SIoULoss", "BoundedIoULoss"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _check(ours, peer, pred, *args, rtol=1e-10, atol=1e-12, **kwargs):
    """Same values and gradients (random upstream gradient) of ours(pred, ...) and peer(pred, ...)."""
    p1 = pred.detach().clone().requires_grad_(True)
    p2 = pred.detach().clone().requires_grad_(True)
    a = ours(p1, *args, **kwargs)
    b = peer(p2, *args, **kwargs)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    up = torch.rand(a.shape, generator=_gen(7), dtype=a.dtype) + 0.5
    (g1,) = torch.autograd.grad(a, p1, up)
    (g2,) = torch.autograd.grad(b, p2, up)
    torch.testing.assert_close(g1, g2, rtol=rtol, atol=atol)


def _boxes(n, seed, min_size=5.0):
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=D) * 50
    wh = torch.rand(n, 2, generator=g, dtype=D) * 40 + min_size
    return torch.cat([xy, xy + wh], -1)


def _paired_boxes(n, seed):
    """Targets and overlapping (jittered) predictions, plus a few disjoint pairs."""
    t = _boxes(n, seed)
    g = _gen(seed + 1)
    p = t + torch.randn(n, 4, generator=g, dtype=D) * 3
    p[:, 2:] = torch.maximum(p[:, 2:], p[:, :2] + 1)
    return p, t


REDUCTIONS = [None, "none", "mean", "sum"]


# ---------------------------------------------------------------------- signatures


@pytest.mark.parametrize("name", CLASSES)
def test_signatures(name):
    ours, peer = getattr(C, name), getattr(L, name)
    assert inspect.signature(ours.__init__) == inspect.signature(peer.__init__)
    assert inspect.signature(ours.forward) == inspect.signature(peer.forward)


def test_signatures_functions():
    assert inspect.signature(C.bbox_overlaps) == inspect.signature(peer_bbox_overlaps)
    # the callable's own signature: mmdetection's weighted_loss wrapper (functools.wraps points inspect at the inner one)
    assert inspect.signature(C.smooth_l1_loss) == inspect.signature(L.smooth_l1_loss, follow_wrapped=False)


# ---------------------------------------------------------------------- classification


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["labels", "onehot", "soft"])
@pytest.mark.parametrize("weight_kind", [None, "row", "elem", "flat"])
def test_focal_loss(reduction, target_kind, weight_kind):
    N, K = 13, 5
    g = _gen(1)
    pred = torch.randn(N, K, generator=g, dtype=D) * 3
    labels = torch.randint(0, K + 1, (N,), generator=g)
    target = {"labels": labels, "onehot": torch.nn.functional.one_hot(labels, K + 1)[:, :K], "soft": torch.rand(N, K, generator=g, dtype=D)}
    weight = {None: None, "row": torch.rand(N, generator=g, dtype=D), "elem": torch.rand(N, K, generator=g, dtype=D),
              "flat": torch.rand(N * K, generator=g, dtype=D)}[weight_kind]
    for kw in ({}, dict(gamma=0.0, alpha=0.5, loss_weight=2.0), dict(activated=True), dict(activated=True, gamma=1.5, alpha=0.3)):
        ours, peer = C.FocalLoss(**kw), L.FocalLoss(**kw)
        x = pred.sigmoid() if kw.get("activated") else pred  # activated: probabilities
        _check(ours, peer, x, target[target_kind], weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.FocalLoss(), L.FocalLoss(), pred, target[target_kind], weight, avg_factor=7.5, reduction_override=reduction)
        _check(C.FocalLoss(activated=True), L.FocalLoss(activated=True), pred.sigmoid(), target[target_kind], weight, avg_factor=7.5,
               reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cross_entropy_softmax(reduction, avg_non_ignore, with_weight):
    N, K = 12, 6
    g = _gen(3)
    pred = torch.randn(N, K, generator=g, dtype=D)
    label = torch.randint(0, K, (N,), generator=g)
    label[::4] = 255
    weight = torch.rand(N, generator=g, dtype=D) if with_weight else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kw in (dict(ignore_index=255), dict(ignore_index=255, class_weight=[0.5, 1, 2, 1, 1, 3], loss_weight=0.7)):
            ours = C.CrossEntropyLoss(avg_non_ignore=avg_non_ignore, **kw)
            peer = L.CrossEntropyLoss(avg_non_ignore=avg_non_ignore, **kw)
            _check(ours, peer, pred, label, weight, reduction_override=reduction)
        if reduction != "sum":
            _check(ours, peer, pred, label, weight, avg_factor=5.0, reduction_override=reduction)
    # dense (N, C, H, W) logits, ignore_index passed to forward
    pred4 = torch.randn(2, 3, 4, 5, generator=g, dtype=D)
    label4 = torch.randint(0, 3, (2, 4, 5), generator=g)
    label4[0, 0] = -100
    _check(C.CrossEntropyLoss(avg_non_ignore=avg_non_ignore), L.CrossEntropyLoss(avg_non_ignore=avg_non_ignore), pred4, label4,
           reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("target_kind", ["labels", "dense"])
def test_cross_entropy_sigmoid(reduction, avg_non_ignore, target_kind):
    N, K = 10, 4
    g = _gen(4)
    pred = torch.randn(N, K, generator=g, dtype=D)
    if target_kind == "labels":
        label = torch.randint(0, K + 1, (N,), generator=g)
        label[1] = -1
        label[2] = 7
        weight = torch.rand(N, generator=g, dtype=D)
    else:
        label = torch.randint(0, 2, (N, K), generator=g).to(D)
        label[0, 1] = -100
        weight = torch.rand(N, K, generator=g, dtype=D)
    # mmdetection's label.float() makes torch return fp32 (the target's dtype): fp32 results
    tol = dict(rtol=1e-6, atol=1e-7)
    for kw in (dict(), dict(class_weight=[1.0, 2.0, 0.5, 1.5], loss_weight=1.5)):
        ours = C.CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=avg_non_ignore, **kw)
        peer = L.CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=avg_non_ignore, **kw)
        _check(ours, peer, pred, label, reduction_override=reduction, **tol)
        _check(ours, peer, pred, label, weight, reduction_override=reduction, **tol)
        if reduction != "sum":
            _check(ours, peer, pred, label, weight, avg_factor=3.5, reduction_override=reduction, **tol)
    if target_kind == "labels":  # square (N = C): mmdetection's label weight is per row (per anchor), its class_weight per column
        ours = C.CrossEntropyLoss(use_sigmoid=True, class_weight=[1.0, 2.0, 0.5, 1.5])
        peer = L.CrossEntropyLoss(use_sigmoid=True, class_weight=[1.0, 2.0, 0.5, 1.5])
        _check(ours, peer, pred[:K], label[:K], weight[:K], reduction_override=reduction, **tol)


def test_cross_entropy_mask():
    g = _gen(5)
    pred = torch.randn(6, 3, 7, 7, generator=g, dtype=D)
    target = torch.randint(0, 2, (6, 7, 7), generator=g).to(D)
    roi_label = torch.randint(0, 3, (6,), generator=g)
    _check(C.CrossEntropyLoss(use_mask=True, loss_weight=2.0), L.CrossEntropyLoss(use_mask=True, loss_weight=2.0), pred, target, roi_label)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["tuple", "dense", "dense_3d", "dense_3d_w"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_quality_focal_loss(reduction, target_kind, with_weight):
    """Label-tuple and dense targets; dense (N, C, L) (mmdetection's quality_focal_loss_tensor_target:
    the per-position loss (N, L), its "mean" over the N * L positions) with a per-position (N, L)
    weight, or ("_w") an (L,) one broadcasting over it."""
    N, K = 9, 5
    g = _gen(6)
    shape = (N, K, 4) if target_kind.startswith("dense_3d") else (N, K)
    pred = torch.randn(shape, generator=g, dtype=D) * 2
    if target_kind == "tuple":
        label = torch.randint(0, K + 1, (N,), generator=g)
        label[0] = -1
        target = (label, torch.rand(N, generator=g, dtype=D))
    else:
        target = torch.rand(shape, generator=g, dtype=D) * (torch.rand(shape, generator=g) > 0.6)
    weight_shape = {"dense_3d": (N, 4), "dense_3d_w": (4,)}.get(target_kind, (N,))
    weight = torch.rand(weight_shape, generator=g, dtype=D) if with_weight else None
    for kw in ({}, dict(beta=1.0, loss_weight=0.5), dict(activated=True), dict(activated=True, beta=1.5)):
        x = pred.sigmoid() if kw.get("activated") else pred  # activated: probabilities
        _check(C.QualityFocalLoss(**kw), L.QualityFocalLoss(**kw), x, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.QualityFocalLoss(), L.QualityFocalLoss(), pred, target, weight, avg_factor=4.0, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize("weight_kind", [None, "elem", "col"])
def test_varifocal_loss(reduction, iou_weighted, weight_kind):
    N, K = 8, 3
    g = _gen(8)
    pred = torch.randn(N, K, generator=g, dtype=D) * 2
    target = torch.rand(N, K, generator=g, dtype=D) * (torch.rand(N, K, generator=g) > 0.5)
    weight = {None: None, "elem": torch.rand(N, K, generator=g, dtype=D), "col": torch.rand(K, generator=g, dtype=D)}[weight_kind]
    kw = dict(alpha=0.6, gamma=1.5, iou_weighted=iou_weighted, loss_weight=1.3)
    _check(C.VarifocalLoss(**kw), L.VarifocalLoss(**kw), pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.VarifocalLoss(), L.VarifocalLoss(), pred, target, weight, avg_factor=3, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_weight", [False, True])
def test_distribution_focal_loss(reduction, with_weight):
    N, n = 12, 8
    g = _gen(9)
    pred = torch.randn(N, n + 1, generator=g, dtype=D)
    target = torch.rand(N, generator=g, dtype=D) * (n - 0.01)
    weight = torch.rand(N, generator=g, dtype=D) if with_weight else None
    _check(C.DistributionFocalLoss(loss_weight=0.25), L.DistributionFocalLoss(loss_weight=0.25), pred, target, weight,
           reduction_override=reduction)
    if reduction != "sum":
        _check(C.DistributionFocalLoss(), L.DistributionFocalLoss(), pred, target, weight, avg_factor=6, reduction_override=reduction)


def _heatmap(g, shape):
    t = torch.rand(shape, generator=g, dtype=D) * 0.9
    t.view(-1)[::7] = 1.0
    return t


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw", [{}, dict(alpha=1.5, gamma=3.0, pos_weight=2.0, neg_weight=0.5, loss_weight=0.8), dict(pos_weight=0.3, neg_weight=0.3)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_gaussian_focal_loss(reduction, kw, with_weight):
    g = _gen(10)
    pred = torch.rand(2, 3, 5, 5, generator=g, dtype=D) * 0.98 + 0.01
    target = _heatmap(g, (2, 3, 5, 5))
    weight = torch.rand(2, 3, 5, 5, generator=g, dtype=D) if with_weight else None
    _check(C.GaussianFocalLoss(**kw), L.GaussianFocalLoss(**kw), pred, target, weight=weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.GaussianFocalLoss(**kw), L.GaussianFocalLoss(**kw), pred, target, weight=weight, avg_factor=9.0,
               reduction_override=reduction)


@pytest.mark.parametrize("reduction", [None, "mean", "sum"])  # "none": mmdetection adds (P, 1) and (N, C) and fails
def test_gaussian_focal_loss_pos_inds(reduction):
    g = _gen(11)
    pred = torch.rand(20, 4, generator=g, dtype=D) * 0.98 + 0.01
    target = torch.rand(20, 4, generator=g, dtype=D) * 0.9
    pos_inds = torch.tensor([1, 5, 9])
    pos_labels = torch.tensor([0, 3, 2])
    target[pos_inds, pos_labels] = 1.0
    kw = dict(pos_weight=1.5, neg_weight=0.5)
    _check(C.GaussianFocalLoss(**kw), L.GaussianFocalLoss(**kw), pred, target, pos_inds, pos_labels, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("naive_dice", [False, True])
@pytest.mark.parametrize("activate", [True, False])
@pytest.mark.parametrize("with_weight", [False, True])
def test_dice_loss(reduction, naive_dice, activate, with_weight):
    g = _gen(12)
    pred = torch.randn(4, 3, 6, 5, generator=g, dtype=D)
    if not activate:
        pred = torch.sigmoid(pred)
    target = (torch.rand(4, 3, 6, 5, generator=g) > 0.5).to(D)
    target[1] = 0  # an empty mask
    weight = torch.rand(4, generator=g, dtype=D) if with_weight else None
    kw = dict(naive_dice=naive_dice, activate=activate, eps=1e-2, loss_weight=1.5)
    # mmdetection's target.float() makes its sum(t^2) + eps an fp32 value (rounded at ~6e-8 relative)
    tol = {} if naive_dice else dict(rtol=1e-6, atol=1e-8)
    _check(C.DiceLoss(**kw), L.DiceLoss(**kw), pred, target, weight, reduction_override=reduction, **tol)
    if reduction != "sum":
        _check(C.DiceLoss(**kw), L.DiceLoss(**kw), pred, target, weight, reduction_override=reduction, avg_factor=3, **tol)


# ---------------------------------------------------------------------- regression


@pytest.mark.parametrize("name,kw", [("L1Loss", {}), ("SmoothL1Loss", dict(beta=0.5)), ("SmoothL1Loss", {}), ("MSELoss", {}),
                                     ("BalancedL1Loss", {}), ("BalancedL1Loss", dict(alpha=0.3, gamma=2.0, beta=0.7))])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "elem", "col"])
def test_regression(name, kw, reduction, weight_kind):
    g = _gen(13)
    pred = torch.randn(10, 4, generator=g, dtype=D) * 2
    target = torch.randn(10, 4, generator=g, dtype=D)
    weight = {None: None, "elem": torch.rand(10, 4, generator=g, dtype=D), "col": torch.rand(4, generator=g, dtype=D)}[weight_kind]
    ours, peer = getattr(C, name)(loss_weight=0.9, **kw), getattr(L, name)(loss_weight=0.9, **kw)
    _check(ours, peer, pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(ours, peer, pred, target, weight, avg_factor=torch.tensor(6.0, dtype=D), reduction_override=reduction)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("beta", [None, 0.3])
def test_smooth_l1_loss_function(reduction, beta):
    g = _gen(23)
    pred = torch.randn(9, 4, generator=g, dtype=D)
    target = torch.randn(9, 4, generator=g, dtype=D)
    weight = torch.rand(9, 4, generator=g, dtype=D)
    kw = {} if beta is None else {"beta": beta}
    _check(C.smooth_l1_loss, L.smooth_l1_loss, pred, target, weight, reduction, **kw)
    _check(C.smooth_l1_loss, L.smooth_l1_loss, pred, target, None, reduction, **kw)
    if reduction != "sum":
        _check(C.smooth_l1_loss, L.smooth_l1_loss, pred, target, weight, reduction, 5.0, **kw)


@pytest.mark.parametrize("name", ["L1Loss", "SmoothL1Loss", "BalancedL1Loss", "MSELoss"])
@pytest.mark.parametrize("reduction", ["none", "sum"])  # "mean": see test_empty_mean_is_zero
@pytest.mark.parametrize("with_weight", [False, True])
def test_empty_input_shapes(name, reduction, with_weight):
    pred = torch.zeros(0, 4, dtype=D)
    weight = torch.zeros(0, 4, dtype=D) if with_weight else None
    _check(getattr(C, name)(), getattr(L, name)(), pred, torch.zeros(0, 4, dtype=D), weight, reduction_override=reduction)


@pytest.mark.parametrize("name", ["MSELoss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss", "BoundedIoULoss"])
def test_empty_mean_is_zero(name):
    """Documented difference: mmdetection's mean over no boxes is NaN; fastloss's is a graph-connected 0."""
    pred = torch.zeros(0, 4, dtype=D, requires_grad=True)
    assert torch.isnan(getattr(L, name)()(pred, torch.zeros(0, 4, dtype=D)))
    loss = getattr(C, name)()(pred, torch.zeros(0, 4, dtype=D))
    assert loss.item() == 0 and loss.requires_grad


@pytest.mark.parametrize("name", ["L1Loss", "SmoothL1Loss", "GIoULoss", "DIoULoss", "CIoULoss", "IoULoss", "EIoULoss", "SIoULoss", "BoundedIoULoss"])
def test_zero_weight_shortcut(name):
    pred, target = _paired_boxes(6, 14)
    weight = torch.zeros(6, 4, dtype=D)
    _check(getattr(C, name)(), getattr(L, name)(), pred, target, weight)


# ---------------------------------------------------------------------- boxes


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "box", "coord"])
def test_diou_loss(reduction, weight_kind):
    pred, target = _paired_boxes(16, 15)
    g = _gen(16)
    weight = {None: None, "box": torch.rand(16, generator=g, dtype=D), "coord": torch.rand(16, 4, generator=g, dtype=D)}[weight_kind]
    for kw in ({}, dict(eps=1e-3, loss_weight=2.0)):
        _check(C.DIoULoss(**kw), L.DIoULoss(**kw), pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.DIoULoss(), L.DIoULoss(), pred, target, weight, avg_factor=10, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "box", "coord"])
def test_giou_loss(reduction, weight_kind):
    pred, target = _paired_boxes(16, 17)
    pred[0] = target[0] + 100  # disjoint
    g = _gen(18)
    weight = {None: None, "box": torch.rand(16, generator=g, dtype=D), "coord": torch.rand(16, 4, generator=g, dtype=D)}[weight_kind]
    # mmdetection's eps placement (max(U, eps), max(C, eps)): equal at any eps (30: above the
    # smallest unions here, so both sides of the max are exercised)
    for kw in (dict(eps=1e-12), dict(loss_weight=3.0), dict(eps=30.0)):
        _check(C.GIoULoss(**kw), L.GIoULoss(**kw), pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.GIoULoss(eps=1e-12), L.GIoULoss(eps=1e-12), pred, target, weight, avg_factor=10, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["linear", "square", "log"])
@pytest.mark.parametrize("eps", [1e-6, 1e-2, 1e-9])
def test_iou_loss(reduction, mode, eps):
    pred, target = _paired_boxes(16, 19)
    pred[:3] = target[:3] + 200  # disjoint: IoU clamped at eps
    pred[3, 2] = pred[3, 0] + 1e-3  # a sliver: 0 < IoU < 1e-2
    weight = torch.rand(16, generator=_gen(20), dtype=D)
    weight[0] = 0
    tol = dict()  # the union eps: mmdetection's max(U, 1e-6) (convention "mmdet")
    kw = dict(mode=mode, loss_weight=1.2, eps=eps)
    _check(C.IoULoss(**kw), L.IoULoss(**kw), pred, target, weight, reduction_override=reduction, **tol)
    _check(C.IoULoss(**kw), L.IoULoss(**kw), pred, target, torch.rand(16, 4, generator=_gen(24), dtype=D), reduction_override=reduction,
           **tol)
    if reduction != "sum":
        _check(C.IoULoss(**kw), L.IoULoss(**kw), pred, target, weight, avg_factor=8.0, reduction_override=reduction, **tol)


@pytest.mark.parametrize("mode", ["iou", "iof", "giou"])
@pytest.mark.parametrize("is_aligned", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_bbox_overlaps(mode, is_aligned, batch):
    b1 = torch.stack([_boxes(6, 22 + i) for i in range(2)])[: batch[0] if batch else 1].reshape(*batch, 6, 4)
    b2 = torch.stack([_boxes(6 if is_aligned else 5, 30 + i) for i in range(2)])[: batch[0] if batch else 1]
    b2 = b2.reshape(*batch, b2.shape[-2], 4)
    for eps, tol in ((1e-12, dict()), (1e-6, dict()), (30.0, dict())):  # eps 30: max(U, eps) binds for some pairs
        x1, x2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
        y1, y2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
        a = C.bbox_overlaps(x1, x2, mode, is_aligned, eps)
        b = peer_bbox_overlaps(y1, y2, mode, is_aligned, eps)
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **({"rtol": 1e-10, "atol": 1e-12} | tol))
        up = torch.rand(a.shape, generator=_gen(40), dtype=D)
        ga = torch.autograd.grad(a, (x1, x2), up)
        gb = torch.autograd.grad(b, (y1, y2), up)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, **({"rtol": 1e-8, "atol": 1e-10} | tol))
    empty = C.bbox_overlaps(b1[..., :0, :], b2, mode, is_aligned=False)
    assert empty.shape == peer_bbox_overlaps(b1[..., :0, :], b2, mode, is_aligned=False).shape and not empty.any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "box", "coord"])
def test_ciou_loss(reduction, weight_kind):
    pred, target = _paired_boxes(16, 41)
    pred[0] = target[0] + 100  # disjoint
    pred[1] = target[1]  # identical: IoU ~ 1, v = 0
    g = _gen(42)
    weight = {None: None, "box": torch.rand(16, generator=g, dtype=D), "coord": torch.rand(16, 4, generator=g, dtype=D)}[weight_kind]
    ious = peer_bbox_overlaps(pred, target, is_aligned=True)
    assert bool((ious > 0.5).any()) and bool((ious < 0.5).any())  # both sides of alpha's IoU > 0.5 gate
    for kw in ({}, dict(eps=1e-3, loss_weight=2.0), dict(eps=5.0)):
        _check(C.CIoULoss(**kw), L.CIoULoss(**kw), pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.CIoULoss(), L.CIoULoss(), pred, target, weight, avg_factor=10, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "box", "coord"])
def test_eiou_loss(reduction, weight_kind):
    """Extended-IoU: both sides of smooth_point (near matches and disjoint pairs)."""
    pred, target = _paired_boxes(16, 43)
    pred[0] = target[0] + 100  # disjoint: a negative extended intersection
    pred[1] = target[1] + 0.01  # x below smooth_point
    g = _gen(44)
    weight = {None: None, "box": torch.rand(16, generator=g, dtype=D), "coord": torch.rand(16, 4, generator=g, dtype=D)}[weight_kind]
    for kw in ({}, dict(eps=1e-3, loss_weight=2.0, smooth_point=0.5), dict(eps=5.0, smooth_point=2.0)):
        _check(C.EIoULoss(**kw), L.EIoULoss(**kw), pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.EIoULoss(), L.EIoULoss(), pred, target, weight, avg_factor=10, reduction_override=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "box", "coord"])
def test_siou_loss(reduction, weight_kind):
    """mmdetection's SIoU, both signs of gamma; far-apart pairs make the clamp at SIoU = -1 bind."""
    pred, target = _paired_boxes(16, 45)
    pred[0] = target[0] + 300  # far apart: the clamp binds (neg_gamma=False)
    pred[1] = target[1] + 0.01  # nearly identical
    pred[2] = target[2] + torch.tensor([30.0, 2.0, 30.0, 2.0], dtype=D)  # sin_alpha on the other side of the threshold
    g = _gen(46)
    weight = {None: None, "box": torch.rand(16, generator=g, dtype=D), "coord": torch.rand(16, 4, generator=g, dtype=D)}[weight_kind]
    for kw in ({}, dict(neg_gamma=True), dict(eps=1e-3, loss_weight=2.0), dict(eps=5.0, neg_gamma=True)):
        _check(C.SIoULoss(**kw), L.SIoULoss(**kw), pred, target, weight, reduction_override=reduction)
    if reduction != "sum":
        _check(C.SIoULoss(neg_gamma=True), L.SIoULoss(neg_gamma=True), pred, target, weight, avg_factor=10, reduction_override=reduction)


@pytest.mark.parametrize("backend", [p.values[1] for p in helpers.device_backend_params(("cpu",))])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "box1", "coord_equal", "coord"])
def test_bounded_iou_loss(reduction, weight_kind, backend):
    """Bounded IoU on every backend: mmdetection's per-coordinate (N, 4) loss ("none"), its
    reductions, and weights that differ across a box's coordinates (the kernel's per-term mode)."""
    helpers.require_backend("cpu", backend)
    pred, target = _paired_boxes(16, 47)
    pred[0] = target[0] + 100  # far apart: the centre terms' max(., 0) binds
    pred[1] = target[1] + 0.01  # below beta
    g = _gen(48)
    col = torch.rand(16, 1, generator=g, dtype=D)
    weight = {None: None, "box1": col, "coord_equal": col.expand(16, 4).contiguous(), "coord": torch.rand(16, 4, generator=g, dtype=D)}[weight_kind]
    with fastloss.use_backend(backend):
        for kw in ({}, dict(beta=0.05, eps=1e-6, loss_weight=2.0), dict(beta=1.0, eps=0.5)):
            _check(C.BoundedIoULoss(**kw), L.BoundedIoULoss(**kw), pred, target, weight, reduction_override=reduction)
        if reduction != "sum":
            _check(C.BoundedIoULoss(), L.BoundedIoULoss(), pred, target, weight, avg_factor=10, reduction_override=reduction)
        t = target.clone().requires_grad_()  # mmdetection does not differentiate the target
        _check(lambda p, *a, **k: C.BoundedIoULoss()(p, t, *a, **k), lambda p, *a, **k: L.BoundedIoULoss()(p, t, *a, **k), pred,
               weight, reduction_override=reduction)
        # fp32 boxes with an fp64 weight: mmdetection's promotion
        _check(C.BoundedIoULoss(), L.BoundedIoULoss(), pred.float(), target.float(), weight, reduction_override=reduction,
               rtol=1e-5, atol=1e-6)


def test_bounded_iou_loss_one_dim_weight():
    """A 1-D weight multiplies mmdetection's (N, 4) loss along the coordinates (torch's
    broadcasting: only N == 4 broadcasts; another N raises in both)."""
    pred, target = _paired_boxes(4, 50)
    w = torch.rand(4, generator=_gen(51), dtype=D)
    for reduction in REDUCTIONS:
        _check(C.BoundedIoULoss(), L.BoundedIoULoss(), pred, target, w, reduction_override=reduction)
    pred, target = _paired_boxes(6, 49)
    with pytest.raises(RuntimeError):
        L.BoundedIoULoss()(pred, target, torch.rand(6, dtype=D))
    with pytest.raises(ValueError, match="does not broadcast"):
        C.BoundedIoULoss()(pred, target, torch.rand(6, dtype=D))


def test_bounded_iou_loss_errors():
    pred, target = _paired_boxes(6, 49)
    with pytest.raises(ValueError, match="beta"):
        C.BoundedIoULoss(beta=0.0)(pred, target)
    with pytest.raises(ValueError, match="smooth_point"):
        C.EIoULoss(smooth_point=-1.0)(pred, target)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("build,match", [
    (lambda: C.FocalLoss(use_sigmoid=False), "use_sigmoid"),
    (lambda: C.FocalLoss(alpha=-1.0), "alpha"),
    (lambda: C.SigmoidFocalLoss(2.0, 1.5), "alpha"),
    (lambda: C.VarifocalLoss(use_sigmoid=False), "use_sigmoid"),
    (lambda: C.DiceLoss(use_sigmoid=False), "use_sigmoid"),
    (lambda: C.CrossEntropyLoss(use_sigmoid=True, use_mask=True), "use_mask"),
    (lambda: C.CrossEntropyLoss(use_mask=True, class_weight=[1.0]), "class_weight"),
    (lambda: C.GaussianFocalLoss(gamma=0.0, pos_weight=2.0), "pos_weight"),
    (lambda: C.IoULoss(mode="cube"), "mode"),
    (lambda: C.SmoothL1Loss(beta=0.0), "beta"),
])
def test_unsupported_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_forward_errors():
    pred, target = _paired_boxes(4, 41)
    with pytest.raises(ValueError, match="keyword"):
        C.GIoULoss()(pred, target, something=1)
    with pytest.raises(ValueError, match="reduction_override"):
        C.L1Loss()(pred, target, reduction_override="max")
    with pytest.raises(ValueError, match="avg_factor"):
        C.DIoULoss()(pred, target, avg_factor=2.0, reduction_override="sum")
    with pytest.raises(ValueError, match="ignore_index"):
        C.CrossEntropyLoss(use_mask=True)(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.long), ignore_index=1)
    with pytest.raises(ValueError, match="weight"):
        C.FocalLoss()(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(5))
    with pytest.raises(ValueError, match="weight"):  # (N,) does not broadcast to the per-position (N, L) loss (mmdetection: an error too)
        C.QualityFocalLoss()(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.ones(2))
    with pytest.raises(ValueError, match="mode"):
        C.bbox_overlaps(pred, target, mode="diou")
    for module in (C.IoULoss(reduction="batchmean"), C.DiceLoss(reduction="max")):
        with pytest.raises(ValueError, match="reduction"):
            module(pred, target)
    with pytest.raises(ValueError, match="gamma"):
        C.smooth_l1_loss(pred, target, gamma=2.0)
    with pytest.raises(ValueError, match="background"):
        C.SigmoidFocalLoss(2.0, 0.25, torch.ones(3))(torch.zeros(2, 3), torch.tensor([0, 3]))


# ---------------------------------------------------------------------- patch


def _snapshot():
    iou_mod = sys.modules["mmdet.models.losses.iou_loss"]  # the package's attribute of that name is the function
    calc = sys.modules["mmdet.models.task_modules.assigners.iou2d_calculator"]

    return {name: MODELS.module_dict[name] for name in CLASSES} | {
        "losses.GIoULoss": L.GIoULoss, "iou_loss.bbox_overlaps": iou_mod.bbox_overlaps, "calc.bbox_overlaps": calc.bbox_overlaps,
        "mmcv.SigmoidFocalLoss": mmcv.ops.SigmoidFocalLoss, "mmcv.softmax_focal_loss": mmcv.ops.softmax_focal_loss,
        "mmcv.focal_loss.SoftmaxFocalLoss": mmcv.ops.focal_loss.SoftmaxFocalLoss,
        "focal_loss._sigmoid_focal_loss": sys.modules["mmdet.models.losses.focal_loss"]._sigmoid_focal_loss,
        "ssd.smooth_l1_loss": sys.modules["mmdet.models.dense_heads.ssd_head"].smooth_l1_loss}


def test_patch_and_undo():
    from mmdet.models.task_modules import BboxOverlaps2D

    calc = sys.modules["mmdet.models.task_modules.assigners.iou2d_calculator"]

    before = _snapshot()
    pred, target = _paired_boxes(8, 42)
    expected = MODELS.build(dict(type="DIoULoss", loss_weight=2.0))(pred, target)
    expected_overlaps = BboxOverlaps2D()(pred, target)
    handle = fastloss.patch("mmdet")
    try:
        for name in CLASSES:
            assert MODELS.module_dict[name] is getattr(C, name)
        assert L.GIoULoss is C.GIoULoss and mmcv.ops.SigmoidFocalLoss is C.SigmoidFocalLoss
        assert mmcv.ops.softmax_focal_loss is CM.softmax_focal_loss and mmcv.ops.focal_loss.SoftmaxFocalLoss is CM.SoftmaxFocalLoss
        assert sys.modules["mmdet.models.losses.focal_loss"]._sigmoid_focal_loss is CM.sigmoid_focal_loss
        assert mmcv.ops.bbox_overlaps is not CM.bbox_overlaps  # overlaps decide assignments: left alone
        assert calc.bbox_overlaps is peer_bbox_overlaps  # the assigners' IoU is left alone
        assert sys.modules["mmdet.models.dense_heads.ssd_head"].smooth_l1_loss is C.smooth_l1_loss
        loss = MODELS.build(dict(type="DIoULoss", loss_weight=2.0))
        assert isinstance(loss, C.DIoULoss)
        torch.testing.assert_close(loss(pred, target), expected, rtol=1e-10, atol=1e-12)
        assert torch.equal(BboxOverlaps2D()(pred, target), expected_overlaps)
        again = fastloss.patch("mmdetection")  # harmless: nothing left to change
        assert not again.active
        again.undo()
        assert MODELS.module_dict["DIoULoss"] is C.DIoULoss
    finally:
        handle.undo()
    assert _snapshot() == before


def test_patch_context_manager():
    before = _snapshot()
    with fastloss.patch("mmdet"):
        assert MODELS.module_dict["FocalLoss"] is C.FocalLoss
        assert isinstance(MODELS.build(dict(type="FocalLoss")), C.FocalLoss)
    assert _snapshot() == before


# ---------------------------------------------------------------------- dtypes


def _fp32_cases():
    g = _gen(50)
    logits = torch.randn(8, 4, generator=g)
    labels = torch.randint(0, 5, (8,), generator=g)
    boxes_p, boxes_t = (b.float() for b in _paired_boxes(8, 51))
    dense = torch.rand(8, 4, generator=g) * (torch.rand(8, 4, generator=g) > 0.5)
    reg_p, reg_t = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    return [
        ("FocalLoss", {}, (logits, labels)),
        ("CrossEntropyLoss", {}, (logits, labels.clamp(max=3))),
        ("CrossEntropyLoss", dict(use_sigmoid=True), (logits, labels)),
        ("QualityFocalLoss", {}, (logits, (labels, torch.rand(8, generator=g)))),
        ("VarifocalLoss", {}, (logits, dense)),
        ("DistributionFocalLoss", {}, (logits, torch.rand(8, generator=g) * 2.9)),
        ("GaussianFocalLoss", {}, (torch.sigmoid(logits), dense)),
        ("DiceLoss", {}, (logits, dense > 0)),
        ("L1Loss", {}, (reg_p, reg_t)), ("SmoothL1Loss", {}, (reg_p, reg_t)), ("BalancedL1Loss", {}, (reg_p, reg_t)),
        ("MSELoss", {}, (reg_p, reg_t)), ("IoULoss", {}, (boxes_p, boxes_t)), ("GIoULoss", {}, (boxes_p, boxes_t)),
        ("DIoULoss", {}, (boxes_p, boxes_t)), ("CIoULoss", {}, (boxes_p, boxes_t)),
        ("EIoULoss", {}, (boxes_p, boxes_t)), ("SIoULoss", {}, (boxes_p, boxes_t)),
    ]


@pytest.mark.parametrize("case", _fp32_cases(), ids=lambda c: c[0] + ("_sigmoid" if c[1] else ""))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_float32(case, reduction):
    """fp32 inputs (what training runs use): the same dtype and fp32-close values and gradients."""
    name, kw, (pred, *rest) = case
    _check(getattr(C, name)(**kw), getattr(L, name)(**kw), pred, *rest, reduction_override=reduction, rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------------- real heads, patched and unpatched

_TRAIN_ANCHOR = dict(allowed_border=-1, pos_weight=-1, debug=False)
HEADS = {
    # RetinaNet: FocalLoss + L1Loss, MaxIoUAssigner over bbox_overlaps; float64 throughout
    "retina": (dict(type="RetinaHead", num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1,
                    anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=1, ratios=[0.5, 1.0, 2.0],
                                          strides=[8, 16]),
                    bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                    loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                    loss_bbox=dict(type="L1Loss", loss_weight=1.0),
                    train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
                                   sampler=dict(type="PseudoSampler"), **_TRAIN_ANCHOR)), dict(rtol=1e-10, atol=1e-12)),
    # GFL: QualityFocalLoss + DistributionFocalLoss + GIoULoss, ATSSAssigner; mmdetection builds its box
    # targets in fp32 and its GIoU runs on fp32 boxes (the tolerance: its fp32 DFL weights, and the fp32
    # GIoU, where fastloss's CPU kernel and torch's eager ops round differently: ~1 ulp, FMA contraction)
    "gfl": (dict(type="GFLHead", num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1, reg_max=4,
                 norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                 anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=3, scales_per_octave=1, strides=[8, 16]),
                 loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
                 loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25), loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                 train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), **_TRAIN_ANCHOR)), dict(rtol=1e-6, atol=1e-8)),
    # FCOS: FocalLoss + IoULoss + CrossEntropyLoss(use_sigmoid) for the centerness (fp32 by mmdetection's label.float())
    "fcos": (dict(type="FCOSHead", num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1, strides=[8, 16],
                  regress_ranges=((-1, 32), (32, 1e8)), norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                  loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                  loss_bbox=dict(type="IoULoss", loss_weight=1.0),
                  loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)), dict(rtol=1e-6, atol=1e-8)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # mmdetection's own deprecation notes and torch.meshgrid's
@pytest.mark.parametrize("head", sorted(HEADS))
def test_patched_head_same_losses(head):
    """mmdetection's own head, built from its config with and without the patch: fastloss's
    classes inside, the same losses and the same gradients w.r.t. the features."""
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg, tol = HEADS[head]
    cfg = ConfigDict(cfg)
    torch.manual_seed(0)
    peer = MODELS.build(cfg).double()
    with fastloss.patch("mmdet"):
        ours = MODELS.build(cfg).double()
    ours.load_state_dict(peer.state_dict())
    assert type(ours.loss_cls) is getattr(C, cfg.loss_cls.type) and type(peer.loss_cls) is getattr(L, cfg.loss_cls.type)
    g = _gen(60)
    feats = tuple(torch.randn(2, 8, s, s, generator=g, dtype=D) for s in (8, 4))
    metas = [dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64)) for _ in range(2)]
    gts = []
    for _ in range(2):
        xy = torch.rand(3, 2, generator=g, dtype=D) * 30
        wh = torch.rand(3, 2, generator=g, dtype=D) * 25 + 8
        gts.append(InstanceData(bboxes=torch.cat([xy, xy + wh], -1).float(), labels=torch.randint(0, 3, (3,), generator=g)))

    def run(model):
        x = tuple(f.clone().requires_grad_(True) for f in feats)
        losses = model.loss_by_feat(*model(x), gts, metas)
        values = [v for value in losses.values() for v in (value if isinstance(value, list) else [value])]
        box = losses["loss_bbox"]
        assert float(sum(box).detach() if isinstance(box, list) else box.detach()) > 0  # positives were assigned
        return values, torch.autograd.grad(sum(values), x)

    (lp, gp), (lo, go) = run(peer), run(ours)
    assert len(lp) == len(lo)
    for a, b in zip(lo, lp):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(go, gp):
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------- review fixes


def test_patch_leaves_the_assigners_overlaps_alone():
    """The functions assigners and matchers decide with stay mmdetection's own while patched
    (fastloss's fp32 overlaps are not bit-equal: a MaxIoUAssigner threshold could flip)."""
    import mmdet.structures.bbox as sb

    holders = [sys.modules[m] for m in ("mmdet.structures.bbox", "mmdet.structures.bbox.bbox_overlaps",
                                         "mmdet.models.task_modules.assigners.iou2d_calculator",
                                         "mmdet.models.task_modules.assigners.match_cost", "mmdet.models.losses.iou_loss")]
    with fastloss.patch("mmdet"):
        assert sb.bbox_overlaps is peer_bbox_overlaps
        for mod in holders:
            assert mod.bbox_overlaps is peer_bbox_overlaps, mod.__name__
        # nothing in any loaded mmdet module points at fastloss's bbox_overlaps
        assert not [k for k, m in list(sys.modules.items()) if k.startswith("mmdet") and m is not None
                    and any(v is C.bbox_overlaps for v in vars(m).values())]


def test_patched_max_iou_assignment_bitwise_unchanged():
    """MaxIoUAssigner on fp32 near-0.5 boxes: the same assignment patched and unpatched."""
    from mmengine.structures import InstanceData
    from mmdet.models.task_modules import MaxIoUAssigner

    g = _gen(70)
    xy = torch.rand(32, 2, generator=g, dtype=D) * 100
    wh = torch.rand(32, 2, generator=g, dtype=D) * 50 + 5
    gt = torch.cat([xy, xy + wh], -1)
    wide = gt.clone()
    wide[:, 2] = gt[:, 0] + 2 * wh[:, 0] * (1 + (torch.rand(32, generator=g, dtype=D) - 0.5) * 1e-6)  # IoU ~ 0.5
    # first a pair whose fp32 IoU is 0.49999991 in mmdetection's arithmetic (an FMA-contracted
    # union, as fastloss's CPU kernels once formed it, gives 0.5)
    gt = torch.cat([torch.tensor([[24.4227352142334, 9.079850196838379, 38.81455612182617, 33.0263786315918]], dtype=D), gt]).float()
    wide = torch.cat([torch.tensor([[24.4227352142334, 9.079850196838379, 53.20637893676758, 33.0263786315918]], dtype=D), wide]).float()
    assert 0.5 - 2 ** -22 < peer_bbox_overlaps(gt[:1], wide[:1]).item() < 0.5  # a few ulp below the threshold
    priors = torch.cat([wide, gt])

    def assign():
        a = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)
        r = a.assign(InstanceData(priors=priors), InstanceData(bboxes=gt, labels=torch.zeros(len(gt), dtype=torch.long)))
        return r.gt_inds, r.max_overlaps

    plain = assign()
    with fastloss.patch("mmdet"):
        patched = assign()
    for p, q in zip(plain, patched):
        assert torch.equal(p, q)
    assert plain[0][0].item() == -1  # mmdetection's 0.49999991: between the thresholds, ignored
    # the sensitivity of this test: overlaps a few ulp (2^-22) larger in the assigners' calculator assign it
    calc = sys.modules["mmdet.models.task_modules.assigners.iou2d_calculator"]
    calc.bbox_overlaps = lambda *a, **k: peer_bbox_overlaps(*a, **k) + 2 ** -22
    try:
        flipped = assign()
    finally:
        calc.bbox_overlaps = peer_bbox_overlaps
    assert flipped[0][0].item() == 1 and not torch.equal(flipped[0], plain[0])


def _lowp_cases():
    """Every class (mmcv's op excepted: its compiled op does not run here) with and without a
    weight; (name, kwargs, args, weight)."""
    out = []
    for name, kw, args in _fp32_cases():
        pred = args[0]
        row = name in ("QualityFocalLoss", "DistributionFocalLoss", "DiceLoss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss") or (
            name == "CrossEntropyLoss")
        w = torch.rand(pred.shape[0] if row else pred.shape, generator=_gen(71)) + 0.1
        out += [(name, kw, args, None), (name, kw, args, w)]
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", _lowp_cases(), ids=lambda c: c[0] + ("_sigmoid" if c[1] else "") + ("_w" if c[3] is not None else ""))
def test_dtype_grid(case, dtype):
    """Every class x dtype (pred, float targets and weight in it): mmdetection's result dtype for
    "none" and "mean", and for "mean" with a tensor avg_factor (fp64 / fp32 / int64 0-dim: its
    0-dim division promotes; (1,) fp32: it decides alone, torch's rule for 0-dim and
    dimensioned operands), with values close to the peer's.  With a weight also the weight in
    fp32 whatever pred's dtype (mmdetection's ``loss * weight`` promotes) and a 0-dim fp32
    weight (promotes no dimensioned loss)."""
    name, kw, (pred, *rest), w = case
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    rest = [(r[0], cast(r[1])) if isinstance(r, tuple) else cast(r) for r in rest]
    tol = dict(rtol=1e-2, atol=1e-2) if dtype != torch.float64 else dict(rtol=1e-6, atol=1e-7)
    calls = [dict(reduction_override="none"), dict(reduction_override="mean")]
    calls += [dict(reduction_override="mean", avg_factor=af)
              for af in (torch.tensor(5.0, dtype=D), torch.tensor(5.0), torch.tensor(5), torch.tensor([5.0]))]
    if w is not None:
        calls += [dict(reduction_override=r, weight=w) for r in ("none", "mean")]
        # a 0-dim weight: mmdetection's FocalLoss and sigmoid CE (labels) reject it, fastloss's DiceLoss too
        if name not in ("FocalLoss", "DiceLoss") and not kw.get("use_sigmoid"):
            calls += [dict(reduction_override=r, weight=torch.tensor(0.7)) for r in ("none", "mean")]
    for call in calls:
        if w is not None:
            call.setdefault("weight", cast(w))
        a = getattr(C, name)(**kw)(cast(pred), *rest, **call)
        b = getattr(L, name)(**kw)(cast(pred), *rest, **call)
        assert a.dtype == b.dtype and a.shape == b.shape, (call, a.dtype, b.dtype)
        torch.testing.assert_close(a.double(), b.double(), **tol)


def _wide_weight_cases():
    """(name, kwargs, args, weight): fp16 pred (and float targets), an fp32 weight of mmdetection's
    shape (None: sigmoid CE, whose label.float() promotes), sums past fp16's 65504."""
    g = _gen(80)
    big = lambda *shape: torch.rand(*shape, generator=g) * 900 + 100  # noqa: E731  (large fp32 weights: a sum past 65504 from few elements)
    logits = (torch.randn(64, 8, generator=g) * 3).half()
    labels = torch.randint(0, 9, (64,), generator=g)
    reg_p, reg_t = (torch.randn(2, 64, 4, generator=g) * 3).half()
    boxes_p, boxes_t = (b.half() for b in _paired_boxes(64, 81))
    dense = (torch.rand(64, 8, generator=g) * (torch.rand(64, 8, generator=g) > 0.5)).half()
    dense3 = (torch.rand(4, 8, 16, generator=g) * (torch.rand(4, 8, 16, generator=g) > 0.5)).half()
    return [
        ("FocalLoss", {}, (logits, labels), big(64)),
        ("CrossEntropyLoss", {}, (logits, labels.clamp(max=7)), big(64)),
        ("CrossEntropyLoss", dict(use_sigmoid=True),
         ((torch.randn(1000, 80, generator=g) * 3).half(), torch.randint(0, 81, (1000,), generator=g)), None),
        ("QualityFocalLoss", {}, (logits, (labels, torch.rand(64, generator=g).half())), big(64)),
        ("QualityFocalLoss", {}, ((torch.randn(4, 8, 16, generator=g) * 3).half(), dense3), big(4, 16)),
        ("VarifocalLoss", {}, (logits, dense), big(64, 8)),
        ("GaussianFocalLoss", {}, (torch.sigmoid(logits.float()).clamp(0.01, 0.99).half(), dense), big(64, 8)),
        ("L1Loss", {}, (reg_p, reg_t), big(64, 4)), ("SmoothL1Loss", {}, (reg_p, reg_t), big(64, 4)),
        ("BalancedL1Loss", {}, (reg_p, reg_t), big(64, 4)), ("MSELoss", {}, (reg_p, reg_t), big(64, 4)),
        ("GIoULoss", {}, (boxes_p, boxes_t), big(64) * 10), ("DIoULoss", {}, (boxes_p, boxes_t), big(64) * 10),
        ("SIoULoss", {}, (boxes_p, boxes_t), big(64) * 10), ("BoundedIoULoss", {}, (boxes_p, boxes_t), big(64, 1) * 10),
    ]


@pytest.mark.parametrize("case", _wide_weight_cases(),
                         ids=lambda c: c[0] + ("_sigmoid" if c[1] else "") + ("_3d" if c[2][0].dim() == 3 else ""))
def test_fp16_pred_sums_in_the_promoted_dtype(case):
    """fp16 pred with an fp32 weight (mmdetection's bbox / label weights) or an fp32 target:
    mmdetection's ``loss * weight`` promotes before its reduction, so the kernel runs in fp32
    -- the sum (and "mean" over avg_factor) past 65504 is finite and fp32-close to the peer's,
    where reducing in fp16 and promoting after overflowed to inf."""
    name, kw, (pred, *rest), w = case
    for call in (dict(reduction_override="sum"), dict(reduction_override="mean", avg_factor=1.0)):
        if w is not None:
            call["weight"] = w
        a = getattr(C, name)(**kw)(pred, *rest, **call)
        b = getattr(L, name)(**kw)(pred, *rest, **call)
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, (call, a.dtype, b.dtype)
        assert torch.isfinite(b) and b.abs() > 65504  # the case reaches past fp16's range
        torch.testing.assert_close(a, b, rtol=2e-3, atol=0)  # mmdetection rounds each element to fp16 first


@pytest.mark.parametrize("kw", [{}, dict(naive_dice=True), dict(activate=False)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_dice_loss_empty_batch(kw, reduction):
    """No samples: mmdetection's (0,) for "none", 0 for "sum" (and "mean" with avg_factor);
    its NaN "mean" is 0 here (documented); connected to the graph either way."""
    x = torch.randn(0, 7, 7, requires_grad=True)
    t = torch.zeros(0, 7, 7)
    ours = C.DiceLoss(**kw)(x, t, reduction_override=reduction)
    peer = L.DiceLoss(**kw)(x, t, reduction_override=reduction)
    assert ours.shape == peer.shape and ours.dtype == peer.dtype
    if reduction == "mean":
        assert torch.isnan(peer) and ours.item() == 0.0
        af = C.DiceLoss(**kw)(x, t, avg_factor=2.0)
        torch.testing.assert_close(af, L.DiceLoss(**kw)(x, t, avg_factor=2.0))
    else:
        torch.testing.assert_close(ours, peer)
    (g,) = torch.autograd.grad(ours.sum(), x)
    assert g.shape == x.shape


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("shapes", [((4, 3), (3,)), ((4, 3), (1, 3)), ((3,), (4, 3)), ((4, 1), (4, 3))])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mse_loss_broadcasts(shapes, reduction):
    g = _gen(72)
    pred, target = torch.randn(shapes[0], generator=g, dtype=D), torch.randn(shapes[1], generator=g, dtype=D)
    _check(C.MSELoss(), L.MSELoss(), pred, target, reduction_override=reduction)
    with pytest.raises(ValueError, match="broadcast"):
        C.MSELoss()(pred, torch.randn(5, 2, dtype=D))


@pytest.mark.parametrize("name", ["GIoULoss", "L1Loss", "IoULoss"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight_kind", ["positive", "zero", "negative"])
def test_compile_zero_weight_shortcut(name, reduction, weight_kind):
    """torch.compile(fullgraph=True, backend="aot_eager") with a weight: the shortcut is
    branch-free there; the eager values and gradients (and mmdetection's), except that "none"
    with an all-non-positive weight keeps the per-element shape (documented)."""
    torch._dynamo.reset()
    pred, target = (b.float() for b in _paired_boxes(6, 73))
    w = {"positive": torch.rand(6, generator=_gen(74)) + 0.1, "zero": torch.zeros(6), "negative": -torch.rand(6, generator=_gen(74))}[weight_kind]
    if name in ("L1Loss", "SmoothL1Loss"):
        w = w[:, None].expand(6, 4).contiguous()
    loss = getattr(C, name)(loss_weight=2.0)

    def run(fn):
        p = pred.clone().requires_grad_()
        v = fn(p, target, w, reduction_override=reduction)
        return v, torch.autograd.grad(v.sum(), p)[0]

    eager = run(loss)
    compiled = run(torch.compile(loss, fullgraph=True, backend="aot_eager"))
    peer = run(getattr(L, name)(loss_weight=2.0))
    shortcut = weight_kind != "positive" and not (name == "IoULoss" and reduction == "none")
    if shortcut and reduction == "none":
        full = (6, 4) if name in ("L1Loss", "SmoothL1Loss") else (6,)
        assert eager[0].dim() == 0 and compiled[0].shape == full  # the documented shape difference
        torch.testing.assert_close(compiled[0], eager[0].expand(full))
    else:
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eager[0], peer[0], rtol=1e-5, atol=1e-5)
    if not (shortcut and reduction == "none"):  # the expanded scalar's gradient is 6x the eager one
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eager[1], peer[1], rtol=1e-5, atol=1e-5)


def test_built_while_patched_keeps_fastloss_class():
    """The documented rule: what was built while patched keeps what it captured."""
    with fastloss.patch("mmdet"):
        inside = MODELS.build(dict(type="GIoULoss"))
    assert isinstance(inside, C.GIoULoss) and MODELS.module_dict["GIoULoss"] is L.GIoULoss
    assert "built while patched" in C._patch.__doc__.replace("\n    ", " ")


def test_float_targets_requiring_grad_raise():
    """Documented: fastloss does not differentiate targets (mmdetection does)."""
    pred, target = _paired_boxes(4, 75)
    with pytest.raises(ValueError, match="target"):
        C.GIoULoss()(pred, target.clone().requires_grad_())
    assert "requires grad" in C.__doc__


# ---------------------------------------------------------------------- assigners


def test_max_iou_assigner_signature():
    from mmdet.models.task_modules.assigners import MaxIoUAssigner

    assert inspect.signature(C.MaxIoUAssigner.__init__) == inspect.signature(MaxIoUAssigner.__init__)
    ours, peer = inspect.signature(C.MaxIoUAssigner.assign), inspect.signature(MaxIoUAssigner.assign)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [(p.name, p.kind, p.default) for p in peer.parameters.values()]


@pytest.mark.parametrize("cfg", [dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0),
                                 dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, gt_max_assign_all=False),
                                 dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.5), min_pos_iou=0.5, match_low_quality=False),
                                 dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.5, ignore_wrt_candidates=False),
                                 dict(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.3, gpu_assign_thr=3)])
def test_max_iou_assigner_matches_mmdet(cfg):
    """Per image as mmdetection calls it: gt_inds, labels, max_overlaps bit-equal (integer
    boxes for exact IoU ties, 5-column priors, an image without gts, ignore boxes)."""
    from mmdet.models.task_modules.assigners import MaxIoUAssigner
    from mmengine.structures import InstanceData

    ours, peer = C.MaxIoUAssigner(**cfg), MaxIoUAssigner(**cfg)
    g = _gen(5)
    xy = (torch.rand(600, 2, generator=g) * 200).round()
    priors = torch.cat([xy, xy + 8 + (torch.rand(600, 2, generator=g) * 40).round(), torch.rand(600, 1, generator=g)], -1)
    for n in (0, 1, 7, 30):
        gt = priors[torch.randint(0, 600, (n,), generator=g), :4] + torch.randint(-3, 4, (n, 4), generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        ign = InstanceData(bboxes=torch.tensor([[0.0, 0.0, 50.0, 50.0], [150.0, 20.0, 190.0, 90.0]]))
        args = (InstanceData(priors=priors), InstanceData(bboxes=gt, labels=labels), ign)
        a, b = ours.assign(*args), peer.assign(*args)
        assert a.num_gts == b.num_gts
        for name in ("gt_inds", "max_overlaps", "labels"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and torch.equal(x, y), (n, name)


def test_atss_assigner_signature():
    """Parameter names, kinds and defaults of mmdetection's ATSSAssigner (behaviour:
    tests/test_assign.py)."""
    from mmdet.models.task_modules.assigners import ATSSAssigner

    for name in ("__init__", "assign"):
        ours, peer = inspect.signature(getattr(C.ATSSAssigner, name)), inspect.signature(getattr(ATSSAssigner, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [(p.name, p.kind, p.default) for p in peer.parameters.values()]


def test_max_iou_assigner_unsupported():
    with pytest.raises(ValueError, match="iou_calculator"):
        C.MaxIoUAssigner(0.5, 0.4, iou_calculator=dict(type='BboxOverlaps2D_GLIP'))
    with pytest.raises(ValueError, match="perm_repeat_gt_cfg"):
        C.MaxIoUAssigner(0.5, 0.4, perm_repeat_gt_cfg=dict(iou_thr=0.7, perm_range=0.01))


def test_bbox_overlaps_bit_equal_on_cpu():
    """IoU and IoF matrices bit-equal to mmdetection's in fp32 on the CPU (no FMA in the build)."""
    g = _gen(78)
    for scale in (1.0, 640.0, 4000.0):
        xy = torch.rand(257, 2, generator=g) * scale
        b1 = torch.cat([xy, xy + torch.rand(257, 2, generator=g) * scale / 5], -1)
        xy = torch.rand(1031, 2, generator=g) * scale
        b2 = torch.cat([xy, xy + torch.rand(1031, 2, generator=g) * scale / 5], -1)
        for mode in ("iou", "iof"):
            assert torch.equal(C.bbox_overlaps(b1, b2, mode), peer_bbox_overlaps(b1, b2, mode))
