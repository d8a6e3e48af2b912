"""SPADE normalization: param-free normalization of x, then ``x_hat * (1 + gamma) + beta``.

Reference path and public entry point. Statistics are computed in fp32 whatever x's dtype.
``norm='sync_batch'`` all-reduces the per-process sums over ``process_group`` (default: the world)
when torch.distributed is initialised with more than one process; it works on CPU (gloo) too,
unlike ``torch.nn.SyncBatchNorm``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _dispatch
from ._checks import check_float

OP = "spade_norm"
NORMS = ("batch", "instance", "sync_batch")


def _world(process_group) -> int:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _compute(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half inputs (and fp32); float64 stays float64 (so the reference can be gradchecked)."""
    return t if t.dtype == torch.float64 else t.float()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of ``process_group``; its gradient is the sum of the processes'
    gradients (every process uses the reduced value). Twice differentiable."""

    @staticmethod
    def forward(ctx, t, process_group):
        import torch.distributed as dist
        ctx.process_group = process_group
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad.contiguous(), ctx.process_group), None


def sync_batch_stats(x: torch.Tensor, process_group=None):
    """Differentiable global (mean, biased var, count) over N,H,W of all processes, in fp32 (fp64 for
    fp64 input)."""
    xf = _compute(x)
    c = x.shape[1]
    local = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)),
                       xf.new_full((1,), float(x.numel() // c))])
    total = _AllReduceSum.apply(local, process_group)
    s, ss, count = total[:c], total[c:2 * c], total[2 * c]
    mean = s / count
    var = (ss / count - mean * mean).clamp_min(0)
    return mean, var, count


def param_free_norm_ref(x, norm="batch", eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                        training=True, process_group=None):
    """x_hat in fp32 (fp64 for fp64 input; callers cast)."""
    xf = _compute(x)
    if norm == "instance":
        return F.instance_norm(xf, eps=eps)
    if norm == "sync_batch" and training and _world(process_group) > 1:
        mean, var, count = sync_batch_stats(x, process_group)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp_min(1))
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = (1, -1, 1, 1)
        return (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    use_batch_stats = training or running_mean is None
    if running_mean is not None and (running_mean.dtype != xf.dtype or running_var.dtype != xf.dtype):
        # F.batch_norm wants one dtype (e.g. fp64 input, fp32 buffers): run on copies, write back.
        rm, rv = running_mean.to(xf.dtype), running_var.to(xf.dtype)
        out = F.batch_norm(xf, rm, rv, None, None, use_batch_stats, momentum, eps)
        if use_batch_stats:
            with torch.no_grad():
                running_mean.copy_(rm)
                running_var.copy_(rv)
        return out
    return F.batch_norm(xf, running_mean, running_var, None, None, use_batch_stats, momentum, eps)


def spade_norm_ref(x, gamma, beta, norm="batch", eps=1e-5, running_mean=None, running_var=None,
                   momentum=0.1, training=True, process_group=None):
    x_hat = param_free_norm_ref(x, norm, eps, running_mean, running_var, momentum, training, process_group)
    out_dtype = torch.promote_types(x.dtype, gamma.dtype)
    if torch.is_autocast_enabled(x.device.type):
        out_dtype = gamma.dtype
    out = x_hat * (1 + _compute(gamma)) + _compute(beta)
    return out.to(out_dtype)


def spade_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, *, norm: str = "batch",
               eps: float = 1e-5, running_mean: Optional[torch.Tensor] = None,
               running_var: Optional[torch.Tensor] = None, momentum: float = 0.1, training: bool = True,
               process_group=None, impl: str = "auto") -> torch.Tensor:
    """``normalize(x) * (1 + gamma) + beta``.

    Args:
        x, gamma, beta: float (N,C,H,W), same shape; NCHW or channels-last.
        norm: 'batch' | 'instance' | 'sync_batch' (param-free, no affine).
        running_mean, running_var: fp32 (C,) buffers updated in training with ``momentum``
            (unbiased variance), used in eval. Batch norms only.
        process_group: for 'sync_batch' (default world).
    Returns:
        (N,C,H,W) in x's dtype (gamma's under autocast). Statistics in fp32. ``ref`` supports any
        gradient order.
    """
    check_float(OP, "x", x, dims=(4,))
    for name, t in (("gamma", gamma), ("beta", beta)):
        check_float(OP, name, t, dims=(4,))
        if t.shape != x.shape:
            raise ValueError(f"{OP}: {name} shape {tuple(t.shape)} must equal x shape {tuple(x.shape)}")
    if norm not in NORMS:
        raise ValueError(f"{OP}: norm must be one of {NORMS}, got {norm!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{OP}: give both running_mean and running_var or neither")
    fn = _dispatch.dispatch(OP, impl, x, gamma, beta, norm, eps, running_mean, running_var, momentum,
                            training, process_group)
    return fn(x, gamma, beta, norm, eps, running_mean, running_var, momentum, training, process_group)


_dispatch.register(OP, "ref", spade_norm_ref)
