"""What the progressive networks G_seg and D_seg (:mod:`.seg`) share: the channel schedule, argument checks
naming the network, the activation and the equalized-lr initialisation.

Resolution index ``j = log2(res) - 2`` (0 for 4x4); channels at index j: ``min(512, 2 ** (12 - j))`` times
``width_mult``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LRELU_SLOPE", "MAX_CHANNELS", "FC_GAIN", "HEAD_GAIN", "base_channels", "seg_channels", "scaled", "num_blocks",
           "check_aspect_ratio", "check_positive_int", "check_width_mult", "check_fade", "lrelu", "init_progressive",
           "infer_width_mult"]

LRELU_SLOPE = 0.2
MAX_CHANNELS = 512
FC_GAIN = math.sqrt(2.0) / 4.0
HEAD_GAIN = 1.0


# ----------------------------------------------------------------------------------------------------------------
# configuration helpers


def base_channels(j: int) -> int:
    """Channels at resolution index j (4 * 2**j) before width_mult; j = -1 is the discriminator's top (512)."""
    return min(MAX_CHANNELS, 2 ** (12 - j))


def seg_channels(max_dim: int, width_mult: float = 1.0) -> List[int]:
    """Per-resolution channel counts ``[ch(0), ..., ch(n-1)]`` for resolutions 4..max_dim (both networks)."""
    n = num_blocks("seg_channels", max_dim)
    return [scaled(base_channels(j), width_mult) for j in range(n)]


def scaled(c: int, width_mult: float) -> int:
    return max(1, int(round(c * width_mult)))


def num_blocks(owner: str, max_dim) -> int:
    if isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 4 or max_dim & (max_dim - 1):
        raise ValueError(f"{owner}: max_dim must be a power of two >= 4 (the highest output height), got {max_dim!r}")
    return int(math.log2(max_dim)) - 1


def check_aspect_ratio(owner: str, aspect_ratio) -> int:
    try:
        ar = float(aspect_ratio)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: aspect_ratio must be a number, got {aspect_ratio!r}") from None
    if not (ar >= 1 and ar == int(ar)):
        raise ValueError(f"{owner}: aspect_ratio (width / height) must be a positive integer such as 1 (ADE20K) "
                         f"or 2 (Cityscapes), got {aspect_ratio!r}")
    return int(ar)


def check_positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_width_mult(owner: str, width_mult) -> float:
    try:
        wm = float(width_mult)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: width_mult must be a number, got {width_mult!r}") from None
    if not (wm > 0 and math.isfinite(wm)):
        raise ValueError(f"{owner}: width_mult must be a finite positive number, got {width_mult!r}")
    return wm


def check_fade(owner: str, alpha, j: int, first: str) -> Tuple[float, bool]:
    """(alpha as a float in [0, 1], whether to fade in: alpha < 1) at resolution index ``j``; fading needs a
    previous resolution (``first`` names the first one in the error)."""
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"{owner}: alpha (fade-in weight of the new resolution) must be in [0, 1], got {alpha}")
    fade = alpha < 1.0
    if fade and j == 0:
        raise ValueError(f"{owner}: alpha={alpha} < 1 needs a previous resolution to fade from; "
                         f"{first} is the first one (use alpha=1)")
    return alpha, fade


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


def init_progressive(net: nn.Module, owner: str, num_classes, max_dim, aspect_ratio, width_mult) -> int:
    """Check the arguments both networks share and set ``num_classes``, ``max_dim``, ``aspect_ratio``,
    ``width_mult``, ``resolutions`` ([4, 8, ..., max_dim]) and ``channels`` on ``net``; returns the block count."""
    net.num_classes = check_positive_int(owner, "num_classes", num_classes)
    n = num_blocks(owner, max_dim)
    net.max_dim = max_dim
    net.aspect_ratio = check_aspect_ratio(owner, aspect_ratio)
    net.width_mult = check_width_mult(owner, width_mult)
    net.resolutions = [4 * 2 ** j for j in range(n)]
    net.channels = [scaled(base_channels(j), net.width_mult) for j in range(n)]
    return n


# ----------------------------------------------------------------------------------------------------------------
# reference checkpoints (the layout: models/reference.py)


def infer_width_mult(owner: str, channels0: int, width_mult: Optional[float]) -> float:
    if width_mult is not None:
        return check_width_mult(owner, width_mult)
    return channels0 / MAX_CHANNELS
