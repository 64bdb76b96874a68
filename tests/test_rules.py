"""The rules every fastloss op follows (fastloss/ops/_common.py, ../shared/DESIGN.md), checked
op by op on every backend here: the mean of nothing is 0, NaN reaches what it touches,
autocast computes in fp32, torch's type promotion, scalar parameters inside their domain,
class labels validated the same way on every backend, modules with explicit signatures,
backend listing, and messages that say what to do."""
import math
import re

import pytest
import torch
import torch.utils.checkpoint

import fastloss
from fastloss import _backend, _extension
from fastloss.ops import _common

import helpers

CPU_BACKENDS = [pytest.param(b, id=b) for b in helpers.CPU_BACKENDS]


def _boxes(n, dtype=torch.float32):
    xy = torch.rand(n, 2, dtype=torch.float64) * 40
    b = torch.cat([xy, xy + 5 + torch.rand(n, 2, dtype=torch.float64) * 20], -1)
    return b.to(dtype)


# Each op: name -> make(n, dtype) -> (fn(x), x): a scalar loss ("mean") of n elements / boxes.
def _focal(n, dtype, labels=False):
    x = torch.randn(n, 3, dtype=dtype)
    t = torch.randint(0, 4, (n,)) if labels else (torch.rand(n, 3) < 0.4).to(dtype)
    return x, lambda x, **kw: fastloss.sigmoid_focal_loss(x, t, **kw)


def _box(kind):
    def make(n, dtype):
        p, t = _boxes(n, dtype), _boxes(n, dtype)
        return p, lambda x, **kw: fastloss.box_iou_loss(x, t, kind=kind, **kw)
    return make


def _dice(fn, **extra):
    def make(n, dtype):
        x = torch.randn(n, 3, 4, 5, dtype=dtype)
        t = torch.randint(0, 3, (n, 4, 5))
        return x, lambda x, **kw: fn(x, t, **extra, **kw)
    return make


def _pw(fn, target="soft", input="logits", **kw):
    """A loss of the pointwise engine on (n, 3) inputs."""
    def make(n, dtype):
        x = (torch.rand(n, 3) * 0.9 + 0.05).to(dtype) if input == "probs" else torch.randn(n, 3, dtype=dtype)
        t = {"soft": lambda: torch.rand(n, 3) * (torch.rand(n, 3) < 0.5), "values": lambda: torch.randn(n, 3),
             "sign": lambda: torch.randint(0, 2, (n, 3)).float() * 2 - 1}[target]().to(dtype)
        if fn is fastloss.mean_bias_error:
            return x, lambda x, reduction="mean", **k: fn(x, t, **kw, **k)
        return x, lambda x, **k: fn(x, t, **kw, **k)
    return make


POINTWISE = {
    "pw-l1": _pw(fastloss.l1_loss, "values"), "pw-mse": _pw(fastloss.mse_loss, "values"),
    "pw-smooth_l1": _pw(fastloss.smooth_l1_loss, "values", beta=0.5), "pw-huber": _pw(fastloss.huber_loss, "values"),
    "pw-balanced_l1": _pw(fastloss.balanced_l1_loss, "values"), "pw-mbe": _pw(fastloss.mean_bias_error, "values"),
    "pw-bce_logits": _pw(fastloss.binary_cross_entropy_with_logits, pos_weight=torch.tensor([1.0, 2.0, 3.0])),
    "pw-bce": _pw(fastloss.binary_cross_entropy, input="probs"), "pw-poly1_bce": _pw(fastloss.poly1_bce_loss),
    "pw-poly1_focal": _pw(fastloss.poly1_focal_loss), "pw-reduced_focal": _pw(fastloss.reduced_focal_loss, threshold=0.4), "pw-qfl": _pw(fastloss.quality_focal_loss), "pw-vfl": _pw(fastloss.varifocal_loss),
    "pw-gaussian": _pw(fastloss.gaussian_focal_loss, input="probs"), "pw-hinge": _pw(fastloss.hinge_loss, "sign"),
    "pw-kl_div": _pw(fastloss.kl_div),
}

OPS = {
    **POINTWISE,
    "focal": _focal,
    "focal-labels": lambda n, dtype: _focal(n, dtype, labels=True),
    **{f"box-{k}": _box(k) for k in ("iou", "log_iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "siou", "cdiou")},
    "dice": _dice(fastloss.dice_loss),
    "dice-per-image": _dice(fastloss.dice_loss, per_image=True),
    "tversky": _dice(fastloss.tversky_loss, alpha=0.3, beta=0.7),
    "jaccard": _dice(fastloss.jaccard_loss, log=True),
    "dice-ce": _dice(fastloss.dice_ce_loss),
}


# ====================================================================== the mean of nothing


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_mean_of_empty_input_is_zero_with_a_gradient(op, backend):
    x, fn = OPS[op](0, torch.float32)
    x.requires_grad_()
    loss = fn(x, backend=backend)
    assert loss.shape == () and loss.item() == 0.0, f"{op}: {loss}"
    assert loss.requires_grad  # graph-connected
    (g,) = torch.autograd.grad(loss, x)
    assert g.shape == x.shape


def _rowwise_ce(n, dtype):
    x = torch.randn(n, 5, 2, dtype=dtype)
    t = torch.randint(0, 5, (n, 2))
    return x, lambda x, **kw: fastloss.cross_entropy(x, t, label_smoothing=0.1, **kw)


def _box_matrix(n, dtype):
    p, t = _boxes(n, dtype), _boxes(n + 1, dtype)
    return p, lambda x, **kw: fastloss.box_iou(x, t, kind="giou", **kw).sum()


def _torchvision_giou(n, dtype):
    from fastloss.compat import torchvision as tv

    p, t = _boxes(n, dtype), _boxes(n, dtype)
    return p, lambda x, backend: tv.generalized_box_iou_loss(x, t, reduction="sum")  # the test's use_backend picks the backend


# one op per engine / autograd Function
DOUBLE_BACKWARD = {"pointwise": POINTWISE["pw-smooth_l1"], "focal": _focal, "rowwise": _rowwise_ce, "box": _box("ciou"),
                   "box-matrix": _box_matrix, "dice": _dice(fastloss.dice_ce_loss), "torchvision-giou": _torchvision_giou}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", list(DOUBLE_BACKWARD))
def test_double_backward_raises_never_a_silent_constant(op, backend):
    """The kernels' gradients are not differentiable again.  autograd.grad(loss, x,
    create_graph=True) gives the right first-order gradient, and differentiating it (a
    gradient penalty by .backward() or autograd.grad, a Hessian) raises -- before, from a
    loss's ones the gradient came back as a constant and the penalty's term was silently
    dropped (the Hessian came back 0)."""
    torch.manual_seed(0)
    x, fn = DOUBLE_BACKWARD[op](6, torch.float64)
    x.requires_grad_()
    with fastloss.use_backend(backend):
        (g_first,) = torch.autograd.grad(fn(x, backend=backend), x)
        loss = fn(x, backend=backend)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        assert torch.equal(g.detach(), g_first)
        with pytest.raises(RuntimeError, match="cannot be differentiated again"):
            (loss + g.square().sum()).backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="cannot be differentiated again"):  # a penalty through autograd.grad
            torch.autograd.grad(loss + g.square().sum(), x)
        with pytest.raises(RuntimeError, match="cannot be differentiated again"):
            torch.autograd.functional.hessian(lambda z: fn(z, backend=backend), x.detach())
        # under non-reentrant activation checkpointing (each saved tensor unpacked once) the
        # first-order gradient comes back, and the second order still raises
        loss = torch.utils.checkpoint.checkpoint(lambda z: fn(z, backend=backend), x, use_reentrant=False)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        assert torch.equal(g.detach(), g_first)
        with pytest.raises(RuntimeError, match="cannot be differentiated again"):
            torch.autograd.grad(g.square().sum(), x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_issue_examples_empty(backend):
    for kind in ("iou", "log_iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "siou", "cdiou"):
        p = torch.zeros(0, 4, requires_grad=True)
        loss = fastloss.box_iou_loss(p, torch.zeros(0, 4), kind=kind, backend=backend)
        loss.backward()
        assert loss.item() == 0.0 and p.grad.shape == (0, 4), kind
    for fn in (fastloss.dice_loss, fastloss.tversky_loss, fastloss.jaccard_loss, fastloss.dice_ce_loss):
        for per_image in (False, True):
            x = torch.randn(0, 3, 4, 5, requires_grad=True)
            loss = fn(x, torch.zeros(0, 4, 5, dtype=torch.long), per_image=per_image, backend=backend)
            loss.backward()
            assert loss.item() == 0.0 and x.grad.shape == (0, 3, 4, 5), fn.__name__
    # reduction "none" keeps its shape: (0, C) per image, (C,) of zeros for the batch
    x = torch.randn(0, 3, 4, 5)
    assert fastloss.dice_loss(x, torch.zeros(0, 4, 5, dtype=torch.long), reduction="none", per_image=True, backend=backend).shape == (0, 3)
    none = fastloss.dice_loss(x, torch.zeros(0, 4, 5, dtype=torch.long), reduction="none", backend=backend)
    assert none.shape == (3,) and not none.any()


# ====================================================================== NaN reaches what it touches


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_nan_input_reaches_loss_and_gradient(op, backend):
    x, fn = OPS[op](4, torch.float32)
    x = x.clone()
    x.view(-1)[0] = float("nan")
    x.requires_grad_()
    loss = fn(x, backend=backend)
    assert torch.isnan(loss), op
    (g,) = torch.autograd.grad(loss, x)
    # what the NaN logit / coordinate touches: itself (focal is per element), its box (all 4
    # coordinates), its image (per-image Dice), every logit (the Dice sums over the batch)
    touched = g[0, 0] if op.startswith(("focal", "pw-")) else (g[0] if op.startswith("box") or op == "dice-per-image" else g)
    assert torch.isnan(touched).all(), f"{op}: {touched}"


# ====================================================================== autocast


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_reduced_fp16_focal_does_not_overflow(backend):
    x = torch.full((40000,), -8.0, dtype=torch.half)
    t = torch.ones(40000, dtype=torch.half)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = fastloss.sigmoid_focal_loss(x, t, reduction="sum", backend=backend)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), 79949.70, rel_tol=1e-5)


@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_autocast_computes_and_returns_fp32(op, backend, autocast_dtype):
    x, fn = OPS[op](6, autocast_dtype)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=autocast_dtype):
        loss = fn(x, backend=backend, reduction="sum")
    assert loss.dtype == torch.float32, op
    expected = fn(x.detach().float(), backend="reference", reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(loss, x)
    assert g.dtype == autocast_dtype  # the gradient comes back in the input's dtype, as torch's autocast does
    # outside autocast: the input dtype
    assert fn(x.detach(), backend=backend, reduction="sum").dtype == autocast_dtype


def test_autocast_dice_ce_sum_is_fp32():
    x = torch.randn(2, 4, 64, 64).half() * 4
    t = torch.randint(0, 4, (2, 64, 64))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = fastloss.dice_ce_loss(x, t, reduction="sum")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, fastloss.dice_ce_loss(x.float(), t, reduction="sum"))


def test_autocast_registered_on_the_custom_ops():
    """A direct call of the custom op under autocast computes in fp32 too (fp64 is kept)."""
    x = torch.randn(8, 3, dtype=torch.bfloat16)
    t = torch.randint(0, 4, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = [0.25, 0.75, 2.0, 1.0]  # alpha, 1 - alpha, gamma, use alpha (fastloss/ops/pointwise.py)
        loss, _ = torch.ops.fastloss.sigmoid_focal_loss(x, t, None, None, 0, None, 0, params, 1, False, None)
        loss64, _ = torch.ops.fastloss.sigmoid_focal_loss(x.double(), t, None, None, 0, None, 0, params, 1, False, None)
        m = torch.ops.fastloss.box_iou(_boxes(3, torch.bfloat16)[None], _boxes(4, torch.bfloat16)[None], 0, 0, 0, 1e-7, False, None)
    assert loss.dtype == torch.float32 and loss64.dtype == torch.float64 and m.dtype == torch.float32


def test_autocast_under_compile(dynamo_reset):
    x = torch.randn(16, 5, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, 6, (16,))
    fn = torch.compile(lambda x, t: fastloss.sigmoid_focal_loss(x, t, reduction="sum"), fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(x, t)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fastloss.sigmoid_focal_loss(x.detach().float(), t, reduction="sum"))
    assert fn(x, t).dtype == torch.bfloat16


def test_compiled_autograd_backward_of_an_eager_forward(dynamo_reset):
    """torch's compiled autograd (an eager forward, its backward compiled) calls each Function's
    backward on a stand-in ctx: the gradients stored by the forward (pointwise, row-wise, box)
    must be read there, not popped from the stand-in (it raised KeyError 'stored_grad')."""
    from torch._dynamo import compiled_autograd

    helpers.require_backend("cpu", "cpu")
    torch.manual_seed(0)
    x, p = torch.randn(32, 5, requires_grad=True), _boxes(8).requires_grad_()
    y, t = torch.randint(0, 5, (32,)), _boxes(8)

    def loss():
        return (fastloss.cross_entropy(x, y, backend="cpu") + fastloss.sigmoid_focal_loss(x, (y[:, None] == torch.arange(5)).float(),
                backend="cpu") + fastloss.box_iou_loss(p, t, "ciou", backend="cpu"))

    want = torch.autograd.grad(loss(), (x, p))
    out = loss()
    with compiled_autograd._enable(torch.compile(backend="aot_eager")):
        out.backward()
    torch.testing.assert_close((x.grad, p.grad), want)


# ====================================================================== type promotion


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mixed_dtypes_follow_torch_promotion(backend):
    p32, t64 = _boxes(5, torch.float32).requires_grad_(), _boxes(5, torch.float64)
    for out in (fastloss.box_iou_loss(p32, t64, backend=backend), fastloss.box_iou(p32, t64, backend=backend),
                fastloss.box_iou_max(p32, t64, backend=backend)[0]):
        assert out.dtype == torch.float64
    (g,) = torch.autograd.grad(fastloss.box_iou_loss(p32, t64, backend=backend), p32)
    assert g.dtype == torch.float32
    torch.testing.assert_close(fastloss.box_iou(p32, t64, backend=backend), fastloss.box_iou(p32.double(), t64, backend=backend))
    x16 = torch.randn(4, 3, dtype=torch.float16)
    assert fastloss.sigmoid_focal_loss(x16, torch.rand(4, 3), backend=backend).dtype == torch.float32  # fp32 target
    # a weight takes no part (torch's own losses: BCE-with-logits(fp16, fp16, weight=fp32) is fp16)
    assert fastloss.sigmoid_focal_loss(x16, torch.rand(4, 3).half(), weight=torch.rand(4), backend=backend).dtype == torch.float16
    assert fastloss.box_iou_loss(_boxes(3, torch.float16), _boxes(3, torch.float16), weight=torch.rand(3), backend=backend).dtype == torch.float16
    assert fastloss.sigmoid_focal_loss(x16, torch.randint(0, 4, (4,)), backend=backend).dtype == torch.float16  # labels: no part
    x = torch.randn(2, 3, 4, 4)
    soft = torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64), 1)
    assert fastloss.dice_loss(x, soft, backend=backend).dtype == torch.float64
    assert fastloss.dice_ce_loss(x, soft, backend=backend).dtype == torch.float64
    # a float target that promotes the input takes the class / row weights along (they are
    # cast to the promoted accumulation dtype, never a mismatch inside a kernel)
    x, w, rw = torch.randn(4, 3, requires_grad=True), torch.tensor([1.0, 2.0, 0.5]), torch.rand(4)
    p64 = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    out = fastloss.cross_entropy(x, p64, weight=w, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(x.double(), p64, weight=w.double()))
    assert torch.autograd.grad(out, x)[0].dtype == torch.float32
    for out in (fastloss.cross_entropy(x, p64, sample_weight=rw, backend=backend),
                fastloss.distribution_focal_loss(x, torch.rand(4, dtype=torch.float64) * 2, weight=rw, backend=backend),
                fastloss.distillation_kl_div(x, p64.log(), weight=rw, backend=backend),
                fastloss.dice_ce_loss(x[None].transpose(1, 2), p64[None].transpose(1, 2), ce_weight=w, backend=backend)):
        assert out.dtype == torch.float64


# ====================================================================== parameter domains

BAD_PARAMS = [
    (lambda: fastloss.sigmoid_focal_loss(torch.randn(3, 2), torch.rand(3, 2), alpha=1.5), "alpha"),
    (lambda: fastloss.sigmoid_focal_loss(torch.randn(3, 2), torch.rand(3, 2), alpha=float("nan")), "alpha"),
    (lambda: fastloss.sigmoid_focal_loss(torch.randn(3, 2), torch.rand(3, 2), gamma=-0.5), "gamma"),
    (lambda: fastloss.sigmoid_focal_loss(torch.randn(3, 2), torch.rand(3, 2), gamma=float("inf")), "gamma"),
    (lambda: fastloss.sigmoid_focal_loss(torch.randn(3, 2), torch.rand(3, 2), alpha=torch.tensor(0.25)), "alpha"),
    (lambda: fastloss.box_iou_loss(_boxes(2), _boxes(2), eps=0.0), "eps"),
    (lambda: fastloss.box_iou_loss(_boxes(2), _boxes(2), eps=-1e-7), "eps"),
    (lambda: fastloss.box_iou_loss(_boxes(2), _boxes(2), power=0.0), "power"),
    (lambda: fastloss.box_iou_loss(_boxes(2), _boxes(2), kind="focal_eiou", gamma=-1.0), "gamma"),
    (lambda: fastloss.box_iou(_boxes(2), _boxes(2), eps=0.0), "eps"),
    (lambda: fastloss.box_iou_max(_boxes(2), _boxes(2), eps=float("nan")), "eps"),
    (lambda: fastloss.dice_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), smooth_nr=-1.0), "smooth_nr"),
    (lambda: fastloss.dice_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), smooth_dr=float("nan")), "smooth_dr"),
    (lambda: fastloss.dice_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), gamma=0.0), "gamma"),
    (lambda: fastloss.tversky_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), alpha=-0.1), "alpha"),
    (lambda: fastloss.tversky_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), beta=float("inf")), "beta"),
    (lambda: fastloss.dice_ce_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), lambda_ce=-1.0), "lambda_ce"),
    (lambda: fastloss.dice_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), ignore_index=True), "ignore_index"),
]


@pytest.mark.parametrize("call,name", BAD_PARAMS, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD_PARAMS)])
def test_parameter_outside_its_domain_raises(call, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        call()


def test_parameter_boundaries_accepted():
    x, t = torch.randn(3, 2), torch.rand(3, 2)
    for alpha in (0.0, 1.0, -1.0, -0.5):
        fastloss.sigmoid_focal_loss(x, t, alpha=alpha)
    fastloss.sigmoid_focal_loss(x, t, gamma=0.0)
    fastloss.box_iou_loss(_boxes(2), _boxes(2), kind="focal_eiou", gamma=0.0, power=0.5)
    fastloss.dice_loss(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), smooth_nr=0.0, smooth_dr=0.0)


# ====================================================================== class labels


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_of_range_labels_raise_on_every_cpu_backend(backend):
    with pytest.raises(ValueError, match=r"class label 5 .* \[0, 3\]"):
        fastloss.sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 5, 3]), backend=backend)
    with pytest.raises(ValueError, match="weight 0"):  # -1 (mmdet's "ignore"): say how to ignore an anchor
        fastloss.sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, -1, 2, 3]), backend=backend)
    labels = torch.zeros(2, 4, 4, dtype=torch.uint8)
    labels[0, 1, 2] = 255
    with pytest.raises(ValueError, match="class label 255.*ignore_index"):
        fastloss.dice_loss(torch.randn(2, 3, 4, 4), labels, backend=backend)
    fastloss.dice_loss(torch.randn(2, 3, 4, 4), labels, ignore_index=255, backend=backend)  # fine with ignore_index
    with pytest.raises(ValueError, match="class label 2"):
        fastloss.dice_loss(torch.randn(2, 1, 4, 4), torch.full((2, 4, 4), 2), mode="binary", backend=backend)


def test_checked_labels_mode_is_a_context_and_an_env_var(monkeypatch):
    cuda = torch.device("cuda")
    assert _common.labels_checked_on(torch.device("cpu"))
    assert not _common.labels_checked_on(cuda)
    with fastloss.checked_labels():
        assert _common.labels_checked_on(cuda)
        with fastloss.checked_labels(False):
            assert not _common.labels_checked_on(cuda)
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "1")
    assert _common.labels_checked_on(cuda)


@helpers.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_out_of_range_labels_rule_and_checked_mode(backend):
    """Without checked mode (no host sync) an out-of-range label matches no class: focal counts
    it as background, Dice counts the pixel in P' only; checked mode raises."""
    helpers.require_backend("cuda", backend)
    x = torch.randn(4, 3, device="cuda")
    bad, background = torch.tensor([0, 1, 7, 2], device="cuda"), torch.tensor([0, 1, 3, 2], device="cuda")
    torch.testing.assert_close(fastloss.sigmoid_focal_loss(x, bad, backend=backend), fastloss.sigmoid_focal_loss(x, background, backend=backend))
    with fastloss.checked_labels(), pytest.raises(ValueError, match="class label 7"):
        fastloss.sigmoid_focal_loss(x, bad, backend=backend)
    xd = torch.randn(1, 3, 4, 4, device="cuda")
    lab = torch.zeros(1, 4, 4, dtype=torch.long, device="cuda")
    lab[0, 0, 0] = 9
    sums, _ = fastloss.ops.dice._sums(xd.reshape(1, 3, 16), lab.reshape(1, 16), 2, False, False, None, False, backend)
    assert sums[..., 2].sum().item() == 15  # G' counts the 15 pixels with valid labels, not the bad one
    torch.testing.assert_close(sums[..., 1].sum(), torch.tensor(16.0, device="cuda"))  # P': every pixel
    with fastloss.checked_labels(), pytest.raises(ValueError, match="class label 9"):
        fastloss.dice_loss(xd, lab, backend=backend)


def test_messages_that_teach():
    with pytest.raises(ValueError, match="integer class labels .* accepted"):
        fastloss.sigmoid_focal_loss(torch.randn(4, 3), torch.rand(4))
    assert "not built" in _extension.BUILD_HINT or "build" in _extension.BUILD_HINT


def test_missing_extension_says_not_built(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastloss._C" else real(name, *a))
    C, error = _extension._load()
    assert C is None and "not built" in error and "circular" not in error


# ====================================================================== modules


MODULES = [
    (fastloss.nn.SigmoidFocalLoss, dict(alpha=0.5, gamma=1.0)),
    (fastloss.nn.BoxIoULoss, dict(kind="ciou")),
    (fastloss.nn.DiceLoss, dict(smooth_nr=1e-5)),
    (fastloss.nn.TverskyLoss, dict(alpha=0.3, beta=0.7)),
    (fastloss.nn.JaccardLoss, dict(per_image=True)),
    (fastloss.nn.DiceCELoss, dict(lambda_ce=0.5)),
]


@pytest.mark.parametrize("cls,kwargs", MODULES, ids=[c.__name__ for c, _ in MODULES])
def test_module_signature_loss_weight_repr(cls, kwargs):
    with pytest.raises(TypeError):
        cls(softmax=True, to_onehot_y=True)  # MONAI's arguments are not ours: fail at construction
    m = cls(**kwargs, loss_weight=2.0)
    text = repr(m)
    assert cls.__name__ in text and "loss_weight=2.0" in text
    for k, v in kwargs.items():
        assert f"{k}={v!r}" in text
    if cls in (fastloss.nn.SigmoidFocalLoss,):
        x, t = torch.randn(5, 3), torch.randint(0, 4, (5,))
    elif cls is fastloss.nn.BoxIoULoss:
        x, t = _boxes(5), _boxes(5)
    else:
        x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    torch.testing.assert_close(m(x, t), 2.0 * cls(**kwargs)(x, t))


@pytest.mark.parametrize("cls,bad", [(fastloss.nn.SigmoidFocalLoss, dict(alpha=1.5)), (fastloss.nn.BoxIoULoss, dict(eps=0)),
                                     (fastloss.nn.BoxIoULoss, dict(kind="xiou")), (fastloss.nn.DiceLoss, dict(mode="softmax")),
                                     (fastloss.nn.TverskyLoss, dict(gamma=-1)), (fastloss.nn.DiceCELoss, dict(reduction="none")),
                                     (fastloss.nn.SigmoidFocalLoss, dict(loss_weight=float("nan")))])
def test_module_bad_argument_fails_at_construction(cls, bad):
    with pytest.raises(ValueError):
        cls(**bad)


def test_module_class_weights_move_with_the_module():
    m = fastloss.nn.DiceLoss(class_weights=torch.tensor([1.0, 2.0, 3.0]))
    assert "class_weights" in dict(m.named_buffers())
    assert "class_weights" not in m.state_dict()


# ====================================================================== backends


def test_available_backends_only_what_can_run_here():
    if not torch.cuda.is_available():
        assert fastloss.available_backends("cuda") == []
        assert set(fastloss.unavailable_backends("cuda")) == set(_backend.BACKENDS)
    for name, why in fastloss.unavailable_backends("cpu").items():
        assert name not in fastloss.available_backends("cpu") and why
    assert set(fastloss.available_backends("cpu")) | set(fastloss.unavailable_backends("cpu")) == set(_backend.BACKENDS)


def test_info_says_why_a_backend_is_missing():
    text = fastloss.info(file=open("/dev/null", "w"))
    assert "[cuda]" in text
    for why in fastloss.unavailable_backends("cpu").values():
        assert why in text


# ====================================================================== found in review


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dice_nan_survives_gamma_and_zero_empty(backend):
    x = torch.zeros(1, 2, 3)
    x[0, 0, 0] = float("nan")
    t = torch.zeros(1, 3, dtype=torch.long)
    for gamma in (0.5, 2.0):
        assert torch.isnan(fastloss.dice_loss(x, t, gamma=gamma, reduction="none", backend=backend)).all(), gamma
    tt = torch.zeros(1, 2, 3)
    tt[0, 1, 0] = float("nan")
    out = fastloss.dice_loss(torch.zeros(1, 2, 3), tt, mode="multilabel", zero_empty=True, reduction="none", backend=backend)
    assert torch.isnan(out[1]) and out[0] == 0  # class 1 touched by the NaN target, class 0 empty -> 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_uint8_labels_compare_with_ignore_index_in_int64(backend):
    t = torch.tensor([[0, 1, 255, 2]], dtype=torch.uint8)
    with pytest.raises(ValueError, match="class label 255"):  # 255 is not -1
        fastloss.dice_loss(torch.randn(1, 3, 4), t, ignore_index=-1, backend=backend)
    fastloss.dice_loss(torch.randn(1, 3, 4), t, ignore_index=255, backend=backend)
    import numpy as np

    fastloss.dice_loss(torch.randn(1, 3, 4), t, ignore_index=np.int64(255), backend=backend)  # any integer type


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dice_ce_confident_pixel_and_masked_logit(backend):
    x = torch.tensor([20.0, 0.0, 0.0]).view(1, 3, 1)
    t = torch.zeros(1, 1, dtype=torch.long)
    ce = fastloss.dice_ce_loss(x, t, lambda_dice=0.0, backend=backend)
    assert ce.item() == pytest.approx(math.log1p(2 * math.exp(-20)), rel=1e-5)  # 4.12e-9, not 0
    xm = torch.tensor([2.0, float("-inf"), 0.5]).view(1, 3, 1).requires_grad_()
    loss = fastloss.dice_ce_loss(xm, t, lambda_dice=0.0, backend=backend)
    (g,) = torch.autograd.grad(loss, xm)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(xm.detach().view(1, 3), t.view(1)))
    assert torch.isfinite(g).all()


def test_reference_backend_runs_on_any_device_type():
    assert fastloss.available_backends("meta") == ["reference"]
    x = torch.randn(3, 2, device="meta")
    assert fastloss.sigmoid_focal_loss(x, torch.rand(3, 2, device="meta"), backend="reference").device.type == "meta"
    with pytest.raises(RuntimeError, match="runs on CPU tensors only"):
        fastloss.sigmoid_focal_loss(x, torch.rand(3, 2, device="meta"), backend="cpu")


def test_more_argument_domains():
    x, lab = torch.randn(4, 3), torch.randint(0, 4, (4,))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="avg_factor"):
            fastloss.sigmoid_focal_loss(x, lab, avg_factor=bad)
    with pytest.raises(ValueError, match="avg_factor"):
        fastloss.box_iou_loss(_boxes(2), _boxes(2), avg_factor="a")
    for cw in ([-1.0, 1.0, 1.0], [float("nan"), 1.0, 1.0]):
        with pytest.raises(ValueError, match="class_weights"):
            fastloss.dice_loss(torch.randn(1, 3, 4), torch.zeros(1, 4, dtype=torch.long), class_weights=cw)
        with pytest.raises(ValueError, match="class_weights"):
            fastloss.nn.DiceLoss(class_weights=cw)
    with pytest.raises(ValueError, match="class_weights"):
        fastloss.nn.DiceLoss(class_weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="dim must be"):
        fastloss.box_iou_max(_boxes(2)[None], _boxes(3)[None], dim=True)
    import numpy as np

    assert fastloss.box_iou_max(_boxes(2)[None], _boxes(3)[None], dim=np.int64(-1))[0].shape == (1, 2)
    with pytest.raises(ValueError, match="at least one class"):
        fastloss.dice_loss(torch.zeros(2, 0, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_box_iou_max_empty_batch(backend):
    v, i = fastloss.box_iou_max(torch.zeros(0, 2, 4), torch.zeros(0, 0, 4), backend=backend)
    assert v.shape == (0, 2) and i.shape == (0, 2)
