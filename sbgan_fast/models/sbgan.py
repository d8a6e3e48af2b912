"""The SB-GAN composition: G_seg (label maps from noise) followed by G_spd (label map -> image)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class SBGAN(nn.Module):
    """Unconditional scene synthesis: ``z -> G_seg -> discrete label map -> G_spd -> image``.

    Args:
        seg_generator: a :class:`SegGenerator` returning class probabilities (N,K,h,w).
        image_generator: a :class:`SPADEGenerator` taking a (N,K,H,W) map.
        seg_upsample: nearest upsampling factor from G_seg's map to G_spd's input (2 when the seg
            generator runs at half the image resolution).
    """

    def __init__(self, seg_generator: nn.Module, image_generator: nn.Module, *, seg_upsample: int = 1):
        super().__init__()
        self.G_seg = seg_generator
        self.G_spd = image_generator
        self.seg_upsample = int(seg_upsample)

    def upsample(self, seg: torch.Tensor) -> torch.Tensor:
        """Nearest upsampling of a float (N,K,h,w) map or int (N,h,w) labels by ``seg_upsample``."""
        f = self.seg_upsample
        if f == 1:
            return seg
        if seg.is_floating_point():
            return F.interpolate(seg, scale_factor=f, mode="nearest")
        return seg.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    @torch.no_grad()
    def sample_labels(self, z: torch.Tensor, res: Optional[int] = None) -> torch.Tensor:
        """Sampling-time label maps: plain argmax of G_seg's probabilities (no noise), int64 (N,h,w)."""
        return self.G_seg(z, res=res).argmax(dim=1)

    def forward(self, z: torch.Tensor, *, hard: bool = True, tau: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (label map at G_spd's resolution, image (N,3,H,W) in [-1,1]).

        ``hard=True`` (sampling): int64 (N,H,W) argmax labels, no noise; G_spd embeds them with the
        exact integer (gather) path. ``hard=False`` (training): the float (N,K,H,W) straight-through
        Gumbel sample of ``log(p + 1e-5)``, differentiable into G_seg."""
        p = self.G_seg(z)
        if hard:
            labels = self.upsample(p.argmax(dim=1))
            return labels, self.G_spd(labels)
        seg = self.upsample(ops.gumbel_softmax_st(torch.log(p + 1e-5), tau))
        return seg, self.G_spd(seg, labels=seg.argmax(1))
