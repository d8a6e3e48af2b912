"""The ``progan`` stage: the paper's ProGAN baseline, the progressive WGAN-GP trained directly on the images.

The authors' progressive trainer also trains on photos (``SBGAN/trainers/progressive_trainer.py``, their Table 1
"ProGAN" row). This stage is the seg stage (:mod:`.seg`: the same phases, step, losses, optimizers and settings
``seg.*``: lr, betas, lambda_gp, fade_in, z_dim, width_mult, pixel_norm) over the RGB networks G_img / D_img
(:mod:`sbgan_fast.models.progan`), with what the authors' image trainer feeds its critic:

* real images: the run's images (``data.height x data.width``) resized to the phase's resolution with PIL's
  BILINEAR rule (``transforms.Resize(dim, BILINEAR)``; a downscale filters with a triangle widened by the scale
  factor: torch's ``bilinear`` with ``antialias=True``) and rounded to 8 bits as PIL's result is, flipped
  horizontally at random, mapped to [-1, 1]. (The authors resize each photo from its file; here the photo was
  already read at the run's resolution, as the seg stage's label maps are.)
* fakes: G_img(z) at the phase's resolution, a linear output (no tanh), no noise besides z.

The schedule (``progan.schedule``): ``code`` (default) is the authors' image trainer's: batch
``progan.batch_size`` (their 32) halved above 64 px and again above 128 px, and each phase
``progan.epochs_per_phase`` (their 400) epochs, times 2 at 64 and 128 px, 3 at 256 px and 4 at 512 px; ``seg``
is the seg stage's phases exactly (``seg.epochs_per_phase``, ``seg.batch_size``, ``seg.batch_size_high``), the
schedule to compare the two on equal terms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...data.datasets import DataError
from .seg import SegStage

# the authors' image trainer: steps per phase times this at resolution index j (4, 8, ..., 512 px)
CODE_STEP_MULTIPLIER = (1, 1, 1, 1, 2, 2, 3, 4)


def resize_images(image: torch.Tensor, size) -> torch.Tensor:
    """float (N, 3, H, W) images in [-1, 1] (8-bit levels) -> (N, 3, h, w) at ``size`` by PIL's BILINEAR rule on
    uint8 images: a triangle filter widened by the scale factor when shrinking (torch's ``antialias=True``),
    the width first, then the height, each pass rounded half up to 8 bits as Pillow's is. The same images when the
    size is theirs. (Pillow's fixed-point weights still move about 1 % of the pixels by one level at scales other
    than 1/2.)"""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    x = ((image.float() + 1.0) * 127.5).round_()   # the 8-bit levels, exactly
    for step in ((x.shape[-2], size[1]), tuple(size)):   # width, then height
        x = F.interpolate(x, size=step, mode="bilinear", align_corners=False, antialias=True)
        x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
    return x.div_(127.5).sub_(1.0).to(image.dtype)


class ProGANStage(SegStage):
    name = "progan"
    trains = ("G_img", "D_img")
    NOISE = ("z_G", "z_D", "eps_D")

    def phase_plan(self, res: int, n: int):
        """(batch size, steps) of each phase at height ``res``: the seg stage's with ``progan.schedule=seg``, else
        the authors' image trainer's (see the module docstring)."""
        p = self.cfg.progan
        if p.schedule == "seg":
            return super().phase_plan(res, n)
        bs = p.batch_size / (2 if res > 64 else 1) / (2 if res > 128 else 1)
        bs = max(1, int(bs))
        j = int(math.log2(res)) - 2
        mult = CODE_STEP_MULTIPLIER[min(j, len(CODE_STEP_MULTIPLIER) - 1)]
        return bs, max(1, int(p.epochs_per_phase * n / bs)) * mult   # int(): the authors' rounding

    def real_input(self, step: int, batch, size) -> torch.Tensor:
        """The real images at the phase's ``size`` (h, w): float (N, 3, h, w) in [-1, 1]."""
        if not isinstance(batch, dict) or batch.get("image") is None:
            raise DataError("stage progan trains on images, but the batch holds label maps only; use a dataset "
                            "with images (data.dataset and its image files)")
        _, image = self.real_batch(step, batch, need_image=True)
        return self.ctx.fmt(resize_images(image, size))

    def fake_noise(self, noise, n: int, size, player: str):
        return None   # z alone

    def fake_input(self, G, z: torch.Tensor, extra, res: int, alpha: float) -> torch.Tensor:
        return G(z, res=res, alpha=alpha)

    def preview(self, step):
        return None, self.generate_preview(step).float().clamp(-1.0, 1.0)
