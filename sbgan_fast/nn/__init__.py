"""Layers that own parameters: equalized-lr conv/linear, PixelNorm, spectral norm (legacy keys), SPADE,
synchronized batch norm."""
from .batchnorm import SyncBatchNorm2d
from .equalized import EqualizedConv2d, EqualizedLinear
from .pixelnorm import PixelNorm, pixel_norm
from .spade import SPADE, SPADEResnetBlock
from .spectral import remove_spectral_norm, spectral_norm

__all__ = ["EqualizedConv2d", "EqualizedLinear", "PixelNorm", "SPADE", "SPADEResnetBlock", "SyncBatchNorm2d",
           "pixel_norm", "remove_spectral_norm", "spectral_norm"]
