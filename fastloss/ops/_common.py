"""Argument checks and conversions shared by the op families' public wrappers."""
import torch

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


def reduced_dtype(dtype):
    """dtype of a reduced loss inside the kernels: fp32 accumulation, fp64 for fp64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_reduction(reduction, avg_factor):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    if avg_factor is not None and reduction == "sum":
        raise ValueError('avg_factor can not be used with reduction="sum" (mmdetection\'s contract)')
    return REDUCTIONS[reduction]


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
        return cache.mul_(scale)
    return (cache * scale).to(dtype)


def take_stored_grad(ctx):
    """The eager fast path keeps the stored gradient on ctx (not save_for_backward, whose
    version check would reject the in-place scaling).  Returns (cache, in_place): in place
    when the engine frees the graph after this backward (AOTAutograd asks the engine the
    same way); with retain_graph=True the cache stays intact, so every backward through the
    retained graph gives the same bits (gradcheck's reentrancy check)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)()
    if keep_graph:
        return ctx.stored_grad, False
    return ctx.__dict__.pop("stored_grad"), True


def finish(loss, input_dtype, reduction, avg_factor):
    """Apply mmdetection's avg_factor (mean -> sum / (avg_factor + eps), on the device) and
    return the loss in the input dtype."""
    if reduction != "none" and avg_factor is not None:
        loss = loss / (avg_factor + torch.finfo(torch.float32).eps)
    return loss.to(input_dtype)
