"""fastloss.distributed.reduce_mean and ``sync_avg_factor`` (issue 11, "Multi-GPU").

Two CPU processes over the gloo backend (this file run as a script, one process per rank, a
FileStore rendezvous, bounded timeouts) with different numbers of positives per rank:
reduce_mean gives the mean on both ranks; the losses with ``sync_avg_factor=True`` give each
rank its loss sum / (mean avg_factor + eps); under DistributedDataParallel the averaged
gradient equals the single-process gradient of the concatenated batch normalised by its
whole count (the reason to synchronise), and without the sync it does not; the synchronised
loss runs under ``torch.compile(fullgraph=True)``.  Single-process: no communication and the
same bits as without the flag, the argument checks, and the flag present on every function
and module that takes avg_factor.

The ranks write what they computed to files; the expectations are computed here, in this
process (no process group), from the same deterministic data.
"""
import inspect
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

import fastloss
from fastloss import distributed

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no torch.distributed with the gloo backend")

WORLD = 2
C = 3  # classes; label C is background (mmdetection's convention)
EPS = torch.finfo(torch.float32).eps  # the eps of avg_factor's division (fastloss/ops/_common.py finish)
RANK_TIMEOUT_S = 90  # each rank process, start to end (a hung collective fails the test, not the run)


# ====================================================================== the data of each rank


def _batch(rank):
    """Rank ``rank``'s deterministic batch: features (n, 4), class labels with ``pos`` positives
    (the others background), target boxes; rank 0 has 1 positive of 6, rank 1 has 7 of 10."""
    g = torch.Generator().manual_seed(1000 + rank)
    n, pos = ((6, 1), (10, 7))[rank]
    feats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    labels = torch.full((n,), C, dtype=torch.long)
    labels[:pos] = torch.randint(0, C, (pos,), generator=g)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
    boxes = torch.cat([xy, xy + 2 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 5], -1)
    return feats, labels, boxes, pos


def _model():
    torch.manual_seed(7)
    return torch.nn.Linear(4, C + 4).double()  # C class logits and 4 box deltas per row


def _detector_loss(model, feats, labels, boxes, pos, sync):
    """A detection head's loss: sigmoid focal over all rows plus GIoU and L1 over the
    positives (rows :pos), each divided by the number of positives (mmdetection's heads)."""
    out = model(feats)
    logits, deltas = out[:, :C], out[:pos, C:]
    anchors = boxes[:pos] + 0.5
    pred = anchors + deltas
    return (fastloss.sigmoid_focal_loss(logits, labels, avg_factor=float(pos), sync_avg_factor=sync)
            + fastloss.box_iou_loss(pred, boxes[:pos], avg_factor=torch.tensor(float(pos), dtype=torch.float64), sync_avg_factor=sync)
            + fastloss.l1_loss(pred, boxes[:pos], avg_factor=torch.tensor(pos), sync_avg_factor=sync))


def _per_loss(rank):
    """The per-loss cases: name -> (fn(x, sync, reduction) -> loss, x); x: rank's input (fp64)."""
    feats, labels, boxes, pos = _batch(rank)
    x = torch.cat([feats, feats[:, :1]], 1)[:, :C].contiguous()  # (n, C) logits
    pred = boxes + 0.25 * feats
    cls = labels.clamp(max=C - 1)
    return {
        # avg_factor as a Python number, an integer tensor (a count), a float tensor
        "sigmoid_focal_loss": (lambda x, s, r: fastloss.sigmoid_focal_loss(x, labels, reduction=r, avg_factor=pos if r == "mean" else None,
                                                                           sync_avg_factor=s), x),
        "cross_entropy": (lambda x, s, r: fastloss.cross_entropy(x, cls, reduction=r, avg_factor=torch.tensor(pos) if r == "mean" else None,
                                                                 sync_avg_factor=s), x),
        "box_iou_loss": (lambda x, s, r: fastloss.box_iou_loss(x, boxes, "ciou", reduction=r, sync_avg_factor=s,
                                                               avg_factor=torch.tensor(pos + 0.5, dtype=torch.float64) if r == "mean" else None),
                         pred),
        "nn.SigmoidFocalLoss": (lambda x, s, r: fastloss.nn.SigmoidFocalLoss(reduction=r, loss_weight=2.0, sync_avg_factor=s)(
            x, labels, avg_factor=pos if r == "mean" else None), x),
    }


# ====================================================================== one rank (a process)


def _rank_main(rank, store, out):
    """Run on rank ``rank`` of WORLD (gloo, FileStore ``store``); write the results to ``out``."""
    import datetime

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=RANK_TIMEOUT_S / 2))
    try:
        res = {}
        # reduce_mean: a tensor, a vector, an integer count, a Python number, a tensor that requires grad
        v = torch.tensor(float(rank + 1), requires_grad=True)
        m = distributed.reduce_mean(v)
        res["reduce_mean"] = m
        res["reduce_mean_type"] = type(m).__name__
        res["reduce_mean_requires_grad"] = m.requires_grad
        res["reduce_mean_input_kept"] = v.item() == rank + 1
        res["reduce_mean_vector"] = distributed.reduce_mean(torch.arange(3, dtype=torch.float64) * (rank + 1))
        res["reduce_mean_count"] = distributed.reduce_mean(torch.tensor((1, 7)[rank]))
        res["reduce_mean_number"] = distributed.reduce_mean((1, 7)[rank])

        # each loss with and without the sync, its value and its gradient
        for name, (fn, x) in _per_loss(rank).items():
            for sync in (True, False):
                xg = x.clone().requires_grad_()
                loss = fn(xg, sync, "mean")
                (grad,) = torch.autograd.grad(loss, xg)
                res[f"{name}/{sync}"] = (loss.detach(), grad)

        # reduction "none" ignores avg_factor and communicates nothing; "mean" reduces once
        calls = []
        real = distributed._all_reduce_mean
        distributed._all_reduce_mean = lambda t: calls.append(t) or real(t)
        try:
            x = torch.randn(4, C, dtype=torch.float64)
            fastloss.sigmoid_focal_loss(x, torch.zeros(4, dtype=torch.long), reduction="none", avg_factor=2.0, sync_avg_factor=True)
            res["calls_none"] = len(calls)
            fastloss.sigmoid_focal_loss(x, torch.zeros(4, dtype=torch.long), reduction="mean", avg_factor=2.0, sync_avg_factor=True)
            res["calls_mean"] = len(calls)
        finally:
            distributed._all_reduce_mean = real

        # DistributedDataParallel: the gradient DDP averages over the ranks, with and without the sync
        feats, labels, boxes, pos = _batch(rank)
        for sync in (True, False):
            ddp = torch.nn.parallel.DistributedDataParallel(_model())
            loss = _detector_loss(ddp, feats, labels, boxes, pos, sync)
            loss.backward()
            res[f"ddp/{sync}"] = [p.grad.clone() for p in ddp.module.parameters()]

        # torch.compile(fullgraph=True): the functional all-reduce is part of the graph (no break)
        fn, x = _per_loss(rank)["sigmoid_focal_loss"]
        compiled = torch.compile(lambda x: fn(x, True, "mean") + distributed.reduce_mean(x.detach().sum()), fullgraph=True,
                                 backend="aot_eager")  # aot_eager: traces like inductor, without a C++ build per rank
        res["compiled"] = (compiled(x), fn(x, True, "mean") + distributed.reduce_mean(x.sum()))
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ====================================================================== the two-process run


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Start the WORLD rank processes, wait (bounded), return their results per rank."""
    out = tmp_path_factory.mktemp("ranks")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(rank), str(out / "store"), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(WORLD)]
    deadline = time.monotonic() + RANK_TIMEOUT_S
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {WORLD} gloo ranks did not finish within {RANK_TIMEOUT_S} s")
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_reduce_mean_is_the_mean_on_every_rank(ranks):
    for res in ranks:
        assert res["reduce_mean"].item() == 1.5  # (1 + 2) / 2
        assert res["reduce_mean_type"] == "Tensor"  # complete: not an asynchronous collective tensor
        assert not res["reduce_mean_requires_grad"] and res["reduce_mean_input_kept"]
        torch.testing.assert_close(res["reduce_mean_vector"], torch.tensor([0.0, 1.5, 3.0], dtype=torch.float64), rtol=0, atol=0)
        for key in ("reduce_mean_count", "reduce_mean_number"):  # (1 + 7) / 2, as float32
            assert res[key].dtype == torch.float32 and res[key].item() == 4.0


@pytest.mark.parametrize("name", list(_per_loss(0)))
def test_synced_loss_is_the_rank_sum_over_the_mean_avg_factor(ranks, name):
    avg = {"sigmoid_focal_loss": (1, 7), "cross_entropy": (1, 7), "box_iou_loss": (1.5, 7.5), "nn.SigmoidFocalLoss": (1, 7)}[name]
    mean = sum(avg) / WORLD
    for rank, res in enumerate(ranks):
        fn, x = _per_loss(rank)[name]
        x = x.clone().requires_grad_()
        total = fn(x, False, "sum")  # no process group here: the rank's plain sum
        expected = total / (mean + EPS)
        (g,) = torch.autograd.grad(expected, x)
        loss, grad = res[f"{name}/True"]
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, g, rtol=1e-12, atol=1e-15)
        # without the sync each rank divides by its own count (an integer count + eps is formed in
        # float32 there, torch's promotion of an integer tensor and a Python float: rtol 1e-6)
        torch.testing.assert_close(res[f"{name}/False"][0], (total / (avg[rank] + EPS)).detach(), rtol=1e-6, atol=0)


def test_reduction_none_communicates_nothing(ranks):
    for res in ranks:
        assert res["calls_none"] == 0 and res["calls_mean"] == 1


def test_ddp_gradient_equals_the_whole_batch_gradient(ranks):
    """With the sync, DDP's average of the ranks' gradients is the single-process gradient of
    the concatenated batch divided by its whole count of positives; without it, not."""
    batches = [_batch(rank) for rank in range(WORLD)]
    feats, labels, boxes = (torch.cat([b[i] for b in batches]) for i in range(3))
    model = _model()
    out = model(feats)
    # the positives of each rank's batch are its first rows
    pos_rows = torch.cat([torch.arange(b[3]) + sum(len(c[0]) for c in batches[:r]) for r, b in enumerate(batches)])
    total_pos = sum(b[3] for b in batches)
    pred = boxes[pos_rows] + 0.5 + out[pos_rows, C:]
    whole = (fastloss.sigmoid_focal_loss(out[:, :C], labels, avg_factor=total_pos)
             + fastloss.box_iou_loss(pred, boxes[pos_rows], avg_factor=total_pos)
             + fastloss.l1_loss(pred, boxes[pos_rows], avg_factor=total_pos))
    expected = torch.autograd.grad(whole, list(model.parameters()))
    for res in ranks:
        for g, e in zip(res["ddp/True"], expected):
            # equal up to where avg_factor's eps sits: W (mean + eps) against (total + eps)
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-12)
        assert not all(torch.allclose(g, e, rtol=1e-2) for g, e in zip(res["ddp/False"], expected))
    for g0, g1 in zip(ranks[0]["ddp/True"], ranks[1]["ddp/True"]):
        torch.testing.assert_close(g0, g1, rtol=0, atol=0)  # DDP keeps the replicas identical


def test_synced_loss_under_torch_compile_fullgraph(ranks):
    for res in ranks:
        compiled, eager = res["compiled"]
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=0)


# ====================================================================== one process, no process group


def _calls():
    """Every public function that takes avg_factor: name -> fn(x, **kw) and x (fp64)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, C, generator=g, dtype=torch.float64)
    p = torch.rand(6, C, generator=g, dtype=torch.float64) * 0.9 + 0.05
    t = (torch.rand(6, C, generator=g) < 0.4).double()
    y = torch.randn(6, C, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 3, 2, 3])
    cls = labels.clamp(max=C - 1)
    xy = torch.rand(6, 2, generator=g, dtype=torch.float64) * 10
    boxes = torch.cat([xy, xy + 3], -1)
    score, bins = torch.rand(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64) * (C - 1)
    f = fastloss
    return {
        "sigmoid_focal_loss": (lambda x, **kw: f.sigmoid_focal_loss(x, labels, **kw), x),
        "poly1_focal_loss": (lambda x, **kw: f.poly1_focal_loss(x, labels, **kw), x),
        "reduced_focal_loss": (lambda x, **kw: f.reduced_focal_loss(x, labels, threshold=0.4, **kw), x),
        "binary_cross_entropy_with_logits": (lambda x, **kw: f.binary_cross_entropy_with_logits(x, t, **kw), x),
        "binary_cross_entropy": (lambda x, **kw: f.binary_cross_entropy(x, t, **kw), p),
        "poly1_bce_loss": (lambda x, **kw: f.poly1_bce_loss(x, t, **kw), x),
        "quality_focal_loss": (lambda x, **kw: f.quality_focal_loss(x, (labels, score), **kw), x),
        "varifocal_loss": (lambda x, **kw: f.varifocal_loss(x, t * 0.7, **kw), x),
        "gaussian_focal_loss": (lambda x, **kw: f.gaussian_focal_loss(x, t * 0.5, **kw), p),
        "focal_loss_with_prob": (lambda x, **kw: f.focal_loss_with_prob(x, labels, **kw), p),
        "quality_focal_loss_with_prob": (lambda x, **kw: f.quality_focal_loss_with_prob(x, (labels, score), **kw), p),
        "hinge_loss": (lambda x, **kw: f.hinge_loss(x, t, **kw), x),
        "kl_div": (lambda x, **kw: f.kl_div(x, p, **kw), x.log_softmax(-1)),
        "l1_loss": (lambda x, **kw: f.l1_loss(x, y, **kw), x),
        "mse_loss": (lambda x, **kw: f.mse_loss(x, y, **kw), x),
        "rmse_loss": (lambda x, **kw: f.rmse_loss(x, y, **kw), x),
        "mean_bias_error": (lambda x, **kw: f.mean_bias_error(x, y, **kw), x),
        "smooth_l1_loss": (lambda x, **kw: f.smooth_l1_loss(x, y, **kw), x),
        "huber_loss": (lambda x, **kw: f.huber_loss(x, y, **kw), x),
        "balanced_l1_loss": (lambda x, **kw: f.balanced_l1_loss(x, y, **kw), x),
        "cross_entropy": (lambda x, **kw: f.cross_entropy(x, cls, **kw), x),
        "poly1_cross_entropy": (lambda x, **kw: f.poly1_cross_entropy(x, cls, **kw), x),
        "nll_loss": (lambda x, **kw: f.nll_loss(x, cls, **kw), x.log_softmax(-1)),
        "softmax_focal_loss": (lambda x, **kw: f.softmax_focal_loss(x, cls, **kw), x),
        "poly1_softmax_focal_loss": (lambda x, **kw: f.poly1_softmax_focal_loss(x, cls, **kw), x),
        "distribution_focal_loss": (lambda x, **kw: f.distribution_focal_loss(x, bins, **kw), x),
        "distillation_kl_div": (lambda x, **kw: f.distillation_kl_div(x, y, **kw), x),
        "box_iou_loss": (lambda x, **kw: f.box_iou_loss(x, boxes, "giou", **kw), boxes + 0.3 * torch.cat([y, y[:, :1]], 1)),
    }


def _takes_avg_factor():
    return sorted(name for name in fastloss.__all__ if callable(getattr(fastloss, name)) and not isinstance(getattr(fastloss, name), type)
                  and "avg_factor" in inspect.signature(getattr(fastloss, name)).parameters)


def test_every_function_with_avg_factor_takes_sync_avg_factor():
    names = _takes_avg_factor()
    assert names == sorted(_calls())  # the table below covers them all
    for name in names:
        param = inspect.signature(getattr(fastloss, name)).parameters["sync_avg_factor"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False, name


def test_every_module_with_avg_factor_takes_sync_avg_factor():
    modules = [getattr(fastloss.nn, n) for n in dir(fastloss.nn) if not n.startswith("_")]
    modules = [m for m in modules if isinstance(m, type) and issubclass(m, torch.nn.Module) and m.__module__ == "fastloss.nn"]
    with_avg = [m for m in modules if "avg_factor" in inspect.signature(m.forward).parameters]
    assert len(with_avg) >= 20
    for m in modules:
        params = inspect.signature(m.__init__).parameters
        assert ("sync_avg_factor" in params) == (m in with_avg), m.__name__
        if m in with_avg:
            assert params["sync_avg_factor"].kind is inspect.Parameter.KEYWORD_ONLY and params["sync_avg_factor"].default is False


@pytest.mark.parametrize("name", sorted(_calls()))
@pytest.mark.parametrize("avg_factor", [2.5, "tensor", "int tensor"])
def test_no_process_group_no_sync_same_bits(name, avg_factor):
    assert not distributed.is_initialized()
    fn, x = _calls()[name]
    a = {2.5: 2.5, "tensor": torch.tensor(2.5, dtype=torch.float64), "int tensor": torch.tensor(3)}[avg_factor]
    results = []
    for sync in (False, True):
        xg = x.clone().requires_grad_()
        loss = fn(xg, avg_factor=a, sync_avg_factor=sync)
        up = torch.tensor(1.7, dtype=loss.dtype)
        results.append((loss, torch.autograd.grad(loss, xg, up)[0]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_synced_avg_factor_carries_no_gradient():
    x = torch.randn(5, C, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 3, 2])
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    fastloss.sigmoid_focal_loss(x, labels, avg_factor=a, sync_avg_factor=True).backward()
    assert a.grad is None and x.grad is not None
    fastloss.sigmoid_focal_loss(x, labels, avg_factor=a).backward()  # unsynchronised: as before, differentiated
    assert a.grad is not None


def test_reduce_mean_without_a_process_group():
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    assert distributed.reduce_mean(v) is v  # mmdetection: the input itself
    count = distributed.reduce_mean(torch.tensor(7))
    assert count.dtype == torch.float32 and count.item() == 7.0
    number = distributed.reduce_mean(3)
    assert isinstance(number, torch.Tensor) and number.dtype == torch.float32 and number.device.type == "cpu" and number.item() == 3.0
    assert distributed.reduce_mean(2.5, device="cpu").item() == 2.5
    for bad in ("2", float("nan"), float("inf"), True, None, torch.tensor(1j)):
        with pytest.raises(ValueError, match="reduce_mean"):
            distributed.reduce_mean(bad)


@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "cross_entropy", "box_iou_loss", "l1_loss", "distribution_focal_loss"])
def test_sync_avg_factor_errors(name):
    fn, x = _calls()[name]
    with pytest.raises(ValueError, match="sync_avg_factor=True needs avg_factor"):
        fn(x, sync_avg_factor=True)
    with pytest.raises(ValueError, match="sync_avg_factor=True needs avg_factor"):
        fn(x, reduction="none", sync_avg_factor=True)
    with pytest.raises(ValueError, match='reduction="sum"'):
        fn(x, reduction="sum", avg_factor=2.0, sync_avg_factor=True)
    with pytest.raises(ValueError, match="sync_avg_factor must be True or False"):
        fn(x, avg_factor=2.0, sync_avg_factor="yes")
    fn(x, reduction="none", avg_factor=2.0, sync_avg_factor=True)  # "none" ignores avg_factor, as without the flag


def test_kl_div_batchmean_cannot_sync():
    x = torch.randn(4, C).log_softmax(-1)
    with pytest.raises(ValueError, match="sync_avg_factor=True needs avg_factor"):
        fastloss.kl_div(x, x.exp(), reduction="batchmean", sync_avg_factor=True)


def test_module_sync_avg_factor_checks_and_repr():
    m = fastloss.nn.CrossEntropyLoss(sync_avg_factor=True)
    assert m.sync_avg_factor is True and "sync_avg_factor=True" in repr(m)
    assert "sync_avg_factor" not in repr(fastloss.nn.CrossEntropyLoss())
    x, y = torch.randn(4, C), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(m(x, y, avg_factor=3.0), fastloss.cross_entropy(x, y, avg_factor=3.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs avg_factor"):
        m(x, y)
    for make in (lambda: fastloss.nn.L1Loss(reduction="sum", sync_avg_factor=True),
                 lambda: fastloss.nn.KLDivLoss(reduction="batchmean", sync_avg_factor=True),
                 lambda: fastloss.nn.BoxIoULoss(reduction="sum", sync_avg_factor=True),
                 lambda: fastloss.nn.SigmoidFocalLoss(sync_avg_factor="no")):
        with pytest.raises(ValueError, match="sync_avg_factor"):
            make()


if __name__ == "__main__":  # one rank of the two-process run (see the ``ranks`` fixture)
    _rank_main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
