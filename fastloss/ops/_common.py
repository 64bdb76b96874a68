"""Argument checks and conversions shared by the op families' public wrappers.

Rules every op follows (written once, here):

* dtypes -- the input and a float target follow torch's type promotion, as in torch's own
  losses: they are computed in, and the result comes back in, ``torch.promote_types`` of the
  two (:func:`compute_dtype`); a weight, like torch's ``weight=``, takes no part (it is cast),
  nor do integer class labels.  Under ``torch.autocast`` on the input's device, fp16 / bf16
  are computed and returned in fp32, as torch's own losses are.
* scalar parameters -- real numbers inside their domain, else ``ValueError`` naming the
  argument and the domain (:func:`check_param`).
* class labels -- validated once per call, in the op itself, before any backend runs
  (:func:`check_labels`): always for CPU tensors (no device sync), for CUDA tensors only in
  checked mode (:func:`checked_labels`, ``FASTLOSS_CHECK_LABELS=1``), which syncs.
"""
import contextlib
import contextvars
import functools
import math
import numbers
import os

import torch

from fastloss import distributed

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_DOUBLE_BACKWARD = (b"fastloss: this loss's gradient comes from a fused kernel and cannot be differentiated again (double backward, "
                    b"e.g. a gradient penalty or a second-order method through autograd.grad(..., create_graph=True)); use torch's "
                    b"own loss for that term")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(input, *others):
    """The dtype an op computes and returns: torch's promotion over ``input`` and the floating
    tensors in ``others`` (the target, or the second box set; None and integer tensors are
    skipped); fp32 for fp16 / bf16 under ``torch.autocast`` on input's device type."""
    dtype = input.dtype
    for t in others:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    if dtype in _LOW_PRECISION and torch.is_autocast_enabled(input.device.type):
        dtype = torch.float32
    return dtype


def register_autocast(op):
    """Under ``torch.autocast`` (CPU and CUDA) the custom op computes in fp32: fp16 / bf16
    floating inputs are cast up, fp64 is kept -- torch's rule for its losses.  The public
    functions apply the same rule themselves (:func:`compute_dtype`), so this matters for
    direct ``torch.ops.fastloss.*`` calls."""
    for device_type in ("cpu", "cuda"):
        op.register_autocast(device_type, torch.float32)


def check_param(name, value, ok, domain):
    """``value`` as a float if it is a real number with ``ok(value)`` true, else ValueError
    ("gamma must be >= 0, got -1.0").  NaN fails every domain."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number ({domain}), got {value!r}")
    v = float(value)
    if not (v == v and ok(v)):
        raise ValueError(f"{name} must be {domain}, got {value!r}")
    return v


def broadcasts_to(shape, target_shape):
    """Whether torch's broadcasting takes ``shape`` to ``target_shape`` itself (not to a larger
    shape, and without an error): the test of every weight "that broadcasts to" a loss."""
    try:
        return torch.broadcast_shapes(shape, target_shape) == target_shape
    except RuntimeError:
        return False


def flag(name, value):
    """A boolean argument as the 1.0 / 0.0 a kernel parameter slot holds: True / False (or 1 / 0)
    only -- a string such as "no" is an error, not True."""
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and int(value) in (0, 1)):
        return 1.0 if value else 0.0
    raise ValueError(f"{name} must be True or False, got {value!r}")


def nonneg(name, value):
    return check_param(name, value, lambda v: 0 <= v < float("inf"), ">= 0 and finite")


def positive(name, value):
    return check_param(name, value, lambda v: 0 < v < float("inf"), "> 0 and finite")


# ------------------------------------------------------------------ class labels

_checked = contextvars.ContextVar("fastloss_check_labels", default=None)


@contextlib.contextmanager
def checked_labels(enabled=True):
    """Inside the block, integer class labels on CUDA tensors are validated too (one device
    sync per call: a debugging aid).  CPU tensors are always validated.  The environment
    variable ``FASTLOSS_CHECK_LABELS=1`` turns it on for the whole process.  Works under
    ``torch.compile``: the check runs inside the op, at run time."""
    token = _checked.set(bool(enabled))
    try:
        yield
    finally:
        _checked.reset(token)


def labels_checked_on(device):
    if device.type == "cpu":
        return True
    mode = _checked.get()
    if mode is None:
        mode = os.environ.get("FASTLOSS_CHECK_LABELS", "").strip().lower() in ("1", "true", "yes", "on")
    return mode


def check_range(op, name, values, lo, hi):
    """ValueError if a floating tensor has values outside [lo, hi] (NaN passes: it propagates),
    for CPU tensors always and for CUDA tensors in checked mode (as :func:`check_labels`)."""
    if values.numel() == 0 or not labels_checked_on(values.device):
        return
    if bool(((values < lo) | (values > hi)).any()):
        raise ValueError(f"{op}: all elements of {name} should be between {lo:g} and {hi:g} (in [{lo:g}, {hi:g}])")


def check_labels(op, labels, high, ignore_index=None, hint=""):
    """ValueError if an integer label is outside [0, high) (and not ``ignore_index``), for
    CPU tensors always and for CUDA tensors in checked mode; ``hint`` says how to do what the
    bad label probably meant."""
    if labels.is_floating_point() or labels.numel() == 0 or not labels_checked_on(labels.device):
        return
    lo, hi = torch.aminmax(labels)  # one pass; the common all-valid case ends here
    if lo.item() >= 0 and hi.item() < high:
        return
    lab = labels.long()  # compare in int64: a uint8 map against ignore_index=-1 must not wrap to 255
    bad = (lab < 0) | (lab >= high)
    if ignore_index is not None:
        bad &= lab != ignore_index
    if bool(bad.any()):
        first = lab[bad].reshape(-1)[0].item()
        ok = f"[0, {high - 1}]" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"{op}: class label {first} in target is out of range: labels must be in {ok}{hint}")


def reduced_dtype(dtype):
    """dtype of a reduced loss inside the kernels: fp32 accumulation, fp64 for fp64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_reduction(reduction, avg_factor, sync_avg_factor=False):
    """The reduction's code; ValueError for an unknown reduction, avg_factor with "sum"
    (mmdetection's contract), a number avg_factor outside [0, inf), a ``sync_avg_factor``
    that is not a bool, or ``sync_avg_factor=True`` without an avg_factor."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    if avg_factor is not None and reduction == "sum":
        raise ValueError('avg_factor can not be used with reduction="sum" (mmdetection\'s contract)')
    if avg_factor is not None and not isinstance(avg_factor, torch.Tensor):  # a tensor stays on its device, unchecked
        check_param("avg_factor", avg_factor, lambda v: 0 <= v < float("inf"), "a tensor, or a number >= 0 and finite")
    if flag("sync_avg_factor", sync_avg_factor) and avg_factor is None:
        raise ValueError("sync_avg_factor=True needs avg_factor: it averages the avg_factor over the ranks (pass this rank's "
                         "count, e.g. its number of positives, as avg_factor)")
    return REDUCTIONS[reduction]


def global_avg_factor(avg_factor, sync_avg_factor, dtype, device):
    """The avg_factor a loss with reduction "mean" divides by -- written once for every loss
    (the engines call it for "mean" only: "none" ignores avg_factor and communicates
    nothing).  With ``sync_avg_factor`` under an initialised process group: its mean
    over the ranks (:func:`fastloss.distributed.reduce_mean`'s rule), detached, a tensor on
    ``device`` (a number or an integer count as a ``reduced_dtype(dtype)`` tensor; a floating
    tensor keeps its dtype), returned before the all-reduce completes so that it runs behind
    the loss kernel (the division waits for it).  Without a process group: avg_factor itself,
    a tensor detached (the loss and its input gradient have the bits they have without
    ``sync_avg_factor``; a synchronised avg_factor gets no gradient, with a group or without).
    Without ``sync_avg_factor``: avg_factor unchanged."""
    if not sync_avg_factor:
        return avg_factor
    if not distributed.is_initialized():
        return avg_factor.detach() if isinstance(avg_factor, torch.Tensor) else avg_factor
    # a 0-d CPU count beside CUDA logits moves to their device (NCCL reduces CUDA tensors only)
    return distributed._all_reduce_mean(distributed._as_float_tensor(avg_factor, device, reduced_dtype(dtype)).to(device))


def host_avg_factor(avg_factor, sync_avg_factor):
    """avg_factor + eps as a Python float where the host knows it without waiting: a number, or
    a CPU tensor that needs no gradient and is not being all-reduced (``sync_avg_factor`` under
    an initialised process group); else None.  The eager CPU paths fold it into the forward's
    stored gradient (that of the mean itself), so ``loss.backward()`` takes the stored gradient
    with no pass scaling it."""
    if sync_avg_factor and distributed.is_initialized():
        return None
    if isinstance(avg_factor, torch.Tensor) and (avg_factor.requires_grad or avg_factor.device.type != "cpu" or avg_factor.dim() != 0):
        return None  # a (1,) or (k,) avg_factor broadcasts the loss in finish(): left to it
    return float(avg_factor + torch.finfo(torch.float32).eps)  # a tensor rounds the sum in its dtype, as finish()


def fold_scale(numerator, den, acc_dtype):
    """``numerator / den`` if the kernels can fold it in ``acc_dtype``: a normaliser known on the
    host (not None), not 0, and a quotient finite and not 0 there (a tiny normaliser: the
    division in the graph gives torch's inf / NaN); else None."""
    if den is None or den == 0:
        return None
    scale = numerator / den
    return scale if math.isfinite(scale) and scale != 0 and abs(scale) <= torch.finfo(acc_dtype).max else None


def check_logits(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (fp16/bf16/fp32/fp64), got {x.dtype}")


def check_same_device(ref_name, ref, **others):
    for name, t in others.items():
        if t is not None and isinstance(t, torch.Tensor) and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")


def no_grad_required(**tensors):
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise ValueError(f"fastloss does not differentiate with respect to {name}; pass {name}.detach()")


def scale_stored_grad(cache, scale, dtype, in_place):
    """dL/dx from the gradient the forward stored (fastloss/_backend.py STORE_GRAD_IN_FORWARD):
    ``cache * scale`` in ``dtype``.  ``in_place`` (the eager fast path's first backward, which
    owns the cache): scale the cache itself, so the backward allocates no (n, ...) buffer, and
    autograd then takes it as ``.grad`` without a copy."""
    if in_place and cache.dtype == dtype:
        if scale.device.type == "cpu" and scale.numel() == 1 and bool(scale == 1):  # loss.backward(): already the gradient
            return cache
        return cache.mul_(scale)
    return (cache * scale).to(dtype)


def take_stored_grad(ctx):
    """The eager fast path keeps the stored gradient on ctx (not save_for_backward, whose
    version check would reject the in-place scaling).  Returns (cache, in_place): in place
    when the engine frees the graph after this backward (AOTAutograd asks the engine the
    same way); with retain_graph=True the cache stays intact, so every backward through the
    retained graph gives the same bits (gradcheck's reentrancy check).  Compiled autograd calls
    the backward on a stand-in ctx that reads the real one's attributes: nothing of ours to
    free there, so the cache stays intact too."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)()
    if keep_graph or "stored_grad" not in vars(ctx):
        return ctx.stored_grad, False
    return vars(ctx).pop("stored_grad"), True


def finish(loss, input_dtype, reduction, avg_factor):
    """Apply mmdetection's avg_factor (mean -> sum / (avg_factor + eps), on the device) and
    return the loss in the input dtype."""
    if reduction != "none" and avg_factor is not None:
        loss = loss / (avg_factor + torch.finfo(torch.float32).eps)
    return loss.to(input_dtype)


def saved_tensors(ctx):
    """``ctx.saved_tensors`` for a backward under :func:`once_differentiable`, which needs them
    too: unpacked once and handed over on ctx (a second unpack fails under non-reentrant
    ``torch.utils.checkpoint`` and runs saved-tensor hooks, e.g. ``save_on_cpu``, twice)."""
    saved = ctx.saved_tensors
    if not torch.compiler.is_compiling():  # dynamo traces a Function's backward: no ctx mutation there
        ctx.fl_unpacked = saved
    return saved


def once_differentiable(backward):
    """``torch.autograd.function.once_differentiable`` for the engines' autograd Functions, and
    also where the incoming gradient does not require grad.  torch's decorator marks the
    gradient as not differentiable only when the upstream gradient requires grad; from a
    loss's ``ones`` (``autograd.grad(loss, x, create_graph=True)``) the gradient of x then
    came back as a constant, and a gradient penalty or a second-order method built on it
    silently lost this loss's term.  Here, under ``create_graph`` (grad mode on inside the
    backward) and with an input that needs a gradient, every gradient is an alias whose own
    backward raises -- through ``.backward()``, ``autograd.grad`` and
    ``torch.autograd.functional.hessian`` alike: an error, never a silent zero."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        unpacked = () if torch.compiler.is_compiling() else vars(ctx).pop("fl_unpacked", ())  # the backward's saved_tensors(ctx)
        if not (torch.is_grad_enabled() and any(ctx.needs_input_grad)):
            return outputs
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        if all(o is None for o in outs):  # no gradient flowed (grads not materialised)
            return outputs
        # the error node also takes the saved inputs that require grad (every engine saves its
        # input): with edges to them, autograd.grad(..., inputs) reaches it, not only .backward()
        inputs = [t for t in unpacked if t is not None and t.requires_grad]
        err = torch._C._functions.DelayedError(_DOUBLE_BACKWARD, len(outs) + len(inputs))
        marked = err(*[None if o is None else o.detach().requires_grad_() for o in outs], *inputs)
        return tuple(marked[:len(outs)]) if isinstance(outputs, tuple) else marked[0]

    return wrapper
