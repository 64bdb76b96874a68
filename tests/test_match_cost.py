"""Hungarian matching cost blocks (family ``match_cost``) against the peers' full cost matrices.

The peers build one (B*Q, sum T) matrix and use its per-image diagonal blocks; fastloss's blocks
must equal those blocks bit for bit (CPU, fp32 and fp64) on every backend (reference, C++ CPU,
Triton under the interpreter), and scipy's linear_sum_assignment must then return the peer's
matches.  The peers' formulas are restated below (not imported: DETR and DINO are not
packages), each naming its source:

* DETR: facebookresearch/detr models/matcher.py (HungarianMatcher.forward) and util/box_ops.py
  (box_cxcywh_to_xyxy, box_iou, generalized_box_iou) @ 29901c5;
* DINO: IDEA-Research/DINO models/dino/matcher.py (HungarianMatcher.forward, focal class cost)
  @ 2a4df86;
* mmdetection 3.3.0: its own ClassificationCost / FocalLossCost / BBoxL1Cost / IoUCost classes
  (imported) summed as HungarianAssigner.assign does (torch.stack(costs).sum(0)), and its
  HungarianAssigner for the assignment.
"""
import pytest
import torch

import helpers

import fastloss
from fastloss.ops import match_cost as ops
from fastloss.reference import match_cost as reference

scipy_optimize = pytest.importorskip("scipy.optimize")

# ----------------------------------------------------------------------------- the peers, restated


def _peer_cxcywh_to_xyxy(b):  # DETR util/box_ops.py box_cxcywh_to_xyxy
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _peer_giou(b1, b2):
    """DETR util/box_ops.py generalized_box_iou (torchvision's box_area; its asserts left out:
    the tests feed it valid boxes only)."""
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    inter_wh = (torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1[:, None] + area2 - inter
    iou = inter / union
    hull_wh = (torch.max(b1[:, None, 2:], b2[:, 2:]) - torch.min(b1[:, None, :2], b2[:, :2])).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / hull


def _peer_full(logits, boxes, labels, tboxes, w_class, w_bbox, w_giou, focal_alpha=None):
    """DETR's (focal_alpha None) or DINO's matcher cost: the full (B*Q, N) matrix."""
    x = logits.flatten(0, 1)
    out_bbox = boxes.flatten(0, 1)
    if focal_alpha is None:  # DETR: -softmax prob at the target class
        cost_class = -x.softmax(-1)[:, labels]
    else:  # DINO: focal pos - neg, gamma 2.0, eps 1e-8, in its order of products
        p = x.sigmoid()
        neg = (1 - focal_alpha) * (p ** 2.0) * (-(1 - p + 1e-8).log())
        pos = focal_alpha * ((1 - p) ** 2.0) * (-(p + 1e-8).log())
        cost_class = pos[:, labels] - neg[:, labels]
    cost_bbox = torch.cdist(out_bbox, tboxes, p=1)
    cost_giou = -_peer_giou(_peer_cxcywh_to_xyxy(out_bbox), _peer_cxcywh_to_xyxy(tboxes))
    return w_bbox * cost_bbox + w_class * cost_class + w_giou * cost_giou


def _peer_blocks(full, B, Q, sizes):
    """The matcher's C.view(B, Q, -1).split(sizes, -1)[b][b]."""
    return [c[b] for b, c in enumerate(full.view(B, Q, -1).split(sizes, -1))]


def _peer_lsa(blocks):
    out = []
    for c in blocks:
        i, j = scipy_optimize.linear_sum_assignment(c)
        out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return out


# ----------------------------------------------------------------------------- inputs


def _case(seed, B, Q, C, sizes, dtype=torch.float32, ties=True):
    """Random DETR outputs (cxcywh in [0, 1]) and targets; with ``ties`` some queries copy a
    target box exactly (L1 0, GIoU 1) and some targets repeat (identical columns)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, Q, C, generator=g) * 3).to(dtype)

    def boxes(n):
        c = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.01
        return torch.cat([c, wh], 1).to(dtype)

    N = sum(sizes)
    pred = boxes(B * Q).view(B, Q, 4)
    tgt = boxes(N)
    labels = torch.randint(0, C, (N,), generator=g)
    if ties and N > 1:
        tgt[-1] = tgt[0]
        labels[-1] = labels[0]
        o = 0
        for b, t in enumerate(sizes):
            if t and Q > 1:
                pred[b, 1] = tgt[o]
            o += t
    return logits, pred, labels, tgt


def _blocks(costs, Q, sizes):
    return ops.split_blocks(costs, sizes, Q)


def _bits_equal(a, b):
    """Bitwise equality (sign of zero and NaN payloads included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = torch.int64 if a.dtype == torch.float64 else torch.int32
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


CPU_BACKENDS = [pytest.param(b, id=b) for b in ("reference", "cpu", "triton")]


def _small(backend):
    # the Triton interpreter is slow: tiny shapes there
    return (2, 7, 5, [3, 0]) if backend == "triton" else (3, 30, 11, [4, 0, 9])


# ----------------------------------------------------------------------------- DETR / DINO


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("convention,weights", [("detr", (1, 5, 2)), ("detr", (1.0, 1.0, 1.0)), ("dino", (2.0, 5.0, 2.0)),
                                                ("dino", (0.3, 0.7, 1.1))])
def test_blocks_bit_equal_detr_dino(convention, weights, backend, dtype):
    helpers.require_backend("cpu", backend)
    B, Q, C, sizes = _small(backend)
    logits, pred, labels, tgt = _case(1, B, Q, C, sizes, dtype)
    alpha = 0.25 if convention == "dino" else None
    peer = _peer_blocks(_peer_full(logits, pred, labels, tgt, *weights, focal_alpha=alpha), B, Q, sizes)
    costs = fastloss.match_cost(logits, pred, labels, tgt, sizes, convention=convention, weights=weights, backend=backend)
    assert costs.shape == (Q * sum(sizes),) and costs.dtype == dtype
    for b, (ours, theirs) in enumerate(zip(_blocks(costs, Q, sizes), peer)):
        assert _bits_equal(ours, theirs), f"image {b}: {(ours != theirs).sum()} of {ours.numel()} differ"


@helpers.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backend", ["reference", "cuda", "triton"])
@pytest.mark.parametrize("convention,weights", [("detr", (1, 5, 2)), ("dino", (2.0, 5.0, 2.0))])
def test_blocks_bit_equal_detr_dino_on_cuda(convention, weights, backend, dtype):
    """On CUDA the peers' torch.cdist(p=1) sums the four |d_k| in a shuffle-down tree,
    (|d0| + |d2|) + (|d1| + |d3|), not left to right as on the CPU: every backend must follow."""
    helpers.require_backend("cuda", backend)
    sizes = [40, 0, 300, 7]
    logits, pred, labels, tgt = (t.cuda() for t in _case(3, 4, 100, 91, sizes, dtype))
    alpha = 0.25 if convention == "dino" else None
    peer = _peer_blocks(_peer_full(logits, pred, labels, tgt, *weights, focal_alpha=alpha), 4, 100, sizes)
    costs = fastloss.match_cost(logits, pred, labels, tgt, sizes, convention=convention, weights=weights, backend=backend)
    for b, (ours, theirs) in enumerate(zip(_blocks(costs, 100, sizes), peer)):
        assert _bits_equal(ours, theirs), f"image {b}: {(ours != theirs).sum()} of {ours.numel()} differ"


def test_blocks_bit_equal_detr_batch_of_the_benchmark_shape():
    """DETR's shape (900 queries, 91 classes; uneven target counts), C++ CPU and reference."""
    sizes = [100, 37, 0, 63]
    logits, pred, labels, tgt = _case(2, 4, 900, 91, sizes)
    peer = _peer_blocks(_peer_full(logits, pred, labels, tgt, 1, 5, 2), 4, 900, sizes)
    for backend in fastloss.available_backends("cpu"):
        if backend == "triton":
            continue  # the interpreter: tiny shapes only (test_blocks_bit_equal_detr_dino)
        got = _blocks(fastloss.match_cost(logits, pred, labels, tgt, sizes, weights=(1, 5, 2), backend=backend), 900, sizes)
        assert all(_bits_equal(x, y) for x, y in zip(got, peer)), backend


@pytest.mark.parametrize("convention", ["detr", "dino"])
def test_hungarian_match_equals_the_peer(convention):
    sizes = [5, 0, 12, 1]
    for seed in range(3):
        logits, pred, labels, tgt = _case(10 + seed, 4, 40, 9, sizes)
        alpha = 0.25 if convention == "dino" else None
        peer = _peer_lsa(_peer_blocks(_peer_full(logits, pred, labels, tgt, 2, 5, 2, focal_alpha=alpha), 4, 40, sizes))
        costs = fastloss.match_cost(logits, pred, labels, tgt, torch.tensor(sizes), convention=convention, weights=(2, 5, 2))
        ours = fastloss.hungarian_match(costs, sizes, 40)
        assert len(ours) == 4
        for (i, j), (pi, pj) in zip(ours, peer):
            assert i.dtype == j.dtype == torch.int64 and torch.equal(i, pi) and torch.equal(j, pj)


def test_compat_matchers_equal_the_peers():
    from fastloss.compat import detr, dino

    sizes = [3, 0, 6]
    logits, pred, labels, tgt = _case(5, 3, 20, 7, sizes)
    outputs = {"pred_logits": logits, "pred_boxes": pred, "aux_outputs": []}
    targets = [{"labels": l, "boxes": b} for l, b in zip(labels.split(sizes), tgt.split(sizes))]
    for matcher, alpha in ((detr.HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2), None),
                           (dino.HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25), 0.25)):
        peer = _peer_lsa(_peer_blocks(_peer_full(logits, pred, labels, tgt, matcher.cost_class, matcher.cost_bbox, matcher.cost_giou,
                                                 focal_alpha=alpha), 3, 20, sizes))
        got = matcher(outputs, targets)
        assert [tuple(map(torch.Tensor.tolist, p)) for p in got] == [tuple(map(torch.Tensor.tolist, p)) for p in peer]
    with pytest.raises(ValueError, match="all costs"):
        detr.HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)


# ----------------------------------------------------------------------------- mmdetection


def _mmdet():
    helpers.import_mmdet_losses()  # mmcv-lite's stand-in for its compiled ops, or a skip
    from mmdet.models.task_modules.assigners import HungarianAssigner, match_cost
    from mmengine.structures import InstanceData

    return match_cost, HungarianAssigner, InstanceData


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("class_cost,l1_format,order", [("softmax", "xywh", ("class", "bbox", "giou")),
                                                        ("focal", "xywh", ("class", "bbox", "giou")),
                                                        ("focal", "xyxy", ("giou", "class", "bbox"))])
def test_blocks_bit_equal_mmdet(class_cost, l1_format, order, backend):
    """mmdetection's cost classes per image, summed as HungarianAssigner sums them; its
    HungarianAssigner's assignment from our blocks."""
    helpers.require_backend("cpu", backend)
    mc, HungarianAssigner, InstanceData = _mmdet()
    B, Q, C, sizes = _small(backend)
    logits, pred, labels, tgt = _case(3, B, Q, C, sizes)
    shapes = [(480 + 37 * b, 640 - 53 * b) for b in range(B)]  # (h, w)
    scale = lambda boxes, hw: _peer_cxcywh_to_xyxy(boxes) * boxes.new_tensor([hw[1], hw[0], hw[1], hw[0]])  # mmdet's DETR head
    pred_px = torch.stack([scale(pred[b], shapes[b]) for b in range(B)])
    tgt_px = torch.cat([scale(t, shapes[b]) for b, t in enumerate(tgt.split(sizes))])
    w = {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    cls = mc.ClassificationCost(weight=w["class"]) if class_cost == "softmax" else mc.FocalLossCost(weight=w["class"])
    make = {"class": cls, "bbox": mc.BBoxL1Cost(box_format=l1_format, weight=w["bbox"]), "giou": mc.IoUCost(iou_mode="giou", weight=w["giou"])}
    costs = fastloss.match_cost(logits, pred_px, labels, tgt_px, sizes, convention="mmdet", class_cost=class_cost, l1_format=l1_format,
                                img_shapes=shapes, weights=(w["class"], w["bbox"], w["giou"]), order=order, backend=backend)
    assigner = HungarianAssigner([dict(type=type(make[t]).__name__, weight=w[t], **({"box_format": l1_format} if t == "bbox" else {}))
                                  for t in order])
    o = 0
    for b, (ours, T) in enumerate(zip(_blocks(costs, Q, sizes), sizes)):
        preds = InstanceData(scores=logits[b], bboxes=pred_px[b])
        gts = InstanceData(labels=labels[o:o + T], bboxes=tgt_px[o:o + T])
        meta = {"img_shape": shapes[b]}
        if T:
            peer = torch.stack([make[t](preds, gts, meta) for t in order]).sum(0)
            assert _bits_equal(ours, peer), f"image {b}"
        result = assigner.assign(preds, gts, img_meta=meta)
        i, j = fastloss.hungarian_match(costs, sizes, Q)[b]
        expected = torch.zeros(Q, dtype=torch.long)
        expected[i] = j + 1
        assert torch.equal(result.gt_inds, expected), f"image {b}"
        o += T


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_targets_and_queries(backend):
    helpers.require_backend("cpu", backend)
    logits, pred, labels, tgt = _case(4, 2, 5, 3, [0, 0])
    costs = fastloss.match_cost(logits, pred, labels, tgt, [0, 0], backend=backend)
    assert costs.shape == (0,)
    assert [(i.tolist(), j.tolist()) for i, j in fastloss.hungarian_match(costs, [0, 0], 5)] == [([], []), ([], [])]
    logits, pred, labels, tgt = _case(4, 2, 0, 3, [2, 1])
    assert fastloss.match_cost(logits, pred, labels, tgt, [2, 1], backend=backend).shape == (0,)
    logits, pred, labels, tgt = _case(4, 0, 5, 3, [])
    assert fastloss.match_cost(logits, pred, labels, tgt, [], backend=backend).shape == (0,)


def _degenerate_case(dtype=torch.float32):
    """Point boxes, zero-width / zero-height boxes, identical degenerate pairs, an inverted box."""
    logits, pred, labels, tgt = _case(6, 2, 6, 4, [4, 3], dtype, ties=False)
    pred[0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # point
    pred[0, 1] = torch.tensor([0.3, 0.3, 0.0, 0.2])  # zero width
    pred[0, 2] = torch.tensor([0.7, 0.7, 0.1, 0.0])  # zero height
    pred[1, 0] = torch.tensor([0.2, 0.2, 0.0, 0.0])
    pred[1, 3] = torch.tensor([0.4, 0.4, -0.1, 0.2])  # inverted (DETR asserts)
    tgt[0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # the same point as pred[0, 0]
    tgt[1] = torch.tensor([0.3, 0.6, 0.0, 0.3])  # zero width, on pred[0, 1]'s vertical line
    tgt[4] = torch.tensor([0.2, 0.2, 0.0, 0.0])  # the same point as pred[1, 0]
    return logits, pred, labels, tgt


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_degenerate_boxes_finite_and_equal_to_the_peer_where_it_is_finite(backend):
    helpers.require_backend("cpu", backend)
    logits, pred, labels, tgt = _degenerate_case()
    sizes = [4, 3]
    costs = fastloss.match_cost(logits, pred, labels, tgt, sizes, weights=(1, 5, 2), backend=backend)
    assert torch.isfinite(costs).all()
    ref = fastloss.match_cost(logits, pred, labels, tgt, sizes, weights=(1, 5, 2), backend="reference")
    assert _bits_equal(costs, ref)
    peer = _peer_blocks(_peer_full(logits, pred, labels, tgt, 1, 5, 2), 2, 6, sizes)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 3] = False  # the inverted box: no peer value
    for b, (ours, theirs) in enumerate(zip(_blocks(costs, 6, sizes), peer)):
        finite = torch.isfinite(theirs) & valid[b][:, None]
        assert (~finite).any() or b == 1  # the identical point pair and the collinear pair are 0 / 0 in DETR
        assert _bits_equal(ours[finite], theirs[finite])
    # identical point boxes: GIoU 0 by the 0 / 0 = 0 rule, so the cost is w_bbox * L1 (0) + class
    assert costs[0] == -logits[0, 0].softmax(-1)[labels[0]]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_propagates_and_bad_labels_never_read_out_of_bounds(backend):
    helpers.require_backend("cpu", backend)
    logits, pred, labels, tgt = _case(7, 2, 4, 3, [2, 2])
    pred[0, 2, 1] = float("nan")
    costs = fastloss.match_cost(logits, pred, labels, tgt, [2, 2], backend=backend)
    block = _blocks(costs, 4, [2, 2])[0]
    assert torch.isnan(block[2]).all() and torch.isfinite(block[[0, 1, 3]]).all()
    # the op itself (the public function rejects such labels on CPU tensors): NaN costs for the bad target
    logits, pred, labels, tgt = _case(7, 2, 4, 3, [2, 2])
    args = _op_args(logits, pred, labels, tgt, [2, 2])
    args[5] = torch.tensor([0, 3, -1, 2])
    out = ops.match_cost_op(*args, backend)
    cols = out.view(2, 4, 2)  # both images have 2 targets: (image, query, target)
    assert torch.isnan(cols[0, :, 1]).all() and torch.isnan(cols[1, :, 0]).all()
    assert torch.isfinite(cols[0, :, 0]).all() and torch.isfinite(cols[1, :, 1]).all()


def _op_args(logits, pred, labels, tgt, sizes):
    offsets, image = ops._sizes(sizes, logits.shape[0], labels.shape[0], logits.device)
    return [reference.class_table(logits, reference.CLASS_SOFTMAX), pred, reference.cxcywh_to_xyxy(pred), tgt, reference.cxcywh_to_xyxy(tgt),
            labels, image, offsets, 1.0, 5.0, 2.0, reference.GIOU_DETR, [1, 0, 2]]


def test_reduced_precision_inputs_are_read_in_fp32():
    logits, pred, labels, tgt = _case(8, 2, 6, 5, [3, 2])
    for dt in (torch.float16, torch.bfloat16):
        got = fastloss.match_cost(logits.to(dt), pred.to(dt), labels, tgt.to(dt), [3, 2])
        want = fastloss.match_cost(logits.to(dt).float(), pred.to(dt).float(), labels, tgt.to(dt).float(), [3, 2])
        assert got.dtype == torch.float32 and _bits_equal(got, want)


def test_deterministic_across_runs_and_threads():
    logits, pred, labels, tgt = _case(9, 3, 64, 11, [20, 5, 31])
    first = fastloss.match_cost(logits, pred, labels, tgt, [20, 5, 31])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = fastloss.match_cost(logits, pred, labels, tgt, [20, 5, 31])
    finally:
        torch.set_num_threads(threads)
    assert _bits_equal(first, again)


def test_unwritten_elements_would_show():
    """Every element of the flat result is written (a NaN-poisoned buffer of the size stays clean)."""
    logits, pred, labels, tgt = _case(11, 3, 17, 6, [5, 0, 8])
    helpers.prepoison_heap(17 * 13, torch.float32)
    for backend in fastloss.available_backends("cpu"):
        assert torch.isfinite(fastloss.match_cost(logits, pred, labels, tgt, [5, 0, 8], backend=backend)).all(), backend


def test_op_opcheck_and_compile_fullgraph():
    logits, pred, labels, tgt = _case(12, 2, 6, 4, [3, 2])
    torch.library.opcheck(ops.match_cost_op, tuple(_op_args(logits, pred, labels, tgt, [3, 2])) + (None,))
    sizes = torch.tensor([3, 2])
    fn = torch.compile(lambda *a: fastloss.match_cost(*a, convention="dino", weights=(2.0, 5.0, 2.0)), fullgraph=True)
    assert _bits_equal(fn(logits, pred, labels, tgt, sizes), fastloss.match_cost(logits, pred, labels, tgt, sizes, convention="dino",
                                                                                 weights=(2.0, 5.0, 2.0)))


def test_bad_inputs():
    logits, pred, labels, tgt = _case(13, 2, 5, 4, [2, 1])
    mc = fastloss.match_cost
    bad = [
        (lambda: mc(logits[0], pred, labels, tgt, [2, 1]), "pred_logits"),
        (lambda: mc(logits.long(), pred, labels, tgt, [2, 1]), "pred_logits"),
        (lambda: mc(logits, pred[..., :3], labels, tgt, [2, 1]), "pred_boxes"),
        (lambda: mc(logits, pred, labels, tgt[:, :3], [2, 1]), "tgt_boxes"),
        (lambda: mc(logits, pred, labels.float(), tgt, [2, 1]), "tgt_labels"),
        (lambda: mc(logits, pred, labels[:2], tgt, [2, 1]), "tgt_labels"),
        (lambda: mc(logits, pred, labels + 4, tgt, [2, 1]), "tgt_labels"),
        (lambda: mc(logits, pred, labels, tgt, [2, 2]), "sizes"),
        (lambda: mc(logits, pred, labels, tgt, [3]), "sizes"),
        (lambda: mc(logits, pred, labels, tgt, [3, -0.5]), "sizes"),
        (lambda: mc(logits, pred, labels, tgt, torch.tensor([1.0, 2.0])), "sizes"),
        (lambda: mc(logits, pred, labels, tgt, torch.tensor([3, 1])), "sizes"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="deformable"), "convention"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], weights=(1, 1)), "weights"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], weights=(1, "5", 2)), "w_bbox"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="dino", focal_alpha=1.5), "focal_alpha"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="dino", focal_gamma=-1), "focal_gamma"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], img_shapes=[(4, 4), (4, 4)]), "img_shapes"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="mmdet"), "img_shapes"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="mmdet", img_shapes=[(4, 4)]), "img_shapes"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="mmdet", img_shapes=[(4, 4)] * 2, class_cost="ce"), "class_cost"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="mmdet", img_shapes=[(4, 4)] * 2, l1_format="cxcywh"), "l1_format"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="mmdet", img_shapes=[(4, 4)] * 2, order=("class", "giou")), "order"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], convention="mmdet", img_shapes=[(4, 4)] * 2, focal_eps=-1.0), "focal_eps"),
        (lambda: mc(logits, pred, labels, tgt, [2, 1], backend="nope"), "backend"),
    ]
    for call, word in bad:
        with pytest.raises(ValueError, match=word):
            call()
    with pytest.raises(RuntimeError, match="offsets"):  # the native op checks what it is handed
        args = _op_args(logits, pred, labels, tgt, [2, 1])
        args[7] = torch.tensor([0, 2, 2])
        ops.match_cost_op(*args, "cpu" if "cpu" in fastloss.available_backends("cpu") else None)


def test_compat_mmdet_hungarian_assigner_equals_mmdetection():
    """fastloss.compat.mmdet.HungarianAssigner against mmdetection's, DETR's and DINO's configs."""
    from fastloss.compat import mmdet as compat

    _, HungarianAssigner, InstanceData = _mmdet()
    configs = [[dict(type="ClassificationCost", weight=1.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                dict(type="IoUCost", iou_mode="giou", weight=2.0)],
               [dict(type="FocalLossCost", weight=2.0), dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                dict(type="IoUCost", iou_mode="giou", weight=2.0)]]
    logits, pred, labels, tgt = _case(14, 2, 25, 8, [6, 0])
    for cfg in configs:
        ours, theirs = compat.HungarianAssigner(cfg), HungarianAssigner(cfg)
        for b, (lo, hi) in enumerate(((0, 6), (6, 6))):
            hw = (400 + 50 * b, 600)
            factor = pred.new_tensor([hw[1], hw[0], hw[1], hw[0]])
            preds = InstanceData(scores=logits[b], bboxes=_peer_cxcywh_to_xyxy(pred[b]) * factor)
            gts = InstanceData(labels=labels[lo:hi], bboxes=_peer_cxcywh_to_xyxy(tgt[lo:hi]) * factor)
            got, want = ours.assign(preds, gts, img_meta={"img_shape": hw}), theirs.assign(preds, gts, img_meta={"img_shape": hw})
            assert got.num_gts == want.num_gts and torch.equal(got.gt_inds, want.gt_inds) and torch.equal(got.labels, want.labels)
    for bad in ([dict(type="ClassificationCost")], configs[0] + [dict(type="IoUCost")], [dict(type="DiceCost")],
                [dict(type="FocalLossCost", binary_input=True), configs[0][1], configs[0][2]],
                [configs[0][0], configs[0][1], dict(type="IoUCost", iou_mode="iou")],
                [dict(type="ClassificationCost", weight=1.0, extra=1), configs[0][1], configs[0][2]]):
        with pytest.raises(ValueError, match="HungarianAssigner"):
            compat.HungarianAssigner(bad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    """Strided views (logits with its query and class axes swapped, boxes sliced out of wider
    rows, every other target) give the same bits as their contiguous copies."""
    helpers.require_backend("cpu", backend)
    logits, pred, labels, tgt = _case(15, 2, 6, 5, [4, 3])
    wide_pred = torch.cat([pred, torch.rand(2, 6, 2)], -1)[..., :4]
    tgt2 = torch.stack([tgt, tgt + 1], 1).flatten(0, 1)[::2]
    labels2 = torch.stack([labels, labels], 1).flatten()[::2]
    logits_t = logits.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (wide_pred.is_contiguous() or tgt2.is_contiguous() or labels2.is_contiguous() or logits_t.is_contiguous())
    got = fastloss.match_cost(logits_t, wide_pred, labels2, tgt2, [4, 3], convention="dino", backend=backend)
    assert _bits_equal(got, fastloss.match_cost(logits, pred, labels, tgt, [4, 3], convention="dino", backend=backend))
