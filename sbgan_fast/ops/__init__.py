"""Public functional API of sbgan_fast's custom ops: dispatch, autograd and reference paths.

One module per op holds its public function, its reference path and its fast impls (custom ops or
autograd Functions, eligibility checks, registration in the dispatch): :mod:`.gumbel` (``gumbel_softmax_st``,
``argmax_one_hot``), :mod:`.spade_norm` (``spade_norm``, ``param_free_norm``), :mod:`.one_hot`,
:mod:`.onehot_conv2d`. Every op takes ``impl='auto'|'triton'|'cuda'|'cpp'|'ref'``; see
:mod:`sbgan_fast.ops._dispatch`. Fast paths (``sbgan_fast.kernels`` for Triton through
:mod:`._triton`, ``sbgan_fast._C`` for C++/CUDA through :mod:`._cpp`) are imported lazily, so this
package imports with nothing but torch installed.
"""
from ._dispatch import (IMPLS, ImplUnavailableError, SbganFallbackWarning, double_backward, explain,
                        reset_warnings, use_impl)
from .gumbel import argmax_one_hot, gumbel_softmax_st, gumbel_softmax_st_ref, sample_gumbel
from ._checks import RESIZE_MODES
from .one_hot import nearest_resize_labels, nearest_source_indices, one_hot
from .onehot_conv2d import onehot_conv2d
from .spade_norm import param_free_norm, spade_norm

__all__ = [
    "IMPLS", "ImplUnavailableError", "RESIZE_MODES", "SbganFallbackWarning", "argmax_one_hot", "double_backward",
    "explain", "gumbel_softmax_st", "gumbel_softmax_st_ref", "nearest_resize_labels", "nearest_source_indices",
    "one_hot", "onehot_conv2d", "param_free_norm", "reset_warnings", "sample_gumbel", "spade_norm", "use_impl",
]
