"""Registration of the C++/CUDA impls (``sbgan_fast._C``), imported lazily.

Impls registered here (see :mod:`sbgan_fast.ops._dispatch`):

* ``one_hot``: ``cpp`` (CPU tensors, OpenMP) and ``cuda`` (CUDA tensors; needs a build with nvcc).
  Bitwise equal to the reference path on both resize rules (``mode``; the kernels compute the same
  source indices as :func:`sbgan_fast.ops.nearest_source_indices`); the output is written directly in
  the requested memory format.
* ``onehot_conv2d``: ``cpp`` and ``cuda``, wrapped in :class:`OneHotConv2dFunction` (first-order
  gradients for weight and bias; registered with ``supports_double_backward=False``).

The extension is imported on first use, never at package import: a missing build is reported by the
checks as "unavailable" (``impl='auto'`` warns once and uses ``ref``; an explicit impl raises with the
fix), and inputs a kernel is not for (a CUDA tensor for ``cpp``, an unsupported dtype) are "not
applicable" (``auto`` silently uses ``ref``).
"""
from __future__ import annotations

import importlib
from typing import Optional, Tuple

import torch

from . import _dispatch
from ._checks import INT_DTYPES, check_labels, check_mode, check_size
from ._dispatch import Verdict

BUILD_FIX = "pip install --no-build-isolation -e . (needs a C++ compiler)"
CUDA_BUILD_FIX = ("rebuild on a machine with nvcc and a CUDA build of torch: "
                  "SBGAN_FAST_FORCE_CUDA=1 pip install --no-build-isolation -e .")

#: Output dtypes of the one_hot kernels.
ONE_HOT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.bool)
#: Weight dtypes of the onehot_conv2d kernels (accumulation in fp32, fp64 for fp64).
CONV_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_ext = None
_ext_error: Optional[str] = None


def load_extension():
    """Import ``sbgan_fast._C`` once (registers ``torch.ops.sbgan_fast.*``); None if it is not built."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        try:
            _ext = importlib.import_module("sbgan_fast._C")
        except ImportError as e:
            _ext_error = f"the C++ extension sbgan_fast._C is not built ({e})"
        else:
            _register_fakes()
    return _ext


def extension_error() -> Optional[str]:
    """Why the extension is unavailable, or None when it loaded."""
    load_extension()
    return _ext_error


def cuda_compiled() -> bool:
    """True when the extension is built and contains the CUDA kernels."""
    ext = load_extension()
    return bool(ext is not None and ext.cuda_compiled())


def _register_fakes() -> None:
    """Shape-only (fake tensor) kernels, so torch.compile can trace through the ops."""
    lib = "sbgan_fast::"

    def _fake_one_hot(labels, num_classes, dontcare, size, dtype, channels_last, mode="nearest"):
        n, h, w = labels.shape[0], labels.shape[-2], labels.shape[-1]
        if size is not None:
            h, w = size
        c = num_classes + (1 if dontcare is not None else 0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return labels.new_empty((n, c, h, w), dtype=dtype).contiguous(memory_format=fmt)

    def _conv_out(labels, weight, size, padding):
        h, w = (labels.shape[-2], labels.shape[-1]) if size is None else size
        return (labels.shape[0], weight.shape[0], h + 2 * padding[0] - weight.shape[2] + 1,
                w + 2 * padding[1] - weight.shape[3] + 1)

    def _fake_conv(labels, weight, bias, dontcare, size, padding, mode="nearest"):
        out = weight.new_empty(_conv_out(labels, weight, size, padding))
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _fake_conv_backward(grad_out, labels, weight, dontcare, size, padding, mode="nearest"):
        return torch.empty_like(weight), weight.new_empty((weight.shape[0],))

    for name, fn in (("one_hot", _fake_one_hot), ("onehot_conv2d", _fake_conv),
                     ("onehot_conv2d_backward", _fake_conv_backward)):
        try:
            torch.library.register_fake(lib + name)(fn)
        except RuntimeError:  # already registered (e.g. module reloaded)
            pass


def _padding_pair(padding) -> Optional[Tuple[int, int]]:
    if isinstance(padding, bool):
        return None
    if isinstance(padding, int):
        return (padding, padding) if padding >= 0 else None
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding):
        return (int(padding[0]), int(padding[1]))
    return None


# ----------------------------------------------------------------------------------------------- checks

def _device_verdict(device: torch.device, impl: str) -> Optional[Verdict]:
    if impl == "cpp" and device.type != "cpu":
        return Verdict(f"the cpp impl runs on CPU tensors, got {device.type} tensors",
                       "use impl='cuda' (or 'auto') for CUDA tensors", applicable=False)
    if impl == "cuda" and device.type != "cuda":
        return Verdict(f"the cuda impl runs on CUDA tensors, got {device.type} tensors",
                       "use impl='cpp' (or 'auto') for CPU tensors", applicable=False)
    return None


def _build_verdict(impl: str) -> Optional[Verdict]:
    err = extension_error()
    if err is not None:
        return Verdict(err, BUILD_FIX, applicable=True)
    if impl == "cuda" and not cuda_compiled():
        return Verdict("sbgan_fast._C was built without its CUDA kernels (no nvcc or a CPU build of torch "
                       "at build time)", CUDA_BUILD_FIX, applicable=True)
    return None


def _labels_ok(labels) -> bool:
    """Whether the labels are well-formed. Malformed arguments are not a reason to pick another impl:
    the checks then let the impl run, and its boundary check raises the same TypeError/ValueError as
    the reference path would."""
    return isinstance(labels, torch.Tensor) and labels.dtype in INT_DTYPES and labels.dim() in (3, 4)


def _make_one_hot_check(impl: str):
    def check(labels, num_classes, dontcare=None, size=None, dtype=torch.float32,
              memory_format=torch.contiguous_format, mode="nearest") -> Optional[Verdict]:
        if not _labels_ok(labels):
            return None
        v = _device_verdict(labels.device, impl)
        if v is not None:
            return v
        if dtype not in ONE_HOT_DTYPES:
            return Verdict(f"output dtype {dtype} is not one of {ONE_HOT_DTYPES}", applicable=False)
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            return Verdict(f"memory_format {memory_format} is not torch.contiguous_format or torch.channels_last",
                           applicable=False)
        return _build_verdict(impl)
    check.__name__ = f"check_one_hot_{impl}"
    return check


def _make_conv_check(impl: str):
    def check(labels, weight, bias=None, dontcare=None, size=None, padding=1, mode="nearest") -> Optional[Verdict]:
        if not _labels_ok(labels) or not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            return None
        devices = {labels.device, weight.device} | ({bias.device} if isinstance(bias, torch.Tensor) else set())
        if len(devices) != 1:
            return Verdict(f"labels, weight and bias are on different devices {sorted(map(str, devices))}",
                           applicable=False)
        v = _device_verdict(weight.device, impl)
        if v is not None:
            return v
        if weight.dtype not in CONV_DTYPES:
            return Verdict(f"weight dtype {weight.dtype} is not one of {CONV_DTYPES}", applicable=False)
        if _padding_pair(padding) is None:
            return Verdict(f"padding must be a non-negative int or a pair of them, got {padding!r}",
                           applicable=False)
        if labels.requires_grad:
            return Verdict("labels require a gradient", applicable=False)
        return _build_verdict(impl)
    check.__name__ = f"check_onehot_conv2d_{impl}"
    return check


# ------------------------------------------------------------------------------------------------ impls

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
    if load_extension() is None:
        raise _dispatch.ImplUnavailableError(f"sbgan_fast.ops.one_hot: {_ext_error}. Fix: {BUILD_FIX}.")
    return torch.ops.sbgan_fast.one_hot(labels, int(num_classes), None if dontcare is None else int(dontcare),
                                        None if size is None else list(size), dtype,
                                        memory_format == torch.channels_last, mode)


class OneHotConv2dFunction(torch.autograd.Function):
    """``conv2d(one_hot(resize(labels)), weight, bias, padding)`` with first-order gradients for
    weight and bias (labels are integers: no gradient)."""

    @staticmethod
    def forward(ctx, labels, weight, bias, dontcare, size, padding, mode):
        ctx.save_for_backward(labels, weight)
        ctx.dontcare, ctx.size, ctx.padding, ctx.mode = dontcare, size, padding, mode
        ctx.bias_dtype = None if bias is None else bias.dtype
        return torch.ops.sbgan_fast.onehot_conv2d(labels, weight, bias, dontcare, size, padding, mode)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        labels, weight = ctx.saved_tensors
        need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if not (need_w or need_b):
            return None, None, None, None, None, None, None
        grad_w, grad_b = torch.ops.sbgan_fast.onehot_conv2d_backward(
            grad_out, labels, weight, ctx.dontcare, ctx.size, ctx.padding, ctx.mode)
        return (None, grad_w if need_w else None,
                grad_b.to(ctx.bias_dtype) if need_b else None, None, None, None, None)


def onehot_conv2d_cpp(labels: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      dontcare: Optional[int] = None, size=None, padding=1, mode: str = "nearest") -> torch.Tensor:
    """``F.conv2d(one_hot(resize(labels, size, mode)), weight, bias, padding=padding)`` as a gather.

    labels: int (N,H,W) or (N,1,H,W). weight: (C_out, K (+1 with dontcare), kh, kw), fp32/fp64/fp16/
    bf16; any kh, kw; stride 1. bias: (C_out,) or None. padding: int or (ph, pw). mode: the resize
    rule, ``"nearest"`` or ``"nearest-exact"`` (see :func:`sbgan_fast.ops.one_hot`).
    Returns (N, C_out, H'+2ph-kh+1, W'+2pw-kw+1) in weight's dtype, accumulated in fp32 (fp64 for fp64
    weights); channels-last when weight is channels-last (as F.conv2d), else NCHW-contiguous.
    Gradients: weight and bias, first order only (deterministic on CPU; fp32 atomics on CUDA).
    """
    mode = check_mode("onehot_conv2d", mode)
    labels = check_labels("onehot_conv2d", labels)
    size = check_size("onehot_conv2d", size)
    if load_extension() is None:
        raise _dispatch.ImplUnavailableError(f"sbgan_fast.ops.onehot_conv2d: {_ext_error}. Fix: {BUILD_FIX}.")
    pad = _padding_pair(padding)
    if pad is None:
        raise ValueError(f"onehot_conv2d: padding must be a non-negative int or a pair of them, got {padding!r}")
    return OneHotConv2dFunction.apply(labels, weight, bias, None if dontcare is None else int(dontcare),
                                      None if size is None else list(size), list(pad), mode)


for _impl in ("cpp", "cuda"):
    _dispatch.register("one_hot", _impl, one_hot_cpp, check=_make_one_hot_check(_impl),
                       supports_double_backward=True)  # no gradient flows through a one-hot of labels
    _dispatch.register("onehot_conv2d", _impl, onehot_conv2d_cpp, check=_make_conv_check(_impl),
                       supports_double_backward=False)
del _impl
