"""fastloss.compat.ultralytics against the installed ultralytics: values and gradients (float64
where ultralytics computes in the input dtype; float32 tolerances where it casts to float32:
box_iou, VarifocalLoss's BCE, RT-DETR's loss), signatures, the patch, the documented
differences and the errors for what fastloss cannot honour."""
import inspect

import pytest
import torch

pytest.importorskip("ultralytics")
import ultralytics.models.utils.loss as UD  # noqa: E402
import ultralytics.utils.loss as UL  # noqa: E402
import ultralytics.utils.metrics as UM  # noqa: E402
import ultralytics.utils.tal as UT  # noqa: E402

import fastloss  # noqa: E402
from fastloss.compat import ultralytics as FU  # noqa: E402

CLASSES = ("VarifocalLoss", "FocalLoss", "DFLoss", "BboxLoss")
ORIGINAL = {name: getattr(UL, name) for name in CLASSES}
ORIGINAL_DETR = {name: getattr(UD, name) for name in ("FocalLoss", "VarifocalLoss", "bbox_iou")}
PEER_BBOX_IOU, PEER_BOX_IOU = UM.bbox_iou, UM.box_iou

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _grads(out, inputs, seed=1):
    """Gradients of ``out`` w.r.t. ``inputs`` under a random upstream gradient."""
    up = torch.rand(out.shape, dtype=out.dtype, generator=_gen(seed)) + 0.5
    return torch.autograd.grad(out, inputs, up)


def _close(a, b, rtol, atol):
    """assert_close with atol relative to the largest magnitude of the expected value."""
    scale = b.detach().abs().max().item() if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * max(scale, 1.0))


def _compare(ours, peer, inputs, *rest, tol=F64):
    """Value, shape, dtype and the gradient of every differentiable input."""
    xa = [x.clone().requires_grad_() for x in inputs]
    xb = [x.clone().requires_grad_() for x in inputs]
    a, b = ours(*xa, *rest), peer(*xb, *rest)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    _close(a, b, **tol)
    for ga, gb in zip(_grads(a, xa), _grads(b, xb)):
        _close(ga, gb, **tol)
    return a


# ------------------------------------------------------------------------------ signatures


def _signature_pairs():
    yield "bbox_iou", FU.bbox_iou, PEER_BBOX_IOU
    yield "box_iou", FU.box_iou, PEER_BOX_IOU
    for name in CLASSES:
        yield f"{name}.__init__", getattr(FU, name).__init__, ORIGINAL[name].__init__
        # ultralytics' DFLoss overrides __call__; ours defines forward with the same signature
        peer_call = ORIGINAL[name].__call__ if name == "DFLoss" else ORIGINAL[name].forward
        yield f"{name}.forward", getattr(FU, name).forward, peer_call


@pytest.mark.parametrize("name,ours,peer", list(_signature_pairs()), ids=[p[0] for p in _signature_pairs()])
def test_signature_equals_the_peers(name, ours, peer):
    assert inspect.signature(ours) == inspect.signature(peer)


# ------------------------------------------------------------------------------ bbox_iou


def _cxcywh(shape, seed):
    """(cx, cy, w, h) boxes in a small area (overlapping, nested and disjoint pairs)."""
    g = _gen(seed)
    centre = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 4
    wh = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    return torch.cat((centre, wh), -1)


FLAGS = [dict(), dict(GIoU=True), dict(DIoU=True), dict(CIoU=True), dict(GIoU=True, DIoU=True), dict(GIoU=True, DIoU=True, CIoU=True)]
SHAPES = [((4,), (4,)), ((7, 4), (7, 4)), ((1, 4), (6, 4)), ((3, 1, 4), (1, 5, 4)), ((2, 3, 1, 4), (3, 5, 4)), ((0, 4), (0, 4))]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "+".join(f) or "IoU")
@pytest.mark.parametrize("eps", [1e-7, 1e-3, 0.25])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bbox_iou_values_and_both_gradients(flags, eps, shapes):
    b1, b2 = _cxcywh(shapes[0][:-1], 1), _cxcywh(shapes[1][:-1], 2)
    if b1.shape == b2.shape and b1.dim() == 2 and len(b1) > 2:
        b2[:2] = b1[:2]  # identical pairs: IoU 1, the min / max ties
    _compare(lambda a, b: FU.bbox_iou(a, b, eps=eps, **flags), lambda a, b: PEER_BBOX_IOU(a, b, eps=eps, **flags), [b1, b2])


@pytest.mark.parametrize("d1,d2", [(torch.float32, torch.float32), (torch.float32, torch.float64), (torch.float16, torch.float32)])
def test_bbox_iou_dtype_follows_promotion(d1, d2):
    b1, b2 = _cxcywh((5,), 3).to(d1), _cxcywh((5,), 4).to(d2)
    a = FU.bbox_iou(b1, b2, CIoU=True)
    assert a.dtype == PEER_BBOX_IOU(b1, b2, CIoU=True).dtype == torch.promote_types(d1, d2)
    # fastloss computes in float32 at least (ultralytics forms fp16 corners in fp16): against float64
    _close(a.double(), PEER_BBOX_IOU(b1.double(), b2.double(), CIoU=True), **F32)


def test_bbox_iou_integer_boxes():
    b1 = torch.tensor([[10, 10, 8, 6], [3, 4, 2, 2]])
    b2 = torch.tensor([[12, 11, 6, 6], [3, 4, 2, 2]])
    a, b = FU.bbox_iou(b1, b2, GIoU=True), PEER_BBOX_IOU(b1, b2, GIoU=True)
    assert a.dtype == b.dtype == torch.float32
    _close(a, b, **F32)


def test_bbox_iou_point_boxes_finite_where_ultralytics_is_nan():
    """Documented difference: CIoU of a zero-size box (ultralytics: atan(0 / 0) = NaN)."""
    b1 = torch.tensor([[2.0, 2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    b2 = torch.tensor([[2.5, 2.0, 1.0, 2.0]], dtype=torch.float64)
    assert torch.isnan(PEER_BBOX_IOU(b1, b2, CIoU=True)).all()
    out = FU.bbox_iou(b1, b2, CIoU=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(b1.grad).all()


def test_bbox_iou_inverted_box_is_no_match():
    """Documented difference: ultralytics' GIoU of a box inverted in both axes is ~1."""
    inverted = torch.tensor([[2.0, 2.0, -1.0, -1.0]], dtype=torch.float64)
    other = torch.tensor([[2.0, 2.0, 1.0, 1.0]], dtype=torch.float64)
    assert PEER_BBOX_IOU(inverted, other, GIoU=True).item() > 0.99
    assert FU.bbox_iou(inverted, other, GIoU=True).item() == 0.0
    assert FU.bbox_iou(inverted, other).item() == 0.0


def _xyxy(c):
    return torch.cat((c[..., :2] - c[..., 2:] / 2, c[..., :2] + c[..., 2:] / 2), -1)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "+".join(f) or "IoU")
@pytest.mark.parametrize("eps", [1e-7, 0.25])
@pytest.mark.parametrize("shapes", SHAPES[1:4], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bbox_iou_corner_form_values_and_both_gradients(flags, eps, shapes):
    """xywh=False: ultralytics adds eps to each height (fastloss's convention "ultralytics")."""
    b1, b2 = _xyxy(_cxcywh(shapes[0][:-1], 6)), _xyxy(_cxcywh(shapes[1][:-1], 7))
    if b1.shape == b2.shape and len(b1) > 2:
        b2[:2] = b1[:2]  # identical pairs
    _compare(lambda a, b: FU.bbox_iou(a, b, xywh=False, eps=eps, **flags), lambda a, b: PEER_BBOX_IOU(a, b, xywh=False, eps=eps, **flags),
             [b1, b2])


def test_bbox_iou_corner_form_differs_from_the_centre_form():
    """The two forms of ultralytics place eps differently (heights + eps in corner form only):
    the compat layer follows each (at eps 0.25 the difference is far above rounding)."""
    c = _cxcywh((20,), 5)
    a = FU.bbox_iou(_xyxy(c), _xyxy(c.flip(0)), xywh=False, eps=0.25)
    b = FU.bbox_iou(c, c.flip(0), eps=0.25)
    assert (a - b).abs().max() > 1e-3
    _close(a, PEER_BBOX_IOU(_xyxy(c), _xyxy(c.flip(0)), xywh=False, eps=0.25), **F64)


@pytest.mark.parametrize("call,match", [
    (lambda b: FU.bbox_iou(b, b, eps=0.0), "eps"),
    (lambda b: FU.bbox_iou(b[:, :3], b[:, :3]), r"\(\.\.\., 4\)"),
    (lambda b: FU.bbox_iou(b[:3], b[:2]), "broadcast"),
    (lambda b: FU.box_iou(b[0], b), "box1"),
    (lambda b: FU.box_iou(b, b, eps=-1.0), "eps"),
])
def test_bad_box_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(_cxcywh((4,), 0))


# ------------------------------------------------------------------------------ box_iou


def test_box_iou_pairwise_in_float32():
    g = _gen(7)
    x1 = torch.rand(6, 2, generator=g, dtype=torch.float64) * 4
    y1 = torch.rand(9, 2, generator=g, dtype=torch.float64) * 4
    b1 = torch.cat((x1, x1 + torch.rand(6, 2, generator=g, dtype=torch.float64) * 3 + 0.1), 1)
    b2 = torch.cat((y1, y1 + torch.rand(9, 2, generator=g, dtype=torch.float64) * 3 + 0.1), 1)
    out = _compare(FU.box_iou, PEER_BOX_IOU, [b1, b2], tol=F32)
    assert out.shape == (6, 9) and out.dtype == torch.float32  # ultralytics' .float()


# ------------------------------------------------------------------------------ VarifocalLoss


def _vfl_data(shape=(2, 7, 5), seed=0, label_dtype=torch.int64):
    g = _gen(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    label = (torch.rand(shape, generator=g) < 0.3).to(label_dtype)
    gt = torch.rand(shape, generator=g, dtype=torch.float64) * label
    return x, gt, label


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.75), (1.5, 0.25), (0.0, 1.0), (3.0, 0.0)])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.float32, torch.float64])
def test_varifocal_loss_float32(gamma, alpha, label_dtype):
    x, gt, label = _vfl_data(label_dtype=label_dtype)
    _compare(FU.VarifocalLoss(gamma, alpha), ORIGINAL["VarifocalLoss"](gamma, alpha), [x.float()], gt.float(), label, tol=F32)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.75), (1.5, 0.25)])
def test_varifocal_loss_float64(gamma, alpha):
    """ultralytics casts the BCE to float32 even for float64 inputs (float32 tolerance);
    ours is float64 throughout: checked against the float64 formula."""
    x, gt, label = _vfl_data(seed=3)
    _compare(FU.VarifocalLoss(gamma, alpha), ORIGINAL["VarifocalLoss"](gamma, alpha), [x], gt, label, tol=F32)

    def formula(x, gt, label):
        weight = alpha * x.sigmoid().pow(gamma) * (1 - label) + gt * label
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x, gt, reduction="none")
        return (bce * weight).mean(1).sum()

    _compare(FU.VarifocalLoss(gamma, alpha), formula, [x], gt, label.double())


def test_varifocal_loss_label_broadcasts():
    x, _, _ = _vfl_data(seed=4)
    label = (torch.rand(2, 7, 1, generator=_gen(6)) < 0.5).long()  # whole rows positive
    gt = torch.rand(2, 7, 5, generator=_gen(7), dtype=torch.float64) * label
    _compare(FU.VarifocalLoss(), ORIGINAL["VarifocalLoss"](), [x.float()], gt.float(), label, tol=F32)


def test_varifocal_loss_in_rtdetr_shape_and_dtype():
    x, gt, label = _vfl_data(shape=(3, 4, 6), seed=5)
    out = FU.VarifocalLoss()(x.half(), gt.half(), label)
    assert out.shape == () and out.dtype == torch.float32  # ultralytics' float32 BCE times an fp16 weight


@pytest.mark.parametrize("bad,match", [("half_label", "label must be 0 or 1"), ("negative_score", "gt_score must be 0 where label is 0"),
                                       ("shape", "gt_score must have"), ("one_dim", "at least 2 dims")])
def test_varifocal_loss_inputs_it_cannot_honour_raise(bad, match):
    x, gt, label = _vfl_data()
    if bad == "half_label":
        label = label * 0.5
    elif bad == "negative_score":
        gt = gt + 0.1
    elif bad == "shape":
        gt = gt[:, :3]
    else:
        x, gt, label = x.flatten(), gt.flatten(), label.flatten()
    with pytest.raises(ValueError, match=match):
        FU.VarifocalLoss()(x, gt, label)


@pytest.mark.parametrize("kwargs", [dict(gamma=-1.0), dict(alpha=1.5), dict(alpha=-0.1)])
def test_varifocal_loss_bad_parameters_fail_at_construction(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FU.VarifocalLoss(**kwargs)


# ------------------------------------------------------------------------------ FocalLoss


@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
@pytest.mark.parametrize("alpha", [0.25, 0.3, 1.0, 0.0, -0.5])
@pytest.mark.parametrize("shape,soft", [((2, 6, 5), False), ((9, 4), True), ((2, 3, 4, 2), True)])
def test_focal_loss(gamma, alpha, shape, soft):
    g = _gen(11)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    t = t if soft else (t < 0.3).double()
    out = _compare(FU.FocalLoss(gamma, alpha), ORIGINAL["FocalLoss"](gamma, alpha), [x], t)
    assert out.shape == ()


def test_focal_loss_float32_and_mixed_dtypes():
    x = torch.randn(4, 5, 3, generator=_gen(2))
    t = (torch.rand(4, 5, 3, generator=_gen(3)) < 0.3).double()
    # float32 logits, float64 labels: a float64 loss, as torch promotes (ultralytics' sigmoid stays float32)
    assert _compare(FU.FocalLoss(), ORIGINAL["FocalLoss"](), [x], t, tol=F32).dtype == torch.float64
    _compare(FU.FocalLoss(), ORIGINAL["FocalLoss"](), [x], t.float(), tol=F32)


@pytest.mark.parametrize("call,match", [
    (lambda: FU.FocalLoss(alpha=[0.25, 0.5]), "alpha must be one number"),
    (lambda: FU.FocalLoss(alpha=1.5), "alpha must be <= 1"),
    (lambda: FU.FocalLoss(gamma=-2.0), "gamma"),
    (lambda: FU.FocalLoss()(torch.randn(5), torch.rand(5)), "at least 2 dims"),
    (lambda: FU.FocalLoss()(torch.randn(5, 3), torch.randint(0, 2, (5, 3))), "label must be a float tensor"),
])
def test_focal_loss_arguments_it_cannot_honour_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------ DFLoss


@pytest.mark.parametrize("reg_max,bins", [(16, 16), (8, 8), (8, 10)])
@pytest.mark.parametrize("tshape", [(11, 4), (2, 3, 4)])
def test_dfloss(reg_max, bins, tshape):
    g = _gen(13)
    n = torch.Size(tshape).numel()
    pred = torch.randn(n, bins, generator=g, dtype=torch.float64) * 2
    target = torch.rand(tshape, generator=g, dtype=torch.float64) * (reg_max + 1) - 0.5  # some outside [0, reg_max - 1.01]
    target.view(-1)[:3] = torch.tensor([0.0, reg_max - 1.01, 3.0], dtype=torch.float64)  # the bounds and a whole bin
    keep = target.clone()
    out = _compare(FU.DFLoss(reg_max), lambda p, t: ORIGINAL["DFLoss"](reg_max)(p, t.clone()), [pred], target)
    assert out.shape == tshape[:-1] + (1,)
    assert torch.equal(target, keep)  # documented difference: ultralytics' clamp_ rewrites the caller's target


def test_dfloss_float32():
    pred = torch.randn(24, 16, generator=_gen(4))
    target = torch.rand(6, 4, generator=_gen(5)) * 15
    _compare(FU.DFLoss(), lambda p, t: ORIGINAL["DFLoss"]()(p, t.clone()), [pred], target, tol=F32)


@pytest.mark.parametrize("call,match", [
    (lambda: FU.DFLoss()(torch.randn(8, 16), torch.rand(3, 4) * 10), r"pred_dist must be \(target.numel\(\), bins\)"),
    (lambda: FU.DFLoss(16)(torch.randn(8, 8), torch.rand(2, 4)), "max_target"),
    (lambda: FU.DFLoss()(torch.randn(8, 16), (torch.rand(2, 4) * 10).requires_grad_()), "target"),
])
def test_dfloss_inputs_it_cannot_honour_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------ BboxLoss


def _bbox_inputs(reg_max, seed=0, fg_fraction=0.4, B=2, A=30, nc=3):
    g = _gen(seed)
    anchor = torch.rand(A, 2, generator=g, dtype=torch.float64) * 10
    stride = torch.tensor([8.0, 16.0, 32.0], dtype=torch.float64).repeat_interleave(A // 3).view(A, 1)
    side = 4 * reg_max if reg_max > 1 else 4
    pred_dist = torch.randn(B, A, side, generator=g, dtype=torch.float64)
    ltrb = torch.rand(B, A, 4, generator=g, dtype=torch.float64) * 5 + 0.2
    pred_bboxes = torch.cat((anchor - ltrb[..., :2], anchor + ltrb[..., 2:]), -1)
    target_bboxes = pred_bboxes + torch.randn(B, A, 4, generator=g, dtype=torch.float64) * 0.5
    target_bboxes[..., 2:] = torch.maximum(target_bboxes[..., 2:], target_bboxes[..., :2] + 0.1)
    fg_mask = torch.rand(B, A, generator=g) < fg_fraction
    target_scores = torch.rand(B, A, nc, generator=g, dtype=torch.float64) * fg_mask[..., None]
    target_scores_sum = target_scores.sum().clamp(min=1)
    imgsz = torch.tensor([320.0, 256.0], dtype=torch.float64)
    rest = (anchor, target_bboxes, target_scores, target_scores_sum, fg_mask, imgsz, stride)
    return pred_dist, pred_bboxes, rest


@pytest.mark.parametrize("reg_max", [16, 1])
@pytest.mark.parametrize("fg_fraction", [0.4, 0.0])
def test_bbox_loss(reg_max, fg_fraction):
    pred_dist, pred_bboxes, rest = _bbox_inputs(reg_max, fg_fraction=fg_fraction)
    ours, peer = FU.BboxLoss(reg_max), ORIGINAL["BboxLoss"](reg_max)
    assert (ours.dfl_loss is None) == (peer.dfl_loss is None)
    xa = [pred_dist.clone().requires_grad_(), pred_bboxes.clone().requires_grad_()]
    xb = [pred_dist.clone().requires_grad_(), pred_bboxes.clone().requires_grad_()]
    la, lb = ours(*xa, *rest), peer(*xb, *rest)
    for a, b in zip(la, lb):
        assert a.shape == b.shape == () and a.dtype == b.dtype
        _close(a, b, **F64)
    for part in range(2):  # each term's gradient, both predictions (connected even without foreground)
        ga = torch.autograd.grad(la[part] * 1.7, xa, retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(lb[part] * 1.7, xb, retain_graph=True, allow_unused=True)
        for a, b in zip(ga, gb):
            assert (a is None) == (b is None)
            if a is not None:
                _close(a, b, **F64)


# ------------------------------------------------------------------------------ patch


def _assert_originals():
    for name in CLASSES:
        assert getattr(UL, name) is ORIGINAL[name]
    for name, obj in ORIGINAL_DETR.items():
        assert getattr(UD, name) is obj
    assert UM.bbox_iou is PEER_BBOX_IOU and UM.box_iou is PEER_BOX_IOU and UT.bbox_iou is PEER_BBOX_IOU
    assert UL.TaskAlignedAssigner is UT.TaskAlignedAssigner


def _detr_loss(dtype=torch.float32):
    """RT-DETR's loss (varifocal + GIoU in centre form) on a fixed batch: values, gradients."""
    g = _gen(21)
    pred_bboxes = (torch.rand(2, 2, 6, 4, generator=g) * 0.5 + 0.2).to(dtype).requires_grad_()
    pred_scores = torch.randn(2, 2, 6, 4, generator=g).to(dtype).requires_grad_()
    batch = {"cls": torch.tensor([0, 2, 1]), "bboxes": torch.rand(3, 4, generator=g) * 0.4 + 0.2, "gt_groups": [2, 1]}
    out = UD.DETRLoss(nc=4, use_vfl=True)(pred_bboxes, pred_scores, batch)
    sum(out.values()).backward()
    return out, pred_bboxes.grad, pred_scores.grad


def test_patch_swaps_the_training_loss_classes_and_undo_restores():
    _assert_originals()
    before = _detr_loss()
    handle = fastloss.patch("ultralytics")
    try:
        for name in CLASSES:
            assert getattr(UL, name) is getattr(FU, name)
        for name in ORIGINAL_DETR:
            assert getattr(UD, name) is getattr(FU, name)
        # left alone on purpose: the public metrics and the assigner's / matcher's CIoU / GIoU
        assert UM.bbox_iou is PEER_BBOX_IOU and UT.bbox_iou is PEER_BBOX_IOU
        # ultralytics' own entry points now build fastloss's modules ...
        crit = UD.DETRLoss(nc=4, use_vfl=True)
        assert isinstance(crit.fl, FU.FocalLoss) and isinstance(crit.vfl, FU.VarifocalLoss)
        assert isinstance(UL.RotatedBboxLoss(16).dfl_loss, FU.DFLoss)  # the OBB loss's inherited __init__
        # ... and give the same numbers (float32: RT-DETR keeps its IoU targets in float32)
        after = _detr_loss()
        assert after[0].keys() == before[0].keys()
        for key in before[0]:
            _close(after[0][key], before[0][key], **F32)
        for a, b in zip(after[1:], before[1:]):
            _close(a, b, **F32)
        again = fastloss.patch("ultralytics")  # patching twice is harmless ...
        assert not again.active
        again.undo()
        assert UL.BboxLoss is FU.BboxLoss  # ... and its undo does not undo the first
    finally:
        handle.undo()
    _assert_originals()


def test_patch_as_a_context_manager():
    with fastloss.patch("ultralytics") as handle:
        assert handle.active and UL.DFLoss is FU.DFLoss and UD.bbox_iou is FU.bbox_iou
    _assert_originals()


def test_patched_detection_loss_matches_in_float64():
    """v8DetectionLoss's BboxLoss term through the patch (the whole criterion is in
    tests/test_examples_yolo.py): equal to ultralytics' to float64 rounding."""
    pred_dist, pred_bboxes, rest = _bbox_inputs(16, seed=9)
    with fastloss.patch("ultralytics"):
        ours = UL.BboxLoss(16)
    peer = UL.BboxLoss(16)
    assert type(ours) is FU.BboxLoss and type(peer) is ORIGINAL["BboxLoss"]
    for a, b in zip(ours(pred_dist, pred_bboxes, *rest), peer(pred_dist, pred_bboxes, *rest)):
        _close(a, b, **F64)



# ------------------------------------------------------------------------------ review fixes


def test_compile_fullgraph_focal_and_varifocal():
    """torch.compile(fullgraph=True, backend="aot_eager"): FocalLoss has no .item() in its
    forward (alpha's number is read when set) and VarifocalLoss's value checks (host reads)
    are skipped while compiling: the eager values and gradients."""
    x, gt, label = _vfl_data(seed=20)
    x, gt, label = x.float(), gt.float(), label.float()
    for loss, rest in ((FU.FocalLoss(1.5, 0.25), (label,)), (FU.FocalLoss(2.0, 0.0), (label,)), (FU.VarifocalLoss(), (gt, label))):
        torch._dynamo.reset()
        results = []
        for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
            xx = x.clone().requires_grad_()
            v = fn(xx, *rest)
            results.append((v,) + torch.autograd.grad(v, xx))
        for e, c in zip(*results):
            torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7)


def test_focal_loss_alpha_reassigned():
    """self.alpha stays ultralytics' tensor; setting it again is validated and used."""
    x, _, label = _vfl_data(seed=21)
    loss = FU.FocalLoss(1.5, 0.25)
    assert isinstance(loss.alpha, torch.Tensor) and loss.alpha.item() == 0.25
    loss.alpha = torch.tensor(0.5)
    _compare(loss, ORIGINAL["FocalLoss"](1.5, 0.5), [x], label.double())
    with pytest.raises(ValueError, match="alpha must be <= 1"):
        loss.alpha = 2.0
    with pytest.raises(ValueError, match="one number"):
        loss.alpha = [0.25, 0.5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_varifocal_loss_low_precision_documented(dtype):
    """fp16 / bf16 inputs: fastloss computes the focal weight in float32, ultralytics in
    fp16 / bf16 (the module docstring): float32 out, within that rounding."""
    x, gt, label = _vfl_data(shape=(4, 50, 5), seed=22)
    x, gt = x.to(dtype), gt.to(dtype)
    ours, peer = FU.VarifocalLoss()(x, gt, label), ORIGINAL["VarifocalLoss"]()(x, gt, label)
    assert ours.dtype == peer.dtype == torch.float32
    torch.testing.assert_close(ours, peer, rtol=1e-2 if dtype == torch.bfloat16 else 2e-3, atol=0)
    exact = FU.VarifocalLoss()(x.double(), gt.double(), label)
    assert (ours.double() - exact).abs() <= (peer.double() - exact).abs() + 1e-6  # fp32 weight: no further from the exact value


def test_built_while_patched_keep_what_they_captured():
    """The documented rule: a loss built while patched keeps fastloss's classes after undo."""
    with fastloss.patch("ultralytics"):
        bbox_loss = UL.BboxLoss(16)
    assert isinstance(bbox_loss, FU.BboxLoss) and isinstance(bbox_loss.dfl_loss, FU.DFLoss) and UL.BboxLoss is ORIGINAL["BboxLoss"]
    assert "built while patched" in FU._patch.__doc__.replace("\n    ", " ")


def _assigner_inputs(seed=9):
    """A crowded case: (scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)."""
    g = torch.Generator().manual_seed(seed)
    xs = (torch.arange(20) + 0.5) * 16
    pts = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    gt = torch.rand(2, 30, 2, generator=g) * 120
    gt = torch.cat([gt, gt + 8 + torch.rand(2, 30, 2, generator=g) * 60], -1)
    mask = (torch.rand(2, 30, 1, generator=g) > 0.2).float()
    labels = torch.randint(0, 5, (2, 30, 1), generator=g).float()
    scores = torch.rand(2, 400, 5, generator=g)
    pd = torch.cat([pts - 20, pts + 20], -1)[None].expand(2, -1, -1) + torch.randn(2, 400, 4, generator=g)
    return scores, pd, pts, labels, gt, mask


def _assert_same(got, expected):
    for x, y in zip(got, expected, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_task_aligned_assigner_drop_in():
    """Signature, attributes and the five outputs bit-equal to ultralytics' on a crowded case
    (the full grid is tests/test_assign.py's)."""
    from ultralytics.utils.tal import TaskAlignedAssigner

    assert inspect.signature(FU.TaskAlignedAssigner.__init__) == inspect.signature(TaskAlignedAssigner.__init__)
    assert list(inspect.signature(FU.TaskAlignedAssigner.forward).parameters) == list(
        inspect.signature(TaskAlignedAssigner.forward).parameters)
    args = _assigner_inputs()
    for kw in (dict(topk=10, num_classes=5, alpha=0.5, beta=6.0, stride=[8, 16, 32]), dict(num_classes=5)):
        ours, peer = FU.TaskAlignedAssigner(**kw), TaskAlignedAssigner(**kw)
        assert (ours.topk, ours.topk2, ours.stride_val, ours.eps) == (peer.topk, peer.topk2, peer.stride_val, peer.eps)
        _assert_same(ours(*args), peer(*args))
    with pytest.raises(ValueError, match="topk2"):
        FU.TaskAlignedAssigner(topk=10, topk2=5)


def test_patch_swaps_the_task_aligned_assigner(monkeypatch):
    """fastloss.patch puts a subclass of ultralytics' TaskAlignedAssigner under the name the
    detection loss builds from: fastloss's forward (bit-equal), ultralytics' own for topk2,
    pair_overlaps tensors and subclasses; patching twice is harmless; undo restores."""
    args = _assigner_inputs(seed=4)
    kw = dict(topk=10, num_classes=5, alpha=0.5, beta=6.0, stride=[8, 16, 32])
    calls = []
    real = fastloss.task_aligned_assign
    monkeypatch.setattr(fastloss, "task_aligned_assign", lambda *a, **k: calls.append(1) or real(*a, **k))
    with fastloss.patch("ultralytics"):
        swapped = UL.TaskAlignedAssigner
        assert swapped is not UT.TaskAlignedAssigner and issubclass(swapped, UT.TaskAlignedAssigner)
        assert swapped.__name__ == "TaskAlignedAssigner"
        with fastloss.patch("ultralytics") as again:
            assert not again.active and UL.TaskAlignedAssigner is swapped
        assigner = swapped(**kw)
        _assert_same(assigner(*args), UT.TaskAlignedAssigner(**kw)(*args))
        assert len(calls) == 1
        # what fastloss cannot follow runs ultralytics' code
        _assert_same(swapped(topk2=5, **kw)(*args), UT.TaskAlignedAssigner(topk2=5, **kw)(*args))

        class Subclass(swapped):
            pass

        _assert_same(Subclass(**kw)(*args), UT.TaskAlignedAssigner(**kw)(*args))
        assert len(calls) == 1
    _assert_originals()


def test_patched_detection_loss_assignments_bit_equal():
    """v8DetectionLoss built while patched uses fastloss's assigner: its five outputs, and with
    ultralytics' BboxLoss in both the loss and both gradients, bit-equal to the unpatched
    criterion's on the CPU (float32)."""
    import helpers

    ex = helpers.load_example("yolo_loss")
    args = ex.parse_args(["--batch", "2", "--imgsz", "128", "--targets", "4"])
    model = ex.build_model(args)
    preds, batch = ex.synthetic_inputs(model, args, torch.float32)
    peer = UL.v8DetectionLoss(model)
    with fastloss.patch("ultralytics"):
        ours = UL.v8DetectionLoss(model)
    assert isinstance(ours.assigner, UT.TaskAlignedAssigner) and type(ours.assigner) is not UT.TaskAlignedAssigner
    ours.bbox_loss = peer.bbox_loss  # only the assigner differs
    outputs = []
    for crit in (ours, peer):
        crit.assigner.register_forward_hook(lambda module, inputs, out: outputs.append(out))
    (loss_a, grads_a), (loss_b, grads_b) = ex.loss_step(ours, preds, batch), ex.loss_step(peer, preds, batch)
    _assert_same(outputs[0], outputs[1])
    assert outputs[0][3].any()  # some foreground
    assert torch.equal(loss_a, loss_b) and loss_a[0] > 0
    for key in grads_b:
        assert torch.equal(grads_a[key], grads_b[key])
