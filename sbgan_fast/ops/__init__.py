"""Public functional API of sbgan_fast's custom ops: dispatch, autograd and reference paths.

Every op takes ``impl='auto'|'triton'|'cuda'|'cpp'|'ref'``; see :mod:`sbgan_fast.ops._dispatch`.
Fast paths (``sbgan_fast.kernels`` for Triton, ``sbgan_fast._C`` for C++/CUDA) are imported lazily,
so this package imports with nothing but torch installed.
"""
from ._dispatch import (IMPLS, ImplUnavailableError, SbganFallbackWarning, double_backward, explain,
                        reset_warnings, use_impl)
from .gumbel import argmax_one_hot, gumbel_softmax_st, gumbel_softmax_st_ref, sample_gumbel
from ._checks import RESIZE_MODES
from .one_hot import nearest_resize_labels, nearest_source_indices, one_hot, onehot_conv2d
from .spade_norm import spade_norm

from . import _fast  # noqa: E402,F401  registers the fast impls (lazy imports inside)

__all__ = [
    "IMPLS", "ImplUnavailableError", "RESIZE_MODES", "SbganFallbackWarning", "argmax_one_hot", "double_backward",
    "explain", "gumbel_softmax_st", "gumbel_softmax_st_ref", "nearest_resize_labels", "nearest_source_indices",
    "one_hot", "onehot_conv2d", "reset_warnings", "sample_gumbel", "spade_norm", "use_impl",
]
