"""GAN losses of the three stages (REFERENCE.md sections 4, 7, 8)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import ops
from .compiled import eager


def wgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """G = -mean D(fake) (fp32 whatever D's output dtype)."""
    return -d_fake.float().mean()


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, *, eps: Optional[torch.Tensor] = None,
                     scale: Optional[torch.Tensor] = None, **d_kwargs) -> torch.Tensor:
    """WGAN-GP: mean over samples of (||grad_x D(x_hat)||_2 - 1)^2, x_hat a per-sample interpolate of
    real and (detached) fake, norm over all non-batch dims, create_graph=True (second order through D).

    Args:
        D: the critic; ``D(x, **d_kwargs)`` returns (N,) scores.
        real, fake: float (N, ...) of the same shape.
        eps: optional (N, 1, ..., 1) interpolation weights in [0, 1) (default: drawn from torch's RNG).
        scale: optional 0-dim loss scale (fp16 training): the inner gradient is taken of
            ``scale * sum D(x_hat)`` so that small gradients survive the half-precision backward,
            then divided by ``scale`` before the norm.

    Mixed precision: D's forward follows the caller's autocast; the inner gradient, the unscaling and
    the norm run with autocast off in fp32. The D forward runs inside
    :func:`sbgan_fast.ops.double_backward`, so no first-order-only fast op is chosen there, and eagerly when D
    is compiled (``compile=true``; :func:`sbgan_fast.train.compiled.eager`).
    """
    n = real.shape[0]
    shape = (n,) + (1,) * (real.dim() - 1)
    if eps is None:
        eps = torch.rand(shape, device=real.device, dtype=real.dtype)
    elif tuple(eps.shape) != shape:
        raise ValueError(f"gradient_penalty: eps must have shape {shape}, got {tuple(eps.shape)}")
    eps = eps.to(real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    with ops.double_backward(), eager():   # a compiled D's backward cannot be differentiated again
        out = D(x_hat, **d_kwargs)
        with torch.autocast(device_type=real.device.type, enabled=False):
            total = out.float().sum()
            if scale is not None:
                total = total * scale
            (grad,) = torch.autograd.grad(total, x_hat, create_graph=True)
            grad = grad.float()
            if scale is not None:
                grad = grad / scale
            return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def wgan_gp_d_loss(D, real: torch.Tensor, fake: torch.Tensor, lambda_gp: float = 10.0, *,
                   eps: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None, **d_kwargs):
    """D = mean D(fake) - mean D(real) + lambda_gp * GP (``eps``, ``scale``: see
    :func:`gradient_penalty`). Returns (loss, parts): ``wdist`` (mean D(real) - mean D(fake)), ``gp``,
    ``score_real``, ``score_fake`` (the mean critic scores), all detached."""
    d_real = D(real, **d_kwargs)
    d_fake = D(fake.detach(), **d_kwargs)
    gp = gradient_penalty(D, real, fake, eps=eps, scale=scale, **d_kwargs)
    real_mean, fake_mean = d_real.float().mean(), d_fake.float().mean()
    w = fake_mean - real_mean
    return w + lambda_gp * gp, {"wdist": -w.detach(), "gp": gp.detach(), "score_real": real_mean.detach(),
                                "score_fake": fake_mean.detach()}


def _preds(outputs) -> List[torch.Tensor]:
    """Multiscale D output (list per scale of feature lists, prediction last) -> fp32 predictions."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.float()]
    return [(o[-1] if isinstance(o, (list, tuple)) else o).float() for o in outputs]


def hinge_d_loss(real_out, fake_out) -> torch.Tensor:
    """-mean(min(x_real - 1, 0)) - mean(min(-x_fake - 1, 0)), averaged over scales."""
    reals, fakes = _preds(real_out), _preds(fake_out)
    loss = 0.0
    for r, f in zip(reals, fakes):
        loss = loss + (-torch.clamp(r - 1, max=0).mean()) + (-torch.clamp(-f - 1, max=0).mean())
    return loss / len(reals)


def hinge_d_parts(real_out, fake_out):
    reals, fakes = _preds(real_out), _preds(fake_out)
    r = sum(-torch.clamp(x - 1, max=0).mean() for x in reals) / len(reals)
    f = sum(-torch.clamp(-x - 1, max=0).mean() for x in fakes) / len(fakes)
    return r, f


def hinge_g_loss(fake_out) -> torch.Tensor:
    """-mean(x_fake), averaged over scales."""
    fakes = _preds(fake_out)
    return sum(-f.mean() for f in fakes) / len(fakes)


def feature_matching_loss(fake_out: Sequence[Sequence[torch.Tensor]], real_out, lambda_feat: float = 10.0):
    """L1 between fake and detached real intermediate features (prediction excluded), summed over
    layers and scales, x lambda_feat / num_D."""
    num_d = len(fake_out)
    loss = 0.0
    for f_feats, r_feats in zip(fake_out, real_out):
        for f, r in zip(f_feats[:-1], r_feats[:-1]):
            loss = loss + F.l1_loss(f.float(), r.detach().float())
    return loss * (lambda_feat / num_d)


def split_real_fake(outputs, n_fake: int):
    """D ran on cat([fake, real]): split each feature of each scale into (fake, real) parts."""
    fake, real = [], []
    for feats in outputs:
        fake.append([t[:n_fake] for t in feats])
        real.append([t[n_fake:] for t in feats])
    return fake, real


def hinge_d_on(D, fake: torch.Tensor, real: torch.Tensor):
    """D on the fakes and the reals in one batch (fakes first) -> its hinge losses (real part, fake part)."""
    out = D(torch.cat([fake, real], 0))
    fake_out, real_out = split_real_fake(out, fake.shape[0])
    return hinge_d_parts(real_out, fake_out)
