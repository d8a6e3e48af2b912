"""Label maps as the networks take them.

``num_classes`` is the number of label channels the networks see, the don't-care channel included when the
dataset has one (``data.dontcare``: the label value that maps to the last channel, ``num_classes - 1``). The
networks' integer-label (gather) paths take *channel indices* in ``[0, num_classes)``; their float inputs are
one-hot maps with ``num_classes`` channels. Both are made here, from the dataset's label values.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import ops


def label_ids(labels: torch.Tensor, dontcare: Optional[int], num_classes: int) -> torch.Tensor:
    """Int label values (N, H, W) -> channel indices in ``[0, num_classes)``: the don't-care value, if any,
    becomes the last channel ``num_classes - 1``; other values are unchanged."""
    if dontcare is None:
        return labels
    return torch.where(labels == dontcare, torch.full_like(labels, num_classes - 1), labels)


def one_hot_labels(labels: torch.Tensor, dontcare: Optional[int], num_classes: int, *, size=None,
                   mode: str = "nearest", impl: str = "auto") -> torch.Tensor:
    """Int label values (N, H, W) -> float one-hot (N, num_classes, H', W') (the don't-care value, if any, in the
    last channel), optionally resized to ``size`` with the rule ``mode`` ('nearest': torch's, the corner of each
    source block; 'nearest-exact': its centre, as PIL's NEAREST)."""
    k = num_classes - (1 if dontcare is not None else 0)
    return ops.one_hot(labels, k, dontcare=dontcare, size=size, mode=mode, impl=impl)
