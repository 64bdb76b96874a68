"""Drop-in replacements for the losses of the libraries people train with.

Each submodule carries one peer's exact names, signatures, defaults, return shapes and dtypes
over fastloss's kernels; import it in place of the peer's module::

    from fastloss.compat import torchvision as tvl      # instead of torchvision.ops
    loss = tvl.sigmoid_focal_loss(logits, targets, reduction="sum")

or patch the peer in place with one line (:func:`fastloss.patch`).  The submodules import
their peer only where they must (a peer's registry or base class), so they can be imported
without the peer installed unless their docstring says otherwise.

=================  =======================================
submodule          peer
=================  =======================================
``torchvision``    torchvision.ops (+ detection models)
``mmdet``          mmdetection 3.x losses
``mmcv``           mmcv.ops (focal ops, ``bbox_overlaps``)
``ultralytics``    ultralytics.utils.loss / metrics
``smp``            segmentation_models_pytorch.losses
``monai``          monai.losses
``detr``           DETR's HungarianMatcher (models/matcher.py)
``dino``           DINO's HungarianMatcher (focal class cost)
=================  =======================================

Where a peer's behaviour is a known bug (NaN on point boxes, inverted boxes scored as a
perfect match) the compat function keeps fastloss's finite answer; each submodule's
docstring lists those differences.  A peer argument the compat layer cannot honour raises
``ValueError``; none is silently ignored.
"""
