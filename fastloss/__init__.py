"""fastloss: fused loss kernels for detection and segmentation training.

    import fastloss
    loss = fastloss.sigmoid_focal_loss(logits, labels, reduction="sum", avg_factor=num_pos)

Backends (pure-PyTorch reference, C++ CPU, CUDA, Triton) are chosen per op and device by
fastloss/_backend.py; ``fastloss.use_backend(name)`` and ``FASTLOSS_BACKEND`` override it.
"""
from fastloss import _extension  # noqa: F401  (loads fastloss._C first: it defines the op namespace)
from fastloss._backend import available_backends, use_backend
from fastloss._info import info
from fastloss.ops.sigmoid_focal_loss import SigmoidFocalLossFunction, sigmoid_focal_loss
from fastloss import nn  # noqa: E402

__version__ = "0.1.0"

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLossFunction", "available_backends", "use_backend", "info", "nn"]
