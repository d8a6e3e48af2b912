"""Pixelwise feature-vector normalization (progressive GAN generator).

Two forms, over the channel dim 1:

- ``mode="code"`` (default, what the SB-GAN authors' code computes): ``x / (mean_c(x^2) + eps)``, without the
  square root. It is not scale invariant (a feature vector of mean square m comes out with mean square 1/m);
  the released checkpoints were trained with it.
- ``mode="standard"`` (the progressive GAN paper): ``x * rsqrt(mean_c(x^2) + eps)``, unit mean square.

Half-precision inputs are normalized in fp32 and cast back; fp32/fp64 are computed in their own dtype (bitwise
the reference). Any gradient order. Works on (N, C) vectors and (N, C, H, W) maps in any memory format.
"""
from __future__ import annotations

import torch
from torch import nn

PIXEL_NORM_MODES = ("code", "standard")


def pixel_norm(x: torch.Tensor, mode: str = "code", eps: float = 1e-8) -> torch.Tensor:
    """Functional form of :class:`PixelNorm`: normalize ``x`` (N, C, ...) over dim 1; same shape and dtype."""
    if mode not in PIXEL_NORM_MODES:
        raise ValueError(f"pixel_norm: mode must be one of {PIXEL_NORM_MODES}, got {mode!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"pixel_norm: x must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"pixel_norm: x must have a channel dim 1, i.e. shape (N, C, ...), got {tuple(x.shape)}")
    half = x.dtype in (torch.float16, torch.bfloat16)
    xf = x.float() if half else x
    mean_sq = xf.pow(2).mean(dim=1, keepdim=True) + eps
    out = xf / mean_sq if mode == "code" else xf * torch.rsqrt(mean_sq)
    return out.to(x.dtype) if half else out


class PixelNorm(nn.Module):
    """Pixelwise normalization over channels (dim 1); no parameters.

    Args:
        mode: ``"code"`` -> ``x / (mean_c(x^2) + eps)`` (the authors' code, the default);
            ``"standard"`` -> ``x * rsqrt(mean_c(x^2) + eps)``.
        eps: added to the channel mean of squares (1e-8).

    Shapes: (N, C) or (N, C, H, W) -> same shape, dtype and memory format.
    """

    def __init__(self, mode: str = "code", eps: float = 1e-8) -> None:
        super().__init__()
        if mode not in PIXEL_NORM_MODES:
            raise ValueError(f"PixelNorm: mode must be one of {PIXEL_NORM_MODES}, got {mode!r}")
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"PixelNorm: eps must be > 0, got {eps}")
        self.mode = mode
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, self.mode, self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, eps={self.eps:g}"
