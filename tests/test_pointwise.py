"""The pointwise engine's losses on every backend of every device here: against
torch.nn.functional where torch has the loss, against float64 formulas written from the papers
(mmdetection's forms) for the others, gradients with a random upstream gradient, gradcheck,
opcheck, torch.compile, weights in every layout, avg_factor, class-label targets, determinism,
the worked values of the issue, and bad inputs.  The sigmoid focal loss has its own file
(tests/test_sigmoid_focal_loss.py); the rules shared by every op are in tests/test_rules.py."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastloss
from fastloss.ops import pointwise as ops_pw
from fastloss.reference import pointwise as R

import helpers
from helpers import assert_close, random_upstream


def _logits(shape, dtype, device, scale=3.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device).requires_grad_()


def _values(shape, dtype, device):
    return _logits(shape, dtype, device).detach()


def _probs(shape, dtype, device):
    return torch.rand(shape, dtype=torch.float64).clamp(0.02, 0.98).to(dtype).to(device).requires_grad_()


def _soft(shape, dtype, device):
    t = torch.rand(shape, dtype=torch.float64)
    t[t < 0.5] = 0.0  # many exact zeros (negatives), soft positives
    return t.to(dtype).to(device)


# Each loss: (fastloss function, input maker, target maker, kwargs, float64 eager formula (x, t, **kw) -> per-element loss).
# The formula is the peer's: torch.nn.functional where torch has the loss, mmdetection's / the paper's otherwise.
def _mmdet_balanced_l1(x, t, alpha=0.5, gamma=1.5, beta=1.0):
    return R.balanced_l1_loss(x, t, alpha, gamma, beta, reduction="none")


def _hard(shape, dtype, device):
    return (torch.rand(shape) < 0.4).to(dtype).to(device)


def _bce(x, t):
    return F.binary_cross_entropy_with_logits(x, t, reduction="none")


def _smp_focal_term(x, t, gamma, threshold):
    """smp's focal term (segmentation_models_pytorch.losses._functional.focal_loss_with_logits):
    pt = exp(-BCE), (1 - pt)^gamma, or with a threshold ((1 - pt) / threshold)^gamma and 1 where pt < threshold."""
    pt = torch.exp(-_bce(x, t))
    if threshold is None:
        return (1 - pt).pow(gamma)
    return torch.where(pt < threshold, torch.ones_like(pt), ((1 - pt) / threshold).pow(gamma))


LOSSES = {
    "l1": (fastloss.l1_loss, _logits, _values, {}, lambda x, t: F.l1_loss(x, t, reduction="none")),
    "mse": (fastloss.mse_loss, _logits, _values, {}, lambda x, t: F.mse_loss(x, t, reduction="none")),
    "smooth_l1": (fastloss.smooth_l1_loss, _logits, _values, {"beta": 0.7}, lambda x, t, beta: F.smooth_l1_loss(x, t, beta=beta, reduction="none")),
    "smooth_l1_beta0": (fastloss.smooth_l1_loss, _logits, _values, {"beta": 0.0}, lambda x, t, beta: F.l1_loss(x, t, reduction="none")),
    "huber": (fastloss.huber_loss, _logits, _values, {"delta": 1.3}, lambda x, t, delta: F.huber_loss(x, t, delta=delta, reduction="none")),
    "balanced_l1": (fastloss.balanced_l1_loss, _logits, _values, {"alpha": 0.5, "gamma": 1.5, "beta": 1.0}, _mmdet_balanced_l1),
    "bce_logits": (fastloss.binary_cross_entropy_with_logits, _logits, _soft, {},
                   lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none")),
    "bce_logits_smooth": (fastloss.binary_cross_entropy_with_logits, _logits, _soft, {"label_smoothing": 0.1},
                          lambda x, t, label_smoothing: F.binary_cross_entropy_with_logits(
                              x, t * (1 - label_smoothing) + label_smoothing / 2, reduction="none")),
    "bce": (fastloss.binary_cross_entropy, _probs, _soft, {}, lambda x, t: F.binary_cross_entropy(x, t, reduction="none")),
    "poly1_bce": (fastloss.poly1_bce_loss, _logits, _soft, {"epsilon": 0.7},
                  lambda x, t, epsilon: F.binary_cross_entropy_with_logits(x, t, reduction="none")
                  + epsilon * (t * (1 - x.sigmoid()) + (1 - t) * x.sigmoid())),
    "poly1_focal": (fastloss.poly1_focal_loss, _logits, _soft, {"epsilon": -0.5, "gamma": 2.0},
                    lambda x, t, epsilon, gamma: R.loss_elements(x, t, 0.25, gamma)
                    + epsilon * (t * (1 - x.sigmoid()) + (1 - t) * x.sigmoid()) ** (gamma + 1)),
    "quality_focal": (fastloss.quality_focal_loss, _logits, _soft, {"beta": 2.0},
                      lambda x, t, beta: R.quality_focal_loss(x, t, beta, reduction="none")),
    "varifocal": (fastloss.varifocal_loss, _logits, _soft, {"alpha": 0.75, "gamma": 2.0},
                  lambda x, t, alpha, gamma: R.varifocal_loss(x, t, alpha, gamma, reduction="none")),
    "varifocal_plain": (fastloss.varifocal_loss, _logits, _soft, {"iou_weighted": False},
                        lambda x, t, iou_weighted: R.varifocal_loss(x, t, iou_weighted=False, reduction="none")),
    "gaussian_focal": (fastloss.gaussian_focal_loss, _probs,
                       lambda s, d, dev: torch.where(torch.rand(s) < 0.1, 1.0, torch.rand(s, dtype=torch.float64) * 0.9).to(d).to(dev),
                       {}, lambda x, t: R.gaussian_focal_loss(x, t, reduction="none")),
    "hinge": (fastloss.hinge_loss, _logits, lambda s, d, dev: (torch.rand(s) < 0.5).to(d).to(dev) * 2 - 1, {},
              lambda x, t: torch.relu(1 - t * x)),
    "hinge_sq01": (fastloss.hinge_loss, _logits, lambda s, d, dev: (torch.rand(s) < 0.5).to(d).to(dev), {"squared": True},
                   lambda x, t, squared: torch.relu(1 - (2 * t - 1) * x) ** 2),
    "kl_div": (fastloss.kl_div, lambda s, d, dev: torch.log_softmax(torch.randn(s, dtype=torch.float64), -1).to(d).to(dev).requires_grad_(),
               lambda s, d, dev: torch.softmax(torch.randn(s, dtype=torch.float64), -1).to(d).to(dev), {},
               lambda x, t: F.kl_div(x, t, reduction="none")),
    "kl_div_log": (fastloss.kl_div, lambda s, d, dev: torch.log_softmax(torch.randn(s, dtype=torch.float64), -1).to(d).to(dev).requires_grad_(),
                   lambda s, d, dev: torch.log_softmax(torch.randn(s, dtype=torch.float64), -1).to(d).to(dev), {"log_target": True},
                   lambda x, t, log_target: F.kl_div(x, t, reduction="none", log_target=True)),
    "mean_bias": (fastloss.mean_bias_error, _logits, _values, {}, lambda x, t: x - t),
    # mmdetection's py_focal_loss_with_prob / quality_focal_loss_with_prob (activated=True)
    "focal_prob": (fastloss.focal_loss_with_prob, _probs, _soft, {"alpha": 0.3, "gamma": 1.5},
                   lambda x, t, alpha, gamma: F.binary_cross_entropy(x, t, reduction="none") * (alpha * t + (1 - alpha) * (1 - t))
                   * ((1 - x) * t + x * (1 - t)).pow(gamma)),
    "quality_focal_prob": (fastloss.quality_focal_loss_with_prob, _probs, _soft, {"beta": 2.0},
                           lambda x, t, beta: F.binary_cross_entropy(x, t, reduction="none") * (x - t).abs().pow(beta)),
    # segmentation_models_pytorch's focal_loss_with_logits (reduced_threshold; its focal term for normalized=True)
    "reduced_focal": (fastloss.reduced_focal_loss, _logits, _hard, {"alpha": 0.25, "gamma": 2.0, "threshold": 0.5},
                      lambda x, t, alpha, gamma, threshold: _smp_focal_term(x, t, gamma, threshold) * _bce(x, t)
                      * (alpha * t + (1 - alpha) * (1 - t))),
    "reduced_focal_t03": (fastloss.reduced_focal_loss, _logits, _hard, {"alpha": -1.0, "gamma": 1.5, "threshold": 0.3},
                          lambda x, t, alpha, gamma, threshold: _smp_focal_term(x, t, gamma, threshold) * _bce(x, t)),
    "focal_term": (ops_pw.focal_term, _logits, _hard, {"gamma": 2.0}, lambda x, t, gamma: _smp_focal_term(x, t, gamma, None)),
    "focal_term_reduced": (ops_pw.focal_term, _logits, _hard, {"gamma": 1.5, "threshold": 0.4},
                           lambda x, t, gamma, threshold: _smp_focal_term(x, t, gamma, threshold)),
}
NO_REDUCTION_ARG = ("mean_bias",)  # mean_bias_error: always the mean


def _call(name, x, t, backend, **extra):
    fn, _, _, kwargs, _ = LOSSES[name]
    return fn(x, t, backend=backend, **kwargs, **extra)


def _expected(name, x, t, weight=None, reduction="mean", avg_factor=None):
    """float64 eager formula of the peer, with mmdetection's weight / avg_factor."""
    _, _, _, kwargs, formula = LOSSES[name]
    x64 = x.detach().double().cpu().requires_grad_()
    loss = formula(x64, t.detach().double().cpu(), **kwargs)
    if weight is not None:
        w = weight.detach().double().cpu()
        loss = loss * (w.unsqueeze(-1) if w.shape == x.shape[:-1] and w.shape != x.shape else w)
    from fastloss.reference._reduce import reduce_loss

    return x64, reduce_loss(loss, reduction, avg_factor)


SHAPES = [(7,), (3, 37, 5), (4099,), (2, 0, 3)]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("device,backend,dtype", helpers.device_backend_dtype_params())
def test_vs_peer_formula(grad_mode, device, backend, dtype, name):
    """Value and gradient (random upstream gradient) against the float64 peer formula, every
    reduction, shapes with tails and an empty one."""
    helpers.require_backend(device, backend)
    _, make_x, make_t, _, _ = LOSSES[name]
    shapes = [(7,), (3, 11, 5)] if helpers.is_interpreted(device, backend) else SHAPES
    for shape in shapes:
        x = make_x(shape, dtype, device)
        t = make_t(shape, dtype, device)
        reductions = ("mean",) if name in NO_REDUCTION_ARG else ("none", "sum", "mean")
        for reduction in reductions:
            extra = {} if name in NO_REDUCTION_ARG else {"reduction": reduction}
            out = _call(name, x, t, backend, **extra)
            x64, ref = _expected(name, x, t, reduction=reduction)
            assert out.dtype == dtype and out.shape == ref.shape
            assert_close(out, ref, dtype, reduced=reduction != "none", msg=f"{name} {shape} {reduction}")
            up = random_upstream(out)
            (g,) = torch.autograd.grad(out, x, up)
            (gr,) = torch.autograd.grad(ref, x64, up.double().cpu())
            assert_close(g, gr, dtype, msg=f"{name} grad {shape} {reduction}")


@pytest.mark.parametrize("layout", ["elem", "row", "col", "broadcast"])
@pytest.mark.parametrize("name", ["smooth_l1", "bce_logits", "varifocal", "l1"])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_weight_layouts_and_avg_factor(grad_mode, device, backend, name, layout):
    helpers.require_backend(device, backend)
    _, make_x, make_t, _, _ = LOSSES[name]
    shape = (6, 5, 4)
    x, t = make_x(shape, torch.float32, device), make_t(shape, torch.float32, device)
    w = {"elem": torch.rand(shape), "row": torch.rand(shape[:-1]), "col": torch.rand(4), "broadcast": torch.rand(6, 1, 4)}[layout].to(device)
    for kw in (dict(reduction="none"), dict(reduction="sum"), dict(reduction="mean", avg_factor=7.0),
               dict(reduction="mean", avg_factor=torch.tensor(7.0, device=device))):
        out = _call(name, x, t, backend, weight=w, **kw)
        x64, ref = _expected(name, x, t, weight=w.expand(shape) if layout in ("col", "broadcast") else w, reduction=kw["reduction"],
                             avg_factor=kw.get("avg_factor") if not isinstance(kw.get("avg_factor"), torch.Tensor) else 7.0)
        assert_close(out, ref, torch.float32, reduced=kw["reduction"] != "none", msg=f"{name} {layout} {kw}")
        up = random_upstream(out)
        (g,) = torch.autograd.grad(out, x, up)
        (gr,) = torch.autograd.grad(ref, x64, up.double().cpu())
        assert_close(g, gr, torch.float32, msg=f"{name} {layout} grad {kw}")


def test_col_weight_is_not_copied():
    x = torch.randn(5, 4)
    w = torch.rand(4)
    _, layout = ops_pw._prepare_operand("weight", x, w, torch.float32)
    assert layout == ops_pw.LAYOUTS["col"]
    square = torch.randn(4, 4)
    _, layout = ops_pw._prepare_operand("weight", square, torch.rand(4), torch.float32)
    assert layout == ops_pw.LAYOUTS["row"]  # (C,) of a (C, C) input: per row wins (mmdetection's per-anchor weight)
    for rule in ("torch", "torch_rows"):  # torch's BCE pair: broadcasting, per column
        _, layout = ops_pw._prepare_operand("weight", square, torch.rand(4), torch.float32, rule)
        assert layout == ops_pw.LAYOUTS["col"]
    _, layout = ops_pw._prepare_operand("weight", x, torch.rand(5), torch.float32, "torch_rows")
    assert layout == ops_pw.LAYOUTS["row"]  # the per-row extension, where torch's broadcasting rejects (5,)
    for rule in ("mmdet", "torch"):  # (..., 1): one value per row, no copy, under every rule
        v, layout = ops_pw._prepare_operand("weight", torch.randn(2, 3, 4), torch.rand(2, 3, 1), torch.float32, rule)
        assert layout == ops_pw.LAYOUTS["row"] and v.shape == (6,)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_pos_weight_and_labels(device, backend):
    helpers.require_backend(device, backend)
    x = _logits((9, 5), torch.float32, device)
    labels = torch.randint(0, 6, (9,), device=device)
    onehot = (labels[:, None] == torch.arange(5, device=device)).float()
    pw = torch.rand(5, device=device) * 3
    for kw in ({}, {"pos_weight": pw}, {"pos_weight": pw[None].expand(9, 5).contiguous()}, {"label_smoothing": 0.2}):
        a = fastloss.binary_cross_entropy_with_logits(x, labels, backend=backend, **kw)
        b = fastloss.binary_cross_entropy_with_logits(x, onehot, backend=backend, **kw)
        torch.testing.assert_close(a, b)
    ref = F.binary_cross_entropy_with_logits(x.double(), onehot.double(), pos_weight=pw.double())
    assert_close(fastloss.binary_cross_entropy_with_logits(x, onehot, pos_weight=pw, backend=backend), ref.detach(), torch.float32, reduced=True)
    # quality focal: mmdetection's (labels, scores) == the dense soft target
    scores = torch.rand(9, device=device)
    dense = onehot * scores[:, None]
    a = fastloss.quality_focal_loss(x, (labels, scores), backend=backend, reduction="none")
    b = fastloss.quality_focal_loss(x, dense, backend=backend, reduction="none")
    torch.testing.assert_close(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_varifocal_positive_mask_is_ultralytics(device, backend):
    """ultralytics' VarifocalLoss per element: BCE(x, s) (label s + (1 - label) alpha sigmoid(x)^gamma)."""
    helpers.require_backend(device, backend)
    x = _logits((6, 8), torch.float32, device)
    label = (torch.rand(6, 8, device=device) < 0.3).float()
    score = torch.rand(6, 8, device=device) * label
    score[0, 0], label[0, 0] = 0.0, 1.0  # a positive with score 0: loss 0 (mmdetection would call it a negative)
    out = fastloss.varifocal_loss(x, score, positive=label, reduction="none", backend=backend)
    x64 = x.detach().double().cpu()
    w = 0.75 * x64.sigmoid().pow(2.0) * (1 - label.double().cpu()) + score.double().cpu() * label.double().cpu()
    ref = F.binary_cross_entropy_with_logits(x64, score.double().cpu(), reduction="none") * w
    assert_close(out, ref, torch.float32)


def test_worked_values():
    """The issue's worked values, on every CPU backend."""
    for backend in fastloss.available_backends("cpu"):
        ones, t = torch.ones(2, 2), torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        assert fastloss.l1_loss(ones, t, backend=backend).item() == pytest.approx(1.0)
        assert fastloss.smooth_l1_loss(ones, t, backend=backend).item() == pytest.approx(0.625)
        assert fastloss.mse_loss(ones, t, backend=backend).item() == pytest.approx(1.5)
        x = torch.tensor([[1.9072, 1.1079, 1.4906], [-0.6584, -0.0512, 0.7608], [-0.0614, 0.6583, 0.1095]])
        y = torch.tensor([[0.0, 1, 1], [1, 1, 1], [0, 0, 0]])
        assert fastloss.binary_cross_entropy_with_logits(x, y, backend=backend).item() == pytest.approx(0.80001, abs=5e-5)
        with pytest.raises(ValueError, match="between 0 and 1|in \\[0, 1\\]"):
            fastloss.binary_cross_entropy(ones, t, backend=backend)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_bad_inputs(backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="input's shape"):
        fastloss.l1_loss(x, torch.randn(3), backend=backend)  # torch would broadcast with a warning
    with pytest.raises(ValueError, match="float tensor of input's shape"):
        fastloss.mse_loss(x, torch.randint(0, 3, (4,)), backend=backend)  # no class labels for regression
    with pytest.raises(ValueError, match="beta"):
        fastloss.smooth_l1_loss(x, x, beta=-1.0, backend=backend)
    with pytest.raises(ValueError, match="delta"):
        fastloss.huber_loss(x, x, delta=0.0, backend=backend)
    with pytest.raises(ValueError, match="label_smoothing"):
        fastloss.binary_cross_entropy_with_logits(x, x.sigmoid(), label_smoothing=1.5, backend=backend)
    with pytest.raises(ValueError, match="input"):
        fastloss.binary_cross_entropy(x, x.sigmoid(), backend=backend)  # input outside [0, 1]
    with pytest.raises(ValueError, match="alpha"):
        fastloss.varifocal_loss(x, x.sigmoid(), alpha=2.0, backend=backend)
    with pytest.raises(ValueError, match="reduction"):
        fastloss.kl_div(x, x, reduction="batchsum", backend=backend)
    with pytest.raises(ValueError, match="class label 7"):
        fastloss.binary_cross_entropy_with_logits(x, torch.tensor([0, 1, 7, 3]), backend=backend)


def test_rmse_sse_mbe():
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(10, 4, dtype=torch.float64)
    torch.testing.assert_close(fastloss.rmse_loss(x, t), F.mse_loss(x, t).sqrt())
    torch.testing.assert_close(fastloss.sse_loss(x, t), F.mse_loss(x, t, reduction="sum"))
    torch.testing.assert_close(fastloss.mean_bias_error(x, t), (x - t).mean())
    z = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fastloss.rmse_loss(z, z.detach()), z)  # zero error: finite (0), not NaN
    assert torch.equal(g, torch.zeros_like(g))
    (g,) = torch.autograd.grad(fastloss.rmse_loss(x, t), x)
    (gr,) = torch.autograd.grad(F.mse_loss(x, t).sqrt(), x)
    torch.testing.assert_close(g, gr)


def test_kl_div_batchmean():
    x = torch.log_softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    t = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    for backend in fastloss.available_backends("cpu"):
        torch.testing.assert_close(fastloss.kl_div(x, t, reduction="batchmean", backend=backend), F.kl_div(x, t, reduction="batchmean"))


GRADCHECK = ["l1", "mse", "smooth_l1", "huber", "balanced_l1", "bce_logits", "bce", "poly1_bce", "poly1_focal", "quality_focal", "varifocal",
             "gaussian_focal", "hinge", "kl_div", "mean_bias", "focal_prob", "quality_focal_prob", "reduced_focal", "reduced_focal_t03",
             "focal_term", "focal_term_reduced"]


@pytest.mark.parametrize("name", GRADCHECK)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_fp64(backend, name):
    helpers.require_backend("cpu", backend)
    _, make_x, make_t, _, _ = LOSSES[name]
    torch.manual_seed(3)
    x = make_x((4, 3), torch.float64, "cpu")
    t = make_t((4, 3), torch.float64, "cpu")
    if name in ("l1", "smooth_l1", "huber", "balanced_l1", "mean_bias", "mse"):
        t = (x.detach() + torch.sign(torch.randn(4, 3, dtype=torch.float64)) * (0.2 + torch.rand(4, 3, dtype=torch.float64))).detach()
    if name == "hinge":  # away from the kink 1 - y x = 0
        x = (torch.sign(torch.randn(4, 3, dtype=torch.float64)) * (0.3 + torch.rand(4, 3, dtype=torch.float64))).requires_grad_()
    with fastloss.use_backend(backend):
        assert helpers.gradcheck(lambda inp: _call(name, inp, t, None, **({} if name in NO_REDUCTION_ARG else {"reduction": "sum"})),
                                 (x,), backend, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_opcheck(backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(6, 4, requires_grad=True)
    t = torch.rand(6, 4)
    for name, code in (("smooth_l1_loss", 3), ("varifocal_loss", 11), ("binary_cross_entropy_with_logits", 6)):
        op = getattr(torch.ops.fastloss, name).default
        params = {3: [0.5, 1.0, 0.25, 2.0], 11: [0.75, 2.0, 1.0, 0.0], 6: [1.0, 0.0]}[code]
        for store in (False, True):
            torch.library.opcheck(op, (x, t, None, torch.rand(6), 2, None, 0, params, 2, store, backend))


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_compile_fullgraph(dynamo_reset, backend):
    helpers.require_backend("cpu", backend)
    x = torch.randn(8, 4, requires_grad=True)
    t = torch.rand(8, 4)
    w = torch.rand(8)

    def fn(x, t, w):
        return (fastloss.smooth_l1_loss(x, t, weight=w, avg_factor=3.0, backend=backend) + fastloss.varifocal_loss(x, t, backend=backend)
                + fastloss.quality_focal_loss(x, t, backend=backend) + fastloss.kl_div(x.log_softmax(-1), t.softmax(-1), reduction="batchmean",
                                                                                       backend=backend))

    helpers.assert_compiled_matches_eager(fn, (x, t, w), x)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_losses_over_probabilities_opcheck_compile_autocast(dynamo_reset, backend):
    """focal_loss_with_prob / quality_focal_loss_with_prob: opcheck of their custom ops (stored
    and recomputed gradient), torch.compile(fullgraph=True) parity, fp32 under autocast."""
    helpers.require_backend("cpu", backend)
    p = torch.rand(6, 4).clamp(0.05, 0.95).requires_grad_()
    t = torch.rand(6, 4)
    labels = torch.tensor([0, 4, 2, 1, 4, 3])
    for name, params in (("focal_loss_with_prob", [0.25, 0.75, 2.0, 1.0, 0.0]), ("quality_focal_loss_with_prob", [0.0, 1.0, 2.0, 0.0, 1.0])):
        op = getattr(torch.ops.fastloss, name).default
        for store in (False, True):
            torch.library.opcheck(op, (p, t, None, torch.rand(6), 2, None, 0, params, 2, store, backend))

    def fn(p, t):
        return (fastloss.focal_loss_with_prob(p, labels, avg_factor=3.0, backend=backend)
                + fastloss.quality_focal_loss_with_prob(p, t, reduction="sum", backend=backend))

    helpers.assert_compiled_matches_eager(fn, (p, t), p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fastloss.focal_loss_with_prob(p.detach().bfloat16(), labels, backend=backend)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_deterministic(device, backend):
    helpers.require_backend(device, backend)
    n = 20000 if not helpers.is_interpreted(device, backend) else 3000
    x = _logits((n, 4), torch.float32, device)
    t = _soft((n, 4), torch.float32, device)

    def run():
        loss = fastloss.varifocal_loss(x, t, backend=backend, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        return loss, g

    (a, ga), (b, gb) = run(), run()
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("store", [True, False], ids=["store", "recompute"])
@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_eager_fast_path_equals_custom_op(device, backend, store):
    helpers.require_backend(device, backend)
    x = _logits((5, 7), torch.float32, device)
    t = _soft((5, 7), torch.float32, device)
    w = torch.rand(5, device=device)
    args = (x, t, None, w, 2, None, 0)
    params = [0.75, 2.0, 1.0, 0.0]
    out_f, cache_f = ops_pw.PointwiseFunction.apply(*args, 11, params, 2, store, backend)
    out_o, cache_o = torch.ops.fastloss.varifocal_loss(*args, params, 2, store, backend)
    assert torch.equal(out_f, out_o) and torch.equal(cache_f, cache_o)
    g_f, = torch.autograd.grad(out_f, x)
    g_o, = torch.autograd.grad(out_o, x)
    assert torch.equal(g_f, g_o)


@pytest.mark.parametrize("device,backend", helpers.device_backend_params())
def test_nn_modules(device, backend):
    helpers.require_backend(device, backend)
    x = _logits((6, 3), torch.float32, device)
    t = _soft((6, 3), torch.float32, device)
    mods = [(fastloss.nn.SmoothL1Loss(beta=0.5, loss_weight=2.0, backend=backend), lambda: 2 * fastloss.smooth_l1_loss(x, t, beta=0.5)),
            (fastloss.nn.VarifocalLoss(alpha=0.5, backend=backend), lambda: fastloss.varifocal_loss(x, t, alpha=0.5)),
            (fastloss.nn.BCEWithLogitsLoss(pos_weight=torch.full((3,), 2.0), backend=backend).to(device),
             lambda: fastloss.binary_cross_entropy_with_logits(x, t, pos_weight=torch.full((3,), 2.0, device=device))),
            (fastloss.nn.KLDivLoss(reduction="batchmean", backend=backend), lambda: fastloss.kl_div(x, t, reduction="batchmean"))]
    for m, expected in mods:
        torch.testing.assert_close(m(x, t), expected())
        assert "loss_weight" in repr(m)
    with pytest.raises(TypeError):
        fastloss.nn.SmoothL1Loss(sigma=1.0)
    with pytest.raises(ValueError, match="beta"):
        fastloss.nn.SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        fastloss.nn.L1Loss(reduction="avg")


# ======================================================================================
# found in review
# ======================================================================================


def test_modules_build_for_any_backend(monkeypatch):
    for backend in ("cuda", "triton", "cpu", "reference"):
        fastloss.nn.SmoothL1Loss(backend=backend)
        fastloss.nn.BCEWithLogitsLoss(pos_weight=torch.ones(3), backend=backend)
    with fastloss.use_backend("reference"):
        fastloss.nn.L1Loss()
    monkeypatch.setenv("FASTLOSS_BACKEND", "cuda")
    fastloss.nn.VarifocalLoss()


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_bce_weights_follow_torch_square_inputs_included(backend):
    """binary_cross_entropy(_with_logits) promise torch's ``weight`` / ``pos_weight``: every
    shape torch accepts gives torch's values and gradients -- a (C,) weight of a square (C, C)
    input per column, as torch broadcasts (9ceac8c made pos_weight so but left weight per row,
    the mmdetection-style reading the engine had for every loss); the shapes torch rejects raise
    ValueError, but the documented per-row extension (a weight of shape input.shape[:-1] that
    does not broadcast).  The mmdetection-style losses keep a (C,) weight of a square input per
    row (mmcv's / mmdetection's per-anchor focal weight)."""
    helpers.require_backend("cpu", backend)
    g = torch.Generator().manual_seed(5)
    for shape in ((4, 4), (3, 3, 3)):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        t = torch.rand(shape, generator=g, dtype=torch.float64)
        C = shape[-1]
        # (3, 3) on (3, 3, 3) is also input.shape[:-1]: torch's broadcasting (per last two dims) wins
        weights = [torch.rand(s, generator=g, dtype=torch.float64) + 0.5 for s in
                   [(), (1,), (C,), (1, C), shape[:-1] + (1,), (shape[0],) + (1,) * (len(shape) - 1), shape[1:], shape]]
        weights += [torch.rand(C, 1, generator=g, dtype=torch.float64).t(), torch.rand(C, dtype=torch.float64).expand(shape)]
        for w in weights:
            calls = ((lambda v, r: fastloss.binary_cross_entropy_with_logits(v, t, weight=w, reduction=r, backend=backend),
                      lambda v, r: F.binary_cross_entropy_with_logits(v, t, weight=w, reduction=r), x),
                     (lambda v, r: fastloss.binary_cross_entropy_with_logits(v, t, pos_weight=w, reduction=r, backend=backend),
                      lambda v, r: F.binary_cross_entropy_with_logits(v, t, pos_weight=w, reduction=r), x),
                     (lambda v, r: fastloss.binary_cross_entropy(v, t, weight=w, reduction=r, backend=backend),
                      lambda v, r: F.binary_cross_entropy(v, t, weight=w, reduction=r), x.sigmoid()))
            for ours, torchs, v in calls:
                for reduction in ("none", "mean"):
                    va, vb = v.clone().requires_grad_(), v.clone().requires_grad_()
                    a, b = ours(va, reduction), torchs(vb, reduction)
                    torch.testing.assert_close(a, b, msg=f"{shape} weight {tuple(w.shape)} {reduction}")
                    up = random_upstream(a)
                    torch.testing.assert_close(torch.autograd.grad(a, va, up)[0], torch.autograd.grad(b, vb, up)[0])
    x, t, v = torch.randn(5, 3), torch.rand(5, 3), torch.rand(5)
    for kw in (dict(pos_weight=v), dict(weight=torch.rand(2, 5, 3)), dict(pos_weight=torch.rand(1, 5, 3)), dict(weight=torch.rand(4))):
        with pytest.raises(ValueError, match="weight of shape"):  # torch raises too
            fastloss.binary_cross_entropy_with_logits(x, t, backend=backend, **kw)
    with pytest.raises(ValueError, match="weight of shape"):
        fastloss.binary_cross_entropy(x.sigmoid(), t, weight=torch.rand(2, 5, 3), backend=backend)
    # the per-row extension where torch's broadcasting rejects the shape: weight[..., None]'s numbers
    torch.testing.assert_close(fastloss.binary_cross_entropy_with_logits(x, t, weight=v, reduction="none", backend=backend),
                               F.binary_cross_entropy_with_logits(x, t, weight=v[:, None], reduction="none"))
    torch.testing.assert_close(fastloss.binary_cross_entropy(x.sigmoid(), t, weight=v, reduction="none", backend=backend),
                               F.binary_cross_entropy(x.sigmoid(), t, weight=v[:, None], reduction="none"))
    # the float64 spec (fastloss.reference.pointwise, the benchmarks' formula) reads weights by the same rules
    xs, ts = torch.randn(3, 3, dtype=torch.float64), torch.rand(3, 3, dtype=torch.float64)
    for w in (torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), v.double()):
        xw, tw = (xs, ts) if w.numel() == 3 else (x.double(), t.double())
        torch.testing.assert_close(R.binary_cross_entropy_with_logits(xw, tw, weight=w, reduction="none"),
                                   F.binary_cross_entropy_with_logits(xw, tw, weight=w if w.numel() == 3 else w[:, None], reduction="none"))
    # the mmdetection-style losses: a (C,) weight of a square input is per row (per anchor), as (C, 1)
    x, t, v = torch.randn(3, 3), torch.rand(3, 3), torch.tensor([1.0, 2.0, 3.0])
    for fn in (fastloss.sigmoid_focal_loss, fastloss.poly1_bce_loss, fastloss.l1_loss):
        plain = fn(x, t, reduction="none", backend=backend)
        torch.testing.assert_close(fn(x, t, weight=v, reduction="none", backend=backend), plain * v[:, None])
        torch.testing.assert_close(fn(x, t, weight=v[:, None], reduction="none", backend=backend), plain * v[:, None])


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_quality_focal_score_reaches_its_class_only(backend):
    helpers.require_backend("cpu", backend)
    x = torch.zeros(2, 3, requires_grad=True)
    out = fastloss.quality_focal_loss(x, (torch.tensor([1, 3]), torch.tensor([float("nan"), 0.5])), reduction="none", backend=backend)
    assert torch.isnan(out[0, 1]) and torch.isfinite(out[0, [0, 2]]).all() and torch.isfinite(out[1]).all()
    (g,) = torch.autograd.grad(out.nansum(), x)
    assert torch.isfinite(g[0, [0, 2]]).all() and torch.isfinite(g[1]).all()


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_infinite_logits_with_their_own_target(backend):
    """A masked -inf logit with t = 0 (or +inf with t = 1) costs 0 with gradient 0 (torch: NaN)."""
    helpers.require_backend("cpu", backend)
    x = torch.tensor([float("-inf"), float("inf"), 0.3], requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.0])
    for fn in (fastloss.binary_cross_entropy_with_logits, fastloss.sigmoid_focal_loss, fastloss.varifocal_loss, fastloss.quality_focal_loss,
               fastloss.poly1_bce_loss, fastloss.poly1_focal_loss, fastloss.reduced_focal_loss):
        out = fn(x, t, reduction="none", backend=backend)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert out[0] == 0 and out[1] == 0 and torch.isfinite(out).all(), (fn.__name__, out)
        assert (g[:2] == 0).all() and torch.isfinite(g).all(), (fn.__name__, g)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_focal_with_prob_labels_and_saturated_probabilities(backend):
    """Class labels (C = background) expand as the dense one-hot targets do, QFL's (labels,
    scores) as mmdetection's quality_focal_loss_with_prob; probabilities of exactly 0 and 1
    give torch's clamped BCE (finite loss and gradient)."""
    torch.manual_seed(3)
    x = torch.rand(6, 4, dtype=torch.float64).clamp(0.02, 0.98).requires_grad_()
    labels = torch.tensor([0, 3, 4, 1, 4, 2])  # 4 = background
    dense = F.one_hot(labels, 5)[:, :4].double()
    a = fastloss.focal_loss_with_prob(x, labels, reduction="none", backend=backend)
    b = fastloss.focal_loss_with_prob(x, dense, reduction="none", backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    scores = torch.rand(6, dtype=torch.float64)
    q = fastloss.quality_focal_loss_with_prob(x, (labels, scores), reduction="none", backend=backend)
    expected = F.binary_cross_entropy(x, torch.zeros_like(x), reduction="none") * x.pow(2)  # negatives: BCE(p, 0) p^beta
    for i, c in enumerate(labels.tolist()):
        if c < 4:
            expected[i, c] = F.binary_cross_entropy(x[i, c], scores[i]) * (scores[i] - x[i, c]).abs().pow(2)
    torch.testing.assert_close(q, expected, rtol=1e-12, atol=1e-15)
    xe = torch.tensor([[0.0, 1.0, 0.0, 1.0]], requires_grad=True)
    te = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    for name in ("focal_prob", "quality_focal_prob"):
        fn, _, _, kwargs, formula = LOSSES[name]
        out = fn(xe, te, reduction="none", backend=backend, **kwargs)
        g, = torch.autograd.grad(out.sum(), xe)
        xr = xe.detach().clone().requires_grad_()
        r = formula(xr, te, **kwargs)
        gr, = torch.autograd.grad(r.sum(), xr)
        torch.testing.assert_close(out, r)
        torch.testing.assert_close(g, gr)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        fastloss.focal_loss_with_prob(torch.full((2, 3), 1.5), torch.zeros(2, 3), backend=backend)


def test_more_domains():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="gamma / alpha"):
        fastloss.balanced_l1_loss(x, x, alpha=0.01, gamma=10.0)
    assert fastloss.smooth_l1_loss(x, x, beta=1e-320).item() == 0  # subnormal beta: L1, not NaN
    torch.testing.assert_close(fastloss.smooth_l1_loss(x, x + 1, beta=1e-39), F.l1_loss(x, x + 1))
    for fn, kw in ((fastloss.varifocal_loss, {"iou_weighted": "no"}), (fastloss.hinge_loss, {"squared": "yes"}),
                   (fastloss.kl_div, {"log_target": 2})):
        with pytest.raises(ValueError, match=list(kw)[0]):
            fn(x, x.sigmoid(), **kw)
    with pytest.raises(ValueError, match="input"):
        fastloss.gaussian_focal_loss(x, x.sigmoid())  # probabilities outside [0, 1]
    with pytest.raises(ValueError, match="parameters"):  # a direct op call with the wrong parameter list
        torch.ops.fastloss.sigmoid_focal_loss(x, x.sigmoid(), None, None, 0, None, 0, [0.25, 2.0], 2, False, None)
    with pytest.raises(ValueError, match="layout"):
        torch.ops.fastloss.l1_loss(x, x, None, torch.rand(5), 2, None, 0, [], 2, False, None)


def test_no_silent_double_backward():
    x = torch.randn(5, 3, requires_grad=True)
    (g,) = torch.autograd.grad(fastloss.smooth_l1_loss(x, torch.zeros(5, 3)), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("backend", helpers.CPU_BACKENDS)
def test_reduced_focal_and_focal_term(dynamo_reset, backend):
    """reduced_focal_loss with cutoff 0 and divisor 1 is the sigmoid focal loss; class labels
    expand as one-hot targets; the constant branch (p_t < threshold) has f = 1 and no focal
    derivative; a NaN logit gives NaN in both ops (gamma = 0 included); opcheck of both custom
    ops (stored and recomputed gradient); torch.compile(fullgraph=True) parity; fp32 under
    autocast; bad thresholds raise."""
    helpers.require_backend("cpu", backend)
    torch.manual_seed(5)
    x = _logits((9, 5), torch.float64, "cpu")
    labels = torch.randint(0, 6, (9,))
    onehot = (labels[:, None] == torch.arange(5)).double()
    params = [0.25, 0.75, 2.0, 1.0, 0.0, 1.0]  # cutoff 0, divisor 1: the plain focal loss
    out, _ = torch.ops.fastloss.reduced_focal_loss(x, onehot, None, None, 0, None, 0, params, 0, False, backend)
    ref = fastloss.sigmoid_focal_loss(x, onehot, reduction="none", backend=backend)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-15)
    (g,) = torch.autograd.grad(out.sum(), x)
    (gr,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, gr, rtol=1e-13, atol=1e-15)
    for fn, kw in ((fastloss.reduced_focal_loss, {"threshold": 0.4}), (ops_pw.focal_term, {"threshold": 0.4}), (ops_pw.focal_term, {})):
        a = fn(x, labels, reduction="none", backend=backend, **kw)
        b = fn(x, onehot, reduction="none", backend=backend, **kw)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # p_t < threshold: f = 1, df/dx = 0 (reduced: the plain BCE-with-logits gradient a_t (p - t))
    xs = torch.tensor([-2.0, 2.0, -0.1], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    f = ops_pw.focal_term(xs, ts, threshold=0.5, reduction="none", backend=backend)
    (gf,) = torch.autograd.grad(f.sum(), xs)
    assert torch.equal(f, torch.ones(3, dtype=torch.float64)) and torch.equal(gf, torch.zeros(3, dtype=torch.float64))
    rl = fastloss.reduced_focal_loss(xs, ts, alpha=-1, threshold=0.5, reduction="none", backend=backend)
    (gl,) = torch.autograd.grad(rl.sum(), xs)
    torch.testing.assert_close(rl, F.binary_cross_entropy_with_logits(xs, ts, reduction="none"))
    torch.testing.assert_close(gl, xs.detach().sigmoid() - ts)
    xn = torch.tensor([float("nan"), 0.5], requires_grad=True)
    tn = torch.tensor([1.0, 0.0])
    for fn, kw in ((fastloss.reduced_focal_loss, {}), (ops_pw.focal_term, {}), (ops_pw.focal_term, {"gamma": 0.0})):
        o = fn(xn, tn, reduction="none", backend=backend, **kw)
        (gn,) = torch.autograd.grad(o.sum(), xn)
        assert torch.isnan(o[0]) and torch.isnan(gn[0]) and torch.isfinite(o[1]) and torch.isfinite(gn[1]), (fn.__name__, kw, o, gn)
    xf = torch.randn(6, 4, requires_grad=True)
    tf = (torch.rand(6, 4) < 0.3).float()
    for name, p in (("reduced_focal_loss", [0.25, 0.75, 2.0, 1.0, 0.5, 0.5]), ("focal_term", [1.5, 0.3, 0.3])):
        op = getattr(torch.ops.fastloss, name).default
        for store in (False, True):
            torch.library.opcheck(op, (xf, tf, None, torch.rand(6), 2, None, 0, p, 1, store, backend))

    def fn(x, t):
        return (fastloss.reduced_focal_loss(x, t, threshold=0.3, weight=torch.ones(6), avg_factor=2.0, backend=backend)
                / ops_pw.focal_term(x, t, threshold=0.3, backend=backend).clamp_min(1e-6))

    helpers.assert_compiled_matches_eager(fn, (xf, tf), xf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fastloss.reduced_focal_loss(xf.detach().bfloat16(), tf.bfloat16(), backend=backend).dtype == torch.float32
        assert ops_pw.focal_term(xf.detach().bfloat16(), tf.bfloat16(), backend=backend).dtype == torch.float32
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            fastloss.reduced_focal_loss(xf, tf, threshold=bad, backend=backend)
        with pytest.raises(ValueError, match="threshold"):
            ops_pw.focal_term(xf, tf, threshold=bad, backend=backend)
    with pytest.raises(ValueError, match="gamma"):
        ops_pw.focal_term(xf, tf, gamma=-1.0, backend=backend)
    torch.testing.assert_close(fastloss.nn.ReducedFocalLoss(alpha=0.5, threshold=0.3, backend=backend)(xf, tf),
                               fastloss.reduced_focal_loss(xf, tf, alpha=0.5, threshold=0.3))
    with pytest.raises(ValueError, match="threshold"):
        fastloss.nn.ReducedFocalLoss(threshold=0.0)


def test_folded_avg_factor_matches_unfolded_edges():
    """The eager CPU fold of avg_factor into the weight keeps the division's result where it
    cannot fold: a (1,) / (k,) avg_factor broadcasts; -eps gives inf, not ZeroDivisionError."""
    helpers.require_backend("cpu", "cpu")
    x = torch.randn(6, 5)
    labels = torch.randint(0, 6, (6,))
    for a in (torch.tensor([3.0]), torch.tensor([3.0, 4.0]).view(2, 1), torch.tensor(-torch.finfo(torch.float32).eps), 1e-39):
        with torch.no_grad():
            exp = fastloss.sigmoid_focal_loss(x, labels, avg_factor=a)
        out = fastloss.sigmoid_focal_loss(x.clone().requires_grad_(), labels, avg_factor=a)
        assert out.shape == exp.shape
        torch.testing.assert_close(out.detach(), exp, equal_nan=True)


def test_outputs_above_32_mib():
    """Outputs above 32 MiB (the loss per element and the stored gradient) are advised for huge
    pages (csrc/include/fastloss/cpu_loop.h): the same numbers as torch."""
    helpers.require_backend("cpu", "cpu")
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(9_000_001, generator=g)).requires_grad_(True)  # 36 MB, an odd length
    t = torch.rand(9_000_001, generator=g)
    out = fastloss.binary_cross_entropy_with_logits(x, t, reduction="none", backend="cpu")
    assert_close(out, F.binary_cross_entropy_with_logits(x.detach(), t, reduction="none"), torch.float32)
    (gx,) = torch.autograd.grad(fastloss.binary_cross_entropy_with_logits(x, t, backend="cpu"), x)
    assert_close(gx, (torch.sigmoid(x.detach()) - t) / x.numel(), torch.float32)
