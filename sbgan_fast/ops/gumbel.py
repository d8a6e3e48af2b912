"""Gumbel-softmax straight-through sampling and the argmax one-hot: public functions, reference
paths and the Triton impls (``torch.library`` custom ops with fake kernels and an autograd formula,
so torch.compile traces through them; eligibility checks; registration in the dispatch).

Forward: ``one_hot(argmax((logits + g) / tau))`` exactly, in logits' dtype; backward: the gradient of
``softmax((logits + g) / tau)`` over the class dim 1. ``g`` is ``noise`` when given, else
Gumbel(0,1) noise ``-log(E + 1e-10)``, ``E ~ Exp(1)`` drawn from torch's RNG (the authors' form).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _dispatch, _triton
from ._checks import check_float
from ._dispatch import Verdict

OP = "gumbel_softmax_st"
_MAX_CLASSES = 16384  # == sbgan_fast.kernels.gumbel.MAX_CLASSES (kept here so checks need no import)


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


# ------------------------------------------------------------------------------------------------
# Triton impls
# ------------------------------------------------------------------------------------------------

def _kg():
    return _triton.kernels("gumbel")


def draw_seed(device) -> torch.Tensor:
    """The Philox seed of one in-kernel-noise Gumbel call: an int64 (1,) tensor on ``device`` drawn
    from torch's generator for that device (so ``torch.manual_seed`` makes runs reproducible; on CUDA
    no host synchronisation: the kernel reads the seed from device memory)."""
    return torch.randint(0, 2 ** 62, (1,), dtype=torch.int64, device=device)


def gumbel_noise(shape: Sequence[int], seed: torch.Tensor) -> torch.Tensor:
    """The exact fp32 Gumbel noise that ``gumbel_softmax_st(..., impl='triton')`` without ``noise``
    uses for ``seed`` (see :func:`draw_seed`): contiguous (N, K, H, W) on seed's device. To reproduce
    a call: ``torch.manual_seed(s)`` before it, and ``torch.manual_seed(s); seed = draw_seed(device)``
    before this."""
    if _triton.load() is not None:
        raise _triton.unavailable("gumbel_noise")
    return _kg().gumbel_noise(shape, seed)


# ------------------------------------------------------------------------------------------------
# gumbel_softmax_st
# ------------------------------------------------------------------------------------------------

# The kernels are wrapped as torch.library custom ops (``torch.ops.sbgan_fast.*``) with fake-tensor
# kernels and an autograd formula, so that torch.compile(fullgraph=True) traces through them: the
# compiled graph calls the same kernels as eager mode.

@torch.library.custom_op("sbgan_fast::gumbel_st_triton", mutates_args=())
def _gumbel_st_op(logits: torch.Tensor, inv_tau: float, noise: Optional[torch.Tensor],
                  seed: Optional[torch.Tensor]) -> torch.Tensor:
    """The exact one-hot of argmax((logits + g) * inv_tau), g = noise, or Philox noise of seed."""
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device,
                      memory_format=_memory_format(logits))
    _kg().gumbel_hard(logits, out, inv_tau, noise=noise, seed=seed)
    return out


@_gumbel_st_op.register_fake
def _(logits, inv_tau, noise, seed):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device,
                       memory_format=_memory_format(logits))


@torch.library.custom_op("sbgan_fast::gumbel_st_triton_backward", mutates_args=())
def _gumbel_st_backward_op(logits: torch.Tensor, grad: torch.Tensor, inv_tau: float, noise: Optional[torch.Tensor],
                           seed: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The softmax Jacobian-vector product of the soft sample (recomputed from logits and the noise,
    regenerated from the seed when the noise was drawn in the kernel), in ``dtype``."""
    g = torch.empty(logits.shape, dtype=dtype, device=logits.device, memory_format=_memory_format(logits))
    _kg().gumbel_softmax_backward(logits, grad, g, inv_tau, noise=noise, seed=seed)
    return g


@_gumbel_st_backward_op.register_fake
def _(logits, grad, inv_tau, noise, seed, dtype):
    return torch.empty(logits.shape, dtype=dtype, device=logits.device, memory_format=_memory_format(logits))


def _gumbel_st_setup(ctx, inputs, output):
    logits, inv_tau, noise, seed = inputs
    ctx.save_for_backward(logits, noise, seed)
    ctx.inv_tau = inv_tau


def _gumbel_st_backward(ctx, grad):
    _triton.first_order_only("gumbel_softmax_st")
    logits, noise, seed = ctx.saved_tensors
    need_x, _, need_noise, _ = ctx.needs_input_grad
    if not (need_x or need_noise):
        return None, None, None, None
    # Both gradients are the same fp32 quantity, cast to each input's dtype (as the reference).
    dtype = logits.dtype if not need_noise or noise.dtype == logits.dtype else torch.float32
    g = _gumbel_st_backward_op(logits, grad, ctx.inv_tau, noise, seed, dtype)
    grad_x = g.to(logits.dtype) if need_x else None
    grad_noise = g.to(noise.dtype) if need_noise else None
    return grad_x, None, grad_noise, None


_gumbel_st_op.register_autograd(_gumbel_st_backward, setup_context=_gumbel_st_setup)


def gumbel_softmax_st_triton(logits: torch.Tensor, tau: float = 1.0,
                             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton impl of :func:`sbgan_fast.ops.gumbel_softmax_st` (same contract, first order only).
    Without ``noise`` the seed of the in-kernel noise is drawn with :func:`draw_seed`."""
    seed = draw_seed(logits.device) if noise is None else None
    return _gumbel_st_op(logits, 1.0 / float(tau), noise, seed)


def _check_gumbel(logits, tau=1.0, noise=None) -> Optional[Verdict]:
    tensors = [logits] + ([noise] if noise is not None else [])
    verdict = _triton.dtype_verdict("logits", logits) or _triton.size_verdict(logits)
    if verdict is None and noise is not None and not noise.is_floating_point():
        verdict = Verdict(f"noise has dtype {noise.dtype}", "pass floating-point noise", applicable=False)
    if verdict is None and logits.shape[1] > _MAX_CLASSES:
        verdict = Verdict(f"{logits.shape[1]} classes exceed the kernel's {_MAX_CLASSES}", "use impl='ref'",
                          applicable=False)
    return verdict or _triton.device_verdict(tensors)


# ------------------------------------------------------------------------------------------------
# argmax_one_hot
# ------------------------------------------------------------------------------------------------

@torch.library.custom_op("sbgan_fast::argmax_one_hot_triton", mutates_args=())
def _argmax_one_hot_op(probs: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(probs)
    _kg().argmax_one_hot(probs, out)
    return out


@_argmax_one_hot_op.register_fake
def _(probs):
    return torch.empty_like(probs)


def argmax_one_hot_triton(probs: torch.Tensor) -> torch.Tensor:
    """Triton impl of :func:`sbgan_fast.ops.argmax_one_hot`: (N,K,H,W) -> exact one-hot in probs'
    dtype and memory format (``torch.empty_like``); ties -> lowest index, NaN wins; no gradient."""
    return _argmax_one_hot_op(probs.detach())


def _check_argmax(probs) -> Optional[Verdict]:
    verdict = _triton.dtype_verdict("probs", probs) or _triton.size_verdict(probs)
    if verdict is None and probs.shape[1] > _MAX_CLASSES:
        verdict = Verdict(f"{probs.shape[1]} classes exceed the kernel's {_MAX_CLASSES}", "use impl='ref'",
                          applicable=False)
    return verdict or _triton.device_verdict([probs])


_dispatch.register(OP, "ref", gumbel_softmax_st_ref)
_dispatch.register(OP, "triton", gumbel_softmax_st_triton, check=_check_gumbel, supports_double_backward=False)
_dispatch.register("argmax_one_hot", "ref", argmax_one_hot_ref)
# argmax_one_hot carries no gradient in any impl, so it is safe inside a second-order graph.
_dispatch.register("argmax_one_hot", "triton", argmax_one_hot_triton, check=_check_argmax,
                   supports_double_backward=True)
