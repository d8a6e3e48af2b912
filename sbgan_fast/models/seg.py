"""Progressive semantic-bottleneck generator G_seg and segmentation discriminator D_seg.

Both networks hold one block per resolution 4, 8, ..., ``max_dim`` (height; width = height x ``aspect_ratio``).
Resolution index ``j = log2(res) - 2`` (0 for 4x4). Channels at index j: ``ch(j) = min(512, 2 ** (12 - j))``
(512 for 4..32, 256 at 64, 128 at 128, 64 at 256), times ``width_mult``.

G_seg (z -> class probabilities):
    block 0: PixelNorm(z) -> EqualizedLinear(z_dim, ch(0) * 4 * 4AR, gain sqrt(2)/4) -> view (N, ch(0), 4, 4AR)
             -> LReLU(0.2) -> PixelNorm -> eq. conv3x3 -> LReLU -> PixelNorm
    block j: nearest x2 -> (eq. conv3x3 -> LReLU -> PixelNorm) x 2, ch(j-1) -> ch(j) -> ch(j)
    head j ("to_mask"): eq. conv1x1 (gain 1) ch(j) -> K, softmax over classes (the network returns probabilities).

D_seg (label map -> score), run from the input resolution down to 4:
    from_mask j: eq. conv1x1 (gain 1) K -> ch(j) -> LReLU
    block j > 0: eq. conv3x3 ch(j) -> ch(j) -> LReLU -> eq. conv3x3 ch(j) -> ch(j-1) -> LReLU -> avg-pool 2x2
    block 0:     eq. conv3x3 stride (1, AR) ch(0) -> ch(0) -> LReLU (4 x 4AR -> 4 x 4) -> eq. conv4x4 valid
                 ch(0) -> ch(0) -> LReLU -> flatten -> EqualizedLinear(ch(0), 1)
    No normalization. Supports any gradient order (WGAN-GP builds a second-order graph through it).

Own ``state_dict`` layout (index j = resolution index)::

    G: blocks.0.fc.*, blocks.0.conv1.*, blocks.{j>0}.conv0.*, blocks.{j>0}.conv1.*, to_mask.{j}.*
    D: from_mask.{j}.*, blocks.{j}.conv0.*, blocks.{j}.conv1.*, blocks.0.fc.*

The authors' checkpoints (``G_state_dict`` / ``D_state_dict`` of their progressive label-map GAN; a whole
checkpoint dict, a bare state dict, or either with a ``module.`` prefix) are read by the
``from_reference_state_dict`` class methods and written by ``to_reference_state_dict``; the layout and the key
mapping are :mod:`sbgan_fast.models.reference`.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.equalized import EqualizedConv2d, EqualizedLinear
from ..nn.pixelnorm import PIXEL_NORM_MODES, PixelNorm
from .progressive import (FC_GAIN, HEAD_GAIN, base_channels, check_aspect_ratio, check_fade, check_positive_int,
                          infer_width_mult, init_progressive, lrelu, num_blocks, scaled, seg_channels)
from .reference import ReferenceLayout, load_mapped, reference_state

__all__ = ["SegGenerator", "SegDiscriminator", "seg_channels"]

# ----------------------------------------------------------------------------------------------------------------
# generator


class _GenBlock(nn.Module):
    """One generator block at resolution index j; see the module docstring. (N, c_in, h, w) -> (N, c_out, 2h, 2w)."""

    def __init__(self, c_in: int, c_out: int, *, initial: bool, z_dim: int, h0: int, w0: int, pixel_norm: str):
        super().__init__()
        self.initial = initial
        self.h0, self.w0 = h0, w0
        self.norm = PixelNorm(pixel_norm)
        if initial:
            self.fc = EqualizedLinear(z_dim, c_out * h0 * w0, gain=FC_GAIN)
        else:
            self.conv0 = EqualizedConv2d(c_in, c_out, 3, padding=1)
        self.conv1 = EqualizedConv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.initial:
            x = self.fc(self.norm(x))
            x = x.view(x.shape[0], -1, self.h0, self.w0)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.conv0(x)
        x = self.norm(lrelu(x))
        return self.norm(lrelu(self.conv1(x)))


class SegGenerator(ReferenceLayout, nn.Module):
    """Progressive semantic-bottleneck generator: latent z -> per-pixel class probabilities.

    The output heads are named by ``HEAD`` and activated by :meth:`output` (softmax here); the ProGAN image
    generator (:class:`~sbgan_fast.models.progan.ImageGenerator`) is the same network with RGB heads.

    Args:
        num_classes: K, the number of label channels (e.g. 35 for Cityscapes, 95 for ADE-Indoor).
        max_dim: highest output height, a power of two >= 4 (256 in the paper).
        aspect_ratio: width / height, a positive integer (1 for ADE20K, 2 for Cityscapes).
        z_dim: latent size (512).
        pixel_norm: ``"code"`` (the authors' x / (mean x^2 + eps), default) or ``"standard"`` (x * rsqrt(...)).
        width_mult: scales every block's channel count (``max(1, round(c * width_mult))``) for small models.

    Attributes:
        resolutions: [4, 8, ..., max_dim] (heights).
        channels: per-resolution feature channels.

    Call: ``G(z, res=None, alpha=1.0)``, z float (N, z_dim) -> float (N, K, res, res * aspect_ratio) probabilities
    (softmax over dim 1), in the dtype of the computation (z's dtype, or the autocast dtype's softmax result).
    """

    HEAD = "to_mask"    # the output heads (state-dict keys ``<HEAD>.{j}.*``; reference: ``blocks.{j}.<HEAD>``)

    def __init__(self, num_classes: int, *, max_dim: int = 256, aspect_ratio: float = 1.0, z_dim: int = 512,
                 pixel_norm: str = "code", width_mult: float = 1.0) -> None:
        super().__init__()
        owner = type(self).__name__
        n = init_progressive(self, owner, num_classes, max_dim, aspect_ratio, width_mult)
        self.z_dim = check_positive_int(owner, "z_dim", z_dim)
        if pixel_norm not in PIXEL_NORM_MODES:
            raise ValueError(f"{owner}: pixel_norm must be one of {PIXEL_NORM_MODES}, got {pixel_norm!r}")
        self.pixel_norm = pixel_norm

        blocks = []
        for j in range(n):
            c_in = self.channels[j - 1] if j > 0 else self.z_dim
            blocks.append(_GenBlock(c_in, self.channels[j], initial=j == 0, z_dim=self.z_dim, h0=4,
                                    w0=4 * self.aspect_ratio, pixel_norm=pixel_norm))
        self.blocks = nn.ModuleList(blocks)
        setattr(self, self.HEAD, nn.ModuleList(
            EqualizedConv2d(c, self.num_classes, 1, gain=HEAD_GAIN) for c in self.channels))

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The heads' activation: (N, K, h, w) -> class probabilities (softmax over dim 1)."""
        return h.softmax(dim=1)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def resolution_index(self, res: Optional[int]) -> int:
        """Index j of height ``res`` in :attr:`resolutions` (``None`` -> max_dim)."""
        if res is None:
            return len(self.resolutions) - 1
        if isinstance(res, bool) or not isinstance(res, int) or res not in self.resolutions:
            raise ValueError(f"{type(self).__name__}: res must be one of {self.resolutions} (heights), got {res!r}")
        return self.resolutions.index(res)

    def _check_z(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"{type(self).__name__}: z must be a floating-point tensor (N, {self.z_dim}), got "
                            f"{z.dtype if isinstance(z, torch.Tensor) else type(z).__name__}")
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"{type(self).__name__}: z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")

    def forward(self, z: torch.Tensor, res: Optional[int] = None, alpha: float = 1.0) -> torch.Tensor:
        """Class probabilities at height ``res``.

        Args:
            z: float (N, z_dim) latent codes.
            res: output height, one of :attr:`resolutions` (default max_dim). Only blocks up to ``res`` run.
            alpha: fade-in weight in [0, 1]. With ``alpha < 1`` the result is
                ``(1 - alpha) * up2(p_prev) + alpha * p_new`` where ``p_prev`` is the previous resolution's head
                (probabilities, nearest x2). With ``alpha == 1`` (the default, and the reference's training) the
                previous head does not run.
        Returns:
            float (N, num_classes, res, res * aspect_ratio), sums to 1 over dim 1.
        """
        self._check_z(z)
        j = self.resolution_index(res)
        alpha, fade = check_fade(type(self).__name__, alpha, j, f"res={self.resolutions[0]}")
        heads = getattr(self, self.HEAD)
        x = z
        for i in range(j):
            x = self.blocks[i](x)
        if not fade:
            return self.output(heads[j](self.blocks[j](x)))
        # nearest upsampling commutes with the 1x1 head and the per-pixel activation: upsample the K-channel result.
        coarse = F.interpolate(self.output(heads[j - 1](x)), scale_factor=2.0, mode="nearest")
        fine = self.output(heads[j](self.blocks[j](x)))
        return (1.0 - alpha) * coarse + alpha * fine

    # -- reference checkpoints ---------------------------------------------------------------------------------------
    def _reference_layers(self) -> List[Tuple[str, str]]:
        layers = []
        for j in range(len(self.resolutions)):
            layers.append(("blocks.0.fc1", "blocks.0.fc") if j == 0 else (f"blocks.{j}.conv1", f"blocks.{j}.conv0"))
            layers += [(f"blocks.{j}.conv2", f"blocks.{j}.conv1"), (f"blocks.{j}.{self.HEAD}", f"{self.HEAD}.{j}")]
        return layers

    @classmethod
    def from_reference_state_dict(cls, state_dict: Mapping, *, num_classes: int, max_dim: int = 256,
                                  aspect_ratio: float = 1.0, pixel_norm: str = "code",
                                  width_mult: Optional[float] = None) -> "SegGenerator":
        """Build a generator from the authors' ``G_state_dict`` (or a whole checkpoint holding it).

        ``z_dim`` is read from the first linear layer; ``width_mult`` (None) from its channel count (reference
        checkpoints are full width). ``pixel_norm`` defaults to the authors' form, the one they trained with.
        Raises ValueError naming the offending keys/shapes when the checkpoint does not match the arguments.
        """
        owner = cls.__name__
        sd, _ = reference_state(owner, state_dict, "G_state_dict", num_blocks(owner, max_dim), max_dim,
                                rgb=cls.HEAD == "to_rgb")
        fc = sd.get("blocks.0.fc1.weight")
        if fc is None or fc.dim() != 2:
            raise ValueError(f"{owner}.from_reference_state_dict: 'blocks.0.fc1.weight' (2-D) is missing")
        ar = check_aspect_ratio(owner, aspect_ratio)
        if fc.shape[0] % (16 * ar):
            raise ValueError(f"{owner}.from_reference_state_dict: 'blocks.0.fc1.weight' has {fc.shape[0]} outputs, "
                             f"not a multiple of 4 x {4 * ar} (check aspect_ratio={aspect_ratio})")
        wm = infer_width_mult(owner, fc.shape[0] // (16 * ar), width_mult)
        model = cls(num_classes, max_dim=max_dim, aspect_ratio=ar, z_dim=int(fc.shape[1]), pixel_norm=pixel_norm,
                    width_mult=wm)
        load_mapped(model, owner, sd, model._reference_key_map())
        return model

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, max_dim={self.max_dim}, aspect_ratio={self.aspect_ratio}, "
                f"z_dim={self.z_dim}, pixel_norm={self.pixel_norm!r}, width_mult={self.width_mult:g}")


# ----------------------------------------------------------------------------------------------------------------
# discriminator


class _DiscBlock(nn.Module):
    """One discriminator block at resolution index j; see the module docstring.

    j > 0: (N, c_in, h, w) -> (N, c_out, h/2, w/2); final (j = 0): (N, c_in, 4, 4AR) -> (N, 1).
    """

    def __init__(self, c_in: int, c_out: int, *, final: bool, aspect_ratio: int):
        super().__init__()
        self.final = final
        if final:
            self.conv0 = EqualizedConv2d(c_in, c_in, 3, stride=(1, aspect_ratio), padding=1)
            self.conv1 = EqualizedConv2d(c_in, c_out, 4)
            self.fc = EqualizedLinear(c_out, 1)
        else:
            self.conv0 = EqualizedConv2d(c_in, c_in, 3, padding=1)
            self.conv1 = EqualizedConv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv1(lrelu(self.conv0(x))))
        if self.final:
            return self.fc(x.flatten(1))
        return F.avg_pool2d(x, 2)


class SegDiscriminator(ReferenceLayout, nn.Module):
    """Progressive WGAN critic on label maps (one-hot or soft), no normalization.

    Args:
        num_classes: K input channels.
        max_dim: highest input height, a power of two >= 4.
        aspect_ratio: width / height, a positive integer (1 ADE20K, 2 Cityscapes).
        width_mult: scales every block's channel count (``max(1, round(c * width_mult))``) for small models.

    Call: ``D(x, alpha=1.0)``, x float (N, K, R, R * aspect_ratio) with R in :attr:`resolutions` -> float (N,)
    scores. Any gradient order (plain PyTorch ops), as the gradient penalty requires.

    The input heads are named by ``HEAD``; the ProGAN image critic
    (:class:`~sbgan_fast.models.progan.ImageDiscriminator`) is the same network with RGB input heads.
    """

    HEAD = "from_mask"   # the input heads' name (state-dict keys ``<HEAD>.{j}.*``)

    def __init__(self, num_classes: int, *, max_dim: int = 256, aspect_ratio: float = 1.0,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        owner = type(self).__name__
        n = init_progressive(self, owner, num_classes, max_dim, aspect_ratio, width_mult)
        top = scaled(base_channels(-1), self.width_mult)  # channels after the final block's 4x4 conv

        setattr(self, self.HEAD, nn.ModuleList(
            EqualizedConv2d(self.num_classes, c, 1, gain=HEAD_GAIN) for c in self.channels))
        self.blocks = nn.ModuleList(
            _DiscBlock(self.channels[j], self.channels[j - 1] if j > 0 else top, final=j == 0,
                       aspect_ratio=self.aspect_ratio)
            for j in range(n))

    def resolution_index(self, res: int) -> int:
        """Index j of height ``res`` in :attr:`resolutions`."""
        if res not in self.resolutions:
            raise ValueError(f"{type(self).__name__}: input height must be one of {self.resolutions}, got {res}")
        return self.resolutions.index(res)

    def _check_x(self, x: torch.Tensor) -> int:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}: x must be a floating-point input (N, {self.num_classes}, R, "
                            f"R*{self.aspect_ratio}), got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.num_classes:
            raise ValueError(f"{type(self).__name__}: x must have shape (N, {self.num_classes}, R, "
                             f"R*{self.aspect_ratio}), got {tuple(x.shape)}")
        j = self.resolution_index(int(x.shape[2]))
        if x.shape[3] != x.shape[2] * self.aspect_ratio:
            raise ValueError(f"{type(self).__name__}: x width must be height x aspect_ratio = "
                             f"{x.shape[2] * self.aspect_ratio}, got shape {tuple(x.shape)}")
        return j

    def forward(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Critic scores.

        Args:
            x: float (N, K, R, R * aspect_ratio) label map (one-hot, straight-through or soft); R read from x.
            alpha: fade-in weight in [0, 1]. With ``alpha < 1`` the features entering the block below R are
                ``(1 - alpha) * lrelu(from_mask_below(avgpool2(x))) + alpha * block_R(lrelu(from_mask_R(x)))``.
                ``alpha == 1`` (default, the reference's training) skips the lower-resolution input head.
        Returns:
            float (N,) scores.
        """
        j = self._check_x(x)
        alpha, fade = check_fade(type(self).__name__, alpha, j, f"R={self.resolutions[0]}")
        heads = getattr(self, self.HEAD)
        h = lrelu(heads[j](x))
        if fade:
            fine = self.blocks[j](h)
            coarse = lrelu(heads[j - 1](F.avg_pool2d(x, 2)))
            h = (1.0 - alpha) * coarse + alpha * fine
            j -= 1
        for i in range(j, -1, -1):
            h = self.blocks[i](h)
        return h.squeeze(1)

    # -- reference checkpoints ---------------------------------------------------------------------------------------
    def _reference_layers(self) -> List[Tuple[str, str]]:
        # the reference numbers its blocks from the highest resolution down
        n = len(self.resolutions)
        layers = []
        for i in range(n):
            j = n - 1 - i
            layers += [(f"blocks.{i}.{self.HEAD}", f"{self.HEAD}.{j}"), (f"blocks.{i}.conv1", f"blocks.{j}.conv0"),
                       (f"blocks.{i}.conv2", f"blocks.{j}.conv1")]
            if j == 0:
                layers.append((f"blocks.{i}.fc3", "blocks.0.fc"))
        return layers

    @classmethod
    def from_reference_state_dict(cls, state_dict: Mapping, *, num_classes: int, max_dim: int = 256,
                                  aspect_ratio: float = 1.0, width_mult: Optional[float] = None) -> "SegDiscriminator":
        """Build a discriminator from the authors' ``D_state_dict`` (or a whole checkpoint holding it).

        ``width_mult`` (None) is read from the 4x4 block's input head (reference checkpoints are full width).
        ``aspect_ratio`` cannot be read from the weights (it is the stride of the last block): pass the dataset's.
        Raises ValueError naming the offending keys/shapes when the checkpoint does not match the arguments.
        """
        owner = cls.__name__
        sd, n = reference_state(owner, state_dict, "D_state_dict", num_blocks(owner, max_dim), max_dim,
                                rgb=cls.HEAD == "from_rgb")
        head = sd.get(f"blocks.{n - 1}.{cls.HEAD}.weight")
        if head is None or head.dim() != 4:
            raise ValueError(f"{owner}.from_reference_state_dict: 'blocks.{n - 1}.{cls.HEAD}.weight' (4-D) is missing")
        wm = infer_width_mult(owner, int(head.shape[0]), width_mult)
        model = cls(num_classes, max_dim=max_dim, aspect_ratio=aspect_ratio, width_mult=wm)
        load_mapped(model, owner, sd, model._reference_key_map())
        return model

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, max_dim={self.max_dim}, aspect_ratio={self.aspect_ratio}, "
                f"width_mult={self.width_mult:g}")

