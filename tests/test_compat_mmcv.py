"""fastloss.compat.mmcv against mmcv 2.1 (mmcv-lite 2.1.0 installed: its Python wrappers, whose
compiled ops cannot run here).  Signatures against the installed wrappers; values and gradients
in float64 against formulas written from open-mmlab/mmcv v2.1.0:

* ``mmcv/ops/csrc/common/cuda/sigmoid_focal_loss_cuda_kernel.cuh`` and
  ``softmax_focal_loss_cuda_kernel.cuh`` (commit 491966e3dac316163000644cc020cd59a528ca9f), the
  reductions of ``mmcv/ops/focal_loss.py``;
* ``mmcv/ops/csrc/common/cuda/bbox_overlaps_cuda_kernel.cuh`` (the same arithmetic as the C++ CPU
  kernel; the Python ``_bbox_overlaps_cpu`` in ``mmcv/ops/bbox.py`` lacks its max(U, offset)).
"""
import inspect

import pytest
import torch

import helpers

helpers.import_mmdet_losses()  # gives mmcv-lite a stand-in mmcv._ext so that mmcv.ops imports
import mmcv.ops  # noqa: E402

from fastloss.compat import mmcv as CM  # noqa: E402

D = torch.float64
TINY = torch.finfo(torch.float32).tiny  # mmcv's FLT_MIN


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _check(ours, formula, x, *args):
    """Same values and gradients (random upstream gradient) of ours(x, ...) and formula(x, ...)."""
    p1 = x.detach().clone().requires_grad_(True)
    p2 = x.detach().clone().requires_grad_(True)
    a, b = ours(p1, *args), formula(p2, *args)
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    up = torch.rand(a.shape, generator=_gen(7), dtype=a.dtype) + 0.5
    torch.testing.assert_close(torch.autograd.grad(a, p1, up)[0], torch.autograd.grad(b, p2, up)[0], rtol=1e-10, atol=1e-12)


def test_signatures():
    for name in ("SigmoidFocalLoss", "SoftmaxFocalLoss"):
        assert inspect.signature(getattr(CM, name).__init__) == inspect.signature(getattr(mmcv.ops, name).__init__)
        assert inspect.signature(getattr(CM, name).forward) == inspect.signature(getattr(mmcv.ops, name).forward)
    # the functions are autograd Functions' apply in mmcv: their forward without ctx
    for name, fn in (("sigmoid_focal_loss", mmcv.ops.focal_loss.SigmoidFocalLossFunction),
                     ("softmax_focal_loss", mmcv.ops.focal_loss.SoftmaxFocalLossFunction)):
        params = list(inspect.signature(fn.forward).parameters.values())[1:]
        assert list(inspect.signature(getattr(CM, name)).parameters) == [p.name for p in params]
        assert [p.default for p in inspect.signature(getattr(CM, name)).parameters.values()] == [p.default for p in params]
    assert inspect.signature(CM.bbox_overlaps) == inspect.signature(mmcv.ops.bbox_overlaps)


def _reduce(out, N, reduction):
    if reduction == "mean":
        return out.sum() / N
    return out.sum() if reduction == "sum" else out


def _sigmoid_formula(x, t, gamma, alpha, weight, reduction):
    """sigmoid_focal_loss_forward_cuda_kernel and focal_loss.py's reduction."""
    N, K = x.shape
    p = torch.sigmoid(x)
    flag_p = (t[:, None] == torch.arange(K)).to(x.dtype)
    term_p = (1 - p) ** gamma * torch.log(torch.clamp(p, min=TINY))
    term_n = p ** gamma * torch.log(torch.clamp(1 - p, min=TINY))
    out = -flag_p * alpha * term_p - (1 - flag_p) * (1 - alpha) * term_n
    if weight is not None:
        out = out * weight[t][:, None]
    return _reduce(out, N, reduction)


def _softmax_formula(x, t, gamma, alpha, weight, reduction):
    """focal_loss.py's softmax, then softmax_focal_loss_forward_cuda_kernel per row."""
    p = torch.softmax(x, dim=1)
    valid = t >= 0
    pred = p.gather(1, t.clamp(min=0)[:, None])[:, 0]
    out = torch.where(valid, -alpha * (1 - pred) ** gamma * torch.log(torch.clamp(pred, min=TINY)), torch.zeros_like(pred))
    if weight is not None:
        out = out * torch.where(valid, weight[t.clamp(min=0)], torch.zeros_like(pred))
    return _reduce(out, x.size(0), reduction)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_sigmoid_focal_loss(reduction, with_weight):
    N, K = 11, 4
    g = _gen(2)
    x = torch.randn(N, K, generator=g, dtype=D) * 4
    t = torch.randint(0, K if with_weight else K + 1, (N,), generator=g)
    w = torch.rand(K, generator=g, dtype=D) if with_weight else None
    _check(CM.SigmoidFocalLoss(2.0, 0.25, w, reduction), lambda p, tt: _sigmoid_formula(p, tt, 2.0, 0.25, w, reduction), x, t)
    _check(lambda p, tt: CM.sigmoid_focal_loss(p, tt, 1.5, 0.4, w, reduction),
           lambda p, tt: _sigmoid_formula(p, tt, 1.5, 0.4, w, reduction), x, t)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 1.0), (1.5, 0.6)])
def test_softmax_focal_loss(reduction, with_weight, gamma, alpha):
    N, K = 13, 5
    g = _gen(3)
    x = torch.randn(N, K, generator=g, dtype=D) * 3
    t = torch.randint(-1, K, (N,), generator=g)  # -1: a row mmcv leaves out
    w = torch.rand(K, generator=g, dtype=D) + 0.5 if with_weight else None
    _check(CM.SoftmaxFocalLoss(gamma, alpha, w, reduction), lambda p, tt: _softmax_formula(p, tt, gamma, alpha, w, reduction), x, t)
    _check(lambda p, tt: CM.softmax_focal_loss(p, tt, gamma, alpha, w, reduction),
           lambda p, tt: _softmax_formula(p, tt, gamma, alpha, w, reduction), x, t)


def test_focal_module_state():
    w = torch.rand(3, dtype=D)
    for cls in (CM.SigmoidFocalLoss, CM.SoftmaxFocalLoss):
        ours, peer = cls(2.0, 0.25, w, "sum"), getattr(mmcv.ops, cls.__name__)(2.0, 0.25, w, "sum")
        assert repr(ours) == repr(peer)
        assert ours.state_dict().keys() == peer.state_dict().keys()


def _overlaps_formula(b1, b2, mode, aligned, offset):
    """bbox_overlaps_cuda_kernel: I / max(U, offset) (iof: I / max(area1, offset)), signed areas."""
    if not aligned:
        b1, b2 = b1[:, None, :], b2[None, :, :]
    w = torch.clamp(torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0]) + offset, min=0)
    h = torch.clamp(torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1]) + offset, min=0)
    inter = w * h
    area1 = (b1[..., 2] - b1[..., 0] + offset) * (b1[..., 3] - b1[..., 1] + offset)
    area2 = (b2[..., 2] - b2[..., 0] + offset) * (b2[..., 3] - b2[..., 1] + offset)
    base = area1 + area2 - inter if mode == "iou" else area1
    return inter / torch.clamp(base, min=offset)


def _pixel_boxes(n, seed, dtype, integer):
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=D) * 60
    wh = torch.rand(n, 2, generator=g, dtype=D) * 40
    boxes = torch.cat([xy, xy + wh], -1)
    if integer:
        boxes = boxes.round()  # the legacy "+1" convention's integer pixel indices
    boxes[0] = boxes[1]  # an identical pair
    boxes[2, 2:] = boxes[2, :2]  # a point box
    return boxes.to(dtype)


@pytest.mark.parametrize("mode", ["iou", "iof"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("dtype, integer", [(torch.float64, False), (torch.float64, True), (torch.float32, True)])
def test_bbox_overlaps(mode, aligned, offset, dtype, integer):
    b1 = _pixel_boxes(12, 1, dtype, integer)
    b2 = _pixel_boxes(12 if aligned else 9, 2, dtype, integer)
    ours = CM.bbox_overlaps(b1, b2, mode, aligned, offset)
    expected = _overlaps_formula(b1.double(), b2.double(), mode, aligned, offset)
    if offset == 0:  # the point box against itself: mmcv's 0 / 0, fastloss's 0 (module docstring)
        expected = torch.nan_to_num(expected, nan=0.0)
    assert ours.dtype == dtype and ours.shape == expected.shape and not ours.requires_grad
    if dtype == torch.float64 or integer:  # integer coordinates: both sides exact up to the last division
        torch.testing.assert_close(ours.double(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_bbox_overlaps_docstring_example_and_edges():
    b1 = torch.tensor([[0, 0, 10, 10], [10, 10, 20, 20], [32, 32, 38, 42]], dtype=torch.float32)
    b2 = torch.tensor([[0, 0, 10, 20], [0, 10, 10, 19], [10, 10, 20, 20]], dtype=torch.float32)
    expected = torch.tensor([[0.5, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert torch.equal(CM.bbox_overlaps(b1, b2), expected)  # mmcv's docstring example
    empty = torch.zeros(0, 4)
    assert CM.bbox_overlaps(empty, b2).shape == (0, 3) and CM.bbox_overlaps(b1, empty).shape == (3, 0)
    assert CM.bbox_overlaps(empty, empty, aligned=True).shape == (0,)
    assert CM.bbox_overlaps(b1.requires_grad_(), b2).grad_fn is None


def test_errors():
    b = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="mode"):
        CM.bbox_overlaps(b, b, mode="giou")
    with pytest.raises(ValueError, match="offset"):
        CM.bbox_overlaps(b, b, offset=2)
    with pytest.raises(ValueError, match="aligned"):
        CM.bbox_overlaps(b, b[:2], aligned=True)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        CM.bbox_overlaps(torch.zeros(3, 5), b)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="int64"):
        CM.softmax_focal_loss(x, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="reduction"):
        CM.SoftmaxFocalLoss(2.0, 0.25, reduction="batchmean")(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="weight"):
        CM.sigmoid_focal_loss(x, torch.tensor([0, 1]), weight=torch.ones(4))
    with pytest.raises(ValueError, match="background"):
        CM.SigmoidFocalLoss(2.0, 0.25, torch.ones(3))(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="alpha"):
        CM.SigmoidFocalLoss(2.0, 1.5)
