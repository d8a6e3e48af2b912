"""Triton impls of ``gumbel_softmax_st``, ``argmax_one_hot`` and ``spade_norm``: autograd Functions
and their registration in the dispatch.

Triton and ``sbgan_fast.kernels`` are imported lazily, the first time a check decides that a Triton
impl could run, so ``sbgan_fast`` imports without Triton.

Eligibility (the check functions, read at call time):

* CUDA tensors: eligible; if Triton (or the kernels module) cannot be imported the impl is
  *unavailable* (``auto`` warns once and uses ``ref``; strict mode and explicit ``impl='triton'`` raise
  with the fix ``pip install triton``).
* CPU tensors: eligible only when ``TRITON_INTERPRET=1`` is set (Triton's interpreter, used by the
  tests) *and* ``impl='triton'`` was asked for by name; otherwise *not applicable* (``auto`` silently
  uses ``ref``). Triton reads that variable when
  a kernel is defined, so setting it after ``sbgan_fast.kernels`` was imported cannot work: that case
  is reported as unavailable with the fix.
* float64, more than 16384 classes, more than 65535 images, 2**31 or more elements: not applicable.
* Second-order graphs: the Functions here are first-order only (their backward raises when called
  with ``create_graph=True``); they are
  registered with ``supports_double_backward=False`` so ``auto`` never picks them inside
  :func:`sbgan_fast.ops.double_backward`.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional, Sequence, Tuple

import torch

from . import _dispatch
from ._dispatch import Verdict
from .gumbel import _memory_format
from .spade_norm import _world

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_GRID_Y = 65535
_MAX_NUMEL = 2 ** 31 - 1
_MAX_CLASSES = 16384  # == sbgan_fast.kernels.gumbel.MAX_CLASSES (kept here so checks need no import)

_import_error: Optional[str] = None
_kernels_loaded = False


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET`` as Triton reads it (truthy: '1', 'true', 'on', 'yes'), read now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _load() -> Optional[str]:
    """Import Triton and the kernel modules once; return None or the import error text."""
    global _import_error, _kernels_loaded
    if _kernels_loaded:
        return None
    if _import_error is not None:
        return _import_error
    try:
        importlib.import_module("triton")
        importlib.import_module("sbgan_fast.kernels.gumbel")
        importlib.import_module("sbgan_fast.kernels.spade_norm")
    except Exception as e:  # ImportError, or a Triton too old for the kernels
        _import_error = f"{type(e).__name__}: {e}"
        return _import_error
    _kernels_loaded = True
    return None


def _kg():
    from ..kernels import gumbel
    return gumbel


def _ks():
    from ..kernels import spade_norm
    return spade_norm


def _device_verdict(tensors: Sequence[torch.Tensor]) -> Optional[Verdict]:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return Verdict(f"its tensors are on different devices ({sorted(map(str, devices))})",
                       "put all tensors on one device", applicable=False)
    device = devices.pop()
    interp = interpreter_requested()
    if device.type == "cpu" and interp and not _dispatch.explicit_request():
        return Verdict("the tensors are on cpu; Triton's interpreter (TRITON_INTERPRET=1) runs CPU tensors only "
                       "when impl='triton' is asked for by name (it is a testing tool, never auto's choice)",
                       "pass impl='triton' or use ops.use_impl(..., 'triton')", applicable=False)
    if device.type != "cuda" and not (device.type == "cpu" and interp):
        return Verdict(f"the tensors are on {device.type}; the Triton kernels need CUDA tensors "
                       f"(CPU tensors run only in Triton's interpreter, TRITON_INTERPRET=1)",
                       "use CUDA tensors, or impl='ref'", applicable=False)
    err = _load()
    if err is not None:
        return Verdict(f"Triton or sbgan_fast.kernels cannot be imported ({err})", "pip install triton")
    interpreted = _kg().is_interpreted()
    if interp and not interpreted:
        return Verdict("TRITON_INTERPRET=1 is set but sbgan_fast.kernels was imported before it was set "
                       "(Triton reads it when the kernels are defined)",
                       "set TRITON_INTERPRET=1 before the first use of the Triton impls, or unset it")
    if interpreted and not interp:
        return Verdict("sbgan_fast.kernels was imported under TRITON_INTERPRET=1, which is no longer set "
                       "(the kernels would run in the slow CPU interpreter)",
                       "keep TRITON_INTERPRET unset until the Triton impls have been used, or set it again")
    return None


def _dtype_verdict(name: str, t: torch.Tensor) -> Optional[Verdict]:
    if t.dtype not in TRITON_DTYPES:
        return Verdict(f"{name} has dtype {t.dtype}; the Triton kernels take float32, float16 and bfloat16",
                       "use impl='ref' for other dtypes", applicable=False)
    return None


def _size_verdict(t: torch.Tensor) -> Optional[Verdict]:
    if t.numel() > _MAX_NUMEL:
        return Verdict(f"the tensor has {t.numel()} elements (>= 2**31)", "use impl='ref'", applicable=False)
    if t.shape[0] > _MAX_GRID_Y:
        return Verdict(f"the batch has {t.shape[0]} images (> {_MAX_GRID_Y}, the launch grid limit)",
                       "split the batch or use impl='ref'", applicable=False)
    return None


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
    err = _load()
    if err is not None:
        raise _dispatch.ImplUnavailableError(
            f"sbgan_fast.ops.gumbel_noise: Triton cannot be imported ({err}). Fix: pip install triton.")
    return _kg().gumbel_noise(shape, seed)


def _first_order_only(op: str) -> None:
    """Called at the top of each backward: grad mode is on there exactly when the caller asked for
    ``create_graph=True``, i.e. a graph for second-order gradients is being built through this op,
    which the kernels cannot differentiate again; raise rather than silently drop those terms."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"sbgan_fast.ops.{op}: impl='triton' supports first-order gradients only, but a second-order "
            f"graph is being built through it (create_graph=True). Fix: use impl='ref' here, or build that "
            f"graph inside sbgan_fast.ops.double_backward() so that impl='auto' picks the reference path.")


# ------------------------------------------------------------------------------------------------
# gumbel_softmax_st
# ------------------------------------------------------------------------------------------------

class GumbelSoftmaxST(torch.autograd.Function):
    """Forward: the exact one-hot of argmax((logits + g) / tau); backward: the softmax Jacobian-vector
    product, recomputing the soft sample from logits and the noise (regenerated from the seed when
    the noise was drawn in the kernel). First-order only."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tau: float, noise: Optional[torch.Tensor]):
        kg = _kg()
        inv_tau = 1.0 / float(tau)
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device,
                          memory_format=_memory_format(logits))
        if noise is None:
            seed = draw_seed(logits.device)
            kg.gumbel_hard(logits, out, inv_tau, seed=seed)
            ctx.save_for_backward(logits, seed)
        else:
            kg.gumbel_hard(logits, out, inv_tau, noise=noise)
            ctx.save_for_backward(logits, noise)
        ctx.explicit_noise = noise is not None
        ctx.inv_tau = inv_tau
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        _first_order_only("gumbel_softmax_st")
        logits, aux = ctx.saved_tensors
        need_x, _, need_noise = ctx.needs_input_grad
        if not (need_x or need_noise):
            return None, None, None
        kwargs = dict(noise=aux) if ctx.explicit_noise else dict(seed=aux)
        # Both gradients are the same fp32 quantity, cast to each input's dtype (as the reference).
        dtype = logits.dtype if not need_noise or aux.dtype == logits.dtype else torch.float32
        g = torch.empty(logits.shape, dtype=dtype, device=logits.device, memory_format=_memory_format(logits))
        _kg().gumbel_softmax_backward(logits, grad, g, ctx.inv_tau, **kwargs)
        grad_x = g.to(logits.dtype) if need_x else None
        grad_noise = g.to(aux.dtype) if need_noise else None
        return grad_x, None, grad_noise


def gumbel_softmax_st_triton(logits: torch.Tensor, tau: float = 1.0,
                             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton impl of :func:`sbgan_fast.ops.gumbel_softmax_st` (same contract, first order only)."""
    return GumbelSoftmaxST.apply(logits, tau, noise)


def _check_gumbel(logits, tau=1.0, noise=None) -> Optional[Verdict]:
    tensors = [logits] + ([noise] if noise is not None else [])
    verdict = _dtype_verdict("logits", logits) or _size_verdict(logits)
    if verdict is None and noise is not None and not noise.is_floating_point():
        verdict = Verdict(f"noise has dtype {noise.dtype}", "pass floating-point noise", applicable=False)
    if verdict is None and logits.shape[1] > _MAX_CLASSES:
        verdict = Verdict(f"{logits.shape[1]} classes exceed the kernel's {_MAX_CLASSES}", "use impl='ref'",
                          applicable=False)
    return verdict or _device_verdict(tensors)


# ------------------------------------------------------------------------------------------------
# argmax_one_hot
# ------------------------------------------------------------------------------------------------

def argmax_one_hot_triton(probs: torch.Tensor) -> torch.Tensor:
    """Triton impl of :func:`sbgan_fast.ops.argmax_one_hot`: (N,K,H,W) -> exact one-hot in probs'
    dtype and memory format (``torch.empty_like``); ties -> lowest index, NaN wins; no gradient."""
    out = torch.empty_like(probs)
    with torch.no_grad():
        _kg().argmax_one_hot(probs.detach(), out)
    return out


def _check_argmax(probs) -> Optional[Verdict]:
    verdict = _dtype_verdict("probs", probs) or _size_verdict(probs)
    if verdict is None and probs.shape[1] > _MAX_CLASSES:
        verdict = Verdict(f"{probs.shape[1]} classes exceed the kernel's {_MAX_CLASSES}", "use impl='ref'",
                          applicable=False)
    return verdict or _device_verdict([probs])


# ------------------------------------------------------------------------------------------------
# spade_norm
# ------------------------------------------------------------------------------------------------

def _sync_stats(mean: torch.Tensor, var: torch.Tensor, count: int, process_group) -> Tuple[torch.Tensor, ...]:
    """Global (mean, biased var, count) of a synchronized batch norm from each process's local ones.

    The local (count, mean, var) of every process are all-gathered and merged with the exact pairwise
    formula in fp64 (``var = sum n_i (var_i + (mean_i - mean)^2) / n``), which unlike all-reducing
    (sum, sum of squares) cannot cancel catastrophically. Processes may hold different batch sizes."""
    import torch.distributed as dist
    c = mean.numel()
    local = torch.cat([mean.new_full((1,), float(count)), mean, var])
    world = dist.get_world_size(process_group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=process_group)
    allv = torch.stack(gathered).double()
    counts, means, variances = allv[:, :1], allv[:, 1:1 + c], allv[:, 1 + c:]
    total = counts.sum()
    g_mean = (counts * means).sum(0) / total
    g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
    return g_mean.float(), g_var.float(), float(total)


class SpadeNorm(torch.autograd.Function):
    """``(x - mean) * rstd * (1 + gamma) + beta`` with fused Triton passes (stats, apply; backward:
    sums + dgamma, then dx). First-order only."""

    @staticmethod
    def forward(ctx, x, gamma, beta, norm, eps, running_mean, running_var, momentum, training, process_group):
        ks = _ks()
        n, c, h, w = x.shape
        instance = norm == "instance"
        sync = norm == "sync_batch" and training and _world(process_group) > 1
        batch_stats = instance or training or running_mean is None
        count = h * w if instance else n * h * w
        if batch_stats:
            if count <= 1:
                raise ValueError(f"sbgan_fast.ops.spade_norm: expected more than 1 value per "
                                 f"{'instance channel' if instance else 'channel'} when using batch "
                                 f"statistics, got x of shape {tuple(x.shape)}")
            update = running_mean is not None and training and not instance
            if sync:
                mean_l, var_l, _ = ks.compute_stats(x, instance=False, eps=eps)
                mean, var, count = _sync_stats(mean_l, var_l, count, process_group)
                rstd = torch.rsqrt(var + eps)
                if update:
                    with torch.no_grad():
                        unbiased = var * (count / max(count - 1.0, 1.0))
                        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
            else:
                mean, _, rstd = ks.compute_stats(x, instance=instance, eps=eps,
                                                 running_mean=running_mean if update else None,
                                                 running_var=running_var if update else None,
                                                 momentum=momentum)
        else:  # eval with running statistics (copied: the buffers may change before backward)
            mean = running_mean.detach().to(torch.float32, copy=True).contiguous()
            rstd = torch.rsqrt(running_var.detach().float() + eps).contiguous()
        out_dtype = torch.promote_types(x.dtype, gamma.dtype)
        if torch.is_autocast_enabled(x.device.type):
            out_dtype = gamma.dtype
        out = torch.empty_like(x, dtype=out_dtype)
        ks.apply(x, gamma, beta, mean, rstd, out, instance=instance)
        ctx.save_for_backward(x, gamma, mean, rstd)
        ctx.instance, ctx.batch_stats, ctx.count = instance, batch_stats, count
        ctx.sync, ctx.process_group, ctx.beta_dtype = sync, process_group, beta.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        _first_order_only("spade_norm")
        ks = _ks()
        x, gamma, mean, rstd = ctx.saved_tensors
        need_x, need_gamma, need_beta = ctx.needs_input_grad[:3]
        dx = torch.empty_like(x) if need_x else None
        dgamma = torch.empty_like(gamma) if need_gamma else None
        if need_x and ctx.batch_stats:
            sums = ks.backward_sums(grad, x, gamma, mean, rstd, instance=ctx.instance, dgamma=dgamma)
            if ctx.sync:
                import torch.distributed as dist
                dist.all_reduce(sums, group=ctx.process_group)
            ks.backward_apply(grad, x, gamma, mean, rstd, instance=ctx.instance, sums=sums,
                              count=ctx.count, dx=dx)
        elif need_x or need_gamma:
            ks.backward_apply(grad, x, gamma, mean, rstd, instance=ctx.instance, dx=dx, dgamma=dgamma)
        dbeta = grad.to(ctx.beta_dtype) if need_beta else None
        return dx, dgamma, dbeta, None, None, None, None, None, None, None


def spade_norm_triton(x, gamma, beta, norm="batch", eps=1e-5, running_mean=None, running_var=None,
                      momentum=0.1, training=True, process_group=None):
    """Triton impl of :func:`sbgan_fast.ops.spade_norm` (same contract, first order only)."""
    return SpadeNorm.apply(x, gamma, beta, norm, float(eps), running_mean, running_var, float(momentum),
                           bool(training), process_group)


def _check_spade(x, gamma, beta, norm="batch", eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                 training=True, process_group=None) -> Optional[Verdict]:
    tensors = [x, gamma, beta]
    for name, t in (("x", x), ("gamma", gamma), ("beta", beta)):
        verdict = _dtype_verdict(name, t)
        if verdict is not None:
            return verdict
    verdict = _size_verdict(x)
    if verdict is not None:
        return verdict
    if not isinstance(momentum, (int, float)):
        return Verdict(f"momentum={momentum!r} (cumulative averaging) is not supported by the kernel",
                       "use impl='ref'", applicable=False)
    if running_mean is not None and norm != "instance":
        c = x.shape[1]
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if (not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() != c
                    or t.dim() != 1 or not t.is_contiguous()):
                return Verdict(f"{name} is not a contiguous float (C,) = ({c},) tensor", "use impl='ref'",
                               applicable=False)
        tensors += [running_mean, running_var]
    return _device_verdict(tensors)


_dispatch.register("gumbel_softmax_st", "triton", gumbel_softmax_st_triton, check=_check_gumbel,
                   supports_double_backward=False)
# argmax_one_hot carries no gradient in any impl, so it is safe inside a second-order graph.
_dispatch.register("argmax_one_hot", "triton", argmax_one_hot_triton, check=_check_argmax,
                   supports_double_backward=True)
_dispatch.register("spade_norm", "triton", spade_norm_triton, check=_check_spade,
                   supports_double_backward=False)
