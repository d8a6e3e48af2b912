"""SPADE generator G_spd: semantic label map -> RGB image in [-1, 1].

Architecture (ngf = nf):

    seg --nearest--> (sh, sw) --fc 3x3--> 16nf
    head_0 (16nf)                       at (sh, sw)
    up, G_middle_0 (16nf)
    [more/most: up], G_middle_1 (16nf)
    up, up_0 (->8nf), up, up_1 (->4nf), up, up_2 (->2nf), up, up_3 (->nf)
    [most: up, up_4 (->nf/2)]
    LReLU(0.2) -> conv_img 3x3 -> 3 -> tanh

with "up" a nearest x2 upsample, sw = crop_size // 2**n (n = 5 normal, 6 more, 7 most) and
sh = round(sw / aspect_ratio); the output is (N, 3, sh * 2**n, sw * 2**n). Every block is a
:class:`~sbgan_fast.nn.spade.SPADEResnetBlock`. Module names and the state-dict layout equal the reference
checkpoints' (``fc``, ``head_0``, ``G_middle_0/1``, ``up_0..up_4``, ``conv_img``, legacy spectral-norm keys).

Label-map gradient (``detach_seg``): with ``detach_seg=True`` (the SB-GAN authors' code) every SPADE block
receives ``seg.detach()``, so a gradient w.r.t. a soft/straight-through label map reaches it only through
``fc``; with ``detach_seg=False`` (the paper's stated intent) it flows through every block.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops._checks import check_label_range
from ..nn.spade import SPADEResnetBlock, parse_norm_G, resize_segmap
from .reference import load_reference_state_dict, reference_state_dict

__all__ = ["SPADEGenerator", "NUM_UP_LAYERS", "DONTCARE_LABEL", "init_xavier", "load_reference_state_dict",
           "reference_state_dict"]

NUM_UP_LAYERS = {"normal": 5, "more": 6, "most": 7}
# Label value of "don't care" pixels in int label maps (Cityscapes / ADE20K convention).
DONTCARE_LABEL = 255


def init_xavier(module: nn.Module, gain: float = 0.02) -> None:
    """Reference init: xavier-normal(gain) for every conv / linear weight (``weight_orig`` when
    spectral-normalized), zero biases; affine norm weights N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            w = getattr(m, "weight_orig", None)
            if not isinstance(w, nn.Parameter):
                w = m.weight
            nn.init.xavier_normal_(w, gain=gain)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


class SPADEGenerator(nn.Module):
    """Label map -> image (see the module docstring for the architecture).

    Args:
        label_nc: number of classes K.
        contain_dontcare_label: the float map has an extra last "don't care" channel (K + 1 channels); an
            int map's value 255 selects it.
        ngf: base width (64 in the reference: 93.0 M parameters for Cityscapes, 94.8 M for ADE-Indoor).
        num_upsampling_layers: 'normal' (ADE, 5 doublings), 'more' (Cityscapes, 6), 'most' (7).
        crop_size: output width; aspect_ratio: width / height (2 for Cityscapes).
        norm_G: '[spectral]spade<norm><k>x<k>' with norm syncbatch | batch | instance.
        detach_seg: see the module docstring (default True, the authors' code).
        impl: impl of the SPADE normalization op; embed_impl: of the int-label embedding op.
        nhidden: width of every SPADE layer's shared label embedding (128 in the reference); at small ngf its
            convolutions (nhidden -> channels, 3x3, twice per layer) are most of the generator's work.

    Forward:
        seg: float (N, K (+1), H, W) one-hot or soft map (NCHW or channels-last), or int (N, H, W)
            labels in [0, K) (with ``contain_dontcare_label`` also 255 or K, the don't-care channel's index).
        returns float (N, 3, sh * 2**n, sw * 2**n) in [-1, 1] (tanh), in the parameters' dtype
        (the autocast dtype under autocast).
    """

    def __init__(self, label_nc: int, *, contain_dontcare_label: bool = False, ngf: int = 64,
                 num_upsampling_layers: str = "normal", crop_size: int = 256, aspect_ratio: float = 1.0,
                 norm_G: str = "spectralspadesyncbatch3x3", detach_seg: bool = True, impl: str = "auto",
                 embed_impl: str = "auto", nhidden: int = 128):
        super().__init__()
        if int(label_nc) <= 0:
            raise ValueError(f"SPADEGenerator: label_nc must be positive, got {label_nc}")
        if num_upsampling_layers not in NUM_UP_LAYERS:
            raise ValueError(f"SPADEGenerator: num_upsampling_layers must be one of {tuple(NUM_UP_LAYERS)}, "
                             f"got {num_upsampling_layers!r}")
        if int(ngf) <= 0 or (num_upsampling_layers == "most" and ngf < 2):
            raise ValueError(f"SPADEGenerator: ngf must be positive (>= 2 for 'most'), got {ngf}")
        if aspect_ratio <= 0:
            raise ValueError(f"SPADEGenerator: aspect_ratio must be positive, got {aspect_ratio}")
        n_up = NUM_UP_LAYERS[num_upsampling_layers]
        sw = int(crop_size) // (2 ** n_up)
        sh = int(round(sw / aspect_ratio))
        if sw < 1 or sh < 1:
            raise ValueError(f"SPADEGenerator: crop_size={crop_size} with num_upsampling_layers="
                             f"{num_upsampling_layers!r} ({n_up} doublings) and aspect_ratio={aspect_ratio} gives a "
                             f"{sh}x{sw} starting map; crop_size must be at least {2 ** n_up} "
                             f"(x aspect_ratio in height)")
        parse_norm_G(norm_G)  # validate early with a clear message
        self.label_nc = int(label_nc)
        self.contain_dontcare_label = bool(contain_dontcare_label)
        self.semantic_nc = self.label_nc + (1 if contain_dontcare_label else 0)
        self.dontcare = DONTCARE_LABEL if contain_dontcare_label else None
        self.ngf = int(ngf)
        self.num_upsampling_layers = num_upsampling_layers
        self.crop_size = int(crop_size)
        self.aspect_ratio = float(aspect_ratio)
        self.norm_G = norm_G
        self.detach_seg = bool(detach_seg)
        self.sw, self.sh = sw, sh
        self.output_size = (sh * 2 ** n_up, sw * 2 ** n_up)
        self.embed_impl = embed_impl

        nf = self.ngf
        block = dict(norm_G=norm_G, dontcare=self.dontcare, impl=impl, embed_impl=embed_impl, nhidden=nhidden)
        c = self.semantic_nc
        self.fc = nn.Conv2d(c, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, c, **block)
        self.G_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, c, **block)
        self.G_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, c, **block)
        self.up_0 = SPADEResnetBlock(16 * nf, 8 * nf, c, **block)
        self.up_1 = SPADEResnetBlock(8 * nf, 4 * nf, c, **block)
        self.up_2 = SPADEResnetBlock(4 * nf, 2 * nf, c, **block)
        self.up_3 = SPADEResnetBlock(2 * nf, 1 * nf, c, **block)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = SPADEResnetBlock(1 * nf, nf // 2, c, **block)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
        init_xavier(self, 0.02)

    def extra_repr(self) -> str:
        return (f"label_nc={self.label_nc}, contain_dontcare_label={self.contain_dontcare_label}, "
                f"start={self.sh}x{self.sw}, output={self.output_size[0]}x{self.output_size[1]}, "
                f"detach_seg={self.detach_seg}")

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def _check_seg(self, seg: torch.Tensor) -> torch.Tensor:
        if not isinstance(seg, torch.Tensor):
            raise TypeError(f"SPADEGenerator: seg must be a torch.Tensor, got {type(seg).__name__}")
        if seg.is_floating_point():
            if seg.dim() != 4 or seg.shape[1] != self.semantic_nc:
                extra = " (label_nc + 1 don't-care channel)" if self.contain_dontcare_label else ""
                raise ValueError(f"SPADEGenerator: a float seg must be (N, {self.semantic_nc}{extra}, H, W), "
                                 f"got shape {tuple(seg.shape)}")
            return seg
        if seg.dim() == 4 and seg.shape[1] == 1:
            seg = seg[:, 0]
        if seg.dim() != 3:
            raise ValueError(f"SPADEGenerator: an int seg must be (N, H, W) labels, got shape {tuple(seg.shape)}")
        if self.dontcare is not None:
            # channel indices as the trainer gives them: the don't-care channel's index (label_nc) stands for the
            # don't-care value too
            seg = torch.where(seg == self.label_nc, torch.full_like(seg, self.dontcare), seg)
        # Validate the label range once here (the error names the bad value); semantics of ops.one_hot.
        check_label_range("SPADEGenerator", seg, self.label_nc, self.dontcare)
        return seg

    def _embed_fc(self, seg: torch.Tensor) -> torch.Tensor:
        """``fc`` on the label map nearest-resized to (sh, sw). Float maps keep their gradient."""
        if seg.is_floating_point():
            return self.fc(resize_segmap(seg, (self.sh, self.sw)))
        weight, bias = self.fc.weight, self.fc.bias
        if torch.is_autocast_enabled(weight.device.type):
            dtype = torch.get_autocast_dtype(weight.device.type)
            weight, bias = weight.to(dtype), bias.to(dtype)
        return ops.onehot_conv2d(seg, weight, bias, dontcare=self.dontcare, size=(self.sh, self.sw), padding=1,
                                 impl=self.embed_impl)

    def forward(self, seg: torch.Tensor, *, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """seg: float (N, semantic_nc, H, W) map (one-hot or soft) or int (N, H, W) labels.

        labels: optional int (N, H, W) labels equal to ``seg.argmax(1)`` for an exact one-hot float
        ``seg`` (e.g. a straight-through Gumbel sample). With ``detach_seg`` the SPADE blocks then
        embed the integer labels (the exact gather path of :func:`sbgan_fast.ops.onehot_conv2d`) while
        ``fc`` still sees the float map, so the gradient to ``seg`` is unchanged. Ignored when
        ``detach_seg`` is False (every block needs the differentiable float map then).
        """
        seg = self._check_seg(seg)
        x = self._embed_fc(seg)
        if labels is not None and self.detach_seg and seg.is_floating_point():
            labels = self._check_seg(labels)
            if labels.is_floating_point() or labels.shape != (seg.shape[0],) + tuple(seg.shape[2:]):
                raise ValueError(f"SPADEGenerator: labels must be int (N, H, W) matching seg {tuple(seg.shape)}, "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            s = labels
        else:
            s = seg.detach() if self.detach_seg else seg
        x = self.head_0(x, s)
        x = self._up(x)
        x = self.G_middle_0(x, s)
        if self.num_upsampling_layers in ("more", "most"):
            x = self._up(x)
        x = self.G_middle_1(x, s)
        x = self.up_0(self._up(x), s)
        x = self.up_1(self._up(x), s)
        x = self.up_2(self._up(x), s)
        x = self.up_3(self._up(x), s)
        if self.num_upsampling_layers == "most":
            x = self.up_4(self._up(x), s)
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x)

    # ----------------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_reference_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, label_nc: int,
                                  contain_dontcare_label: bool = False, ngf: int = 64,
                                  num_upsampling_layers: str = "normal", crop_size: int = 256,
                                  aspect_ratio: float = 1.0, norm_G: str = "spectralspadesyncbatch3x3",
                                  **kwargs) -> "SPADEGenerator":
        """Build a generator and load a reference checkpoint's ``netG`` state dict into it.

        The state dict uses the reference module names and the legacy spectral-norm keys
        (``X.weight_orig``, ``X.weight_u``, ``X.weight_v``); a leading ``module.`` (DataParallel) is
        stripped. Checkpoints trained with instance-edge maps have one more input channel: pass
        ``label_nc`` = classes + 1 and feed float maps with the edge channel last. Other keyword
        arguments (``detach_seg``, ``impl``, ...) go to the constructor.

        Raises:
            KeyError naming missing / unexpected keys, ValueError naming a shape mismatch (with the
            constructor arguments to check).
        """
        model = cls(label_nc, contain_dontcare_label=contain_dontcare_label, ngf=ngf,
                    num_upsampling_layers=num_upsampling_layers, crop_size=crop_size, aspect_ratio=aspect_ratio,
                    norm_G=norm_G, **kwargs)
        hint = (f"label_nc={label_nc}, contain_dontcare_label={contain_dontcare_label}, ngf={ngf}, "
                f"num_upsampling_layers={num_upsampling_layers!r}, norm_G={norm_G!r}")
        load_reference_state_dict(model, state_dict, who="SPADEGenerator", hint=hint)
        return model

    def to_reference_state_dict(self) -> Dict[str, torch.Tensor]:
        """State dict in the reference layout (same keys the reference ``netG`` saves), tensors detached on
        their current device."""
        return reference_state_dict(self)
