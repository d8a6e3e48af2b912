"""What the ops' C++/CUDA impls share: the lazily imported extension ``sbgan_fast._C`` (its
``torch.ops.sbgan_fast.*`` ops and their fake-tensor registrations) and the common eligibility checks.

The C++/CUDA impls themselves live with their ops (:mod:`sbgan_fast.ops.one_hot`,
:mod:`sbgan_fast.ops.onehot_conv2d`). The extension is imported on first use, never at package import:
a missing build is reported by the checks as "unavailable" (``impl='auto'`` warns once and uses
``ref``; an explicit impl raises with the fix), and inputs a kernel is not for (a CUDA tensor for
``cpp``, an unsupported dtype) are "not applicable" (``auto`` silently uses ``ref``).
"""
from __future__ import annotations

import importlib
from typing import Optional, Tuple

import torch

from . import _dispatch
from ._checks import INT_DTYPES
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


def padding_pair(padding) -> Optional[Tuple[int, int]]:
    if isinstance(padding, bool):
        return None
    if isinstance(padding, int):
        return (padding, padding) if padding >= 0 else None
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding):
        return (int(padding[0]), int(padding[1]))
    return None


# ----------------------------------------------------------------------------------------------- checks

def device_verdict(device: torch.device, impl: str) -> Optional[Verdict]:
    if impl == "cpp" and device.type != "cpu":
        return Verdict(f"the cpp impl runs on CPU tensors, got {device.type} tensors",
                       "use impl='cuda' (or 'auto') for CUDA tensors", applicable=False)
    if impl == "cuda" and device.type != "cuda":
        return Verdict(f"the cuda impl runs on CUDA tensors, got {device.type} tensors",
                       "use impl='cpp' (or 'auto') for CPU tensors", applicable=False)
    return None


def build_verdict(impl: str) -> Optional[Verdict]:
    err = extension_error()
    if err is not None:
        return Verdict(err, BUILD_FIX, applicable=True)
    if impl == "cuda" and not cuda_compiled():
        return Verdict("sbgan_fast._C was built without its CUDA kernels (no nvcc or a CPU build of torch "
                       "at build time)", CUDA_BUILD_FIX, applicable=True)
    return None


def labels_ok(labels) -> bool:
    """Whether the labels are well-formed. Malformed arguments are not a reason to pick another impl:
    the checks then let the impl run, and its boundary check raises the same TypeError/ValueError as
    the reference path would."""
    return isinstance(labels, torch.Tensor) and labels.dtype in INT_DTYPES and labels.dim() in (3, 4)


def unavailable(op: str) -> _dispatch.ImplUnavailableError:
    """The error of a C++ impl called where the extension is not built."""
    return _dispatch.ImplUnavailableError(f"sbgan_fast.ops.{op}: {_ext_error}. Fix: {BUILD_FIX}.")
