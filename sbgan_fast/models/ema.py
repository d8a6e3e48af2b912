"""Exponential moving averages of the generators (``ema`` settings) and the batch-norm recalibration of an
averaged generator.

:class:`GeneratorEMA` keeps an averaged copy of G_seg and G_spd (of G_img in a ProGAN run). After each applied
optimizer update of a generator (``update``; ``cur``: the images that generator was trained on before the update,
``batch``: the update's global batch) it applies StyleGAN2-ADA's rule::

    ema_nimg = kimg * 1000;  ema_nimg = min(ema_nimg, cur * rampup)  if rampup > 0
    beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
    p_ema <- p + beta * (p_ema - p)        (every parameter; buffers are copied, not averaged)

so the average's half-life is ``kimg`` thousand images, shorter early in training (with the ramp-up the first
update copies the weights). Its state (the averaged networks and the per-network image counts) goes into the
checkpoints under ``"ema"``.

G_spd normalizes with batch norm (SPADE's ``syncbatch``), whose running statistics are what the network uses in
eval mode. Statistics copied from the trained G_spd do not belong to the averaged weights, so before the averaged
G_spd is used :func:`recalibrate_batchnorm` recomputes them: reset, then forward passes of real label maps in
train mode with each batch weighted as a cumulative average (the ``momentum=None`` rule of ``nn.BatchNorm2d``:
batch ``i`` gets momentum ``1 / (i + 1)``), every other buffer (spectral-norm vectors, counters) restored. The
statistics are those of the given maps on this process alone (synchronized batch norm runs as plain batch norm
meanwhile), so one process can recalibrate while the others wait.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

EMA_NETS = ("G_seg", "G_spd", "G_img")   # the generators averaged (those a run builds)
_BN_STATS = ("running_mean", "running_var")


def ema_beta(batch: int, cur_nimg: int, kimg: float, rampup: float) -> float:
    """The decay of one update of ``batch`` images after ``cur_nimg`` (StyleGAN2-ADA's ``ema_kimg`` /
    ``ema_rampup`` rule, see the module docstring)."""
    ema_nimg = kimg * 1000.0
    if rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


class GeneratorEMA:
    """Averaged copies ``nets`` of the networks ``source`` ({name: module}, G_seg and G_spd), their image counts
    ``nimg`` and the rule's settings (an :class:`~sbgan_fast.config.schema.EMAConfig`)."""

    def __init__(self, source: Dict[str, torch.nn.Module], copies: Dict[str, torch.nn.Module], settings):
        self.source = source
        self.nets = copies
        self.kimg, self.rampup = float(settings.kimg), float(settings.rampup)
        self.nimg: Dict[str, int] = {name: 0 for name in copies}
        for name in copies:
            self.reset(name)

    @torch.no_grad()
    def reset(self, name: str) -> None:
        """Start the average of ``name`` from its current weights (image count 0)."""
        self.nets[name].load_state_dict(self.source[name].state_dict())
        for p in self.nets[name].parameters():
            p.requires_grad_(False)
        self.nimg[name] = 0

    @torch.no_grad()
    def update(self, names: Iterable[str], batch: int) -> None:
        """One update of the averages of ``names`` after an optimizer step on ``batch`` images."""
        for name in names:
            beta = ema_beta(batch, self.nimg[name], self.kimg, self.rampup)
            dst, src = self.nets[name], self.source[name]
            for p_ema, p in zip(dst.parameters(), src.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(dst.buffers(), src.buffers()):
                b_ema.copy_(b)
            self.nimg[name] += int(batch)

    def state_dict(self, names: Optional[Iterable[str]] = None) -> dict:
        names = list(self.nets) if names is None else [n for n in names if n in self.nets]
        return {"nets": {n: self.nets[n].state_dict() for n in names}, "nimg": {n: int(self.nimg[n]) for n in names}}

    def load(self, name: str, state: dict) -> None:
        """The average of ``name`` from a checkpoint's ``"ema"`` entry."""
        self.nets[name].load_state_dict(state["nets"][name])
        self.nimg[name] = int(state["nimg"][name])


def _norm_layers(net: torch.nn.Module):
    """Modules holding batch-norm running statistics and the module whose ``momentum`` they use."""
    from ..nn.spade import SPADE
    out = []
    for m in net.modules():
        if isinstance(m, SPADE) and m.norm != "instance":
            out.append((m.param_free_norm, m))
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out.append((m, m))
    # a SPADE module's own BatchNorm2d holds the statistics but the SPADE module's momentum drives them
    owned = {id(bn) for bn, owner in out if owner is not bn}
    return [(bn, owner) for bn, owner in out if owner is not bn or id(bn) not in owned]


@torch.no_grad()
def recalibrate_batchnorm(net: torch.nn.Module, label_batches: Iterable[torch.Tensor]) -> int:
    """Recompute the batch-norm running statistics of ``net`` (G_spd) as the cumulative average over the batches
    of ``label_batches`` (each (N, H, W) channel indices, fed as ``net(batch)``) in train mode; every other buffer
    and the module's mode are restored and the global RNG stream is not moved. Returns the number of batches (0:
    nothing changed)."""
    layers = _norm_layers(net)
    if not layers:
        return 0
    stats = {id(t) for bn, _ in layers for t in (bn.running_mean, bn.running_var)}
    saved = [(b, b.detach().clone()) for b in net.buffers() if id(b) not in stats]
    moms = [owner.momentum for _, owner in layers]
    # statistics of this process's maps alone (no collective: one process may recalibrate while the others wait)
    norms = [(m, m.norm) for m in net.modules() if isinstance(getattr(m, "norm", None), str)
             and m.norm == "sync_batch"]
    was_training = net.training
    old = [(bn.running_mean.clone(), bn.running_var.clone()) for bn, _ in layers]
    count = 0
    try:
        with torch.random.fork_rng(devices=[]):
            for bn, _ in layers:
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
            for m, _ in norms:
                m.norm = "batch"
            net.train()
            for i, labels in enumerate(label_batches):
                for _, owner in layers:
                    owner.momentum = 1.0 / (i + 1)
                net(labels)
                count += 1
    finally:
        for m, norm in norms:
            m.norm = norm
        for (_, owner), m in zip(layers, moms):
            owner.momentum = m
        for b, v in saved:
            b.copy_(v)
        net.train(was_training)
        if count == 0:
            for (bn, _), (rm, rv) in zip(layers, old):
                bn.running_mean.copy_(rm)
                bn.running_var.copy_(rv)
    return count
