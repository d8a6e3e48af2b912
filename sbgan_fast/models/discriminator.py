"""Multiscale patch discriminators of the image stage: D_spd (conditional) and D2 (unconditional).

Each scale is an :class:`NLayerDiscriminator`:

    model0: conv4x4 s2 pad 2 (input -> ndf, bias, no norm) + LReLU(0.2)
    model1..model{n-1}: norm(conv4x4 pad 2, nf_prev -> min(2 nf_prev, 512)) + LReLU(0.2)
    model{n}: conv4x4 s1 pad 2 -> 1 channel (the patch prediction)

with n = ``n_layers_D``. The intermediate strides are 2, except the last intermediate layer's, which is
``last_stride``: the SB-GAN authors' code uses ``n_layers_D=3`` with every stride 2, NVIDIA's current SPADE
uses ``n_layers_D=4`` with the last intermediate stride 1. ``last_stride=None`` picks 2 for
``n_layers_D <= 3`` and 1 for ``n_layers_D >= 4``, which reproduces both; pass it explicitly for anything else.

``norm_D`` follows the reference strings: ``[spectral]<instance|batch|sync_batch|none>``. The norm wraps the
conv as ``Sequential(conv, norm)`` (so state-dict keys are ``model1.0.0.weight_orig``, ...), and the conv loses
its bias whenever a norm follows it; with a bare ``'spectral'`` / ``'spectralnone'`` the conv keeps its bias
and sits directly at ``model1.0``. Instance norm has no affine parameters; batch norms are affine.

:class:`MultiscaleDiscriminator` runs ``num_D`` such networks (``discriminator_0``, ``discriminator_1``, ...)
on the input and its successive 3x3 / stride 2 / pad 1 average-pooled versions (``count_include_pad=False``)
and returns, per scale, the list of every block's output with the prediction last (for feature matching).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.batchnorm import SyncBatchNorm2d
from ..nn.spectral import spectral_norm
from .spade_gen import init_xavier, load_reference_state_dict, reference_state_dict

__all__ = ["MultiscaleDiscriminator", "NLayerDiscriminator", "SyncBatchNorm2d", "parse_norm_D"]

_SUBNORMS = ("instance", "batch", "sync_batch", "syncbatch", "none", "")


def parse_norm_D(norm_D: str):
    """``'spectralinstance'`` -> (True, 'instance'); sub-norm '' or 'none' means no norm layer."""
    if not isinstance(norm_D, str):
        raise TypeError(f"norm_D must be a string like 'spectralinstance', got {type(norm_D).__name__}")
    spectral = norm_D.startswith("spectral")
    sub = norm_D[len("spectral"):] if spectral else norm_D
    if sub not in _SUBNORMS:
        raise ValueError(f"norm_D={norm_D!r} not understood: expected '[spectral]<norm>' with <norm> in "
                         f"('instance', 'batch', 'sync_batch', 'none') or nothing, e.g. 'spectralinstance'")
    sub = {"syncbatch": "sync_batch", "": "none"}.get(sub, sub)
    return spectral, sub


def _norm_conv(conv: nn.Conv2d, spectral: bool, sub: str) -> nn.Module:
    if spectral:
        spectral_norm(conv)
    if sub == "none":
        return conv
    # A bias before a normalization has no effect: drop it (as the reference does).
    conv.bias = None
    if sub == "instance":
        norm = nn.InstanceNorm2d(conv.out_channels, affine=False)
    elif sub == "batch":
        norm = nn.BatchNorm2d(conv.out_channels, affine=True)
    else:
        norm = SyncBatchNorm2d(conv.out_channels)
    return nn.Sequential(conv, norm)


class NLayerDiscriminator(nn.Module):
    """One scale of the patch discriminator (see the module docstring).

    Args:
        input_nc: input channels (label channels + 3 for D_spd, 3 for D2).
        ndf, n_layers_D, norm_D, last_stride: as in :class:`MultiscaleDiscriminator`.

    Forward: x float (N, input_nc, H, W) -> list of n_layers_D + 1 tensors: the LReLU outputs of
    ``model0 .. model{n-1}`` and the (N, 1, h, w) patch logits last. Any gradient order (no custom ops).
    """

    def __init__(self, input_nc: int, *, ndf: int = 64, n_layers_D: int = 3, norm_D: str = "spectralinstance",
                 last_stride: Optional[int] = None):
        super().__init__()
        if int(input_nc) <= 0 or int(ndf) <= 0:
            raise ValueError(f"NLayerDiscriminator: input_nc and ndf must be positive, got {input_nc}, {ndf}")
        if int(n_layers_D) < 1:
            raise ValueError(f"NLayerDiscriminator: n_layers_D must be >= 1, got {n_layers_D}")
        if last_stride is None:
            last_stride = 1 if n_layers_D >= 4 else 2
        if last_stride not in (1, 2):
            raise ValueError(f"NLayerDiscriminator: last_stride must be 1 or 2 (or None), got {last_stride}")
        spectral, sub = parse_norm_D(norm_D)
        self.input_nc, self.n_layers_D, self.last_stride = int(input_nc), int(n_layers_D), int(last_stride)
        kw, padw = 4, 2
        nf = int(ndf)
        seq = [nn.Sequential(nn.Conv2d(input_nc, nf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2))]
        for n in range(1, n_layers_D):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = last_stride if n == n_layers_D - 1 else 2
            conv = nn.Conv2d(nf_prev, nf, kw, stride=stride, padding=padw)
            seq.append(nn.Sequential(_norm_conv(conv, spectral, sub), nn.LeakyReLU(0.2)))
        seq.append(nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=padw)))
        for i, m in enumerate(seq):
            self.add_module(f"model{i}", m)
        self.strides = [2] + [last_stride if n == n_layers_D - 1 else 2 for n in range(1, n_layers_D)] + [1]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"NLayerDiscriminator: input must be (N, {self.input_nc}, H, W), "
                             f"got shape {tuple(x.shape)}")
        feats = []
        for m in self.children():
            x = m(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` patch discriminators on successively average-pooled inputs.

    Args:
        label_nc: number of classes K (ignored when ``conditional=False``).
        conditional: True for D_spd (input = label channels then image), False for D2 (image only).
        contain_dontcare_label: the label part has K + 1 channels.
        ndf: base width (64); n_layers_D: 3 (SB-GAN) or 4 (NVIDIA's current SPADE); num_D: scales (2).
        norm_D: '[spectral]<instance|batch|sync_batch|none>' (default 'spectralinstance').
        last_stride: stride of the last intermediate conv; None -> 2 when n_layers_D <= 3, 1 when >= 4.

    Forward:
        x: float (N, K (+1) + 3, H, W) = cat(label map, image) (image only when unconditional), NCHW or
        channels-last. Real and fake are meant to go through in one concatenated batch.
        returns ``list[num_D]`` of ``list[n_layers_D + 1]`` tensors: per scale the intermediate features,
        the (N, 1, h, w) patch logits last.

    With ndf = 64 and n_layers_D = 3 the parameter counts are 1,396,866 (K = 35, conditional) and
    1,325,186 (unconditional).
    """

    def __init__(self, label_nc: int, *, conditional: bool = True, contain_dontcare_label: bool = False,
                 ndf: int = 64, n_layers_D: int = 3, num_D: int = 2, norm_D: str = "spectralinstance",
                 last_stride: Optional[int] = None):
        super().__init__()
        if int(num_D) < 1:
            raise ValueError(f"MultiscaleDiscriminator: num_D must be >= 1, got {num_D}")
        if conditional and int(label_nc) <= 0:
            raise ValueError(f"MultiscaleDiscriminator: label_nc must be positive for a conditional D, got {label_nc}")
        self.conditional = bool(conditional)
        self.label_nc = int(label_nc)
        self.contain_dontcare_label = bool(contain_dontcare_label)
        self.semantic_nc = (self.label_nc + (1 if contain_dontcare_label else 0)) if conditional else 0
        self.input_nc = self.semantic_nc + 3
        self.num_D, self.n_layers_D = int(num_D), int(n_layers_D)
        for i in range(num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(
                self.input_nc, ndf=ndf, n_layers_D=n_layers_D, norm_D=norm_D, last_stride=last_stride))
        init_xavier(self, 0.02)

    def extra_repr(self) -> str:
        return f"conditional={self.conditional}, input_nc={self.input_nc}, num_D={self.num_D}"

    @staticmethod
    def downsample(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.input_nc:
            what = f"{self.semantic_nc} label channels + 3 image channels" if self.conditional else "3 image channels"
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"MultiscaleDiscriminator: input must be (N, {self.input_nc}, H, W) ({what}), got {got}")
        result = []
        for i, d in enumerate(self.children()):
            result.append(d(x))
            if i + 1 < self.num_D:
                x = self.downsample(x)
        return result

    # ----------------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_reference_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, label_nc: int, ndf: int = 64,
                                  n_layers_D: int = 3, num_D: int = 2, conditional: bool = True,
                                  norm_D: str = "spectralinstance", **kwargs) -> "MultiscaleDiscriminator":
        """Build a discriminator and load a reference ``netD`` (or D2) state dict into it.

        Keys: ``discriminator_<i>.model0.0.weight/bias``, ``discriminator_<i>.model<k>.0.0.weight_orig/_u/_v``
        (spectral conv followed by a norm), ``discriminator_<i>.model<n>.0.weight/bias``. A leading
        ``module.`` is stripped. Other keywords (``contain_dontcare_label``, ``last_stride``) go to the
        constructor; NVIDIA's current 4-layer checkpoints need ``n_layers_D=4`` (last stride 1 by default).
        """
        model = cls(label_nc, conditional=conditional, ndf=ndf, n_layers_D=n_layers_D, num_D=num_D,
                    norm_D=norm_D, **kwargs)
        hint = (f"label_nc={label_nc}, conditional={conditional}, ndf={ndf}, n_layers_D={n_layers_D}, "
                f"num_D={num_D}, norm_D={norm_D!r}")
        load_reference_state_dict(model, state_dict, who="MultiscaleDiscriminator", hint=hint)
        return model

    def to_reference_state_dict(self) -> Dict[str, torch.Tensor]:
        """State dict in the reference layout, tensors detached on their current device."""
        return reference_state_dict(self)
