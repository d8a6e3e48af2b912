"""Argument checks shared by the ops (messages name the argument and what was expected)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Resize rules of the ops that resize integer label maps (see :func:`sbgan_fast.ops.nearest_source_indices`).
RESIZE_MODES = ("nearest", "nearest-exact")


def check_labels(op: str, labels: torch.Tensor) -> torch.Tensor:
    """Accept int (N,H,W) or (N,1,H,W); return (N,H,W)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{op}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in INT_DTYPES:
        raise TypeError(f"{op}: labels must have an integer dtype, got {labels.dtype}")
    if labels.dim() == 4:
        if labels.shape[1] != 1:
            raise ValueError(f"{op}: labels must be (N,H,W) or (N,1,H,W), got shape {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"{op}: labels must be (N,H,W) or (N,1,H,W), got shape {tuple(labels.shape)}")
    return labels


def check_size(op: str, size) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{op}: size must be a pair of positive ints (H', W'), got {size}")
    return size


def check_mode(op: str, mode) -> str:
    """Return ``mode`` when it is one of :data:`RESIZE_MODES`, else raise a ValueError naming the op."""
    if not isinstance(mode, str) or mode not in RESIZE_MODES:
        raise ValueError(f"{op}: mode must be 'nearest' or 'nearest-exact', got {mode!r}")
    return mode


def check_label_range(op: str, labels: torch.Tensor, num_classes: int, dontcare: Optional[int]) -> None:
    """Raise naming the first bad value when a label is outside [0, num_classes) and not ``dontcare``.
    Inside a torch.compile graph (where reading a value would break the graph) the check is an
    in-graph assertion that names the op and the valid range instead."""
    if labels.numel() == 0:
        return
    if torch.compiler.is_compiling():
        ok = (labels >= 0) & (labels < num_classes)
        if dontcare is not None:
            ok = ok | (labels == dontcare)
        torch._assert_async(ok.all(), f"{op}: a label value is outside [0, {num_classes})"
                            + (f" and is not the don't-care value {dontcare}" if dontcare is not None else "")
                            + f" (num_classes={num_classes}); check the dataset's class count")
        return
    lab = labels if dontcare is None else labels[labels != dontcare]
    if lab.numel() == 0:
        return
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        extra = f" or the don't-care value {dontcare}" if dontcare is not None else ""
        raise ValueError(f"{op}: label value {bad} is outside [0, {num_classes}){extra} "
                         f"(num_classes={num_classes}); check the dataset's class count")


def check_float(op: str, name: str, t: torch.Tensor, dims: Optional[Sequence[int]] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if dims is not None and t.dim() not in dims:
        raise ValueError(f"{op}: {name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")
