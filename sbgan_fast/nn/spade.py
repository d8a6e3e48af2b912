"""SPADE normalization layer and the SPADE residual block of the image generator.

Module names follow the reference checkpoints exactly, so state dicts map 1:1:

* ``SPADE``: ``param_free_norm`` (a BatchNorm2d without affine holding ``running_mean``, ``running_var``,
  ``num_batches_tracked`` for the batch norms; an InstanceNorm2d without state for instance norm),
  ``mlp_shared.0`` (3x3 conv label_nc -> nhidden; ``mlp_shared.1`` is the ReLU), ``mlp_gamma``, ``mlp_beta``.
* ``SPADEResnetBlock``: ``conv_0``, ``conv_1``, ``conv_s`` (1x1, no bias, only when fin != fout), each
  spectral-normalized when ``norm_G`` starts with ``spectral`` (keys ``weight_orig/_u/_v``), and
  ``norm_0``, ``norm_1``, ``norm_s``.

The param-free normalization and the modulation ``x_hat * (1 + gamma) + beta`` run through
:func:`sbgan_fast.ops.spade_norm` (one fused pass on the fast path). The label map is given either as
a float (N, label_nc, H, W) map (one-hot or soft, as the reference takes it) or as an int (N, H, W)
label map; the int form goes through :func:`sbgan_fast.ops.onehot_conv2d` for the first conv, which
never materialises the one-hot map on its fast path.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .spectral import spectral_norm

__all__ = ["SPADE", "SPADEResnetBlock", "parse_norm_G", "resize_segmap", "PARAM_FREE_NORMS"]

PARAM_FREE_NORMS = ("sync_batch", "batch", "instance")
# Spellings of the reference's norm_G strings -> ops.spade_norm's names.
_NORM_ALIASES = {"syncbatch": "sync_batch", "sync_batch": "sync_batch", "batch": "batch", "instance": "instance"}


def parse_norm_G(norm_G: str) -> Tuple[bool, str, int]:
    """Parse a reference ``norm_G`` string such as ``'spectralspadesyncbatch3x3'``.

    Returns:
        (spectral, param_free_norm, ks): whether the block convs are spectral-normalized, the
        param-free norm ('sync_batch' | 'batch' | 'instance') and the SPADE conv kernel size.
    """
    if not isinstance(norm_G, str):
        raise TypeError(f"norm_G must be a string like 'spectralspadesyncbatch3x3', got {type(norm_G).__name__}")
    spectral = "spectral" in norm_G
    rest = norm_G.replace("spectral", "")
    m = re.fullmatch(r"spade(\D+)(\d+)x(\d+)", rest)
    if m is None or m.group(1) not in _NORM_ALIASES or m.group(2) != m.group(3):
        raise ValueError(f"norm_G={norm_G!r} not understood: expected '[spectral]spade<norm><k>x<k>' with <norm> in "
                         f"{sorted(set(_NORM_ALIASES))} and an odd square kernel, e.g. 'spectralspadesyncbatch3x3'")
    ks = int(m.group(2))
    if ks % 2 != 1:
        raise ValueError(f"norm_G={norm_G!r}: the SPADE kernel size must be odd, got {ks}")
    return spectral, _NORM_ALIASES[m.group(1)], ks


def resize_segmap(segmap: torch.Tensor, size) -> torch.Tensor:
    """Nearest resize of a label map to ``size`` = (H', W') (no-op when already that size).

    Float (N, C, H, W) maps use ``F.interpolate(mode='nearest')``; int (N, H, W) (or (N, 1, H, W)) maps
    use :func:`sbgan_fast.ops.nearest_resize_labels`, which picks the same source pixels.
    """
    size = (int(size[0]), int(size[1]))
    if segmap.is_floating_point():
        if tuple(segmap.shape[-2:]) == size:
            return segmap
        return F.interpolate(segmap, size=size, mode="nearest")
    if segmap.dim() == 4 and segmap.shape[1] == 1:
        segmap = segmap[:, 0]
    return ops.nearest_resize_labels(segmap, size)


def _check_segmap(who: str, segmap: torch.Tensor, label_nc: int, batch: int) -> None:
    if not isinstance(segmap, torch.Tensor):
        raise TypeError(f"{who}: segmap must be a torch.Tensor, got {type(segmap).__name__}")
    if segmap.is_floating_point():
        if segmap.dim() != 4 or segmap.shape[1] != label_nc:
            raise ValueError(f"{who}: a float segmap must be (N, {label_nc}, H, W), got shape {tuple(segmap.shape)}")
    elif segmap.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        if not (segmap.dim() == 3 or (segmap.dim() == 4 and segmap.shape[1] == 1)):
            raise ValueError(f"{who}: an int segmap must be (N, H, W) labels, got shape {tuple(segmap.shape)}")
    else:
        raise TypeError(f"{who}: segmap must be float (one-hot/soft) or an integer label map, got {segmap.dtype}")
    if segmap.shape[0] != batch:
        raise ValueError(f"{who}: segmap batch {segmap.shape[0]} != x batch {batch}")


class SPADE(nn.Module):
    """Spatially-adaptive normalization: ``param_free_norm(x) * (1 + gamma(seg)) + beta(seg)``.

    Args:
        norm_nc: C, channels of the normalized activations.
        label_nc: channels of the float label map (classes, plus one with a don't-care channel).
        param_free_norm: 'sync_batch' (statistics all-reduced over the process group under
            torch.distributed; equal to 'batch' in a single process), 'batch' or 'instance'.
        ks: kernel size of the three SPADE convs (odd).
        nhidden: width of the shared embedding (128 in the reference).
        dontcare: for int label maps, the label value that maps to the last (don't-care) channel
            (e.g. 255); None when the map has no such channel.
        eps, momentum: of the param-free batch/instance normalization.
        impl: impl of :func:`sbgan_fast.ops.spade_norm`.
        embed_impl: impl of :func:`sbgan_fast.ops.onehot_conv2d` (int label maps only).

    Forward:
        x: float (N, C, H, W), any memory format.
        segmap: float (N, label_nc, H', W') or int (N, H', W'); nearest-resized to (H, W).
        returns float (N, C, H, W), x's dtype (gamma's under autocast). No spectral norm inside.
    """

    def __init__(self, norm_nc: int, label_nc: int, *, param_free_norm: str = "sync_batch", ks: int = 3,
                 nhidden: int = 128, dontcare: Optional[int] = None, eps: float = 1e-5, momentum: float = 0.1,
                 impl: str = "auto", embed_impl: str = "auto"):
        super().__init__()
        if param_free_norm not in PARAM_FREE_NORMS:
            alias = _NORM_ALIASES.get(param_free_norm)
            if alias is None:
                raise ValueError(f"SPADE: param_free_norm must be one of {PARAM_FREE_NORMS}, got {param_free_norm!r}")
            param_free_norm = alias
        for name, val in (("norm_nc", norm_nc), ("label_nc", label_nc), ("nhidden", nhidden)):
            if int(val) <= 0:
                raise ValueError(f"SPADE: {name} must be positive, got {val}")
        if ks <= 0 or ks % 2 != 1:
            raise ValueError(f"SPADE: ks must be a positive odd kernel size, got {ks}")
        if impl not in ops.IMPLS:
            raise ValueError(f"SPADE: impl must be one of {ops.IMPLS}, got {impl!r}")
        if embed_impl not in ops.IMPLS:
            raise ValueError(f"SPADE: embed_impl must be one of {ops.IMPLS}, got {embed_impl!r}")
        self.norm_nc = int(norm_nc)
        self.label_nc = int(label_nc)
        self.norm = param_free_norm
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.dontcare = dontcare
        self.impl = impl
        self.embed_impl = embed_impl
        if param_free_norm == "instance":
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False, eps=eps)
        else:
            # Holds the running statistics (state-dict keys of the reference); the normalization itself
            # runs inside ops.spade_norm.
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False, eps=eps, momentum=momentum)
        pw = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, kernel_size=ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, kernel_size=ks, padding=pw)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, kernel_size=ks, padding=pw)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, dontcare={self.dontcare}, impl={self.impl!r}"

    def _embed(self, segmap: torch.Tensor) -> torch.Tensor:
        """First SPADE conv (``mlp_shared.0``, before its ReLU) on a label map already at x's size.

        segmap: float (N, label_nc, H, W) or int (N, H, W). Returns float (N, nhidden, H, W).
        Kept as a separate method so the label-embedding path can be swapped without touching forward.
        """
        conv = self.mlp_shared[0]
        if segmap.is_floating_point():
            return conv(segmap)
        weight, bias = conv.weight, conv.bias
        if torch.is_autocast_enabled(weight.device.type):
            dtype = torch.get_autocast_dtype(weight.device.type)
            weight, bias = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
        return ops.onehot_conv2d(segmap, weight, bias, dontcare=self.dontcare, padding=conv.padding[0],
                                 impl=self.embed_impl)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.norm_nc:
            raise ValueError(f"SPADE: x must be (N, {self.norm_nc}, H, W), got shape {tuple(x.shape)}")
        _check_segmap("SPADE", segmap, self.label_nc, x.shape[0])
        seg = resize_segmap(segmap, x.shape[-2:])
        actv = self.mlp_shared[1](self._embed(seg))
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        running_mean = running_var = None
        if self.norm != "instance":
            bn = self.param_free_norm
            running_mean, running_var = bn.running_mean, bn.running_var
            if self.training and bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
        if gamma.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            gamma, beta = gamma.to(x.dtype), beta.to(x.dtype)
        return ops.spade_norm(x, gamma, beta, norm=self.norm, eps=self.eps, running_mean=running_mean,
                              running_var=running_var, momentum=self.momentum, training=self.training,
                              impl=self.impl)


class SPADEResnetBlock(nn.Module):
    """SPADE residual block (fin -> fout), fmiddle = min(fin, fout).

    main: norm_0 -> LReLU(0.2) -> conv_0 (3x3) -> norm_1 -> LReLU(0.2) -> conv_1 (3x3);
    shortcut (fin != fout only): norm_s -> conv_s (1x1, no bias, no activation).

    Args:
        fin, fout: input / output channels.
        label_nc: channels of the float label map (including a don't-care channel if any).
        norm_G: reference-style string '[spectral]spade<norm><k>x<k>' (see :func:`parse_norm_G`).
        dontcare, impl, embed_impl, nhidden: passed to every :class:`SPADE` layer (nhidden: the width of its shared
            label embedding, 128 in the reference).

    Forward: x float (N, fin, H, W), seg float (N, label_nc, H', W') or int (N, H', W');
    returns (N, fout, H, W). The label map is resized to (H, W) once and shared by the block's SPADE layers.
    """

    def __init__(self, fin: int, fout: int, label_nc: int, *, norm_G: str = "spectralspadesyncbatch3x3",
                 dontcare: Optional[int] = None, impl: str = "auto", embed_impl: str = "auto", nhidden: int = 128):
        super().__init__()
        spectral, pf_norm, ks = parse_norm_G(norm_G)
        self.fin, self.fout = int(fin), int(fout)
        self.label_nc = int(label_nc)
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, kernel_size=3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, kernel_size=1, bias=False)
        if spectral:
            spectral_norm(self.conv_0)
            spectral_norm(self.conv_1)
            if self.learned_shortcut:
                spectral_norm(self.conv_s)
        kw = dict(param_free_norm=pf_norm, ks=ks, dontcare=dontcare, impl=impl, embed_impl=embed_impl, nhidden=nhidden)
        self.norm_0 = SPADE(fin, label_nc, **kw)
        self.norm_1 = SPADE(fmiddle, label_nc, **kw)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, **kw)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.fin:
            raise ValueError(f"SPADEResnetBlock: x must be (N, {self.fin}, H, W), got shape {tuple(x.shape)}")
        _check_segmap("SPADEResnetBlock", seg, self.label_nc, x.shape[0])
        seg = resize_segmap(seg, x.shape[-2:])
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx
