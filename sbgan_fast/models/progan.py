"""ProGAN on images, the paper's baseline (its Table 1 "ProGAN" row): the progressive generator and critic of
:mod:`.seg` with RGB heads instead of label-map heads, as the authors' progressive trainer builds them for photos
(``ProGANGenerator(rgb=True)`` / ``ProGANDiscriminator(rgb=True)``).

Every block, channel count, equalized layer, PixelNorm and the fade-in rule are the seg networks'; only the heads
differ:

* G: head j ``to_rgb``: equalized conv1x1 (gain 1) ch(j) -> 3, **no activation** (the authors' image generator has
  no tanh: its images are linear outputs, clamped to [-1, 1] where they become pixels).
* D: input head j ``from_rgb``: equalized conv1x1 (gain 1) 3 -> ch(j) -> LReLU(0.2).

State-dict keys: the seg networks' with ``to_rgb`` / ``from_rgb`` for the heads; the authors' checkpoints of their
image ProGAN (``blocks.{j}.to_rgb``, ``blocks.{i}.from_rgb``) are read by ``from_reference_state_dict`` (pass
``num_classes=3``).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .seg import SegDiscriminator, SegGenerator

__all__ = ["IMAGE_CHANNELS", "ImageGenerator", "ImageDiscriminator", "generated_images"]

IMAGE_CHANNELS = 3


class ImageGenerator(SegGenerator):
    """Progressive image generator: latent z -> RGB image (linear output, nominally [-1, 1]).

    Args: as :class:`~sbgan_fast.models.seg.SegGenerator`; ``num_classes`` is the number of image channels (3).

    Call: ``G(z, res=None, alpha=1.0)``, z float (N, z_dim) -> float (N, 3, res, res * aspect_ratio).
    """

    HEAD = "to_rgb"

    def __init__(self, num_classes: int = IMAGE_CHANNELS, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The heads' activation: none (the authors' ``to_rgb`` is a plain 1x1 convolution)."""
        return h


class ImageDiscriminator(SegDiscriminator):
    """Progressive WGAN critic on RGB images.

    Args: as :class:`~sbgan_fast.models.seg.SegDiscriminator`; ``num_classes`` is the number of image channels (3).

    Call: ``D(x, alpha=1.0)``, x float (N, 3, R, R * aspect_ratio) in [-1, 1] -> float (N,) scores.
    """

    HEAD = "from_rgb"

    def __init__(self, num_classes: int = IMAGE_CHANNELS, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)


@torch.no_grad()
def generated_images(G_img: torch.nn.Module, n: int, seed: int, batch_size: int, device) -> Iterator[torch.Tensor]:
    """float (B, 3, H, W) images ``G_img(z)`` (clamped to [-1, 1]) for ``n`` latent codes z ~ N(0, I), drawn at
    once from a generator seeded with ``seed`` (the global RNG is not touched), in batches of ``batch_size``: the
    same codes :func:`~sbgan_fast.models.sbgan.generated_label_maps` draws for G_seg with that seed, so sampling
    and FID of ProGAN and SB-GAN follow one protocol."""
    g = torch.Generator().manual_seed(int(seed))
    z_all = torch.randn(n, G_img.z_dim, generator=g)
    for i in range(0, n, batch_size):
        yield G_img(z_all[i:i + batch_size].to(device)).float().clamp(-1.0, 1.0)
