"""What every stage shares: the :class:`StageContext` it works with, the schedule, the one G/D update loop with
micro-batching (:meth:`Stage.accumulate`), learning rates, and the real batch of a step.

Each stage is a step function over a deterministic schedule: the batch, flips and learning rate of step ``s``
depend only on the config and ``s``, and every other random draw comes from torch's RNG, whose state is
checkpointed, so a resumed run continues exactly as an uninterrupted one.

A step works on this process's share of the global batch (see :mod:`sbgan_fast.train.dist`), split into ``accum``
micro-batches; each optimizer update goes through the context's :class:`~sbgan_fast.train.amp.Updater` (autocast,
loss scaling, gradient averaging over the processes, the non-finite guard) and every noise draw through its
:class:`~sbgan_fast.train.noise.StepNoise`, or through the ``noise`` given to :meth:`Stage.step`
(:class:`~sbgan_fast.train.noise.GivenNoise`: the draws named in the stage's ``NOISE``), so that a whole step can be
driven with chosen noise and compared with an independent computation. A step returns its loss terms one by one
(means over its micro-batches) beside their sums.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...config import TrainConfig
from ...models import label_ids, one_hot_labels
from ..amp import Updater
from ..data_order import random_hflip, step_generator
from ..dist import DistInfo, micro_slices
from ..noise import StepNoise

MicroStep = Callable[[int, slice], Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]


@dataclass
class StageContext:
    """Everything a stage works with: the config, the networks (``nets``: name -> module) and this stage's
    optimizers (``optims``, shared with the updater), the updater, the noise, the data's size and label count, and
    what the previews and the synthetic label maps need. The trainer builds one per run."""

    cfg: TrainConfig
    device: torch.device
    dist: DistInfo
    nets: Dict[str, torch.nn.Module]
    updater: Updater
    noise: StepNoise
    num_classes: int                      # label channels the networks see (the don't-care channel included)
    dataset_size: int
    channels_last: bool = False
    vgg: Optional[torch.nn.Module] = None  # the VGG feature loss of the image stages (None: off)
    preview_z: Optional[torch.Tensor] = None
    preview_labels: Optional[torch.Tensor] = None
    out: str = ""                         # the run folder
    palette: Any = None
    log: Callable[[str], None] = print
    optims: Dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    ema: Any = None                       # a GeneratorEMA (sbgan_fast.models.ema) when ema.enabled, else None

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d float input in the networks' memory format (channels-last when configured)."""
        if self.channels_last and x.dim() == 4 and x.is_floating_point():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def onehot(self, labels: torch.Tensor, size=None, mode: str = "nearest") -> torch.Tensor:
        """Int (N,H,W) label values -> float one-hot (N, num_classes, H', W') (see
        :func:`sbgan_fast.models.one_hot_labels`)."""
        return one_hot_labels(labels, self.cfg.data.dontcare, self.num_classes, size=size, mode=mode,
                              impl=self.cfg.impl)

    def label_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Int (N,H,W) label values -> channel indices in [0, num_classes), as the networks' gather paths take."""
        return label_ids(labels, self.cfg.data.dontcare, self.num_classes)


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def part(t: Optional[torch.Tensor], sl: slice) -> Optional[torch.Tensor]:
    """``t[sl]`` or None (a draw left to its consumer)."""
    return None if t is None else t[sl]


class Means:
    """Means over the micro-batches of a step of detached scalar tensors."""

    def __init__(self, k: int):
        self.k = k
        self.sums: Dict[str, torch.Tensor] = {}

    def add(self, vals: Dict[str, torch.Tensor]) -> None:
        for name, v in vals.items():
            v = v.detach().float()
            self.sums[name] = self.sums[name] + v if name in self.sums else v

    def result(self) -> Dict[str, torch.Tensor]:
        return {name: v / self.k for name, v in self.sums.items()}


def decay_factor(epoch: float, epochs: float, epochs_decay: float, per_step: bool = False) -> float:
    """SPADE's schedule: constant for ``epochs``, then linear decay to 0 over ``epochs_decay``, updated once per
    (whole) epoch (the authors' rule: the first decayed epoch still runs at the full rate, the last at
    ``1 / epochs_decay``; a stage shorter than two epochs never decays). ``per_step`` (option ``lr_decay=step``):
    the same line evaluated at the fractional epoch of every step, so the rate falls from 1 at ``epochs`` to 0 at
    ``epochs + epochs_decay``."""
    e, start = (epoch, epochs) if per_step else (math.floor(epoch), math.floor(epochs))
    if epochs_decay <= 0 or e < epochs:
        return 1.0
    return max(0.0, 1.0 - (e - start) / epochs_decay)


class Stage:
    """Base class: a stage names the networks it ``trains`` and its noise draws (``NOISE``), and defines its
    schedule, optimizers and one training :meth:`step`."""

    name = ""
    trains: Tuple[str, ...] = ()     # networks whose parameters this stage updates
    NOISE: Tuple[str, ...] = ()      # the named noise draws of a step, in order (GivenNoise keys)

    def __init__(self, ctx):
        """``ctx``: a :class:`StageContext` (a :class:`~sbgan_fast.train.trainer.Trainer` stands for its own)."""
        self.ctx: StageContext = ctx if isinstance(ctx, StageContext) else ctx.ctx
        self.cfg = self.ctx.cfg
        self.dev = self.ctx.device
        self.nets = self.ctx.nets

    # -- schedule ---------------------------------------------------------------------------
    def total_steps(self) -> int:
        raise NotImplementedError

    def batch_size(self) -> int:
        """The global batch size of a constant-batch stage."""
        raise NotImplementedError

    def batch_sizes(self) -> List[int]:
        """Every global batch size the stage uses."""
        return [self.schedule(0)[1]]

    def schedule(self, step: int) -> Tuple[int, int]:
        """(offset into the sample stream, batch size) of ``step``; here a constant batch size."""
        bs = self.batch_size()
        return step * bs, bs

    def images_per_step(self) -> float:
        return float(self.schedule(0)[1])

    def images_done(self, step: int) -> int:
        off, bs = self.schedule(step - 1) if step > 0 else (0, 0)
        return off + bs

    # -- optimizers and learning rates ---------------------------------------------------------
    def make_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def adam(self, net, lr: float, betas) -> torch.optim.Optimizer:
        kwargs = {"fused": True} if self.dev.type == "cuda" else {}
        return torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(betas), **kwargs)

    def set_lr(self, step: int) -> Dict[str, float]:
        """Set the learning rates of ``step``; returns them as ``lr_<network>`` log entries."""
        return {}

    def apply_lrs(self, lrs: Dict[str, float]) -> Dict[str, float]:
        for name, lr in lrs.items():
            for g in self.ctx.optims[name].param_groups:
                g["lr"] = lr
        return {f"lr_{k}": v for k, v in lrs.items()}

    def prepare(self) -> None:
        """Work before the first step of a (started or resumed) stage; every process calls it."""

    # -- a step -------------------------------------------------------------------------------
    def step(self, step: int, batch: Dict[str, torch.Tensor], noise=None) -> Dict[str, torch.Tensor]:
        """One training step on ``batch`` (this process's share of the global batch); ``noise`` (a
        :class:`~sbgan_fast.train.noise.GivenNoise`, default the context's noise) answers its draws.
        Returns detached scalar tensors: each loss term and their sums."""
        raise NotImplementedError

    def noise_of(self, noise):
        return noise if noise is not None else self.ctx.noise

    def accumulate(self, groups: Dict[str, Sequence[str]], micro_step: MicroStep, parts: List[slice],
                   means: Means, frozen: Sequence[torch.nn.Module] = ()) -> None:
        """One optimizer update of the loss groups ``groups`` ({group: the networks its loss trains}) over the
        micro-batches ``parts``: ``micro_step(i, part) -> (losses, logs)`` gives micro-batch ``i``'s loss of each
        group (backpropagated divided by the number of micro-batches) and the scalars to log (added to ``means``).
        The ``frozen`` networks' parameters take no gradient meanwhile (the other player of the GAN). With
        ``ema`` settings on, the averages of the generators an applied update trained follow it."""
        set_requires_grad(frozen, False)
        k = len(parts)
        with self.ctx.updater.update(groups) as upd:
            for i, sl in enumerate(parts):
                losses, logs = micro_step(i, sl)
                upd.backward({g: loss / k for g, loss in losses.items()})
                means.add(logs)
        set_requires_grad(frozen, True)
        ema = self.ctx.ema
        if ema is not None:   # the averaged generators follow each applied update of theirs
            names = [n for g, ns in upd.groups.items() if upd.applied.get(g) for n in ns if n in ema.nets]
            if names:
                ema.update(names, (parts[-1].stop - parts[0].start) * self.ctx.dist.world)

    def real_batch(self, step: int, batch, *, need_image: bool):
        """Move to device, flip (shared image/label decision from the per-step generator, drawn for
        the global batch: this process uses its slice), channels-last images when configured."""
        labels = batch["label"].to(self.dev, non_blocking=True).long()
        image = batch["image"].to(self.dev, non_blocking=True) if need_image else None
        if self.cfg.data.hflip:
            gen = step_generator(self.cfg.seed, self.name, step, self.dev)
            info, n = self.ctx.dist, labels.shape[0]
            kw = {"total": n * info.world, "start": n * info.rank}
            if image is not None:
                image, labels = random_hflip(gen, image, labels, **kw)
            else:
                (labels,) = random_hflip(gen, labels, **kw)
        if image is not None and image.dtype == torch.uint8:
            image = image.float().div_(127.5).sub_(1.0)
        if image is not None:
            image = self.ctx.fmt(image)
        return labels, image

    def micro(self, n: int) -> List[slice]:
        """The ``accum`` micro-batches of this process's ``n`` samples."""
        return micro_slices(n, self.cfg.accum)

    def preview(self, step: int):
        """(labels (N,H,W) int, images (N,3,H,W) in [-1,1] or None) for the sample grid after ``step`` steps."""
        return None, None
