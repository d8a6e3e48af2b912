"""Synchronized batch norm with affine parameters (the discriminators' ``norm_D='..sync_batch'``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops

__all__ = ["SyncBatchNorm2d"]


class SyncBatchNorm2d(nn.BatchNorm2d):
    """Affine batch norm whose training statistics are merged over the process group when
    torch.distributed runs more than one process (CPU/gloo included, see
    :func:`sbgan_fast.ops.param_free_norm`); plain batch norm otherwise. Same parameters and buffers as
    ``nn.BatchNorm2d`` (so the state-dict keys are the reference's).

    Args:
        num_features: C. eps, momentum: as ``nn.BatchNorm2d``.
        process_group: the group whose statistics are merged (default: the world).
        impl: impl of :func:`sbgan_fast.ops.param_free_norm`.

    Forward: x float (N, C, H, W) -> (N, C, H, W) in x's dtype; normalization and affine in fp32 (fp64
    for fp64 input). Any gradient order.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, process_group=None,
                 impl: str = "auto"):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        if impl not in ops.IMPLS:
            raise ValueError(f"SyncBatchNorm2d: impl must be one of {ops.IMPLS}, got {impl!r}")
        self.process_group = process_group
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        x_hat = ops.param_free_norm(x, "sync_batch", eps=self.eps, running_mean=self.running_mean,
                                    running_var=self.running_var, momentum=self.momentum, training=self.training,
                                    process_group=self.process_group, impl=self.impl)
        out = x_hat * self.weight.float().view(1, -1, 1, 1) + self.bias.float().view(1, -1, 1, 1)
        return out.to(x.dtype)
