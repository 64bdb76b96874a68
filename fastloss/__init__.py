"""fastloss: fused loss kernels for detection and segmentation training.

    import fastloss
    loss = fastloss.sigmoid_focal_loss(logits, labels, reduction="sum", avg_factor=num_pos)

Backends (pure-PyTorch reference, C++ CPU, CUDA, Triton) are chosen per op and device by
fastloss/_backend.py; ``fastloss.use_backend(name)`` and ``FASTLOSS_BACKEND`` override it.
"""
from fastloss import _extension  # noqa: F401  (loads fastloss._C first: it defines the op namespace)
from fastloss._backend import available_backends, unavailable_backends, use_backend
from fastloss._info import info
from fastloss.ops._common import checked_labels
from fastloss.ops.pointwise import (PointwiseFunction, balanced_l1_loss, binary_cross_entropy, binary_cross_entropy_with_logits,
                                    focal_loss_with_prob, gaussian_focal_loss, hinge_loss, huber_loss, kl_div, l1_loss, mean_bias_error,
                                    mse_loss, poly1_bce_loss, poly1_focal_loss, quality_focal_loss, quality_focal_loss_with_prob,
                                    reduced_focal_loss, rmse_loss, sigmoid_focal_loss, smooth_l1_loss, sse_loss, varifocal_loss)
from fastloss.ops.rowwise import (RowwiseFunction, cross_entropy, distillation_kl_div, distribution_focal_loss, nll_loss, poly1_cross_entropy,
                                  poly1_softmax_focal_loss, softmax_focal_loss)
from fastloss.ops.dice import DiceSumsFunction, dice_ce_loss, dice_loss, jaccard_loss, tversky_loss
from fastloss.ops.box_iou import BoxIoUFunction, BoxIoULossFunction, box_iou, box_iou_loss, box_iou_max
from fastloss.ops.assign import atss_assign, max_iou_assign, task_aligned_assign
from fastloss.ops.match_cost import hungarian_match, match_cost
from fastloss import nn  # noqa: E402
from fastloss import compat, distributed  # noqa: E402
from fastloss._patch import PatchHandle, patch  # noqa: E402

__version__ = "0.1.0"

__all__ = ["atss_assign", "max_iou_assign", "task_aligned_assign", "match_cost", "hungarian_match", "box_iou_loss", "BoxIoULossFunction", "box_iou", "BoxIoUFunction", "box_iou_max", "tversky_loss", "dice_loss", "jaccard_loss", "dice_ce_loss", "DiceSumsFunction", "sigmoid_focal_loss", "PointwiseFunction", "poly1_focal_loss",
           "binary_cross_entropy_with_logits", "binary_cross_entropy", "poly1_bce_loss", "quality_focal_loss", "focal_loss_with_prob", "quality_focal_loss_with_prob", "reduced_focal_loss", "varifocal_loss",
           "gaussian_focal_loss", "hinge_loss", "kl_div", "l1_loss", "mse_loss", "sse_loss", "rmse_loss", "mean_bias_error", "smooth_l1_loss",
           "huber_loss", "balanced_l1_loss", "cross_entropy", "nll_loss", "softmax_focal_loss", "poly1_softmax_focal_loss", "poly1_cross_entropy",
           "distribution_focal_loss", "distillation_kl_div", "RowwiseFunction", "available_backends", "unavailable_backends", "use_backend", "checked_labels", "info", "nn", "compat", "distributed", "patch", "PatchHandle"]
