"""The label-embedding convolution: ``F.conv2d(one_hot(resize(labels)), weight, bias)`` computed from the
integer labels as a gather of weight columns. Public function, reference path and the C++/CUDA impl
(autograd Function with first-order gradients for weight and bias).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _cpp, _dispatch
from ._checks import check_labels, check_mode, check_size
from ._dispatch import Verdict
from .one_hot import one_hot_ref


def onehot_conv2d_ref(labels, weight, bias=None, dontcare=None, size=None, padding=1, mode="nearest"):
    mode = check_mode("onehot_conv2d", mode)
    k = weight.shape[1] - (1 if dontcare is not None else 0)
    oh = one_hot_ref(labels, k, dontcare, size, dtype=weight.dtype, mode=mode)
    return F.conv2d(oh, weight, bias, padding=padding)


def onehot_conv2d(labels: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  dontcare: Optional[int] = None, size=None, mode: str = "nearest", padding: int = 1,
                  impl: str = "auto"):
    """``F.conv2d(one_hot(resize(labels, size, mode)), weight, bias, padding=padding)`` computed from
    the integer labels. weight (C_out, K (+1 with dontcare), kh, kw). ``size`` and ``mode`` resize the
    labels as in :func:`one_hot`. Gradients for weight and bias only."""
    mode = check_mode("onehot_conv2d", mode)
    if weight.dim() != 4:
        raise ValueError(f"onehot_conv2d: weight must be (C_out, K, kh, kw), got shape {tuple(weight.shape)}")
    fn = _dispatch.dispatch("onehot_conv2d", impl, labels, weight, bias, dontcare, size, padding, mode)
    return fn(labels, weight, bias, dontcare, size, padding, mode)


# ------------------------------------------------------------------------------------------------
# C++/CUDA impl (sbgan_fast._C)
# ------------------------------------------------------------------------------------------------

def _make_conv_check(impl: str):
    def check(labels, weight, bias=None, dontcare=None, size=None, padding=1, mode="nearest") -> Optional[Verdict]:
        if not _cpp.labels_ok(labels) or not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            return None
        devices = {labels.device, weight.device} | ({bias.device} if isinstance(bias, torch.Tensor) else set())
        if len(devices) != 1:
            return Verdict(f"labels, weight and bias are on different devices {sorted(map(str, devices))}",
                           applicable=False)
        v = _cpp.device_verdict(weight.device, impl)
        if v is not None:
            return v
        if weight.dtype not in _cpp.CONV_DTYPES:
            return Verdict(f"weight dtype {weight.dtype} is not one of {_cpp.CONV_DTYPES}", applicable=False)
        if _cpp.padding_pair(padding) is None:
            return Verdict(f"padding must be a non-negative int or a pair of them, got {padding!r}",
                           applicable=False)
        if labels.requires_grad:
            return Verdict("labels require a gradient", applicable=False)
        return _cpp.build_verdict(impl)
    check.__name__ = f"check_onehot_conv2d_{impl}"
    return check


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
    if _cpp.load_extension() is None:
        raise _cpp.unavailable("onehot_conv2d")
    pad = _cpp.padding_pair(padding)
    if pad is None:
        raise ValueError(f"onehot_conv2d: padding must be a non-negative int or a pair of them, got {padding!r}")
    return OneHotConv2dFunction.apply(labels, weight, bias, None if dontcare is None else int(dontcare),
                                      None if size is None else list(size), list(pad), mode)


_dispatch.register("onehot_conv2d", "ref", onehot_conv2d_ref)
for _impl in ("cpp", "cuda"):
    _dispatch.register("onehot_conv2d", _impl, onehot_conv2d_cpp, check=_make_conv_check(_impl),
                       supports_double_backward=False)
del _impl
