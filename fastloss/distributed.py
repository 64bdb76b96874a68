"""Normalisers that are the same on every rank under DistributedDataParallel.

Why: a detector divides its loss sum by ``avg_factor``, the number of positives in the
batch.  Under DDP each rank sees its own images, so each rank's count differs, and DDP
averages the gradients over the ranks.  With a per-rank normaliser, a rank with 3 positives
pulls as hard as one with 300; with the mean count m = (a_1 + ... + a_W) / W on every rank the
averaged gradient is (1 / W) sum_r grad(S_r) / m = grad(S_1 + ... + S_W) / (a_1 + ... + a_W):
exactly the single-process gradient of the whole batch normalised by its whole count.  This
is what mmdetection's ``reduce_mean`` (mmdet/utils/dist_utils.py) is for; fastloss provides it
here and, inside every loss that takes ``avg_factor``, as ``sync_avg_factor=True``.

Built on ``torch.distributed``: nothing is synchronised when it is not available or no
process group is initialised.  The collective is a functional all-reduce
(``torch.distributed._functional_collectives``): it writes into no tensor (a normaliser that
requires grad is safe), ``torch.compile(fullgraph=True)`` puts it in the graph (tested over
gloo with the aot_eager backend; inductor checked by hand: 23 s to compile on 2 cores, too
slow for the unit test), and in eager mode it runs asynchronously and is waited for where
its result is first used -- a loss issues it before its kernel and waits at the division, so
the all-reduce runs behind the kernel (an ``async_op=False`` ``dist.all_reduce`` would order
the kernel after it).  Like every collective it must be called by every rank of the group,
the same number of times and in the same order: a loss with ``sync_avg_factor=True`` and
reduction "mean" is one such call ("none" ignores avg_factor and communicates nothing).
"""
import numbers

import torch
import torch.distributed as dist

if dist.is_available():
    from torch.distributed import _functional_collectives as funcol
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

__all__ = ["is_initialized", "reduce_mean"]


def is_initialized():
    """True when ``torch.distributed`` is available and its default process group is
    initialised (the condition under which :func:`reduce_mean` communicates)."""
    return dist.is_available() and dist.is_initialized()


def _default_device():
    """Where a Python number is placed for the all-reduce when no ``device`` is given: the
    current CUDA device for an NCCL default group (NCCL reduces CUDA tensors only), the CPU
    otherwise (gloo)."""
    if is_initialized() and "nccl" in str(dist.get_backend()).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _as_float_tensor(value, device=None, dtype=torch.float32):
    """``value`` as a floating tensor: a floating tensor as is; an integer / bool tensor (a
    count) cast to ``dtype``; a real Python number as a 0-d ``dtype`` tensor on ``device`` (a
    number has to be on a device to be reduced).  ValueError for anything else (a string, a
    complex number, NaN or an infinite count)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"reduce_mean: a complex tensor has no mean count, got {value.dtype}")
        return value if value.is_floating_point() else value.to(dtype)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not abs(float(value)) < float("inf"):
        raise ValueError(f"reduce_mean: expected a tensor or a finite real number, got {value!r}")
    return torch.tensor(float(value), dtype=dtype, device=_default_device() if device is None else device)


def _all_reduce_mean(tensor):
    """The mean of a floating ``tensor`` over the default group, as mmdetection forms it:
    each rank's value divided by the world size first, then summed (so fp16 counts do not
    overflow before the division).  Detached: the normaliser carries no gradient (the
    collective is not differentiated).  In eager mode the result is an asynchronous tensor,
    waited for on first use; under ``torch.compile`` the collective is part of the graph."""
    share = tensor.detach() / dist.get_world_size()
    return funcol.all_reduce(share, "sum", dist.group.WORLD)


def reduce_mean(tensor, *, device=None):
    """mmdetection's ``reduce_mean``: the mean of ``tensor`` over the ranks of the default
    process group, on every rank (mmdetection 3.x, ``mmdet/utils/dist_utils.py``).

    Args:
        tensor: a tensor of any shape (elementwise mean over ranks; every rank passes the same
            shape, dtype and device type: a CUDA tensor for NCCL, a CPU tensor for gloo), or a
            Python number (e.g. ``len(pos_inds)``).
        device: where a Python number is put first (default: the current CUDA device for an
            NCCL group, else the CPU).  Ignored for tensors.

    Returns:
        A floating tensor of ``tensor``'s shape:
        * no process group (``torch.distributed`` not available or not initialised): a
          floating tensor is returned unchanged (the same object, as mmdetection);
        * otherwise the mean over the ranks, detached (it carries no gradient) and not
          written into ``tensor`` (mmdetection clones first too).
        An integer or bool tensor is treated as a float32 count and a Python number becomes a
        0-d float32 tensor on ``device`` in both cases, so the return type does not depend on
        whether a group exists.  (mmdetection's version raises on an integer tensor under
        DDP.)

    Raises ValueError for a complex tensor, a non-number, NaN or an infinite number.  Every
    rank of the group must call it (it is a collective).
    """
    tensor = _as_float_tensor(tensor, device)
    if not is_initialized():
        return tensor
    mean = _all_reduce_mean(tensor)
    return mean.wait() if isinstance(mean, AsyncCollectiveTensor) else mean  # eager: a plain tensor, complete
