"""Equalized-learning-rate convolution and linear layers (progressive GAN style).

The trainable weight is stored with unit variance, ``weight ~ N(0, 1)``, and the bias starts at 0. At run time
the weight is multiplied by the constant ``scale = gain / sqrt(fan_in)`` (He's constant), so every layer learns at
the same effective rate under Adam. ``scale`` is a plain Python float attribute, derived from the shape and the
gain: it is not a parameter and not a buffer, hence never part of the ``state_dict`` (checkpoints hold the
unscaled weights).

Both layers support any gradient order (they are ``F.conv2d`` / ``F.linear`` on a scaled weight), autocast and
channels-last inputs (the convolution keeps the input's memory format as ``F.conv2d`` does).
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

_IntPair = Union[int, Tuple[int, int]]

DEFAULT_GAIN = math.sqrt(2.0)


def _pair(value: _IntPair, name: str, *, minimum: int) -> Tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"EqualizedConv2d: {name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or any(v != w for v, w in zip(pair, value)) or min(pair) < minimum:
        raise ValueError(f"EqualizedConv2d: {name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_positive_int(layer: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return value


def _check_gain(layer: str, gain: float) -> float:
    gain = float(gain)
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"{layer}: gain must be a finite positive number, got {gain!r}")
    return gain


class _EqualizedLayer(nn.Module):
    """Parameters shared by the equalized layers: ``weight`` of ``shape`` (out, in, ...) ~ N(0, 1), unscaled; an
    optional ``bias`` (out,) = 0; the run-time ``scale = gain / sqrt(fan_in)``, fan_in = prod(shape[1:])."""

    def _init_parameters(self, layer: str, shape: Tuple[int, ...], gain: float, bias: bool) -> None:
        self.gain = _check_gain(layer, gain)
        self.scale = self.gain / math.sqrt(math.prod(shape[1:]))
        self.weight = nn.Parameter(torch.empty(*shape))
        self.bias = nn.Parameter(torch.empty(shape[0])) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight ~ N(0, 1), bias = 0."""
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class EqualizedConv2d(_EqualizedLayer):
    """2-D convolution with equalized learning rate.

    ``y = conv2d(x, weight * scale, bias, stride, padding)`` with ``scale = gain / sqrt(in_channels * kh * kw)``.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw) (the segmentation discriminator's last block uses ``(1, aspect_ratio)``).
        padding: int or (ph, pw), zero padding.
        gain: numerator of the run-time scale (default sqrt(2), the He gain for leaky ReLU networks; 1 for the
            label-map heads).
        bias: learn an additive bias (initialised to 0).

    Parameters (``state_dict``): ``weight`` float (out_channels, in_channels, kh, kw) ~ N(0, 1), unscaled;
    ``bias`` float (out_channels,) (when ``bias``).

    Shapes: input (N, in_channels, H, W) -> output (N, out_channels, H', W'), H' = (H + 2 ph - kh) // sh + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: _IntPair = 0, *, gain: float = DEFAULT_GAIN, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = _check_positive_int("EqualizedConv2d", "in_channels", in_channels)
        self.out_channels = _check_positive_int("EqualizedConv2d", "out_channels", out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", minimum=1)
        self.stride = _pair(stride, "stride", minimum=1)
        self.padding = _pair(padding, "padding", minimum=0)
        self._init_parameters("EqualizedConv2d", (self.out_channels, self.in_channels, *self.kernel_size), gain, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, gain={self.gain:.4g}, scale={self.scale:.4g}, bias={self.bias is not None}")


class EqualizedLinear(_EqualizedLayer):
    """Fully connected layer with equalized learning rate.

    ``y = linear(x, weight * scale, bias)`` with ``scale = gain / sqrt(in_features)``.

    Parameters (``state_dict``): ``weight`` float (out_features, in_features) ~ N(0, 1), unscaled;
    ``bias`` float (out_features,) initialised to 0 (when ``bias``).

    Shapes: input (..., in_features) -> output (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, *, gain: float = DEFAULT_GAIN, bias: bool = True) -> None:
        super().__init__()
        self.in_features = _check_positive_int("EqualizedLinear", "in_features", in_features)
        self.out_features = _check_positive_int("EqualizedLinear", "out_features", out_features)
        self._init_parameters("EqualizedLinear", (self.out_features, self.in_features), gain, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, gain={self.gain:.4g}, "
                f"scale={self.scale:.4g}, bias={self.bias is not None}")
