"""One-hot label embedding: public function, reference path, the C++/CUDA impl and the nearest
resize of integer label maps shared with :mod:`sbgan_fast.ops.onehot_conv2d`.

Both label ops can resize the integer label map to ``size`` = (H', W') in the same pass, by one of two
nearest-neighbour rules (the ``mode`` argument; :func:`nearest_source_indices` gives the indices):

* ``"nearest"`` (default): torch's ``F.interpolate(mode='nearest')`` exactly: output index ``i``
  reads source index ``floor(i * in / out)`` (fp32 scale), the top-left corner of its block. This is
  what SPADE's own in-network resizes do, so the one-hot of the resized labels equals the resized
  one-hot map.
* ``"nearest-exact"``: PIL's ``Image.resize(size, Image.NEAREST)`` exactly: the centre of the block,
  ``floor((i + 0.5) * in / out)``, computed as PIL computes it for 8-bit (``'L'``, ``'P'``: label
  files) and 32-bit (``'I'``) images: a running sum in double precision (``x = a / 2``, then
  ``x += a``, with ``a = in / out``). torch's ``F.interpolate(mode='nearest-exact')`` uses the same
  rule in fp32 without the running sum; the two agree on power-of-two scales (e.g. 1024x2048 ->
  4x8 ... 512x1024) and on most other sizes, but can differ by one pixel where a centre falls on (or
  within rounding of) a source pixel boundary (e.g. 2 -> 7, 84 -> 34). This rule follows PIL there.
  (PIL's 16-bit ``'I;16'`` path computes the product directly and can differ from its own 8-bit
  path at those ties.)
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _cpp, _dispatch
from ._checks import check_label_range, check_labels, check_mode, check_size
from ._dispatch import Verdict


def _source_indices(n_in: int, n_out: int, mode: str) -> Tuple[int, ...]:
    if mode == "nearest":
        src = F.interpolate(torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in), size=n_out, mode="nearest")
        return tuple(int(v) for v in src.view(-1).long().tolist())
    # PIL's ImagingScaleAffine: x = a / 2, then x += a per output index, all in double; int(x).
    a = float(n_in) / float(n_out)
    x = a * 0.5
    out = []
    for _ in range(n_out):
        out.append(min(int(x), n_in - 1))
        x += a
    return tuple(out)


_source_indices_cached = functools.lru_cache(maxsize=512)(_source_indices)


def nearest_source_indices(n_in: int, n_out: int, mode: str = "nearest") -> Tuple[int, ...]:
    """Source index of each of the ``n_out`` output indices of a nearest resize of one axis from
    ``n_in`` to ``n_out`` by rule ``mode`` (see the module docstring); the C++/CUDA kernels compute
    the same integers. Returns a tuple of ``n_out`` ints in [0, n_in)."""
    mode = check_mode("nearest_source_indices", mode)
    n_in, n_out = int(n_in), int(n_out)
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"nearest_source_indices: n_in and n_out must be positive, got {n_in} and {n_out}")
    if n_in == n_out:
        return tuple(range(n_in))
    if torch.compiler.is_compiling():  # traced once per shape; the cache wrapper is not traceable
        return _source_indices(n_in, n_out, mode)
    return _source_indices_cached(n_in, n_out, mode)


def nearest_resize_labels(labels: torch.Tensor, size: Optional[Tuple[int, int]],
                          mode: str = "nearest") -> torch.Tensor:
    """Nearest resize of an int (N,H,W) map to ``size`` = (H', W') by rule ``mode``:
    ``"nearest"`` is torch's ``F.interpolate(mode='nearest')`` source-index rule exactly (so it equals
    resizing the one-hot map, as the authors' SPADE blocks do); ``"nearest-exact"`` is PIL's
    ``Image.NEAREST`` resize exactly (see the module docstring). Returns labels itself when no resize
    is needed."""
    mode = check_mode("nearest_resize_labels", mode)
    if size is None or tuple(labels.shape[-2:]) == tuple(size):
        return labels
    n, h, w = labels.shape
    if mode == "nearest":  # torch's own kernel on the labels' device (no host round trip)
        hs = F.interpolate(torch.arange(h, dtype=torch.float32, device=labels.device).view(1, 1, h, 1),
                           size=(size[0], 1), mode="nearest").view(-1).long()
        ws = F.interpolate(torch.arange(w, dtype=torch.float32, device=labels.device).view(1, 1, 1, w),
                           size=(1, size[1]), mode="nearest").view(-1).long()
    else:
        hs = torch.tensor(nearest_source_indices(h, size[0], mode), dtype=torch.long).to(labels.device)
        ws = torch.tensor(nearest_source_indices(w, size[1], mode), dtype=torch.long).to(labels.device)
    return labels[:, hs][:, :, ws]


def one_hot_ref(labels, num_classes, dontcare=None, size=None, dtype=torch.float32,
                memory_format=torch.contiguous_format, mode="nearest"):
    mode = check_mode("one_hot", mode)
    labels = check_labels("one_hot", labels)
    size = check_size("one_hot", size)
    check_label_range("one_hot", labels, num_classes, dontcare)
    labels = nearest_resize_labels(labels, size, mode).long()
    channels = num_classes + (1 if dontcare is not None else 0)
    if dontcare is not None:
        labels = torch.where(labels == dontcare, torch.full_like(labels, num_classes), labels)
    out = torch.zeros((labels.shape[0], channels) + tuple(labels.shape[1:]), dtype=dtype, device=labels.device)
    out.scatter_(1, labels.unsqueeze(1), 1)
    return out.contiguous(memory_format=memory_format)


def one_hot(labels: torch.Tensor, num_classes: int, *, dontcare: Optional[int] = None, size=None,
            mode: str = "nearest", dtype: torch.dtype = torch.float32, memory_format=torch.contiguous_format,
            impl: str = "auto") -> torch.Tensor:
    """Int label map -> one-hot.

    Args:
        labels: int (N,H,W) or (N,1,H,W), values in [0, num_classes) or ``dontcare``.
        num_classes: K.
        dontcare: a label value (e.g. 255) mapped to an extra last channel K.
        size: optional (H', W') nearest resize, done in the same pass.
        mode: the resize rule: ``"nearest"`` (torch's ``F.interpolate(mode='nearest')``, the block's
            top-left corner) or ``"nearest-exact"`` (PIL's ``Image.NEAREST``, the block's centre); see
            the module docstring. Every impl computes the same source indices (bitwise equal outputs).
        dtype, memory_format: of the output.
    Returns:
        (N, K (+1), H', W') tensor, exact 0/1. No gradient (labels are integers).
    Raises:
        ValueError naming the first out-of-range label value, or an unknown ``mode``.
    """
    mode = check_mode("one_hot", mode)
    if int(num_classes) <= 0:
        raise ValueError(f"one_hot: num_classes must be positive, got {num_classes}")
    fn = _dispatch.dispatch("one_hot", impl, labels, num_classes, dontcare, size, dtype, memory_format, mode)
    return fn(labels, num_classes, dontcare, size, dtype, memory_format, mode)


# ------------------------------------------------------------------------------------------------
# C++/CUDA impl (sbgan_fast._C)
# ------------------------------------------------------------------------------------------------

def _make_one_hot_check(impl: str):
    def check(labels, num_classes, dontcare=None, size=None, dtype=torch.float32,
              memory_format=torch.contiguous_format, mode="nearest") -> Optional[Verdict]:
        if not _cpp.labels_ok(labels):
            return None
        v = _cpp.device_verdict(labels.device, impl)
        if v is not None:
            return v
        if dtype not in _cpp.ONE_HOT_DTYPES:
            return Verdict(f"output dtype {dtype} is not one of {_cpp.ONE_HOT_DTYPES}", applicable=False)
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            return Verdict(f"memory_format {memory_format} is not torch.contiguous_format or torch.channels_last",
                           applicable=False)
        return _cpp.build_verdict(impl)
    check.__name__ = f"check_one_hot_{impl}"
    return check


def one_hot_cpp(labels: torch.Tensor, num_classes: int, dontcare: Optional[int] = None, size=None,
                dtype: torch.dtype = torch.float32, memory_format=torch.contiguous_format,
                mode: str = "nearest") -> torch.Tensor:
    """One-hot through ``torch.ops.sbgan_fast.one_hot`` (CPU or CUDA kernel, by the labels' device).

    labels: int (N,H,W) or (N,1,H,W), any strides. Returns (N, K (+1), H', W') in ``dtype`` and
    ``memory_format``, exact 0/1, bitwise equal to the reference. Raises ValueError naming a label
    value outside [0, K) that is not ``dontcare``. Labels that the nearest downsampling skips are not
    read, so not checked (the reference checks the whole map; the data loaders validate it).
    ``mode``: the resize rule, ``"nearest"`` or ``"nearest-exact"`` (see :func:`sbgan_fast.ops.one_hot`).
    """
    mode = check_mode("one_hot", mode)
    labels = check_labels("one_hot", labels)
    size = check_size("one_hot", size)
    if _cpp.load_extension() is None:
        raise _cpp.unavailable("one_hot")
    return torch.ops.sbgan_fast.one_hot(labels, int(num_classes), None if dontcare is None else int(dontcare),
                                        None if size is None else list(size), dtype,
                                        memory_format == torch.channels_last, mode)


_dispatch.register("one_hot", "ref", one_hot_ref)
for _impl in ("cpp", "cuda"):
    _dispatch.register("one_hot", _impl, one_hot_cpp, check=_make_one_hot_check(_impl),
                       supports_double_backward=True)  # no gradient flows through a one-hot of labels
del _impl
