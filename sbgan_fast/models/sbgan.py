"""The semantic bottleneck: ``z -> G_seg -> class probabilities p -> a discrete label map -> (x2 nearest) -> G_spd``.

One definition of each hop, used by the training stages, ``sample``, FID and the synthetic label maps:

* :func:`bottleneck_sample` - training: the Gumbel straight-through sample of ``log(p + 1e-5)`` (an exact one-hot
  forward, the soft sample's gradient), with explicit noise;
* :func:`upsample` - nearest upsampling of a float map or int labels (G_seg at half the image resolution,
  ``e2e.seg_half_res``);
* :func:`render` - G_spd on an exact one-hot map, its argmax given so that G_spd's blocks use the gather path;
* :func:`generated_label_maps` - sampling: ``argmax G_seg(z)`` for seeded latent codes, no noise;
* :class:`SBGAN` - the composition as one module.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


def bottleneck_sample(p: torch.Tensor, tau: float, gumbel: Optional[torch.Tensor] = None,
                      impl: str = "auto") -> torch.Tensor:
    """G_seg's class probabilities p (N,K,h,w) -> the Gumbel straight-through sample of ``log(p + 1e-5)``
    (float (N,K,h,w), an exact one-hot forward; the gradient of the soft sample). ``gumbel``: the Gumbel(0,1)
    noise (N,K,h,w), or None to let the op draw it."""
    return ops.gumbel_softmax_st(torch.log(p.float() + 1e-5), tau, noise=gumbel, impl=impl)


def upsample(seg: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest upsampling by ``factor`` of a float (N,K,h,w) map or int (N,h,w) labels (1: unchanged)."""
    if factor == 1:
        return seg
    if seg.is_floating_point():
        return F.interpolate(seg, scale_factor=factor, mode="nearest")
    return seg.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def render(G_spd: nn.Module, seg: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """G_spd on an exact one-hot float map (a :func:`bottleneck_sample`), upsampled by ``factor`` first; its argmax
    lets G_spd's blocks use the exact gather path (the gradient into ``seg`` is unchanged)."""
    seg = upsample(seg, factor)
    return G_spd(seg, labels=seg.argmax(1))


@torch.no_grad()
def generated_label_maps(G_seg: nn.Module, n: int, seed: int, batch_size: int, device, *,
                         upsample2: bool = False) -> Iterator[torch.Tensor]:
    """int64 (B, H, W) label maps ``argmax G_seg(z)`` for ``n`` latent codes z ~ N(0, I), drawn at once from a
    generator seeded with ``seed`` (the global RNG is not touched), in batches of ``batch_size``;
    ``upsample2``: nearest x2 (a G_seg at half the image resolution, e2e.seg_half_res). The one definition of a
    generated label map: sampling, FID and the synthetic training maps use it."""
    g = torch.Generator().manual_seed(int(seed))
    z_all = torch.randn(n, G_seg.z_dim, generator=g)
    for i in range(0, n, batch_size):
        lab = G_seg(z_all[i:i + batch_size].to(device)).argmax(1)
        yield upsample(lab, 2 if upsample2 else 1)


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
        return upsample(seg, self.seg_upsample)

    @torch.no_grad()
    def sample_labels(self, z: torch.Tensor, res: Optional[int] = None) -> torch.Tensor:
        """Sampling-time label maps: plain argmax of G_seg's probabilities (no noise), int64 (N,h,w)."""
        return self.G_seg(z, res=res).argmax(dim=1)

    def forward(self, z: torch.Tensor, *, hard: bool = True, tau: float = 1.0,
                gumbel: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (label map at G_spd's resolution, image (N,3,H,W) in [-1,1]).

        ``hard=True`` (sampling): int64 (N,H,W) argmax labels, no noise; G_spd embeds them with the
        exact integer (gather) path. ``hard=False`` (training): the float (N,K,H,W) straight-through
        Gumbel sample of ``log(p + 1e-5)`` (:func:`bottleneck_sample`, noise ``gumbel`` or drawn),
        differentiable into G_seg."""
        p = self.G_seg(z)
        if hard:
            labels = self.upsample(p.argmax(dim=1))
            return labels, self.G_spd(labels)
        seg = self.upsample(bottleneck_sample(p, tau, gumbel))
        return seg, self.G_spd(seg, labels=seg.argmax(1))
