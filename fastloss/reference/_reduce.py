"""mmdetection's reduction contract, shared by the eager references."""
import torch


def reduce_loss(loss, reduction, avg_factor=None):
    """"none" | "sum" | "mean"; with avg_factor, "mean" is sum / (avg_factor + eps) and "sum" is
    an error ("none" ignores it).  The mean over zero elements is 0 (torch: NaN), still
    connected to the graph, so an image without positives cannot turn the loss into NaN."""
    if reduction == "none":
        return loss
    if avg_factor is not None:
        if reduction == "sum":
            raise ValueError('avg_factor can not be used with reduction="sum"')
        return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    return loss.sum() if reduction == "sum" else loss.sum() / max(loss.numel(), 1)
