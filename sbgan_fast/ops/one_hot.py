"""One-hot label embedding and the label-embedding convolution (reference paths + entry points)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _dispatch
from ._checks import check_label_range, check_labels, check_size


def nearest_resize_labels(labels: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Nearest resize of an int (N,H,W) map with exactly torch's ``F.interpolate(mode='nearest')``
    source-index rule (so it equals resizing the one-hot map, as the authors do)."""
    if size is None or tuple(labels.shape[-2:]) == tuple(size):
        return labels
    n, h, w = labels.shape
    hs = F.interpolate(torch.arange(h, dtype=torch.float32, device=labels.device).view(1, 1, h, 1),
                       size=(size[0], 1), mode="nearest").view(-1).long()
    ws = F.interpolate(torch.arange(w, dtype=torch.float32, device=labels.device).view(1, 1, 1, w),
                       size=(1, size[1]), mode="nearest").view(-1).long()
    return labels[:, hs][:, :, ws]


def one_hot_ref(labels, num_classes, dontcare=None, size=None, dtype=torch.float32,
                memory_format=torch.contiguous_format):
    labels = check_labels("one_hot", labels)
    size = check_size("one_hot", size)
    check_label_range("one_hot", labels, num_classes, dontcare)
    labels = nearest_resize_labels(labels, size).long()
    channels = num_classes + (1 if dontcare is not None else 0)
    if dontcare is not None:
        labels = torch.where(labels == dontcare, torch.full_like(labels, num_classes), labels)
    out = torch.zeros((labels.shape[0], channels) + tuple(labels.shape[1:]), dtype=dtype, device=labels.device)
    out.scatter_(1, labels.unsqueeze(1), 1)
    return out.contiguous(memory_format=memory_format)


def one_hot(labels: torch.Tensor, num_classes: int, *, dontcare: Optional[int] = None, size=None,
            dtype: torch.dtype = torch.float32, memory_format=torch.contiguous_format,
            impl: str = "auto") -> torch.Tensor:
    """Int label map -> one-hot.

    Args:
        labels: int (N,H,W) or (N,1,H,W), values in [0, num_classes) or ``dontcare``.
        num_classes: K.
        dontcare: a label value (e.g. 255) mapped to an extra last channel K.
        size: optional (H', W') nearest resize (torch's nearest rule), done in the same pass.
        dtype, memory_format: of the output.
    Returns:
        (N, K (+1), H', W') tensor, exact 0/1. No gradient (labels are integers).
    Raises:
        ValueError naming the first out-of-range label value.
    """
    if int(num_classes) <= 0:
        raise ValueError(f"one_hot: num_classes must be positive, got {num_classes}")
    fn = _dispatch.dispatch("one_hot", impl, labels, num_classes, dontcare, size, dtype, memory_format)
    return fn(labels, num_classes, dontcare, size, dtype, memory_format)


def onehot_conv2d_ref(labels, weight, bias=None, dontcare=None, size=None, padding=1):
    k = weight.shape[1] - (1 if dontcare is not None else 0)
    oh = one_hot_ref(labels, k, dontcare, size, dtype=weight.dtype)
    return F.conv2d(oh, weight, bias, padding=padding)


def onehot_conv2d(labels: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  dontcare: Optional[int] = None, size=None, padding: int = 1, impl: str = "auto"):
    """``F.conv2d(one_hot(resize(labels, size)), weight, bias, padding=padding)`` computed from the
    integer labels. weight (C_out, K (+1 with dontcare), kh, kw). Gradients for weight and bias only."""
    if weight.dim() != 4:
        raise ValueError(f"onehot_conv2d: weight must be (C_out, K, kh, kw), got shape {tuple(weight.shape)}")
    fn = _dispatch.dispatch("onehot_conv2d", impl, labels, weight, bias, dontcare, size, padding)
    return fn(labels, weight, bias, dontcare, size, padding)


_dispatch.register("one_hot", "ref", one_hot_ref)
_dispatch.register("onehot_conv2d", "ref", onehot_conv2d_ref)
