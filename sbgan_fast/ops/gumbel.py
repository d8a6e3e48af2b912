"""Gumbel-softmax straight-through sampling (reference path and public entry point).

Forward: ``one_hot(argmax((logits + g) / tau))`` exactly, in logits' dtype; backward: the gradient of
``softmax((logits + g) / tau)`` over the class dim 1. ``g`` is ``noise`` when given, else
Gumbel(0,1) noise ``-log(E + 1e-10)``, ``E ~ Exp(1)`` drawn from torch's RNG (the authors' form).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _dispatch
from ._checks import check_float

OP = "gumbel_softmax_st"


def sample_gumbel(shape, *, dtype=torch.float32, device=None, generator=None) -> torch.Tensor:
    """Gumbel(0,1) noise as the authors draw it: -log(E + 1e-10), E ~ Exp(1)."""
    e = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
    return -torch.log(e + 1e-10)


def gumbel_softmax_st_ref(logits: torch.Tensor, tau: float = 1.0, noise: Optional[torch.Tensor] = None):
    """Reference: any gradient order, torch.compile friendly. Math in fp32 for half inputs."""
    math_dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 for half inputs, fp64 stays fp64
    if noise is None:
        noise = sample_gumbel(logits.shape, dtype=math_dtype, device=logits.device)
    # Multiplying by the fp32-rounded reciprocal (rather than dividing by tau) gives the same bits on
    # every device (CUDA's tensor/scalar division is a reciprocal multiply anyway) and in the Triton
    # kernel, so hard samples match bitwise for any tau; for tau = 1 it is exactly the division.
    scores = (logits.to(math_dtype) + noise.to(math_dtype)) * (1.0 / tau)
    y_soft = scores.softmax(dim=1)
    index = scores.argmax(dim=1, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(1, index, 1.0)
    # y_soft - y_soft.detach() is exactly zero in the forward: the output is the exact one-hot.
    out = y_hard + (y_soft - y_soft.detach())
    return out.to(logits.dtype).contiguous(memory_format=_memory_format(logits))


def _memory_format(t: torch.Tensor):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def gumbel_softmax_st(logits: torch.Tensor, tau: float = 1.0, *, noise: Optional[torch.Tensor] = None,
                      impl: str = "auto") -> torch.Tensor:
    """Straight-through Gumbel-softmax over dim 1.

    Args:
        logits: float (N,K,H,W) (any float dtype; NCHW or channels-last). The authors' model passes
            ``log(p + 1e-5)`` of its softmax output.
        tau: temperature > 0.
        noise: optional Gumbel noise of the same shape (for exact comparison between impls).
        impl: 'auto' | 'triton' | 'ref'.
    Returns:
        (N,K,H,W) exact one-hot in logits' dtype and memory format; gradient of the soft sample.
        ``ref`` supports any gradient order; fast impls first order.
    """
    check_float(OP, "logits", logits, dims=(4,))
    if not (tau > 0):
        raise ValueError(f"{OP}: tau must be > 0, got {tau}")
    if noise is not None and noise.shape != logits.shape:
        raise ValueError(f"{OP}: noise shape {tuple(noise.shape)} must equal logits shape {tuple(logits.shape)}")
    fn = _dispatch.dispatch(OP, impl, logits, tau, noise)
    return fn(logits, tau, noise)


def argmax_one_hot_ref(probs: torch.Tensor) -> torch.Tensor:
    """Sampling-time map: exact one-hot of argmax over dim 1, no noise, no gradient."""
    index = probs.argmax(dim=1, keepdim=True)
    return torch.zeros_like(probs).scatter_(1, index, 1.0)


def argmax_one_hot(probs: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """One-hot of argmax over dim 1 of (N,K,H,W) probabilities or logits (sampling time)."""
    check_float("argmax_one_hot", "probs", probs, dims=(4,))
    fn = _dispatch.dispatch("argmax_one_hot", impl, probs)
    return fn(probs)


_dispatch.register(OP, "ref", gumbel_softmax_st_ref)
_dispatch.register("argmax_one_hot", "ref", argmax_one_hot_ref)
