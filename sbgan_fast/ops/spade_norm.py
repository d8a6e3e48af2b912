"""SPADE normalization: param-free normalization of x, then ``x_hat * (1 + gamma) + beta``.

Public functions (:func:`spade_norm`, :func:`param_free_norm`), the reference path and the Triton impl
(``torch.library`` custom ops with fake kernels and an autograd formula, so torch.compile traces
through them; eligibility check; registration in the dispatch). Statistics are computed in fp32
whatever x's dtype. ``norm='sync_batch'`` merges the per-process statistics over ``process_group``
(default: the world) when torch.distributed is initialised with more than one process: every process's
(count, mean, variance) is all-gathered and merged exactly in fp64 (:func:`merge_stats`), in both the
reference and the Triton path. It works on CPU (gloo) too, unlike ``torch.nn.SyncBatchNorm``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _dispatch, _triton
from ._checks import check_float
from ._dispatch import Verdict

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


class _AllGather(torch.autograd.Function):
    """(L,) per process -> (P, L): every process's tensor, stacked in rank order. Its gradient is the
    sum over the processes of their gradients of this process's row. Twice differentiable."""

    @staticmethod
    def forward(ctx, t, process_group):
        import torch.distributed as dist
        ctx.process_group = process_group
        ctx.rank = dist.get_rank(process_group)
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(process_group))]
        dist.all_gather(parts, t.contiguous(), group=process_group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad.contiguous(), ctx.process_group)[ctx.rank], None


def merge_stats(counts: torch.Tensor, means: torch.Tensor, variances: torch.Tensor):
    """Exact merge of P groups' statistics: counts (P, 1), means and biased variances (P, C) ->
    (mean (C,), biased var (C,), total count (0-d)), ``var = sum n_i (var_i + (mean_i - mean)^2) / n``.

    Unlike all-reducing (sum, sum of squares), this cannot cancel catastrophically when |mean| >> std.
    Differentiable; callers pass fp64."""
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
    return mean, var, total


def sync_batch_stats(x: torch.Tensor, process_group=None):
    """Differentiable global (mean, biased var, count) over N,H,W of all processes of ``process_group``.

    Each process computes its (count, mean, biased var) with two passes over its slice in fp32 (fp64
    for fp64 input); they are all-gathered and merged with :func:`merge_stats` in fp64 (as the Triton
    path does). Returns mean and var in fp32 (fp64 for fp64 input) and the count as an fp64 0-d tensor.
    Any gradient order."""
    xf = _compute(x)
    mean = xf.mean(dim=(0, 2, 3))
    var = (xf - mean.view(1, -1, 1, 1)).square().mean(dim=(0, 2, 3))
    g_mean, g_var, count = merge_process_stats(mean, var, x.numel() // x.shape[1], process_group)
    return g_mean.to(xf.dtype), g_var.to(xf.dtype), count


def merge_process_stats(mean: torch.Tensor, var: torch.Tensor, count: int, process_group=None):
    """Global (mean, biased var, count) of a synchronized batch norm from each process's local ones:
    mean, var (C,) and the local element count per channel. The (count, mean, var) of every process
    are all-gathered and merged in fp64 with :func:`merge_stats`; processes may hold different batch
    sizes. Returns fp64 mean and var (C,) and the fp64 0-d total count. Differentiable."""
    c = mean.numel()
    local = torch.cat([mean.new_full((1,), float(count)), mean, var])
    allv = _AllGather.apply(local, process_group).double()
    return merge_stats(allv[:, :1], allv[:, 1:1 + c], allv[:, 1 + c:])


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


def param_free_norm(x: torch.Tensor, norm: str = "batch", *, eps: float = 1e-5,
                    running_mean: Optional[torch.Tensor] = None, running_var: Optional[torch.Tensor] = None,
                    momentum: float = 0.1, training: bool = True, process_group=None,
                    impl: str = "auto") -> torch.Tensor:
    """The normalization of :func:`spade_norm` alone: ``(x - mean) / sqrt(var + eps)``, no affine.

    Args: as :func:`spade_norm` (x float (N,C,H,W); ``norm='sync_batch'`` merges the statistics of
    every process of ``process_group`` with :func:`merge_stats` when more than one process runs).
    Returns:
        x_hat (N,C,H,W) in fp32 (fp64 for fp64 input): callers apply their affine and cast. Only a
        ``ref`` impl (any gradient order); used by :class:`sbgan_fast.nn.SyncBatchNorm2d`.
    """
    check_float("param_free_norm", "x", x, dims=(4,))
    if norm not in NORMS:
        raise ValueError(f"param_free_norm: norm must be one of {NORMS}, got {norm!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("param_free_norm: give both running_mean and running_var or neither")
    fn = _dispatch.dispatch("param_free_norm", impl, x, norm, eps, running_mean, running_var, momentum, training,
                            process_group)
    return fn(x, norm, eps, running_mean, running_var, momentum, training, process_group)


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


# ------------------------------------------------------------------------------------------------
# Triton impl
# ------------------------------------------------------------------------------------------------

# The kernels are wrapped as torch.library custom ops (``torch.ops.sbgan_fast.*``) with fake-tensor
# kernels and an autograd formula, so that torch.compile(fullgraph=True) traces through them: the
# compiled graph calls the same kernels as eager mode. Three ops: the statistics (which update the
# running buffers in place, so they carry no autograd formula and take x detached), the fused apply
# (whose gradient for x includes the terms through the batch statistics), and its backward.

def _group_name(process_group) -> str:
    """The name under which torch.distributed resolves ``process_group`` (default: the world)."""
    import torch.distributed as dist
    return (process_group if process_group is not None else dist.group.WORLD).group_name


def _resolve_group(name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group
    return _resolve_process_group(name)


def _ks():
    return _triton.kernels("spade_norm")


@torch.library.custom_op("sbgan_fast::spade_norm_stats_triton", mutates_args=("running_mean", "running_var"))
def _spade_stats_op(x: torch.Tensor, instance: bool, batch_stats: bool, eps: float,
                    running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], momentum: float,
                    update: bool, group_name: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, rstd) fp32 of C (batch) or N*C (instance) groups, and the count of elements per group
    (an fp64 0-d CPU tensor). Batch statistics (merged over the processes of ``group_name`` when
    given; running buffers updated when ``update``), else the running statistics."""
    ks = _ks()
    n, c, h, w = x.shape
    count = float(h * w if instance else n * h * w)
    if not batch_stats:  # eval with running statistics (copied: the buffers may change before backward)
        mean = running_mean.detach().to(torch.float32, copy=True).contiguous()
        rstd = torch.rsqrt(running_var.detach().float() + eps).contiguous()
    elif group_name is not None:
        mean_l, var_l, _ = ks.compute_stats(x, instance=False, eps=eps)
        mean, var, total = merge_process_stats(mean_l, var_l, int(count), _resolve_group(group_name))
        mean, var, count = mean.float(), var.float(), float(total)
        rstd = torch.rsqrt(var + eps)
        if update:
            unbiased = var * (count / max(count - 1.0, 1.0))
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    else:
        mean, _, rstd = ks.compute_stats(x, instance=instance, eps=eps,
                                         running_mean=running_mean if update else None,
                                         running_var=running_var if update else None, momentum=momentum)
        mean, rstd = mean.clone(), rstd.clone()  # views of one buffer: outputs must not share storage
    return mean, rstd, torch.tensor(count, dtype=torch.float64)


@_spade_stats_op.register_fake
def _(x, instance, batch_stats, eps, running_mean, running_var, momentum, update, group_name):
    groups = x.shape[0] * x.shape[1] if instance and batch_stats else x.shape[1]
    return (x.new_empty((groups,), dtype=torch.float32), x.new_empty((groups,), dtype=torch.float32),
            torch.empty((), dtype=torch.float64, device="cpu"))


@torch.library.custom_op("sbgan_fast::spade_norm_apply_triton", mutates_args=())
def _spade_apply_op(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor,
                    rstd: torch.Tensor, count: torch.Tensor, instance: bool, batch_stats: bool,
                    group_name: Optional[str], out_dtype: torch.dtype) -> torch.Tensor:
    """(x - mean) * rstd * (1 + gamma) + beta in ``out_dtype`` (count, batch_stats and group_name are
    for the backward)."""
    out = torch.empty_like(x, dtype=out_dtype)
    _ks().apply(x, gamma, beta, mean, rstd, out, instance=instance)
    return out


@_spade_apply_op.register_fake
def _(x, gamma, beta, mean, rstd, count, instance, batch_stats, group_name, out_dtype):
    return torch.empty_like(x, dtype=out_dtype)


@torch.library.custom_op("sbgan_fast::spade_norm_backward_triton", mutates_args=())
def _spade_backward_op(grad: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor, count: torch.Tensor, instance: bool, batch_stats: bool,
                       group_name: Optional[str], need_x: bool,
                       need_gamma: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dgamma); each an empty (0,) tensor when not needed. With batch statistics dx carries the
    terms through them (their per-group sums all-reduced over ``group_name`` when given)."""
    ks = _ks()
    dx = torch.empty_like(x) if need_x else None
    dgamma = torch.empty_like(gamma) if need_gamma else None
    if need_x and batch_stats:
        sums = ks.backward_sums(grad, x, gamma, mean, rstd, instance=instance, dgamma=dgamma)
        if group_name is not None:
            import torch.distributed as dist
            dist.all_reduce(sums, group=_resolve_group(group_name))
        ks.backward_apply(grad, x, gamma, mean, rstd, instance=instance, sums=sums, count=float(count.item()), dx=dx)
    elif need_x or need_gamma:
        ks.backward_apply(grad, x, gamma, mean, rstd, instance=instance, dx=dx, dgamma=dgamma)
    return (dx if need_x else x.new_empty((0,)), dgamma if need_gamma else gamma.new_empty((0,)))


@_spade_backward_op.register_fake
def _(grad, x, gamma, mean, rstd, count, instance, batch_stats, group_name, need_x, need_gamma):
    return (torch.empty_like(x) if need_x else x.new_empty((0,)),
            torch.empty_like(gamma) if need_gamma else gamma.new_empty((0,)))


def _spade_apply_setup(ctx, inputs, output):
    x, gamma, beta, mean, rstd, count, instance, batch_stats, group_name, _ = inputs
    ctx.save_for_backward(x, gamma, mean, rstd, count)
    ctx.instance, ctx.batch_stats, ctx.group_name, ctx.beta_dtype = instance, batch_stats, group_name, beta.dtype


def _spade_apply_backward(ctx, grad):
    _triton.first_order_only("spade_norm")
    x, gamma, mean, rstd, count = ctx.saved_tensors
    need_x, need_gamma, need_beta = ctx.needs_input_grad[:3]
    dx = dgamma = None
    if need_x or need_gamma:
        dx, dgamma = _spade_backward_op(grad, x, gamma, mean, rstd, count, ctx.instance, ctx.batch_stats,
                                        ctx.group_name, need_x, need_gamma)
    dbeta = grad.to(ctx.beta_dtype) if need_beta else None
    return (dx if need_x else None, dgamma if need_gamma else None, dbeta) + (None,) * 7


_spade_apply_op.register_autograd(_spade_apply_backward, setup_context=_spade_apply_setup)


def spade_norm_triton(x, gamma, beta, norm="batch", eps=1e-5, running_mean=None, running_var=None,
                      momentum=0.1, training=True, process_group=None):
    """Triton impl of :func:`sbgan_fast.ops.spade_norm` (same contract, first order only): fused
    statistics, apply, and backward (sums + dgamma, then dx)."""
    n, c, h, w = x.shape
    instance = norm == "instance"
    sync = norm == "sync_batch" and training and _world(process_group) > 1
    batch_stats = instance or training or running_mean is None
    count = h * w if instance else n * h * w
    if batch_stats and count <= 1:
        raise ValueError(f"sbgan_fast.ops.spade_norm: expected more than 1 value per "
                         f"{'instance channel' if instance else 'channel'} when using batch "
                         f"statistics, got x of shape {tuple(x.shape)}")
    if instance:
        running_mean = running_var = None
    update = batch_stats and running_mean is not None and training
    group_name = _group_name(process_group) if sync else None
    out_dtype = torch.promote_types(x.dtype, gamma.dtype)
    if torch.is_autocast_enabled(x.device.type):
        out_dtype = gamma.dtype
    mean, rstd, total = _spade_stats_op(x.detach(), instance, batch_stats, float(eps), running_mean, running_var,
                                        float(momentum), update, group_name)
    return _spade_apply_op(x, gamma, beta, mean, rstd, total, instance, batch_stats, group_name, out_dtype)


def _check_spade(x, gamma, beta, norm="batch", eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                 training=True, process_group=None) -> Optional[Verdict]:
    tensors = [x, gamma, beta]
    for name, t in (("x", x), ("gamma", gamma), ("beta", beta)):
        verdict = _triton.dtype_verdict(name, t)
        if verdict is not None:
            return verdict
    verdict = _triton.size_verdict(x)
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
    return _triton.device_verdict(tensors)


_dispatch.register(OP, "ref", spade_norm_ref)
_dispatch.register(OP, "triton", spade_norm_triton, check=_check_spade, supports_double_backward=False)
_dispatch.register("param_free_norm", "ref", param_free_norm_ref)
